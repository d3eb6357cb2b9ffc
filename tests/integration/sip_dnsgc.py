#!/usr/bin/env python3
"""The DNS records of a crashed proxy peer are cleaned up by the live ones
(sip/dnsreg.c), inside a private network namespace with a real named that
takes RFC 2136 updates signed with TSIG under the operator's update-policy
of docs/named-overlay.conf (one key per proxy peer), and a real kamailio as
the proxy of example.com:

- two proxy peers, on opposite sides of an 8-node ring (neither is a ring
  neighbour of the other), add pp-<id12>.OVERLAY A and _sip._udp/_sip._tcp
  SRV; an operator's own records (other SRV targets, a pp- name that is not
  of the daemon's form, a pp-<hex12> target outside the zone) are added by
  nsupdate;
- both peers check each other a few times: nothing is removed while both
  live;
- a live peer whose records were removed (as another peer would if its
  DHT value went missing for a while) adds them again at its next check,
  not at its next refresh a minute later;
- one is killed with SIGKILL (it withdraws nothing): its ring neighbours
  notice at once and tell the other proxy peer, which finds nothing
  answering at the victim's address and removes its SRV records within
  2 s (before: 30-50 s, when its DHT value had expired and two checks had
  missed it), with its own key; the victim's address record stays (only
  the victim's key may write it, and no SRV record names it any more); the
  live peer's and the operator's records stay;
- right after, carol@example.com calls bob@OVERLAY through kamailio: the
  call completes and kamailio sends nothing to the dead peer's address;
- the killed peer starts again with the same id: its records come back
  and survive several checks of the other peer;
- false alarms: reports naming peers not in DNS cost one look at the SRV
  records a second; a report naming a live peer removes nothing (it
  answers the probe), a flood of them one check a second; forged notices
  that a peer's records were removed cost one re-add a second; a peer
  stopped with SIGSTOP while reported is removed (nothing answers), and
  adds its records again as soon as it runs (SIGCONT), told by the peer
  that removed them."""

import os
import random
import shutil
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import HOST, OVERLAY, check, info  # noqa: E402

N = 8
GC_INTERVAL = 10.0  # s: SIP_PEER_REPUBLISH_MS, the clean-up's period
CRASH_BOUND = 2.0   # s: a crashed proxy peer's records leave DNS this soon
PROBE = 1.0         # s: DOWN_PROBE_MS, how long a reported peer has to answer

# The operator's records: none is of the pp-<hex12>.OVERLAY. form.
HAND = [
    ("_sip._udp.%s." % OVERLAY, "SRV", "20 10 5999 sip1.%s." % OVERLAY),
    ("sip1.%s." % OVERLAY, "A", "127.0.0.9"),
    ("_sip._tcp.%s." % OVERLAY, "SRV", "20 10 5999 pp-static.%s." % OVERLAY),
    ("pp-static.%s." % OVERLAY, "A", "127.0.0.10"),
    ("_sip._udp.%s." % OVERLAY, "SRV", "30 10 5999 pp-0123456789ab.example.com."),
]


def nsupdate(named, lines):
    """An UPDATE signed with the operator's key."""
    return named.nsupdate(lines)


def pp_name(node):
    return "pp-%s.%s." % (node.id[:12], OVERLAY)


def records_of(named, node, port):
    """What named holds for one proxy peer: its SRV lines (udp, tcp) and A."""
    name = pp_name(node)
    return {"udp": [r for r in named.srv("udp") if r.split()[-1] == name],
            "tcp": [r for r in named.srv("tcp") if r.split()[-1] == name],
            "a": named.query(name, "A"), "port": port}


def registered(recs):
    return (len(recs["udp"]) == 1 and len(recs["tcp"]) == 1 and recs["a"] == ["127.0.0.1"] and
            recs["udp"][0].split()[2] == str(recs["port"]))


def gone(recs):
    return not recs["udp"] and not recs["tcp"] and not recs["a"]


def srv_gone(recs):
    """What another proxy peer removes: the SRV records (callers find proxy
    peers by them alone); the pp- name's address only its own key writes."""
    return not recs["udp"] and not recs["tcp"]


def hand_records_intact(named):
    for name, rtype, data in HAND:
        if data not in named.query(name, rtype):
            return False
    return True


def counters(node):
    return su.sip_stats(node)["counters"]


