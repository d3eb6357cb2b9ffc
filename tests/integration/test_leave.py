#!/usr/bin/env python3
"""Graceful leave hands records over.  With --replicas 1 the leaving node
holds the only copy of the keys it owns, so they survive only if it hands
them to its successor.  Three ways to leave: SIGTERM, SIGINT and the admin
{"cmd":"leave"}; each must exit 0 within 2 s."""

import os
import random
import signal
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

N = 12
PER = 6  # keys owned by each leaving node


def test(h):
    # A long refresh, so that no owner re-stores a key during the test and
    # only the handover can keep it.  Ids spread evenly: each node owns 1/N
    # of the keys (with ids from the ports a leaver could own a sliver too
    # thin to hold PER of the names tried, about 1 run in 1200).
    c = h.cluster(N, replicas=1, refresh=600, ids=p2p.even_ids(N))
    c.wait_consistent(timeout=60)
    rnd = random.Random(5)
    leavers = rnd.sample([n for n in c.alive() if n.index != 0], 3)
    writer = c.nodes[0]
    keys = {}
    for v in leavers:
        keys[v] = c.keys_owned_by(v, PER, prefix="sip:leave-%d-" % v.index)
        for k in keys[v]:
            p2p.put(writer, k, {"k": k}, ttl=900)
    recs = c.records()
    check(all(recs[v.id] == PER for v in leavers),
          "with replicas 1 each leaving node holds exactly its %d keys" % PER, [recs[v.id] for v in leavers])

    ways = [("SIGTERM", lambda v: os.kill(v.pid, signal.SIGTERM)),
            ("SIGINT", lambda v: os.kill(v.pid, signal.SIGINT)),
            ('{"cmd":"leave"}', None)]
    for v, (how, act) in zip(leavers, ways):
        ids = c.sorted_ids()
        succ = ids[(ids.index(v.id) + 1) % len(ids)]
        before = c.records()[succ]
        t0 = time.monotonic()
        if act:
            act(v)
        else:
            r = v.admin({"cmd": "leave"})
            check(r == {"ok": True} or r.get("ok") is True, "leave command answered ok", r)
        code = c.wait_exit(v, 2.0)
        took = time.monotonic() - t0
        check(code == 0, "%s: %r exited 0 within 2 s (%.2fs)" % (how, v, took),
              "exit %s; log: %s" % (code, v.log_tail(6)))
        v.state = "left"
        t1 = time.monotonic()
        c.wait_consistent(timeout=30)
        info("ring consistent again %.1fs after the exit" % (time.monotonic() - t1))
        try:  # handed over before the exit; stored by the successor as it reads them
            p2p.wait_until(lambda: c.records()[succ] - before >= PER, 10, "the successor stores the keys")
        except p2p.WaitTimeout:
            pass
        after = c.records()[succ]
        check(after - before >= PER, "%s: its successor %s now holds its %d keys (%d -> %d records)"
              % (how, succ[:8], PER, before, after))
        survivors = c.alive()
        jobs = [(rnd.choice(survivors), k) for k in keys[v]]
        res = p2p.parallel_map(lambda j: p2p.get_values(j[0], j[1]), jobs, 8)
        lost = [j[1] for j, r in zip(jobs, res)
                if isinstance(r, Exception) or [x.get("value") for x in r] != [{"k": j[1]}]]
        check(not lost, "%s: all %d keys it owned still readable" % (how, PER), lost)
    check(len(c.alive()) == N - 3, "%d nodes left running" % (N - 3))
    allkeys = [k for v in leavers for k in keys[v]]
    res = p2p.parallel_map(lambda k: p2p.get_values(writer, k), allkeys, 8)
    lost = [k for k, r in zip(allkeys, res) if isinstance(r, Exception) or [x.get("value") for x in r] != [{"k": k}]]
    check(not lost, "all %d keys of the 3 leavers readable at the end" % len(allkeys), lost)


if __name__ == "__main__":
    p2p.run("leave", test, timeout=120)
