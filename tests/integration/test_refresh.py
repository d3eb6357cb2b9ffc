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
    p2p.put(mortal_owner, short, "mortal", ttl=REFRESH + 4)

    t0 = time.monotonic()
    for x in holders + [mortal_owner]:
        c.kill(x)
    c.wait_consistent(timeout=30)
    info("killed both holders and the owner of the short key; ring consistent after %.1fs" % (time.monotonic() - t0))
    survivors = c.alive()

    def back():
        vals = p2p.get_values(survivors[-1], key)
        return vals if [v.get("value") for v in vals] == ["refreshed"] else None
    t1 = time.monotonic()
    vals = p2p.wait_until(back, 3 * REFRESH + 10, "key re-stored by its owner %r" % writer, 0.5)
    check(vals[0].get("owner") == writer.id,
          "every copy killed: the owner re-stored the key within %.1fs (refresh %ds)" % (time.monotonic() - t1, REFRESH))

    vals = p2p.get_values(survivors[-1], short)
    check([v.get("value") for v in vals] == ["mortal"], "a key whose owner died is still readable before its ttl")
    left = REFRESH + 4 - (time.monotonic() - t0)
    time.sleep(max(0.0, left) + 1.5)
    try:
        vals = p2p.get_values(survivors[-1], short)
    except p2p.GetError as e:
        vals = e
    check(vals == [], "... and gone once its ttl ran out: nobody refreshes for a dead owner", vals)


if __name__ == "__main__":
    p2p.run("refresh", test, timeout=90)
