#!/usr/bin/env python3
"""kill -9 of fewer than --replicas nodes in a row loses no record: 3
non-adjacent nodes, then 2 adjacent ones (replicas 3); the ring reconverges
each time; then the 2 nodes rejoin with their old id and port."""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

N = 20
R = 3
KEYS = ["sip:churn%d@overlay.test" % i for i in range(50)]


def all_readable(c, nodes, what):
    """Every key read through a random node of `nodes`; fails on a loss."""
    rnd = random.Random()
    jobs = [(rnd.choice(nodes), i, k) for i, k in enumerate(KEYS)]
    res = p2p.parallel_map(lambda j: p2p.get_values(j[0], j[2]), jobs, 8)
    lost = [(j[2], j[0], v) for j, v in zip(jobs, res)
            if isinstance(v, Exception) or [x.get("value") for x in v] != [{"i": j[1]}]]
    check(not lost, "%s: all %d keys readable with their value" % (what, len(KEYS)),
          "%d lost, e.g. %s" % (len(lost), lost[:3]))


def wait_replicated(c, what, timeout=40):
    """Wait until every live node holds at least the copies it should."""
    def ok():
        want, got = c.expected_records(KEYS), c.records()
        short = {i[:8]: (got.get(i), w) for i, w in want.items() if (got.get(i) or 0) < w}
        ok.last = (short, sum(v or 0 for v in got.values()), sum(want.values()))
        return not short
    ok.last = None
    t0 = time.monotonic()
    try:
        p2p.wait_until(ok, timeout, "re-replication", 0.5, lambda _: "short (got, want): %s" % (ok.last,))
    except p2p.WaitTimeout as e:
        raise p2p.Failure(str(e))
    check(True, "%s: every node holds the copies it owns or replicates (after %.1fs; %d stored, %d needed)"
          % (what, time.monotonic() - t0, ok.last[1], ok.last[2]))


def converge(c, what, timeout=60):
    t0 = time.monotonic()
    r = c.wait_consistent(timeout=timeout)
    check(r.consistent, "%s: ring of %d consistent after %.1fs" % (what, len(r.nodes), time.monotonic() - t0))


def test(h):
    c = h.cluster(N, replicas=R, refresh=10)
    converge(c, "start")
    nodes = c.alive()
    for i, k in enumerate(KEYS):
        p2p.put(nodes[i % N], k, {"i": i}, ttl=900)
    wait_replicated(c, "after %d puts" % len(KEYS))

    # Three nodes with at least two others between each pair on the ring.
    ids = c.sorted_ids()
    pos = {i: k for k, i in enumerate(ids)}
    cand = [n for n in nodes if n.index != 0]
    rnd = random.Random(11)
    for _ in range(1000):
        victims = rnd.sample(cand, 3)
        p = sorted(pos[v.id] for v in victims)
        gaps = [p[1] - p[0], p[2] - p[1], p[0] + N - p[2]]
        if min(gaps) >= 3:
            break
    info("killing %s (ring positions %s)" % (victims, p))
    for v in victims:
        c.kill(v)
    converge(c, "3 non-adjacent killed")
    all_readable(c, c.alive(), "3 non-adjacent killed")
    wait_replicated(c, "3 non-adjacent killed")

    ids = c.sorted_ids()
    live = {n.id: n for n in c.alive()}
    k = rnd.choice([i for i in range(len(ids)) if live[ids[i]].index != 0 and live[ids[(i + 1) % len(ids)]].index != 0])
    pair = [live[ids[k]], live[ids[(k + 1) % len(ids)]]]
    info("killing adjacent %s" % pair)
    for v in pair:
        c.kill(v)
    converge(c, "2 adjacent killed")
    all_readable(c, c.alive(), "2 adjacent killed")
    wait_replicated(c, "2 adjacent killed")

    for v in pair:
        c.restart(v)
    st = [v.status() for v in pair]
    check([s.get("id") for s in st] == [v.id for v in pair] and [s.get("listen") for s in st] == [v.addr for v in pair],
          "the 2 nodes rejoined with their old id and port")
    converge(c, "2 rejoined")
    check(set(c.sorted_ids()) >= {v.id for v in pair}, "the ring includes the rejoined nodes")
    all_readable(c, pair, "through the rejoined nodes")
    owned = [k for k in KEYS if c.owner_of(k) in pair]
    info("%d keys are now owned by the rejoined nodes" % len(owned))
    res = p2p.parallel_map(lambda k: p2p.lookup(pair[0], k), owned, 8)
    check(all(not isinstance(r, Exception) and r["owner"]["id"] == c.owner_of(k).id for k, r in zip(owned, res)),
          "lookups name the rejoined nodes as owners of their keys")
    wait_replicated(c, "2 rejoined")
    all_readable(c, c.alive(), "end")


if __name__ == "__main__":
    p2p.run("churn", test, timeout=200)