def pick_roles(ids):
    """Proxy peers on opposite sides of the ring: the victim's death is
    noticed by its ring neighbours, none of which is the other proxy peer."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    return order[0], order[len(ids) // 2]


def news(ua, c, to, header):
    r = ua.do(su.sip_dest(c, to), "OPTIONS", ruri="sip:" + su.sip_addr(c, to), contact=False,
              headers=[header])
    check(r.status == 200, "proxy peer %r answers OPTIONS with %s" % (to, header[:40]), r.status)


def report(ua, c, to, about):
    """What a node that found `about` dead sends a proxy peer."""
    news(ua, c, to, "P2PSIP-Peer-Down: %s" % about)


def log_lines(node, *words):
    return [x.strip() for x in open(node.log, errors="replace") if all(w in x for w in words)]


def check_steady(named, live, victim, lport, vport):
    both = p2p.wait_until(
        lambda: (lambda a, b: (a, b) if registered(a) and registered(b) else None)(
            records_of(named, live, lport), records_of(named, victim, vport)),
        20, "both proxy peers' records in DNS",
        describe=lambda x: (named.srv("udp"), named.srv("tcp")))
    check(both, "both proxy peers added pp-<id12> A and _sip._udp/_sip._tcp SRV", both)
    # Each peer sees the other's records on every check; two checks in a
    # row with both alive must remove nothing.
    p2p.wait_until(lambda: all(counters(g)["dns_gc_checks"] >= 3 for g in (live, victim)),
                   4 * GC_INTERVAL + 10, "three clean-up checks on each proxy peer",
                   describe=lambda x: [counters(g) for g in (live, victim)])
    check(all(counters(g)["dns_stale_removed"] == 0 for g in (live, victim)) and
          registered(records_of(named, live, lport)) and
          registered(records_of(named, victim, vport)) and hand_records_intact(named),
          "while both live, their checks remove nothing",
          [counters(g) for g in (live, victim)])


def check_self_repair(named, live, lport):
    """Records removed behind a live peer's back come back at its next check."""
    name = pp_name(live)
    srv = "IN SRV 10 10 %d %s" % (lport, name)
    rc, err = nsupdate(named, ["update delete _sip._udp.%s. %s" % (OVERLAY, srv),
                               "update delete _sip._tcp.%s. %s" % (OVERLAY, srv),
                               "update delete %s IN A" % name])
    check(rc == 0 and gone(records_of(named, live, lport)),
          "the live peer's records removed by hand", err)
    t1 = time.monotonic()
    p2p.wait_until(lambda: registered(records_of(named, live, lport)), GC_INTERVAL + 10,
                   "the live peer's records back",
                   describe=lambda x: records_of(named, live, lport))
    check(log_lines(live, "are missing from"),
          "a live peer re-adds its removed records at its next check (%.1f s)"
          % (time.monotonic() - t1), live.log_tail(10))


def check_crash(c, named, live, victim, lport, vport):
    others = [n for n in c.alive() if n not in (live, victim)]
    reported0 = sum(counters(n).get("peer_down_reported", 0) for n in others)
    info("killing proxy peer %r (SIGKILL: it withdraws nothing)" % victim)
    t0 = time.monotonic()
    c.kill(victim)
    p2p.wait_until(lambda: srv_gone(records_of(named, victim, vport)), 4 * GC_INTERVAL,
                   "the crashed proxy peer's records removed",
                   describe=lambda x: records_of(named, victim, vport), interval=0.05)
    took = time.monotonic() - t0
    info("the crashed proxy peer's SRV records were gone %.2f s after the kill" % took)
    check(took <= CRASH_BOUND, "a crashed proxy peer leaves DNS within %.0f s (%.2f s)"
          % (CRASH_BOUND, took))
    check(records_of(named, victim, vport)["a"] == ["127.0.0.1"],
          "its address record stays: the other peer's key may not write the victim's name",
          records_of(named, victim, vport))
    check(registered(records_of(named, live, lport)), "the live proxy peer's records stay",
          records_of(named, live, lport))
    check(hand_records_intact(named), "the operator's records are untouched",
          [named.query(n, t) for n, t, _ in HAND])
    reported = sum(counters(n)["peer_down_reported"] for n in others) - reported0
    check(reported >= 1, "the victim's ring neighbours told the other proxy peer (%d reports)"
          % reported, [log_lines(n, "found dead") for n in others])
    st = counters(live)
    check(st["dns_stale_removed"] == 1 and st["dns_down_removed"] == 1,
          "the live peer counts one crashed peer removed", st)
    lines = log_lines(live, pp_name(victim))
    check(any("removed the SRV records of " + pp_name(victim) in x for x in lines) and
          any("nothing answers SIP" in x for x in lines),
          "and logs what it removed and why", live.log_tail(10))
    for x in lines:
        info("live peer: %s" % x)


