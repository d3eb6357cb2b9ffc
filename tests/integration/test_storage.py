#!/usr/bin/env python3
"""Put from one node, get from every node; replicas land on the owner and
its successors; several values per key; TTL expiry; a large value."""

import os
import random
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, expect, info  # noqa: E402

N = 24
R = 3


def same_value(vals, value, owner):
    return len(vals) == 1 and vals[0].get("value") == value and vals[0].get("owner") == owner


def get_or_error(node, key):
    try:
        return p2p.get_values(node, key)
    except p2p.GetError as e:
        return e


def test(h):
    c = h.cluster(N, replicas=R)
    # Whole successor lists, not just the neighbours: replicas go to them.
    c.wait_consistent(timeout=90, succ_len=8, full_succ=True)
    nodes = c.alive()
    rnd = random.Random(7)
    a, b = rnd.sample(nodes, 2)

    value = {"contact": "sip:alice@127.0.0.1:5060", "q": 0.5, "list": [1, "two", None, True], "u": "\u00e9\u4e2d"}
    r = p2p.put(a, "sip:alice@overlay.test", value, ttl=600)
    check(r.get("replicas") == R, "put via %r: ok, replicas = %d" % (a, R), r)

    res = p2p.parallel_map(lambda n: p2p.get_values(n, "sip:alice@overlay.test"), nodes, 8)
    bad = [(n, v) for n, v in zip(nodes, res) if isinstance(v, Exception) or not same_value(v, value, a.id)]
    check(not bad, "get from all %d nodes returns the one value, owner %s" % (N, a.id[:8]), bad[:3])
    exp = res[0][0].get("expires_in")
    check(isinstance(exp, (int, float)) and 590 <= exp <= 600, "expires_in within the ttl", exp)

    keys = ["sip:u%d@overlay.test" % i for i in range(40)]
    for i, k in enumerate(keys):
        p2p.put(nodes[i % N], k, {"n": i}, ttl=600)
    allkeys = keys + ["sip:alice@overlay.test"]
    want = c.expected_records(allkeys)

    def placed():
        got = c.records()
        placed.last = got
        return got if got == want else None
    placed.last = {}
    try:
        p2p.wait_until(placed, 20, "records placed", 0.5)
    except p2p.WaitTimeout:
        pass
    got = placed.last
    diff = {"node%d" % c.by_id(i).index: (got.get(i), w) for i, w in want.items() if got.get(i) != w}
    check(all((got.get(i) or 0) >= w for i, w in want.items()),
          "every node holds at least the keys it owns or replicates", diff)
    expect(got == want, "record counts on every node = keys it owns or replicates, no more (%d keys x %d copies = %d)"
           % (len(allkeys), R, sum(want.values())), "(got, want) %s; %d stored" % (diff, sum(got.values())))

    # Where alice's copies are: a local get on every node finds the value
    # on the owner and its R - 1 successors and nowhere else.
    ids = c.sorted_ids()
    holders = set(p2p.responsible_nodes(p2p.key_id("sip:alice@overlay.test"), ids, R))
    res = p2p.parallel_map(lambda n: p2p.get_values(n, "sip:alice@overlay.test", local=True), nodes, 8)
    bad = [(n, v) for n, v in zip(nodes, res)
           if isinstance(v, Exception) or not (same_value(v, value, a.id) if n.id in holders else v == [])]
    check(not bad, "a local get finds alice's value on her %d holders only" % R, bad[:3])
    r = a.admin({"cmd": "get", "key": "sip:alice@overlay.test", "local": "yes"})
    check(not r["ok"] and "local" in r.get("error", ""), "a local get with a non-boolean \"local\" is refused", r)

    jobs = [(rnd.choice(nodes), i, k) for i, k in enumerate(keys)]
    res = p2p.parallel_map(lambda j: p2p.get_values(j[0], j[2]), jobs, 8)
    bad = [(j[0], j[2], v) for j, v in zip(jobs, res)
           if isinstance(v, Exception) or not same_value(v, {"n": j[1]}, nodes[j[1] % N].id)]
    check(not bad, "%d more keys each read back from a random node" % len(keys), bad[:3])

    # Several values under one key: one per (owner, value id).
    p2p.put(a, "sip:multi@overlay.test", "from-a", ttl=600)
    p2p.put(b, "sip:multi@overlay.test", "from-b", ttl=600)
    vals = p2p.get_values(rnd.choice(nodes), "sip:multi@overlay.test")
    check(sorted((v.get("owner"), v.get("value")) for v in vals) == sorted([(a.id, "from-a"), (b.id, "from-b")]),
          "two nodes put under one key: both values returned", vals)
    p2p.put(a, "sip:multi@overlay.test", "from-a-2", ttl=600)
    p2p.put(a, "sip:multi@overlay.test", "extra", ttl=600, vid="phone-2")
    vals = p2p.get_values(rnd.choice(nodes), "sip:multi@overlay.test")
    got = sorted(v.get("value") for v in vals)
    check(got == ["extra", "from-a-2", "from-b"],
          "a second put by the same node replaces its value; an explicit value_id adds one", got)

    big = "x" * 20000
    p2p.put(b, "sip:big@overlay.test", big, ttl=600)
    res = p2p.parallel_map(lambda n: p2p.get_values(n, "sip:big@overlay.test"), nodes, 8)
    bad = [n for n, v in zip(nodes, res) if isinstance(v, Exception) or not same_value(v, big, b.id)]
    check(not bad, "a 20 kB value reads back intact from every node", bad[:3])

    vals = get_or_error(rnd.choice(nodes), "sip:never-put@overlay.test")
    check(vals == [], "get of a key never put: no values (empty list, or ok:false saying not found)", vals)

    # ttl 5: long enough that a slow machine still reads it before it runs
    # out; then it must go (bounded), and not before its ttl.
    t0 = time.monotonic()
    p2p.put(a, "sip:short@overlay.test", "brief", ttl=5)
    vals = p2p.get_values(b, "sip:short@overlay.test")
    check(len(vals) == 1 and vals[0].get("value") == "brief", "ttl 5: readable at once (%.1fs)"
          % (time.monotonic() - t0), vals)
    p2p.wait_until(lambda: get_or_error(b, "sip:short@overlay.test") == [], 20, "ttl 5: the value expires",
                   describe=lambda _: get_or_error(b, "sip:short@overlay.test"))
    took = time.monotonic() - t0
    check(took >= 4, "ttl 5: gone after %.1fs, not before its ttl" % took)


if __name__ == "__main__":
    p2p.run("storage", test, timeout=150)
