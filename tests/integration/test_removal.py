#!/usr/bin/env python3
"""A removed value stays removed.  The ring is laid out with --node-id around
one key K: its primary P, replicas R1 and R2 (--replicas 3), and three other
nodes, the owner among them.  After the put, a node X joins between P and R1,
so R2 drops out of K's replica set still holding a live copy.  The owner then
removes the value: from then on no node's get may return it (a newer
tombstone wins over the stale copy wherever the read goes), and R2 drops the
key it no longer replicates."""

import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

NAME = "sip:carol@overlay.test"
REFRESH = 2  # short, so that R2's lease on the key runs out within the test


def at(k, off):
    return "%040x" % ((k + off) % p2p.RING)


def records(n):
    return n.status().get("records")


def test(h):
    k = p2p.id_int(p2p.key_id(NAME))
    q = p2p.RING // 4
    layout = [("P", 10), ("R1", 20), ("R2", 30), ("owner", q), ("o2", 2 * q), ("o3", 3 * q), ("X", 15)]
    c = h.cluster(0, refresh=REFRESH, replicas=3, ports=len(layout))
    nodes = {name: c.add_node(node_id=at(k, off)) for name, off in layout}
    first = [nodes[name] for name, _ in layout[:-1]]
    c.launch(first[0], [])
    c.wait_up([first[0]], joined=False)
    for n in first[1:]:
        c.launch(n, [first[0]])
    c.wait_up(first[1:])
    # Whole successor lists, not just the neighbours: the put goes to P's
    # first two successors, and a put made while P knows one of them
    # stores 2 copies.
    c.wait_consistent(timeout=60, succ_len=8, full_succ=True)

    owner = nodes["owner"]
    r = p2p.put(owner, NAME, {"contact": "sip:carol@192.0.2.7"}, ttl=600)
    check(r.get("replicas") == 3, "put stored on 3 nodes", r)
    for name in ("P", "R1", "R2"):
        p2p.wait_until(lambda: records(nodes[name]) == 1 or None, 10, "%s holds the value" % name)

    x = nodes["X"]
    c.launch(x, [first[0]])
    c.wait_up([x])
    c.wait_consistent(timeout=60)
    p2p.wait_until(lambda: records(x) == 1 or None, 10, "X, the new replica, got the value")
    check(records(nodes["R2"]) == 1, "R2, out of the replica set now, still holds a live copy")

    r = owner.admin_ok({"cmd": "remove", "key": NAME}, timeout=10)
    info("remove: %s" % r)
    # Every node, several times over a few refresh intervals: never the value.
    deadline = time.monotonic() + 3 * REFRESH
    rounds = 0
    while time.monotonic() < deadline:
        got = p2p.parallel_map(lambda n: p2p.get_values(n, NAME), c.alive())
        seen = [(n, v) for n, v in zip(c.alive(), got) if v]
        check(not seen, "after the removal no node's get returns the value (round %d)" % rounds, seen)
        rounds += 1
        time.sleep(0.3)
    check(rounds >= 3, "%d rounds of gets from all %d nodes saw nothing" % (rounds, len(c.alive())))

    t0 = time.monotonic()
    p2p.wait_until(lambda: records(nodes["R2"]) == 0 or None, 15 * REFRESH,
                   "R2 drops the key it no longer replicates")
    info("R2 dropped its stale copy %.1fs after the removal" % (time.monotonic() - t0))
    crashed = c.crashed()
    check(not crashed, "no node died", crashed)


if __name__ == "__main__":
    p2p.run("removal", test, timeout=120)
