#!/usr/bin/env python3
"""A host with several addresses: nodes listening on 127.0.0.81 and on
127.0.0.82 (two addresses of one host, as on a multi-homed server) connect
out from the address they listen on, so their peers record them at the
address they publish and --public auto finds them public (a peer sees them
where they listen and connects back), not behind a NAT."""

import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

HOSTS = ("127.0.0.81", "127.0.0.82")
PER_HOST = 3


def test(h):
    ca = h.cluster(0, host=HOSTS[0], ports=PER_HOST)
    cb = h.cluster(0, host=HOSTS[1], ports=PER_HOST)
    ca.start(PER_HOST)
    nb = [cb.add_node() for _ in range(PER_HOST)]
    for n in nb:
        cb.launch(n, [ca.nodes[0]])
    cb.wait_up(nb)
    nodes = ca.nodes + cb.nodes
    want = {n.id: n.addr for n in nodes}

    def ring_ok():
        sts = p2p.parallel_map(lambda n: n.status(), nodes)
        seen = [(s.get("id"), x) for s in sts for x in (s.get("successors") or []) + [s.get("predecessor") or {}]
                if isinstance(s, dict) and x]
        ok = len(sts) == len(nodes) and all(isinstance(s, dict) for s in sts) and \
            all(x.get("addr") == want.get(x.get("id")) for _, x in seen) and \
            len({x.get("id") for _, x in seen}) == len(nodes)
        return (ok, seen) if ok else None
    _, seen = p2p.wait_until(ring_ok, 30, "every node's neighbours recorded at the address they listen on")
    check(True, "%d neighbour entries over %d nodes on two addresses all name the listen address" %
          (len(seen), len(nodes)))

    def decided():
        pubs = [n.status().get("public") or {} for n in nodes]
        return pubs if all(p.get("public") is not None for p in pubs) else None
    pubs = p2p.wait_until(decided, 30, "every node decided whether it is public")
    for n, p in zip(nodes, pubs):
        info("%r: %s" % (n, p.get("why")))
    check(all(p.get("public") is True for p in pubs),
          "--public auto: every node on either address is public", [(n.addr, p) for n, p in zip(nodes, pubs)])
    check(all(("sees us at %s:" % n.host) in p.get("why", "") for n, p in zip(nodes, pubs)),
          "each node was seen by its peer at its own listen IP")


if __name__ == "__main__":
    p2p.run("multiaddr", test, timeout=120)
