#!/usr/bin/env python3
"""Limits no peer can exceed.  One node of a 4-node ring runs with small
limits (--limit) and an attacker on its own loopback address (127.0.0.9)
floods it over the peer protocol: values of one owner under one key, values
of many owners under one key, big values that would make a key's FETCH
answer too large, one owner's values across keys, primary STOREs for keys
of another node's range, connections, half-sent frames, connections that
never say HELLO.  Each flood stops at its limit with the refusal counted in
stats, while honest puts and gets through every node go on, the key the
junk was aimed at stays readable with its honest value, and the ring stays
consistent.  (The open mode: the limits hold in both modes, and raw frames
are easier to build without signatures; test_trust covers who may write.)"""

import os
import socket
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import peerproto as pp  # noqa: E402
from p2p import check, info  # noqa: E402

N = 4
EVIL = "127.0.0.9"
LIMITS = {"conns-per-ip": 20, "frame-kb": 2048, "key-values": 50, "owner-key-values": 8,
          "owner-values": 100, "hello-ms": 2000, "frame-ms": 3000}


def evil_conn(node):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.bind((EVIL, 0))
    s.connect((node.host, node.port))
    return s


def stats(n):
    return n.admin_ok({"cmd": "stats"})


def owner(i):
    return "%040x" % (0xE000 + i)


def flood(t, key_name, values, txid0=100):
    """STORE values one per frame on one connection; the statuses in order."""
    s = evil_conn(t)
    try:
        s.sendall(pp.hello(p2p.OVERLAY, owner(0xFFF), EVIL, 1))
        frames = b"".join(pp.store_frame(p2p.key_id(key_name), [v], txid=txid0 + i) for i, v in enumerate(values))
        s.sendall(frames)
        got = {x: body[0] for t_, x, body in pp.read_frames(s, len(values) + 1, 20.0) if t_ == pp.STORE_R}
        if len(got) < len(values):
            info("flood %s: %d answers of %d; closed: %s" % (key_name, len(got), len(values), pp.closed_by_peer(s, 1)))
    finally:
        s.close()
    return [got.get(txid0 + i) for i in range(len(values))]


def honest_ok(c, what, key="honest-key"):
    n = c.alive()
    v = {"t": time.monotonic()}
    p2p.put(n[0], key, v, ttl=300, vid="h")
    bad = [(x, g) for x, g in zip(n, p2p.parallel_map(lambda x: p2p.get_values(x, key), n))
           if [e["value"] for e in g] != [v]]
    check(not bad, "%s: an honest put is read back from all %d nodes" % (what, len(n)), bad[:2])


