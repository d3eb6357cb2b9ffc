#!/usr/bin/env python3
"""A node that restarts empty gets back the replica copies it should hold
at once, not at its predecessors' next periodic push (every second
--refresh interval): a key's first replica, then its owner, restart in
quick succession (each back, same id and port, before the next dies), and
every key of the ranges they hold copies of is back on each of its
--replicas holders within a few seconds.  --refresh is 60 s, so neither the
periodic push nor the owner's re-store can do it in time, and the keys are
put by a node far from the restarts (its successor list never changes) and
read only with "local" (no read repair)."""

import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

N = 10
R = 3
REFRESH = 60
BOUND = 8.0  # seconds; the periodic push comes after 2 * REFRESH
PER_RANGE = 4


def test(h):
    c = h.cluster(N, replicas=R, successors=4, refresh=REFRESH, ids=p2p.even_ids(N))
    c.wait_consistent(timeout=60, succ_len=4, full_succ=True)
    ids = c.sorted_ids()
    # By ring position: the owner's two predecessors, the owner, its first
    # replica; the ranges of these four are those the owner and replica 1
    # hold copies of.  The writer's 4 successors are at 9, 0, 1, 2.
    pp, p, owner, r1 = (c.by_id(ids[i]) for i in (2, 3, 4, 5))
    writer = c.by_id(ids[8])
    keys, want = [], {}
    for node in (pp, p, owner, r1):
        for name in c.keys_owned_by(node, PER_RANGE, prefix="sip:rejoin-%d-" % node.index):
            keys.append(name)
            want[name] = [c.by_id(x) for x in p2p.responsible_nodes(p2p.key_id(name), ids, R)]
    for name in keys:
        p2p.put(writer, name, {"k": name}, ttl=900)

    def missing():
        jobs = [(name, n) for name in keys for n in want[name]]
        got = p2p.parallel_map(lambda j: p2p.get_values(j[1], j[0], local=True), jobs, 8)
        return ["node%d lacks a key of node%d's range" % (j[1].index, c.owner_of(j[0]).index)
                for j, g in zip(jobs, got)
                if isinstance(g, Exception) or [v.get("value") for v in g] != [{"k": j[0]}]]

    def all_held():
        missing.last = missing()
        return not missing.last
    p2p.wait_until(all_held, 10, "%d keys on all their %d holders before the restarts" % (len(keys), R), 0.25,
                   lambda _: "; ".join(sorted(set(missing.last))))

    # Replica 1 restarts; the owner dies as soon as replica 1 is back in the
    # ring (its successor has it as predecessor again) and restarts at once:
    # the node before the owner has then most likely not adopted replica 1
    # again, which is when the owner's join lookup names the wrong successor.
    r2 = c.by_id(ids[6])
    c.kill(r1)
    c.launch(r1, c.pick_bootstrap(r1))
    p2p.wait_until(lambda: (r2.status().get("predecessor") or {}).get("id") == r1.id, 10,
                   "replica 1 back as its successor's predecessor", 0.02)
    c.kill(owner)
    c.restart(owner)
    t0 = time.monotonic()
    try:
        p2p.wait_until(all_held, BOUND, "copies back", 0.25)
        why = None
    except p2p.WaitTimeout:
        why = "%d copies missing: %s" % (len(missing.last), "; ".join(sorted(set(missing.last))))
    check(why is None, "replica 1 then owner restarted empty: all %d keys of the 4 ranges they hold copies of "
          "are on every one of their %d holders again after %.1fs (bound %.0fs, refresh %ds)"
          % (len(keys), R, time.monotonic() - t0, BOUND, REFRESH), why)


if __name__ == "__main__":
    p2p.run("rejoin", test, timeout=120)
