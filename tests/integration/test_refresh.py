#!/usr/bin/env python3
"""Owners re-store what they put (--refresh): a key whose every copy was
killed comes back from its living owner; a key whose owner died is not kept
alive by anyone else and expires with its ttl."""

import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

N = 10
R = 2
REFRESH = 3
# The dead owner's key: its ttl leaves room for the kills and the ring's
# repair on a slow machine before it must still be read, and is well above
# REFRESH so that a refresh by anyone would show as the key outliving it.
MORTAL_TTL = 20
KEYS = 60


def lookups(node):
    return node.admin_ok({"cmd": "stats"})["lookups"]


def sent(node):
    st = node.admin_ok({"cmd": "stats"})
    by = st["msgs_out_by_type"]
    return {"store": by.get("store", 0), "stores": by.get("stores", 0),
            "batches": st["refresh_batches"], "misses": st["refresh_batch_misses"]}


def test_lookups(c, writer):
    """An owner's refreshes go to the primary its last store reached, the
    first one included, as one STORES per primary (not a STORE per value;
    in the secured mode routed when the writer has no link to the primary),
    and the periodic push of what a node is primary for goes as one STORES
    per replica;
    a new version of a value put right after a get of its key takes the
    primary the get found (a registrar: get the bindings, put the new
    one).  Lookups are counted on the writer, whose ring upkeep makes a few
    of its own."""
    keys = ["sip:many%d@overlay.test" % i for i in range(KEYS)]
    for k in keys:
        p2p.put(writer, k, "v1", ttl=600, vid="b")
    t0, l0, s0 = time.monotonic(), lookups(writer), sent(writer)
    others0 = {n.id: sent(n)["store"] for n in c.alive() if n is not writer}
    time.sleep(2 * REFRESH + 1)  # two refresh rounds: nothing to wait for, the count is the test
    d, s1 = lookups(writer) - l0, sent(writer)
    info("%d lookups on the writer in %.1fs holding %d values; sent %s -> %s" %
         (d, time.monotonic() - t0, KEYS, s0, s1))
    if not c.secure:  # the secured mode routes its stores: no lookups to count
        check(d < KEYS // 2, "two refresh rounds of %d values: %d lookups (not one per value)" % (KEYS, d))
    stores = s1["store"] - s0["store"]
    check(s1["batches"] > s0["batches"] and s1["stores"] > s0["stores"] and stores < KEYS // 2,
          "two refresh rounds of %d values: %d STORES batches, %d STOREs alone (not one per value)"
          % (KEYS, s1["stores"] - s0["stores"], stores), (s0, s1))
    # The primaries' copies of those refreshes, and their own periodic
    # pushes, go as STORES too.
    others = sum(sent(n)["store"] - others0[n.id] for n in c.alive() if n is not writer)
    check(others < KEYS // 2, "... and the other %d nodes sent %d STOREs alone (copies batched)"
          % (len(others0), others))
    l0 = lookups(writer)
    for k in keys:
        p2p.get_values(writer, k)
        p2p.put(writer, k, "v2", ttl=600, vid="b")
    d = lookups(writer) - l0
    if not c.secure:
        check(d < KEYS * 3 // 2, "%d gets each followed by a new version of the value: %d lookups "
              "(the puts take the primaries the gets found)" % (KEYS, d))


def test(h):
    c = h.cluster(N, replicas=R, refresh=REFRESH)
    c.wait_consistent(timeout=60)
    ids = c.sorted_ids()
    writer = c.nodes[0]
    # A key whose R copies sit on neither node 0 nor the node that will die
    # below, so that killing its holders leaves the writer alive.
    key = next(k for k in ("sip:refresh%d@overlay.test" % i for i in range(10000))
               if writer.id not in p2p.responsible_nodes(p2p.key_id(k), ids, R))
    holders = [c.by_id(i) for i in p2p.responsible_nodes(p2p.key_id(key), ids, R)]
    p2p.put(writer, key, "refreshed", ttl=600)
    recs = c.records()
    check(all(recs[x.id] == 1 for x in holders) and sum(recs.values()) == R,
          "the key's %d copies are on %s and nowhere else" % (R, holders), recs)

    mortal_owner = next(n for n in c.alive() if n is not writer and n not in holders)
    short = next(k for k in ("sip:mortal%d@overlay.test" % i for i in range(10000))
                 if not set(p2p.responsible_nodes(p2p.key_id(k), ids, R)) & {mortal_owner.id, *(x.id for x in holders)})
    t_put = time.monotonic()
    p2p.put(mortal_owner, short, "mortal", ttl=MORTAL_TTL)

    t0 = time.monotonic()
    for x in holders + [mortal_owner]:
        c.kill(x)
    c.wait_consistent(timeout=30)
    info("killed both holders and the owner of the short key; ring consistent after %.1fs" % (time.monotonic() - t0))
    survivors = c.alive()

    def mortal():
        try:
            return [v.get("value") for v in p2p.get_values(survivors[-1], short)]
        except p2p.GetError as e:
            return e
    p2p.wait_until(lambda: mortal() == ["mortal"], 10, "the dead owner's key readable", describe=lambda _: mortal())
    seen = time.monotonic() - t_put
    check(seen < MORTAL_TTL, "a key whose owner died is still readable before its ttl (%.1fs of %ds)"
          % (seen, MORTAL_TTL))

    def back():
        vals = p2p.get_values(survivors[-1], key)
        return vals if [v.get("value") for v in vals] == ["refreshed"] else None
    t1 = time.monotonic()
    vals = p2p.wait_until(back, 3 * REFRESH + 10, "key re-stored by its owner %r" % writer, 0.5)
    check(vals[0].get("owner") == writer.id,
          "every copy killed: the owner re-stored the key within %.1fs (refresh %ds)" % (time.monotonic() - t1, REFRESH))

    # A refresh by anyone would reset its ttl, and it would outlive the wait.
    p2p.wait_until(lambda: mortal() == [], MORTAL_TTL + 2 * REFRESH + 10 - (time.monotonic() - t_put),
                   "the dead owner's key expires", describe=lambda _: mortal())
    gone = time.monotonic() - t_put
    check(gone >= MORTAL_TTL - 1, "... and gone once its ttl ran out, not before (%.1fs after the put, ttl %ds):"
          " nobody refreshes for a dead owner" % (gone, MORTAL_TTL))
    test_lookups(c, writer)


if __name__ == "__main__":
    p2p.run("refresh", test, timeout=120)
