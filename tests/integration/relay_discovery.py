#!/usr/bin/env python3
"""Relay discovery (draft-marocco-p2psip-interwork 3.3.2): in an overlay of
16 nodes, three of them relays, admin "relays" on every node lists every
relay (address, transports, owner); a relay killed with SIGKILL drops out
of every list within one refresh interval (its value's ttl); a relay that
leaves with SIGTERM withdraws its value at once; p2psipctl relays prints
the same list.  The relays, started alike, send Data indications with
transaction ids none of them repeats (they come from a real random source,
not an unseeded rand() that every process draws alike)."""

import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import relay_turn as rt  # noqa: E402
from p2p import check, info  # noqa: E402

N = 16
RELAYS = (3, 8, 13)
REFRESH = 8


def relays_of(node):
    r = node.admin_ok({"cmd": "relays"}, timeout=10)
    return sorted((x["addr"], tuple(x["transports"]), x["owner"]) for x in r["relays"])


def test(h):
    base = p2p.pick_ports(N + 1)
    turn_base = p2p.pick_ports(len(RELAYS))
    c = h.cluster(0, refresh=REFRESH, ports=N, base_port=base)
    turn = {}

    def argv(node, bootstrap, _orig=c.argv):
        a = _orig(node, bootstrap)
        if node.index in RELAYS:
            port = turn_base + RELAYS.index(node.index)
            turn[node.index] = "127.0.0.1:%d" % port
            a += ["--relay", "--turn", turn[node.index], "--turn-secret", "s", "--allow-loopback-peers",
                  "--relay-ports", "%d-%d" % (11000 + 100 * node.index, 11099 + 100 * node.index)]
        return a
    c.argv = argv
    c.start(N)
    c.wait_consistent(timeout=60)
    want = sorted((turn[i], ("udp", "tcp"), c.nodes[i].id) for i in RELAYS)

    def all_see(expected):
        def pred():
            lists = p2p.parallel_map(relays_of, c.alive())
            bad = [(n, l) for n, l in zip(c.alive(), lists) if l != expected]
            return None if bad else True
        return pred
    p2p.wait_until(all_see(want), 20, "every node lists the %d relays" % len(RELAYS))
    check(True, "relays from each of the %d nodes lists the %d relays with owner and transports" % (N, len(RELAYS)))

    out = subprocess.run([h.ctl, "-s", c.nodes[0].sock, "relays"], capture_output=True,
                         text=True, timeout=10).stdout
    got = sorted(x["addr"] for x in json.loads(out)["relays"])
    check(got == sorted(turn.values()), "p2psipctl relays prints the same addresses", out)

    # Data indication transaction ids, three from each relay.
    txids = []
    for i in RELAYS:
        node = c.nodes[i]
        cred = node.admin_ok({"cmd": "turn-credentials", "user": "txid", "ttl": 600})
        host, port = turn[i].rsplit(":", 1)
        a = rt.UdpTurn((host, int(port)), cred["username"], cred["password"], cred["realm"])
        peer = rt.socket.socket(rt.socket.AF_INET, rt.socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        try:
            check(rt.error_code(a.allocate()) == 0 and
                  rt.error_code(a.request(0x0008, rt.attr(0x0012, rt.xaddr(*peer.getsockname())))) == 0,
                  "relay %d: allocation and a permission for a peer" % i)
            for k in range(3):
                peer.sendto(b"from-peer-%d" % k, a.relayed)
                m = a.recv(2.0, lambda m: rt.data_ind(m) is not None)
                check(m is not None, "relay %d: Data indication %d arrives" % (i, k))
                txids.append(m[8:20])
        finally:
            a.s.close()
            peer.close()
    check(len(set(txids)) == len(txids), "%d Data indications from %d relay processes: no transaction id repeats"
          % (len(txids), len(RELAYS)))

    victim = c.nodes[RELAYS[0]]
    t0 = time.monotonic()
    c.kill(victim)
    left = [w for w in want if w[2] != victim.id]
    p2p.wait_until(all_see(left), REFRESH + 10, "the killed relay disappears from every list")
    took = time.monotonic() - t0
    info("killed relay gone from every node's list after %.1fs (refresh %ds)" % (took, REFRESH))
    # Its value's ttl is one refresh interval; the rest is for reading 16
    # lists on a loaded machine (still less than two intervals).
    check(took <= REFRESH + 4.0, "a killed relay leaves every list within one refresh interval "
          "(%.1fs, refresh %ds)" % (took, REFRESH))

    leaver = c.nodes[RELAYS[1]]
    code, _ = c.stop(leaver)
    t0 = time.monotonic()  # it withdrew while leaving, before its exit
    check(code == 0, "a relay stops on SIGTERM with exit 0", code)
    left = [w for w in left if w[2] != leaver.id]
    p2p.wait_until(all_see(left), 5, "the relay that left is withdrawn from every list")
    took = time.monotonic() - t0
    check(took < REFRESH / 2, "a relay that leaves withdraws its value at once (%.1fs, ttl %ds)" % (took, REFRESH))


if __name__ == "__main__":
    p2p.run("relay_discovery", test, timeout=200)
