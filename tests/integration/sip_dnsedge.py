#!/usr/bin/env python3
"""Attacks on the DNS records of proxy peers (sip/dnsreg.c, docs/DNS.md),
inside a private network namespace with a real named whose overlay zone
takes RFC 2136 updates under docs/named-overlay.conf: one TSIG key per
proxy peer.

The open mode, three proxy peers (live, victim, and mallory, whose key
the test uses as a compromised gateway's):
- mallory's key tries to delete and to overwrite the victim's address, to
  add names and NAPTR records elsewhere in the zone, a second address at
  its own name, records under it: named refuses each (REFUSED, logged),
  every time, and every record stays;
- what the policy cannot stop (docs/DNS.md): mallory's key deletes the
  victim's SRV records; the victim puts them back at its next check;
- a gateway whose key is not named after its pp- name cannot write its
  records: refused, counted (dns_refused) and logged with the fix;
- a forged tombstone of the victim's sip:OVERLAY value, written through
  the raw peer protocol (the open mode authenticates nothing), hides the
  victim from the DHT: the other proxy peers probe it instead of removing
  it, and its records never leave named (queried every 0.2 s, 0 absences
  over several checks; counted in dns_missing_checks/dns_missing_alive);
- the victim then crashes: its records go at the next check, tombstone or
  not.
The secured mode, two proxy peers: a tombstone, and a replacement, of the
victim's sip:OVERLAY value signed by another enrolled node are refused by
the DHT (STORE_R status 1, values_refused), each time; the value and the
victim's records stay, and no proxy peer ever misses it."""

import os
import shutil
import socket
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import peerproto as pp  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import OVERLAY, check, info  # noqa: E402

GC_INTERVAL = 10.0  # s: the clean-up's period (SIP_PEER_REPUBLISH_MS)
PROBE = 1.0         # s: DOWN_PROBE_MS
PEERS = "sip:" + OVERLAY
REPEAT = 3          # each attack, this many times


def counters(node):
    return su.sip_stats(node)["counters"]


def records(named, node):
    """(SRV udp targets, SRV tcp targets, A) of one proxy peer in named."""
    name = named.pp_name(node.id)
    return ([r for r in named.srv("udp") if r.split()[-1] == name],
            [r for r in named.srv("tcp") if r.split()[-1] == name],
            named.query(name, "A"))


def present(recs):
    return len(recs[0]) == 1 and len(recs[1]) == 1 and recs[2] == ["127.0.0.1"]


def refusals(named):
    with open(named.log, errors="replace") as f:
        return f.read().count("rejected by secure update (REFUSED)")


def gateways_args(named, ids, gws, key_name=None):
    """Proxy peer i in gws gets --tsig with a key of its own (named after
    its pp- name unless key_name maps i to another name)."""
    key_name = key_name or {}
    out = {i: ["--gateway", "--dns-update", "127.0.0.1", "--tsig",
               named.peer_tsig(ids[i], key_name.get(i))] if i in gws else []
           for i in range(len(ids))}
    named.reload()
    return out


def watch(named, nodes, done, timeout):
    """Query named for the nodes' records every 0.2 s until done() holds
    or timeout s pass; returns (absences per node, queries per node,
    whether done() held)."""
    absent = {n: 0 for n in nodes}
    rounds = 0
    deadline = time.monotonic() + timeout
    while True:
        for n in nodes:
            if not present(records(named, n)):
                absent[n] += 1
        rounds += 1
        if done():
            return absent, rounds, True
        if time.monotonic() > deadline:
            return absent, rounds, False
        time.sleep(0.2)


