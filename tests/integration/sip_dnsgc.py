#!/usr/bin/env python3
"""The DNS records of a crashed proxy peer are cleaned up by the live ones
(sip/dnsreg.c), inside a private network namespace with a real named that
takes RFC 2136 updates signed with TSIG:

- two proxy peers add pp-<id12>.OVERLAY A and _sip._udp/_sip._tcp SRV;
  an operator's own records (other SRV targets, a pp- name that is not of
  the daemon's form, a pp-<hex12> target outside the zone) are added by
  nsupdate;
- both peers check each other a few times: nothing is removed while both
  live;
- a live peer whose records were removed (as another peer would if its
  DHT value went missing for a while) adds them again at its next check,
  not at its next refresh a minute later;
- one is killed with SIGKILL (it withdraws nothing): within a bounded time
  its SRV and A records are gone from named, the live peer's and the
  operator's records are still there, and the live peer counts and logs
  the removal;
- the killed peer starts again with the same id: its records come back
  and survive several checks of the other peer."""

import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import OVERLAY, check, info  # noqa: E402

N = 4
GATEWAYS = (1, 2)
GC_INTERVAL = 10.0  # s: SIP_PEER_REPUBLISH_MS, the clean-up's period
PEER_TTL = 30.0     # s: SIP_PEER_TTL_S, a crashed peer's value lives this long
# Removal comes at most one ttl (the value expires) plus two checks plus a
# DHT answer after the crash; the margin is for a loaded machine.
REMOVE_BOUND = PEER_TTL + 2 * GC_INTERVAL + 15.0

# The operator's records: none is of the pp-<hex12>.OVERLAY. form.
HAND = [
    ("_sip._udp.%s." % OVERLAY, "SRV", "20 10 5999 sip1.%s." % OVERLAY),
    ("sip1.%s." % OVERLAY, "A", "127.0.0.9"),
    ("_sip._tcp.%s." % OVERLAY, "SRV", "20 10 5999 pp-static.%s." % OVERLAY),
    ("pp-static.%s." % OVERLAY, "A", "127.0.0.10"),
    ("_sip._udp.%s." % OVERLAY, "SRV", "30 10 5999 pp-0123456789ab.example.com."),
]


def nsupdate(named, lines):
    script = "server 127.0.0.1 53\nzone %s\n%s\nsend\n" % (OVERLAY, "\n".join(lines))
    r = subprocess.run(["nsupdate", "-y", "hmac-sha256:%s:%s" % (named.KEY, named.secret)],
                       input=script.encode(), capture_output=True, timeout=20)
    return r.returncode, r.stderr.decode(errors="replace")


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


def hand_records_intact(named):
    for name, rtype, data in HAND:
        if data not in named.query(name, rtype):
            return False
    return True


def counters(node):
    return su.sip_stats(node)["counters"]


def test(h):
    if not os.path.exists(su.NAMED) or not shutil.which("nsupdate"):
        p2p.skip("needs named and nsupdate")
    su.require_sip(h.binary)
    named = su.Named(h, su.pick_udp_tcp(1))
    rc, err = nsupdate(named, ["update add %s 30 IN %s %s" % r for r in HAND])
    check(rc == 0 and hand_records_intact(named),
          "the operator's own records are in the overlay zone", err)

    gw_args = ["--gateway", "--dns-update", "127.0.0.1", "--tsig", named.tsig]
    args = {i: (gw_args if i in GATEWAYS else []) for i in range(N)}
    c = su.sip_cluster(h, N, node_args=args)
    nodes = c.alive()
    live, victim = nodes[GATEWAYS[0]], nodes[GATEWAYS[1]]
    lport, vport = su.sip_port(c, live), su.sip_port(c, victim)

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

    # Remove the live peer's records behind its back: its next check sees
    # them missing and adds them again.
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
    lines = [x for x in open(live.log, errors="replace") if "are missing from" in x]
    check(lines, "a live peer re-adds its removed records at its next check (%.1f s)"
          % (time.monotonic() - t1), live.log_tail(10))

    info("killing proxy peer %r (SIGKILL: it withdraws nothing)" % victim)
    c.kill(victim)
    t0 = time.monotonic()
    check(registered(records_of(named, victim, vport)),
          "right after the crash its records are still in DNS")
    p2p.wait_until(lambda: gone(records_of(named, victim, vport)), REMOVE_BOUND,
                   "the crashed proxy peer's records removed",
                   describe=lambda x: records_of(named, victim, vport))
    took = time.monotonic() - t0
    info("the crashed proxy peer's SRV and A records were gone %.1f s after the kill" % took)
    check(took >= PEER_TTL * 0.5,
          "not before its sip:%s value could have expired (%.1f s)" % (OVERLAY, took))
    check(registered(records_of(named, live, lport)), "the live proxy peer's records stay",
          records_of(named, live, lport))
    check(hand_records_intact(named), "the operator's records are untouched",
          [named.query(n, t) for n, t, _ in HAND])
    st = counters(live)
    check(st["dns_stale_removed"] == 1, "the live peer counts one stale peer removed", st)
    lines = [x.strip() for x in open(live.log, errors="replace")
             if "DNS clean-up" in x and pp_name(victim) in x]
    check(any("removed " + pp_name(victim) in x for x in lines), "and logs what it removed",
          live.log_tail(10))
    for x in lines:
        info("live peer: %s" % x)

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
