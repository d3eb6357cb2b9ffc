#!/usr/bin/env python3
"""A value put while its node is still joining reaches the key's primary as
soon as the node has joined, not at its first refresh: two relays started
next to a ring that is already up (--public yes --turn-secret, as an
operator starts them) publish turn:OVERLAY before their join completes, and
every node lists both within seconds of the join, with refresh and the
relays' own re-put far away (60 s and 20 s)."""

import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

N = 8
RELAYS = 2
REFRESH = 60
# Half the relays' re-put interval (REFRESH / 3): without the put at the
# join the relays show up some 19 s after it; room for a loaded machine.
VISIBLE_S = 10.0


def relays_of(node):
    r = node.admin_ok({"cmd": "relays"}, timeout=10)
    return sorted(x["addr"] for x in r["relays"])


def test(h):
    base = p2p.pick_ports(N + RELAYS)
    turn_base = p2p.pick_ports(RELAYS)
    c = h.cluster(0, refresh=REFRESH, base_port=base)
    turn = {}

    def argv(node, bootstrap, _orig=c.argv):
        a = _orig(node, bootstrap)
        if node.index >= N:
            turn[node.index] = "127.0.0.1:%d" % (turn_base + node.index - N)
            a += ["--public", "yes", "--turn", turn[node.index], "--turn-secret", "s",
                  "--relay-ports", "%d-%d" % (11000 + 100 * node.index, 11099 + 100 * node.index)]
        return a
    c.argv = argv
    c.start(N)
    c.wait_consistent(timeout=60)
    c.start(RELAYS)  # returns once both have joined
    t_joined = time.monotonic()
    want = sorted(turn.values())

    def all_see():
        lists = p2p.parallel_map(relays_of, c.alive())
        return all(l == want for l in lists) or None

    def where(_):
        """Who lists what, and who holds which copy: what a failure needs."""
        out = []
        for n in c.alive():
            try:
                local = [v.get("owner", "?")[:8] for v in p2p.get_values(n, "turn:" + p2p.OVERLAY, local=True)]
                out.append("%s(%s): lists %s, holds from %s" % (n.index, n.id[:8], relays_of(n), local))
            except Exception as e:  # noqa: BLE001 (a diagnosis, not a check)
                out.append("%s: %r" % (n.index, e))
        return "; ".join(out)
    p2p.wait_until(all_see, VISIBLE_S, "every node lists both relays within %.0fs of their join" % VISIBLE_S,
                   describe=where)
    took = time.monotonic() - t_joined
    info("relays put while joining are listed by all %d nodes %.2fs after the join" % (len(c.alive()), took))
    check(took < VISIBLE_S, "values put before the join are visible everywhere %.2fs after it "
          "(refresh %ds, relay re-put every %ds)" % (took, REFRESH, REFRESH // 3))


if __name__ == "__main__":
    p2p.run("joinput", test, timeout=120)