def policy_attacks(named, mallory_key, victim, others):
    """What a stolen proxy peer key may not do, each tried REPEAT times."""
    vname = named.pp_name(victim.id)
    mname = mallory_key.split(":")[0]
    attacks = [
        ("delete the victim's address", ["update delete %s A" % vname]),
        ("overwrite the victim's address", ["update delete %s A" % vname,
                                            "update add %s 5 A 192.0.2.66" % vname]),
        ("add an address at a name of the zone", ["update add www.%s. 5 A 192.0.2.66" % OVERLAY]),
        ("add a NAPTR record at the zone's apex",
         ['update add %s. 5 NAPTR 1 1 "S" "SIP+D2U" "" _sip._udp.evil.example.' % OVERLAY]),
        ("replace the zone's NS records", ["update delete %s. NS" % OVERLAY,
                                           "update add %s. 5 NS ns.evil.example." % OVERLAY]),
        ("add a name under its own", ["update add x.%s 5 A 192.0.2.66" % mname]),
        ("add a TXT record at its own name", ["update add %s 5 TXT owned" % mname]),
    ]
    before = {n: records(named, n) for n in [victim] + others}
    for what, lines in attacks:
        r0 = refusals(named)
        results = [named.nsupdate(lines, mallory_key) for _ in range(REPEAT)]
        refused = all(rc != 0 and "REFUSED" in err for rc, err in results)
        check(refused and refusals(named) - r0 == REPEAT,
              "a proxy peer's key may not %s: REFUSED by named %d times out of %d, each logged"
              % (what, REPEAT, REPEAT), results[0])
    check(named.query("www.%s." % OVERLAY, "A") == [] and
          named.query("%s." % OVERLAY, "NS") == ["ns.%s." % OVERLAY] and
          named.query(mname, "TXT") == [],
          "nothing of the refused updates is in the zone",
          (named.query("%s." % OVERLAY, "NS"), named.query(mname, "TXT")))
    check(all(records(named, n) == before[n] for n in before),
          "the victim's and every other proxy peer's records are unchanged",
          {repr(n): records(named, n) for n in before})
    # A(1): a second address at its own name is not taken.
    rc, err = named.nsupdate(["update add %s 5 A 192.0.2.67" % mname], mallory_key)
    check(named.query(mname, "A") == ["127.0.0.1"],
          "a second address at its own name is not taken (A(1))", (rc, err, named.query(mname, "A")))


def srv_limit(named, mallory_key, victim, live):
    """The policy's documented gap: any proxy peer's key may delete SRV
    records; the victim notices at its next check and puts them back."""
    vname = named.pp_name(victim.id)
    lines = ["update delete _sip._%s.%s. SRV %s" % (t, OVERLAY, " ".join(r.split()[:3]) + " " + vname)
             for t, r in (("udp", records(named, victim)[0][0]), ("tcp", records(named, victim)[1][0]))]
    rc, err = named.nsupdate(lines, mallory_key)
    check(rc == 0 and not records(named, victim)[0],
          "known limit: another proxy peer's key may delete the victim's SRV records", err)
    t0 = time.monotonic()
    p2p.wait_until(lambda: present(records(named, victim)), GC_INTERVAL + 5,
                   "the victim's SRV records back", describe=lambda x: records(named, victim))
    took = time.monotonic() - t0
    check(took <= GC_INTERVAL + 3, "the victim puts them back at its next check (%.1f s)" % took)
    check(present(records(named, live)), "the live peer's records were not touched",
          records(named, live))


def misnamed_key(named, c, w):
    """A gateway whose key is not named after its pp- name."""
    p2p.wait_until(lambda: counters(w)["dns_refused"] >= 1, 20, "the misnamed key's update refused",
                   describe=lambda x: counters(w))
    st = counters(w)
    lines = [x for x in open(w.log, errors="replace") if "update-policy must let key" in x]
    check(st["dns_refused"] >= 1 and st["dns_updates"] == 0 and
          not any(r.split()[-1] == named.pp_name(w.id) for r in named.srv("udp")) and
          named.query(named.pp_name(w.id), "A") == [],
          "a gateway whose key is named for another name writes nothing: refused, counted "
          "(dns_refused %d)" % st["dns_refused"], st)
    check(lines and named.pp_name(w.id) in lines[0], "and its log names the key name it needs",
          lines[:1])


def forge_tombstone(c, victim, nid="ee" * 20):
    """A tombstone of the victim's sip:OVERLAY value from a stranger, with
    a sequence number the victim's re-puts never reach (the open mode
    checks neither signer nor clock)."""
    primary = c.owner_of(PEERS)
    host, port = primary.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    try:
        tomb = pp.Value(victim.id, b"", seq=2 ** 62, ttl=3600, kind=pp.KIND_PROXY, owner=victim.id,
                        flags=pp.VF_TOMBSTONE)
        s.sendall(pp.hello(OVERLAY, nid) + pp.store_frame(p2p.key_id(PEERS), [tomb], txid=3))
        return pp.store_status(s, 3)
    finally:
        s.close()


