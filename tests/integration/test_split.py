#!/usr/bin/env python3
"""Two rings become one: three nodes form a ring, three others a second
ring of their own (each founded without a bootstrap address), each ring
holds a value the other cannot read.  A seventh node starts with one
bootstrap address in each ring and joins the first; the rings stay apart
(its periodic split check comes every ~10 min).  Asked with the admin
command check-split, it looks its id up through both addresses, finds it
held in the second ring (stats ring_splits), tells that node of itself,
and stabilizing merges the two.  Asserted: one consistent ring of all
seven, and both values readable from every node.  The ids are placed
(even_ids) so that the two rings interleave: every node's successor
changes in the merge."""

import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

N = 7
REFRESH = 5  # owners store their values again this often: the merged ring's new holders get them
MERGE_S = 60.0
READ_S = 4 * REFRESH + 10.0


def readable_everywhere(c, keys):
    jobs = [(n, k) for n in c.alive() for k in keys]
    got = p2p.parallel_map(lambda j: p2p.get_values(j[0], j[1]), jobs, 8)
    return ["node%d cannot read %s" % (j[0].index, j[1]) for j, g in zip(jobs, got)
            if isinstance(g, Exception) or [v.get("value") for v in g] != [{"k": j[1]}]]


def test(h):
    c = h.cluster(0, ports=N, replicas=2, refresh=REFRESH)
    ids = p2p.even_ids(N)
    nodes = [c.add_node(node_id=ids[i]) for i in range(N)]
    ring_a, ring_b, x = nodes[0:6:2], nodes[1:6:2], nodes[6]
    for ring in (ring_a, ring_b):
        c.launch(ring[0], [])
        c.wait_up([ring[0]], joined=False)
        for n in ring[1:]:
            c.launch(n, [ring[0]])
        c.wait_up(ring[1:])
    for name, ring in (("A", ring_a), ("B", ring_b)):
        p2p.wait_until(lambda ring=ring: c.ring(nodes=ring).consistent, 30, "ring %s consistent" % name, 0.25,
                       lambda _, ring=ring: c.ring(nodes=ring).summary())
    key_a, key_b = "sip:split-a@%s" % c.overlay, "sip:split-b@%s" % c.overlay
    p2p.put(ring_a[0], key_a, {"k": key_a}, ttl=600)
    p2p.put(ring_b[0], key_b, {"k": key_b}, ttl=600)
    apart = [v.get("value") for v in p2p.get_values(ring_b[1], key_a)] + \
        [v.get("value") for v in p2p.get_values(ring_a[1], key_b)]
    check(apart == [], "two rings of three: neither reads the other's value", "read %s" % apart)

    c.launch(x, [ring_a[0], ring_b[0]])
    c.wait_up([x])
    p2p.wait_until(lambda: c.ring(nodes=ring_a + [x]).consistent, 30, "the new node in ring A", 0.25,
                   lambda _: c.ring(nodes=ring_a + [x]).summary())
    check(not c.ring().consistent and x.admin_ok({"cmd": "stats"}).get("ring_splits") == 0,
          "it joined the first ring; the two are still apart", c.ring().summary())
    r = x.admin({"cmd": "check-split"})
    check(r.get("ok") and r.get("asked") == 2, "check-split asks both bootstrap addresses", r)
    c.wait_consistent(timeout=MERGE_S)
    splits = x.admin_ok({"cmd": "stats"}).get("ring_splits")
    check(splits is not None and splits >= 1,
          "the node started with an address in each ring found the other (ring_splits %s)" % splits)
    info("one ring of %d nodes" % len(c.alive()))

    def all_read():
        all_read.last = readable_everywhere(c, [key_a, key_b])
        return not all_read.last
    all_read.last = []
    try:
        p2p.wait_until(all_read, READ_S, "both values readable from every node", 0.5)
        why = None
    except p2p.WaitTimeout:
        why = "; ".join(all_read.last)
    check(why is None, "after the merge both rings' values are readable from all %d nodes" % N, why)


if __name__ == "__main__":
    p2p.run("split", test, timeout=150)
