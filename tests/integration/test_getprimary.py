#!/usr/bin/env python3
"""dht_get_primary (admin get with "primary": true, the registrar's read of
a user's bindings): it reads the key's primary alone, and a second read
soon after sends its FETCH straight to the primary the first one found,
without a lookup (stats gets_direct).  That shortcut trusts only an answer
that says it comes from the key's primary: after a node X joins between
the key and P, P no longer says so, and the read looks the key up
again and reads X.  The ring is laid out with --node-id around the key: P
its primary, R1 and R2 its replicas, "pre" the node before P, a reader that
is neither P nor the node before it (that node looks up without asking)."""

import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check  # noqa: E402

NAME = "sip:ivan@overlay.test"
REFRESH = 2
PRIMS_BITS = 9  # dht/ops.c: a range is noted in each slot of keys it touches, two a slot


def at(k, off):
    return "%040x" % ((k + off) % p2p.RING)


def read(node):
    r = node.admin({"cmd": "get", "key": NAME, "primary": True}, 10)
    check(r.get("ok"), "the primary-only get answers", r)
    return [v.get("value", v) for v in r.get("values", [])]


def stats(node):
    st = node.admin_ok({"cmd": "stats"})
    return st["gets_primary"], st["gets_direct"]


def slot(i):
    return i >> (160 - PRIMS_BITS)


def boundary_names(k, q):
    """Two user names whose keys share a slot of the primaries' table, in
    (k + q, k + 2q) (between "reader" and "owner"), and a third in that
    quarter in another slot: a node Y placed between the first two makes
    them keys of two primaries, a boundary inside one slot."""
    seen, pair, third = {}, None, None
    for i in range(100000):
        name = "sip:s%d@overlay.test" % i
        x = p2p.id_int(p2p.key_id(name))
        rel = (x - k) % p2p.RING
        if not q + (1 << 140) < rel < 2 * q - (1 << 140):
            continue
        if pair is None and slot(x) in seen and abs(x - seen[slot(x)][1]) > 2:
            pair = sorted([seen[slot(x)], (name, x)], key=lambda e: (e[1] - k) % p2p.RING)
        seen.setdefault(slot(x), (name, x))
        if pair:
            y = (pair[0][1] + (pair[1][1] - pair[0][1]) % p2p.RING // 2) % p2p.RING
            for n3, x3 in seen.values():
                if slot(x3) != slot(pair[0][1]) and (x3 - k) % p2p.RING > (y - k) % p2p.RING:
                    third = (n3, x3)
            if third:
                return pair[0][0], pair[1][0], third[0], y
    raise AssertionError("no names found for the boundary layout")


def test_ranges(y_node, reader):
    """A primary-only read's lookup notes its primary's whole range: a key
    on the other side of a boundary inside the same slot, or in another
    slot of the same range, is read without a lookup (11.6 % of a
    registrar's writes on 64 nodes looked their key up when only the key's
    slot held one range)."""
    b1, b2, b3 = y_node
    for name in (b1, b2):
        r = reader.admin({"cmd": "get", "key": name, "primary": True}, 10)
        check(r.get("ok"), "a primary-only get of %s answers" % name, r)
    check(stats(reader) == (2, 0), "two keys either side of Y, one slot: two lookups", stats(reader))
    for i, name in enumerate((b1, b2, b3)):
        r = reader.admin({"cmd": "get", "key": name, "primary": True}, 10)
        check(r.get("ok") and stats(reader) == (3 + i, 1 + i),
              "%s read again (or, in another slot of the range, at all): straight to its primary" % name,
              stats(reader))


def test(h):
    k = p2p.id_int(p2p.key_id(NAME))
    q = p2p.RING // 4
    b1, b2, b3, y = boundary_names(k, q)
    layout = [("P", 10), ("R1", 20), ("R2", 30), ("reader", q), ("Y", (y - k) % p2p.RING),
              ("owner", 2 * q), ("pre", 3 * q)]
    c = h.cluster(0, replicas=3, ports=len(layout) + 1, refresh=REFRESH)
    c.start(len(layout), ids=[at(k, off) for _, off in layout])
    nodes = {name: c.by_id(at(k, off)) for name, off in layout}
    c.wait_consistent(timeout=60, succ_len=8, full_succ=True)
    test_ranges((b1, b2, b3), nodes["R2"])

    r = p2p.put(nodes["owner"], NAME, {"contact": "sip:ivan@192.0.2.9"}, ttl=600)
    check(r.get("replicas") == 3, "put stored on 3 nodes", r)
    reader = nodes["reader"]
    check(len(read(reader)) == 1, "a primary-only get finds the value")
    check(stats(reader) == (1, 0), "after a lookup", stats(reader))
    check(len(read(reader)) == 1, "a second one finds it too")
    check(stats(reader) == (2, 1), "its FETCH went straight to P, which confirmed it", stats(reader))

    x = c.start(1, ids=[at(k, 5)])[0]
    c.wait_consistent(timeout=60)
    p2p.wait_until(lambda: p2p.get_values(x, NAME, local=True) or None, 20, "X, the new primary, got the value",
                   describe=lambda last: x.status())
    check(len(read(reader)) == 1, "after X joined between the key and P, the get still finds the value")
    check(stats(reader) == (3, 1), "P no longer said it was the primary: the get looked the key up",
          stats(reader))
    check(len(read(reader)) == 1 and stats(reader) == (4, 2),
          "and the next one went straight to X", stats(reader))
    test_refresh_moved(nodes["owner"], x)


def batches(node):
    st = node.admin_ok({"cmd": "stats"})
    return st["refresh_batches"], st["refresh_batch_misses"]


def test_refresh_moved(owner, x):
    """The owner's refreshes go as one STORES to the primary of its last
    store, P; after X joined between the key and P, P answers that one
    NOT_MINE and the owner stores the value again alone, after a lookup:
    then its batches go to X and miss no more."""
    p2p.wait_until(lambda: batches(owner)[1] >= 1 or None, 4 * REFRESH + 10,
                   "a refresh batch to P missed (P is not the primary any more)",
                   describe=lambda _: batches(owner))
    b0, m0 = batches(owner)
    p2p.wait_until(lambda: batches(owner)[0] >= b0 + 2 or None, 3 * REFRESH + 10,
                   "two refresh batches more", describe=lambda _: batches(owner))
    b1, m1 = batches(owner)
    check(m1 == m0, "after the value was stored again alone, the batches (now to X) miss no more",
          (b0, m0, b1, m1))
    vals = p2p.get_values(x, NAME, local=True)
    check(len(vals) == 1 and vals[0].get("owner") == owner.id, "X holds the owner's value", vals)


if __name__ == "__main__":
    p2p.run("test_getprimary", test, timeout=180)