def test(h):
    c = h.cluster(0, replicas=2, ports=N)
    base_argv = c.argv

    def argv(node, bootstrap):
        a = base_argv(node, bootstrap)
        if node.index == 1:
            for k, v in LIMITS.items():
                a += ["--limit", "%s=%d" % (k, v)]
        return a
    c.argv = argv
    c.start(N)
    c.wait_consistent(timeout=60)
    t = c.nodes[1]
    honest_ok(c, "before the floods")

    # One owner, one key: stops at owner-key-values.
    target = c.keys_owned_by(t, 1, prefix="alice-")[0]
    p2p.put(c.nodes[2], target, {"contact": "honest"}, ttl=300, vid="honest")
    st = flood(t, target, [pp.Value("v%d" % i, b'"junk"', owner=owner(1)) for i in range(30)])
    check(st[:LIMITS["owner-key-values"]] == [0] * LIMITS["owner-key-values"] and
          set(st[LIMITS["owner-key-values"]:]) == {1},
          "one owner's values under one key: the first %d taken, the rest refused" % LIMITS["owner-key-values"], st)
    check(stats(t)["refused_owner_key"] >= 30 - LIMITS["owner-key-values"], "counted in refused_owner_key")

    # Many owners, one key: stops at key-values.
    st = flood(t, target, [pp.Value("m%d" % i, b'"junk"', owner=owner(100 + i)) for i in range(60)], 300)
    taken = st.count(0)
    check(LIMITS["key-values"] - 12 <= taken <= LIMITS["key-values"] and st.count(1) == 60 - taken,
          "values of many owners under one key stop at key-values (%d taken of 60)" % taken, st)
    check(stats(t)["refused_key_full"] > 0, "counted in refused_key_full")

    # Big values: a key never grows past what one FETCH answer carries.
    big = c.keys_owned_by(t, 1, prefix="big-")[0]
    p2p.put(c.nodes[2], big, {"contact": "honest"}, ttl=300, vid="honest")
    st = flood(t, big, [pp.Value("b%d" % i, b"x" * 60000, owner=owner(200 + i)) for i in range(8)], 500)
    check(st.count(0) == 4 and st.count(1) == 4, "60 KB values under one key: 4 fit in a FETCH answer, 4 refused", st)
    for node in c.alive():
        vals = p2p.get_values(node, big)
        check(any(v["value"] == {"contact": "honest"} for v in vals),
              "the key stays readable with its honest value from %r" % node)

    # One owner across keys: stops at owner-values.
    keys = c.keys_owned_by(t, 40, prefix="spread-")
    st = []
    for i, k in enumerate(keys):
        st += flood(t, k, [pp.Value("s%d" % j, b'"j"', owner=owner(2)) for j in range(4)], 1000 + 10 * i)
    check(st.count(0) <= LIMITS["owner-values"] and st.count(1) == len(st) - st.count(0) and st.count(1) > 0,
          "one owner's values on the node stop at owner-values (%d of %d taken)" % (st.count(0), len(st)),
          sorted(set((x, st.count(x)) for x in st), key=str))
    check(stats(t)["refused_owner"] > 0, "counted in refused_owner")

    # A primary STORE for a key of another node's range.
    other = c.keys_owned_by(c.nodes[3], 1, prefix="notmine-")[0]
    s = evil_conn(t)
    s.sendall(pp.hello(p2p.OVERLAY, owner(0xFFF), EVIL, 1) +
              pp.store_frame(p2p.key_id(other), [pp.Value("x", b'"x"', owner=owner(3))], txid=7))
    st7 = pp.store_status(s, 7)
    s.close()
    check(st7 == 2, "a primary STORE for a key of another node's range: status 2 (not mine)", st7)
    check(stats(t)["refused_not_mine"] >= 1 and not p2p.get_values(c.nodes[3], other),
          "counted in refused_not_mine, and nothing stored")
    honest_ok(c, "after the value floods")

    # Connections from one address.
    s0, d0 = stats(t)["refused_conns"], stats(t)["deadline_closes"]
    held = []
    closed = 0
    for _ in range(LIMITS["conns-per-ip"] + 15):
        s = evil_conn(t)
        held.append(s)
    for s in held[LIMITS["conns-per-ip"]:]:
        closed += pp.closed_by_peer(s, 5.0)
    check(closed == 15, "connections from one address beyond conns-per-ip are closed at once (%d of 15)" % closed)
    check(stats(t)["refused_conns"] - s0 == 15, "counted in refused_conns")
    honest_ok(c, "with %d connections held from one address" % LIMITS["conns-per-ip"])
    # Those that never said HELLO are closed at the deadline.
    survivors = held[:LIMITS["conns-per-ip"]]
    p2p.wait_until(lambda: all(pp.closed_by_peer(s, 0.05) for s in survivors) or None,
                   LIMITS["hello-ms"] / 1000 + 15, "connections without a HELLO closed at hello-ms")
    check(stats(t)["deadline_closes"] - d0 >= len(survivors), "counted in deadline_closes",
          (d0, stats(t)["deadline_closes"]))
    for s in held:
        s.close()

    # Half-sent frames: together they may hold frame-kb, no more.
    f0 = stats(t)
    half = []
    for _ in range(LIMITS["conns-per-ip"] - 2):
        s = evil_conn(t)
        s.sendall(pp.hello(p2p.OVERLAY, owner(0xFFE), EVIL, 1) +
                  pp.frame(pp.STORE, b"", txid=9, length=250000) + b"\0" * 200000)
        half.append(s)
    f1 = stats(t)
    check(f1["refused_frames"] > f0["refused_frames"],
          "half-sent 250 KB frames beyond frame-kb (%d KB) are refused (%d)" %
          (LIMITS["frame-kb"], f1["refused_frames"] - f0["refused_frames"]))
    honest_ok(c, "with half-sent frames held")
    p2p.wait_until(lambda: all(pp.closed_by_peer(s, 0.05) for s in half) or None,
                   LIMITS["frame-ms"] / 1000 + 15, "the rest closed at frame-ms")
    f2 = stats(t)
    check(f2["deadline_closes"] > f0["deadline_closes"] and
          f2["refused_frames"] + f2["deadline_closes"] - f0["refused_frames"] - f0["deadline_closes"] >= len(half),
          "every one of the %d connections closed at frame-kb or frame-ms, and counted" % len(half))
    for s in half:
        s.close()

    honest_ok(c, "after all the floods")
    check(c.wait_consistent(timeout=30).consistent, "the ring is still consistent")
    check(not c.crashed(), "no node died", c.crashed())
    info("stats of the node under attack: %s" % {k: v for k, v in stats(t).items() if k.startswith("refused")})


if __name__ == "__main__":
    p2p.run("limits", test, timeout=240)