def check_call_after_crash(h, c, kam, bob_node, dead_port):
    """carol@example.com calls bob@OVERLAY through kamailio right after the
    crash; nothing may go to the dead peer's address (an INVITE sent there
    waits for DNS failover, an ACK for the 2xx is lost)."""
    ports = su.pick_udp_tcp(3)
    catcher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    catcher.bind((HOST, dead_port))
    catcher.setblocking(False)
    try:
        rc, s = su.sipp_register(h, su.sip_addr(c, bob_node), "bob", ports + 1, ports)
        check(rc == 0, "bob registers in the overlay", s.describe())
        uas = su.Sipp(h, "bob-uas", su.UAS_XML, None, ports + 1, timeout=30)
        uac = su.Sipp(h, "carol-to-bob", su.uac_xml(500), kam.addr, ports + 2,
                      keys=[("user", "carol"), ("domain", "example.com"), ("callee", "bob"),
                            ("callee_domain", OVERLAY)], timeout=30)
        rc_uac, rc_uas = uac.wait(), uas.wait()
        check(rc_uac == 0 and rc_uas == 0,
              "right after the crash, carol@example.com calls bob@%s through kamailio: "
              "the call completes" % OVERLAY, (uac.describe(), uas.describe()))
        strays = []  # (nodes whose flow used the dead peer send keep-alives too)
        while True:
            try:
                data, src = catcher.recvfrom(65535)
            except BlockingIOError:
                break
            if src[1] == kam.port:
                strays.append(data[:60])
        check(not strays, "kamailio sent nothing to the dead proxy peer's address", strays)
    finally:
        catcher.close()