def listed(node, victim):
    return any(v.get("value_id") == victim.id for v in p2p.get_values(node, PEERS))


def open_mode(h, named):
    n = 6
    gws = {1: "victim", 3: "live", 5: "mallory", 4: "misnamed"}
    c = su.sip_cluster(h, n, secure=False, node_args=lambda ids: gateways_args(
        named, ids, gws, {4: "pp-000000000000.%s." % OVERLAY}))
    role = {name: c.nodes[i] for i, name in gws.items()}
    victim, live, mallory = role["victim"], role["live"], role["mallory"]
    honest = [victim, live, mallory]
    p2p.wait_until(lambda: all(present(records(named, g)) for g in honest), 20,
                   "the proxy peers' records in DNS",
                   describe=lambda x: (named.srv("udp"), named.srv("tcp")))
    check(True, "three proxy peers, each with its own key, registered in DNS")
    mkey = named.peer_tsig(mallory.id)
    policy_attacks(named, mkey, victim, [live, mallory])
    srv_limit(named, mkey, victim, live)
    misnamed_key(named, c, role["misnamed"])

    # A forged tombstone hides the victim from the DHT.
    p2p.wait_until(lambda: all(counters(g)["dns_gc_checks"] >= 1 for g in (live, mallory)),
                   GC_INTERVAL + 10, "a first clean-up check on each proxy peer")
    st0 = {g: counters(g) for g in (live, mallory)}
    statuses = [forge_tombstone(c, victim) for _ in range(REPEAT)]
    check(statuses == [0] * REPEAT, "the open mode takes a stranger's tombstone of the victim's "
          "sip:%s value (%d times)" % (OVERLAY, REPEAT), statuses)
    p2p.wait_until(lambda: not listed(c.nodes[0], victim), 10, "the victim's value hidden",
                   describe=lambda x: p2p.get_values(c.nodes[0], PEERS))
    info("the victim's value is gone from the DHT; watching its records in named")
    t0 = time.monotonic()
    absent, rounds, _ = watch(named, honest, lambda: all(
        counters(g)["dns_missing_alive"] >= st0[g]["dns_missing_alive"] + 2 for g in (live, mallory)),
        4 * GC_INTERVAL + 20)
    took = time.monotonic() - t0
    check(not listed(c.nodes[0], victim), "the victim stayed missing from the DHT all along")
    check(all(v == 0 for v in absent.values()),
          "the hidden but live victim's records never left named: 0 absences in %d queries over "
          "%.0f s (before: removed at every second check)" % (rounds, took),
          {repr(k): v for k, v in absent.items()})
    for g in (live, mallory):
        st = counters(g)
        check(st["dns_missing_checks"] - st0[g]["dns_missing_checks"] >= 2 and
              st["dns_missing_alive"] - st0[g]["dns_missing_alive"] >= 2 and
              st["dns_stale_removed"] == st0[g]["dns_stale_removed"],
              "%r probed the missing victim at each check past the second, found it answering, "
              "removed nothing" % g, st)
    lines = [x.strip() for x in open(live.log, errors="replace")
             if "missing from the DHT but answers" in x]
    check(lines, "and logs why it kept the records", live.log_tail(5))

    # Tombstone or not, a dead victim goes.
    t0 = time.monotonic()
    c.kill(victim)
    p2p.wait_until(lambda: not records(named, victim)[0] and not records(named, victim)[1],
                   GC_INTERVAL + PROBE + 10, "the dead victim's SRV records removed",
                   describe=lambda x: records(named, victim), interval=0.1)
    took = time.monotonic() - t0
    check(took <= GC_INTERVAL + PROBE + 3, "the crashed victim (hidden from the DHT, so no "
          "neighbour reports it) leaves DNS at the next check: %.1f s" % took)
    check(present(records(named, live)) and present(records(named, mallory)),
          "the other proxy peers' records stay")
    res = c.stop_all(timeout=5.0)
    check(all(code == 0 for code, _ in res.values()), "every node leaves cleanly", res)


