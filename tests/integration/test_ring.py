#!/usr/bin/env python3
"""32+ nodes join and converge; lookups from every node agree with the
true successor of each key (SHA-1 computed here against the sorted ring)."""

import math
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

N = int(os.environ.get("P2PSIP_RING_N", "32"))
SUCC = 8
KEYS = ["sip:user%d@%s" % (i, p2p.OVERLAY) for i in range(12)] + ["sip:" + p2p.OVERLAY, "turn:" + p2p.OVERLAY]


def test(h):
    t0 = time.monotonic()
    c = h.cluster(N, replicas=3, successors=SUCC, wave=16)
    nodes = c.alive()
    check(len(nodes) == N, "%d nodes running after the joins" % N)

    sts = c.status_all()
    bad = [(n, st) for n, st in ((n, sts[n.index]) for n in nodes)
           # Open mode: SHA-1 of "IP:PORT"; secured: the id in the node's certificate.
           if not (isinstance(st, dict) and st.get("id") == (n.id if c.secure else p2p.addr_id(n.addr))
                   and st.get("listen") == n.addr and st.get("overlay") == p2p.OVERLAY
                   and st.get("security") == ("tls" if c.secure else "open")
                   and "dht" in (st.get("roles") or []) and st.get("records") == 0)]
    check(not bad, "status of every node: id = SHA-1(\"IP:PORT\") (secured: the certificate's), listen, overlay, security, "
          "role dht, 0 records",
          bad[:3])

    t1 = time.monotonic()
    r = c.wait_consistent(timeout=90)
    info("ring consistent %.1fs after the last join (%.1fs after the first start)" %
         (time.monotonic() - t1, time.monotonic() - t0))
    check(r.consistent, "ring consistent: every successor[0] and predecessor is the adjacent id")

    t2 = time.monotonic()
    r = c.wait_consistent(timeout=45, succ_len=SUCC, full_succ=True)
    info("successor lists complete %.1fs later" % (time.monotonic() - t2))
    check(r.full_succ == N, "every successor list holds exactly the next %d ids" % SUCC)

    ids = c.sorted_ids()
    byid = {n.id: n for n in nodes}
    sts = c.status_all()
    fbad, exact, total = [], 0, 0
    for n in nodes:
        fingers = sts[n.index].get("fingers")
        if not isinstance(fingers, list) or not fingers:
            fbad.append((n, "no fingers"))
            continue
        base = p2p.id_int(n.id)
        starts = {(base + (1 << i)) % p2p.RING: i for i in range(160)}
        for f in fingers:
            member = byid.get(f.get("id"))
            if p2p.id_int(f.get("start", "0")) not in starts:
                fbad.append((n, "finger start %s is not id+2^i" % f.get("start")))
            elif member is None or member.addr != f.get("addr"):
                fbad.append((n, "finger %s/%s is not a ring member" % (f.get("id"), f.get("addr"))))
            else:
                total += 1
                exact += p2p.successor_of(f["start"], ids) == f["id"]
    check(not fbad, "fingers: starts are id+2^i, nodes are live members with their addresses", fbad[:3])
    info("fingers pointing at the exact successor of their start: %d/%d" % (exact, total))

    t3 = time.monotonic()
    jobs = [(n, k) for n in nodes for k in KEYS]
    res = p2p.parallel_map(lambda job: p2p.lookup(job[0], job[1]), jobs, 8)
    info("%d lookups in %.1fs" % (len(jobs), time.monotonic() - t3))
    errs, hops = [], []
    owners = {}
    for (n, k), lr in zip(jobs, res):
        want = p2p.successor_of(p2p.key_id(k), ids)
        if isinstance(lr, Exception):
            errs.append("%r %s: %s" % (n, k, lr))
            continue
        owner = lr.get("owner") or {}
        path = lr.get("path")
        if lr.get("key_id") != p2p.key_id(k):
            errs.append("%r %s: key_id %s" % (n, k, lr.get("key_id")))
        elif owner.get("id") != want or owner.get("addr") != byid[want].addr:
            errs.append("%r %s: owner %s, true successor %s" % (n, k, owner, want[:8]))
        elif not isinstance(lr.get("hops"), int) or not 0 <= lr["hops"] <= p2p.MAX_PATH:
            errs.append("%r %s: hops %r" % (n, k, lr.get("hops")))
        elif not isinstance(path, list) or len(path) > p2p.MAX_PATH or any(x not in byid for x in path):
            errs.append("%r %s: path %r has non-members" % (n, k, path))
        else:
            hops.append(lr["hops"])
            owners.setdefault(k, set()).add(owner["id"])
    check(not errs, "%d lookups (%d keys from each of %d nodes): key_id = SHA-1, owner = true successor"
          % (len(jobs), len(KEYS), N), "%d wrong, e.g. %s" % (len(errs), errs[:3]))
    check(all(len(v) == 1 for v in owners.values()), "all nodes agree on each key's owner")
    info("hops: mean %.2f, max %d (log2 N = %.1f)" % (sum(hops) / len(hops), max(hops), math.log2(N)))

    stats = p2p.parallel_map(lambda n: n.admin_ok({"cmd": "stats"}), nodes, 8)
    few = [(n, s if isinstance(s, Exception) else s.get("lookups")) for n, s in zip(nodes, stats)
           if isinstance(s, Exception) or not isinstance(s.get("lookups"), int) or s["lookups"] < len(KEYS)]
    check(not few, "stats on every node count at least the %d lookups it was asked for" % len(KEYS), few[:3])
    rss = [s["memory"]["rss_kb"] for s in stats if isinstance(s.get("memory"), dict) and "rss_kb" in s["memory"]]
    if rss:
        info("rss per node: min %d kB, max %d kB" % (min(rss), max(rss)))


if __name__ == "__main__":
    p2p.run("ring", test, timeout=170)