def check_false_alarms(c, named, live, victim, lport, vport):
    tester = su.Ua("tester")
    # Names not in DNS (made up): one look at the SRV records a second.
    st0 = counters(live)
    for _ in range(6):
        report(tester, c, live, "%040x" % random.getrandbits(160))
    p2p.wait_until(lambda: counters(live)["dns_down_checks"] > st0["dns_down_checks"], 5,
                   "a look at the SRV records", describe=lambda x: counters(live))
    time.sleep(2.0)  # more looks would come now, were they allowed
    st = counters(live)
    looks = st["dns_down_checks"] - st0["dns_down_checks"]
    check(1 <= looks <= 2 and st["dns_down_ignored"] - st0["dns_down_ignored"] == 6 - looks and
          st["dns_stale_removed"] == st0["dns_stale_removed"] and
          registered(records_of(named, victim, vport)) and
          registered(records_of(named, live, lport)),
          "six reports at once naming peers not in DNS: %d look(s) at the SRV records, the rest "
          "ignored, nothing removed" % looks, st)
    st0 = counters(live)
    report(tester, c, live, "not-an-id;" + "z" * 900)
    st = counters(live)
    check(st["dns_down_ignored"] == st0["dns_down_ignored"] + 1 and
          st["dns_down_checks"] == st0["dns_down_checks"],
          "a report whose value is not a node id is ignored", st)
    st0 = st

    report(tester, c, live, victim.id)
    p2p.wait_until(lambda: counters(live)["dns_down_alive"] == st0["dns_down_alive"] + 1,
                   5, "the reported live peer found answering",
                   describe=lambda x: counters(live))
    check(registered(records_of(named, victim, vport)) and
          counters(live)["dns_down_removed"] == st0["dns_down_removed"],
          "a report naming a live proxy peer removes nothing: it answers the probe",
          (records_of(named, victim, vport), counters(live)))

    # A flood of reports about a live peer: one check a second at most.
    st1 = counters(live)
    for _ in range(6):
        report(tester, c, live, victim.id)
    p2p.wait_until(lambda: counters(live)["dns_down_alive"] > st1["dns_down_alive"], 5,
                   "the flooded peer checked again", describe=lambda x: counters(live))
    time.sleep(2.0)  # more checks would come now, were they allowed
    st = counters(live)
    checks = st["dns_down_checks"] - st1["dns_down_checks"]
    check(1 <= checks <= 2 and st["dns_down_ignored"] - st1["dns_down_ignored"] == 6 - checks and
          st["dns_down_alive"] - st1["dns_down_alive"] == checks and
          registered(records_of(named, victim, vport)),
          "six reports at once about a live peer: %d check(s) a second apart, the rest ignored, "
          "records kept" % checks, st)

    # Forged notices that our records were removed: one re-add a second.
    u0 = counters(live)["dns_updates"]
    for _ in range(5):
        news(tester, c, live, "P2PSIP-DNS-Removed: %s" % pp_name(live))
    p2p.wait_until(lambda: counters(live)["dns_updates"] >= u0 + 2, 5, "two re-adds",
                   describe=lambda x: counters(live))
    time.sleep(1.5)  # a third would come now, were it allowed
    st = counters(live)
    check(st["dns_readded"] >= 5 and st["dns_updates"] - u0 == 2 and
          registered(records_of(named, live, lport)),
          "five notices at once that our records were removed: two re-adds, a second apart",
          (st["dns_updates"] - u0, st))

    info("stopping %r (SIGSTOP) and reporting it down" % victim)
    c.send_signal(victim, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        report(tester, c, live, victim.id)
        p2p.wait_until(lambda: srv_gone(records_of(named, victim, vport)), PROBE + 4,
                       "the stopped peer's records removed",
                       describe=lambda x: records_of(named, victim, vport), interval=0.1)
        info("removed %.2f s after the report" % (time.monotonic() - t0))
        check(registered(records_of(named, live, lport)) and hand_records_intact(named),
              "a reported peer that does not answer is removed, nothing else", counters(live))
    finally:
        c.send_signal(victim, signal.SIGCONT)
    t1 = time.monotonic()
    p2p.wait_until(lambda: registered(records_of(named, victim, vport)), 5,
                   "the stopped peer's records back after SIGCONT",
                   describe=lambda x: records_of(named, victim, vport), interval=0.1)
    took = time.monotonic() - t1
    check(counters(victim)["dns_readded"] >= 1 and log_lines(victim, "says it removed our records"),
          "the peer taken for dead adds its records again as soon as it runs (%.2f s), told by "
          "the peer that removed them" % took, victim.log_tail(10))
    tester.close()


def test(h):
    if not shutil.which("nsupdate"):
        p2p.skip("needs nsupdate")
    named, kam = su.public_network(h)
    rc, err = nsupdate(named, ["update add %s 30 IN %s %s" % r for r in HAND])
    check(rc == 0 and hand_records_intact(named),
          "the operator's own records are in the overlay zone", err)

    roles = {}

    def args(ids):
        """Each proxy peer gets a key of its own (docs/DNS.md)."""
        roles["victim"], roles["live"] = pick_roles(ids)
        out = {i: ["--gateway", "--dns-update", "127.0.0.1", "--tsig", named.peer_tsig(ids[i])]
               if i in roles.values() else [] for i in range(len(ids))}
        named.reload()
        return out
    c = su.sip_cluster(h, N, node_args=args)
    nodes = c.nodes
    live, victim = nodes[roles["live"]], nodes[roles["victim"]]
    bob_node = [n for n in nodes if n not in (live, victim)][0]
    lport, vport = su.sip_port(c, live), su.sip_port(c, victim)
    info("proxy peers %r and %r, %d ring positions apart" % (live, victim, N // 2))

    check_steady(named, live, victim, lport, vport)
    check_self_repair(named, live, lport)
    check_crash(c, named, live, victim, lport, vport)
    check_call_after_crash(h, c, kam, bob_node, vport)

    # A peer that (re)starts is in DNS before the others see it in the DHT:
    # the two-check rule must keep its records.
    c.restart(victim)
    p2p.wait_until(lambda: registered(records_of(named, victim, vport)), 20,
                   "the restarted proxy peer's records back in DNS",
                   describe=lambda x: records_of(named, victim, vport))
    n0 = counters(live)["dns_gc_checks"]
    p2p.wait_until(lambda: counters(live)["dns_gc_checks"] >= n0 + 3, 4 * GC_INTERVAL + 10,
                   "three more checks on the live peer", describe=lambda x: counters(live))
    check(registered(records_of(named, victim, vport)) and
          counters(live)["dns_stale_removed"] == 1,
          "the restarted proxy peer's records survive the other's checks",
          (records_of(named, victim, vport), counters(live)))

    check_false_alarms(c, named, live, victim, lport, vport)

    # Stop the nodes while named still runs (the harness stops helpers first).
    res = c.stop_all(timeout=5.0)
    check(all(code == 0 for code, _ in res.values()), "every node leaves cleanly", res)
    check(gone(records_of(named, live, lport)) and gone(records_of(named, victim, vport)) and
          hand_records_intact(named),
          "leaving peers withdraw their own records, the operator's stay",
          (named.srv("udp"), named.srv("tcp")))


if __name__ == "__main__":
    su.enter_netns(os.path.abspath(__file__))
    p2p.run("sip_dnsgc", test, timeout=300)