def secured_mode(h, named):
    n = 4
    gws = {0: "victim", 2: "live"}
    c = su.sip_cluster(h, n, secure=True, node_args=lambda ids: gateways_args(named, ids, gws))
    victim, live = c.nodes[0], c.nodes[2]
    p2p.wait_until(lambda: all(present(records(named, g)) for g in (victim, live)), 20,
                   "the secured proxy peers' records in DNS",
                   describe=lambda x: (named.srv("udp"), named.srv("tcp")))
    p2p.wait_until(lambda: listed(c.nodes[1], victim) and listed(c.nodes[1], live), 15,
                   "both proxy peer values in the DHT")
    check(True, "secured mode: two proxy peers in DNS and under %s" % PEERS)
    d = os.path.join(c.rundir, "creds")
    os.makedirs(d, exist_ok=True)
    p2p.ca_tool("node", c.cadir, os.path.join(d, "mallory"))
    mal = (os.path.join(d, "mallory.crt"), os.path.join(d, "mallory.key"))
    mid = pp.cert_node_id(mal[0])
    kp = p2p.key_id(PEERS)
    primary = c.owner_of(PEERS)
    uri = [v for v in p2p.get_values(c.nodes[1], PEERS) if v["value_id"] == victim.id][0]["value"]
    forged = {
        "a tombstone of the victim's value signed by another node":
            lambda seq: pp.Value(victim.id, b"", seq=seq, ttl=3600, kind=pp.KIND_PROXY, owner=mid,
                                 flags=pp.VF_TOMBSTONE).sign(kp, *mal),
        "a replacement of the victim's value signed by another node":
            lambda seq: pp.Value(victim.id, b'{"uri":"sip:192.0.2.66:5060"}', seq=seq, ttl=3600,
                                 kind=pp.KIND_PROXY, owner=mid).sign(kp, *mal),
    }
    vr0 = sum(x.admin_ok({"cmd": "stats"})["values_refused"] for x in c.alive())
    st0 = counters(live)
    for what, make in forged.items():
        sts = []
        for i in range(REPEAT):
            s = pp.tls_connect(primary.addr, *mal)
            try:
                s.sendall(pp.hello(OVERLAY, mid) +
                          pp.store_frame(kp, [make(int(time.time() * 1000) + 5 + i)], txid=9))
                sts.append(pp.store_status(s, 9))
            finally:
                s.close()
        check(sts == [1] * REPEAT, "refused with STORE_R status 1, %d times out of %d: %s"
              % (REPEAT, REPEAT, what), sts)
    vr = sum(x.admin_ok({"cmd": "stats"})["values_refused"] for x in c.alive())
    check(vr - vr0 >= 2 * REPEAT, "each refusal counted in values_refused (%d -> %d)" % (vr0, vr))
    absent, rounds, checked = watch(
        named, [victim, live], lambda: counters(live)["dns_gc_checks"] >= st0["dns_gc_checks"] + 2,
        3 * GC_INTERVAL + 10)
    check(checked, "the live peer made two more checks meanwhile", counters(live))
    vals = [v for v in p2p.get_values(c.nodes[3], PEERS) if v["value_id"] == victim.id]
    check(len(vals) == 1 and vals[0]["value"] == uri,
          "the victim's value is intact and readable", vals)
    st = counters(live)
    check(all(v == 0 for v in absent.values()) and st["dns_missing_checks"] == 0 and
          st["dns_stale_removed"] == 0,
          "the victim's records never left named (0 absences in %d queries) and the live peer "
          "never missed its value" % rounds, ({repr(k): v for k, v in absent.items()}, st))
    res = c.stop_all(timeout=5.0)
    check(all(code == 0 for code, _ in res.values()), "every node leaves cleanly", res)


def test(h):
    for tool in ("nsupdate", "dig", "named-checkconf"):
        if not shutil.which(tool):
            raise p2p.Failure("needs %s (bind9, bind9-dnsutils)" % tool)
    named = su.Named(h, su.pick_udp_tcp(1))
    open_mode(h, named)
    secured_mode(h, named)


if __name__ == "__main__":
    su.enter_netns(os.path.abspath(__file__))
    p2p.run("sip_dnsedge", test, timeout=360)
