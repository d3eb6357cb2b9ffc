#!/usr/bin/env python3
"""--link-hold: a busy peer link gathers STOREs and writes them together,
every one of them arrives, a get through a busy link is not held (only
writes wait), nor one through quiet links; out-of-range values are
refused.  In the secured mode puts and gets travel in ROUTE frames: those
carrying puts wait as STOREs do, those carrying gets do not."""

import os
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

HOLD_MS = 400
SECURE = os.environ.get("P2PSIP_SECURE") == "1"
PUTS = 48


def counters(node):
    s = node.admin_ok({"cmd": "stats"})
    return {k: s[k] for k in ("msgs_out", "link_writes", "link_holds")}


def test(h):
    out = subprocess.run([h.binary, "--overlay", "overlay.test", "--listen", "127.0.0.1:0",
                          "--link-hold", "5000"], capture_output=True, text=True, timeout=10)
    check(out.returncode != 0 and "--link-hold: expected an integer from 0 to 1000" in out.stderr,
          "--link-hold 5000 is refused with the range", (out.returncode, out.stderr[-300:]))

    ids = p2p.even_ids(3)
    c = h.cluster(3, ids=ids, replicas=1, extra_args=["--link-hold", str(HOLD_MS)])
    c.wait_consistent(timeout=60)
    a, b = c.alive()[0], c.alive()[1]
    # Keys b is the primary of, put through a: each is a STORE on a's link to b.
    keys = [k for k in ("sip:hold%d@overlay.test" % i for i in range(2000))
            if p2p.responsible_nodes(p2p.key_id(k), sorted(ids), 1)[0] == b.id][:PUTS]
    check(len(keys) == PUTS, "%d keys whose primary is %r" % (PUTS, b), len(keys))

    before = counters(a)
    t0 = time.monotonic()
    res = p2p.parallel_map(lambda k: p2p.put(a, k, {"k": k}, ttl=600), keys, 16)
    took = time.monotonic() - t0
    failed = [(k, r) for k, r in zip(keys, res) if isinstance(r, Exception)]
    check(not failed, "%d concurrent puts through a held link all succeed (%.1fs)" % (PUTS, took), failed[:3])
    after = counters(a)
    frames = after["msgs_out"] - before["msgs_out"]
    writes = after["link_writes"] - before["link_writes"]
    holds = after["link_holds"] - before["link_holds"]
    info("node a: %d frames out in %d writes, %d writes put off" % (frames, writes, holds))
    check(frames >= PUTS and holds > 0 and writes * 3 <= frames,
          "a busy link gathers its %s: at most a third as many writes as frames" %
          ("routed puts" if SECURE else "frames"), after)
    res = p2p.parallel_map(lambda k: p2p.get_values(b, k, local=True), keys, 16)
    lost = [k for k, v in zip(keys, res) if isinstance(v, Exception) or [x.get("value") for x in v] != [{"k": k}]]
    check(not lost, "every value reached its primary", lost[:3])

    # Gets while puts keep a's link to b busy: the FIND and FETCH go at once.
    stop = threading.Event()

    def keep_busy():
        i = 0
        while not stop.is_set() and i < 400:
            p2p.parallel_map(lambda k: p2p.put(a, k, {"k": k}, ttl=600), keys[:16], 16)
            i += 1
    busy = threading.Thread(target=keep_busy)
    busy.start()
    try:
        p2p.wait_until(lambda: counters(a)["link_holds"] > after["link_holds"], 30, "a's link to b held again",
                       0.05)
        times = []
        for k in keys[16:24]:
            t0 = time.monotonic()
            vals = p2p.get_values(a, k)
            times.append(time.monotonic() - t0)
            check([x.get("value") for x in vals] == [{"k": k}], "get %s through a busy link" % k, vals)
    finally:
        stop.set()
        busy.join(60)
    check(max(times) < HOLD_MS / 1000 / 2, "gets through a busy link are not held (slowest %.1f ms, hold %d ms)"
          % (max(times) * 1000, HOLD_MS), times)

    # Once a's links are quiet (the ring settles within seconds), a get
    # (a FIND, then a FETCH perhaps on the same link) is not held.
    def quiet():
        n = counters(a)["msgs_out"]
        time.sleep(2 * HOLD_MS / 1000)
        return counters(a)["msgs_out"] == n
    p2p.wait_until(quiet, 60, "node a's links quiet", 0.1)
    before = counters(a)
    t0 = time.monotonic()
    vals = p2p.get_values(a, keys[0])
    took = time.monotonic() - t0
    after = counters(a)
    check([x.get("value") for x in vals] == [{"k": keys[0]}] and after["link_holds"] == before["link_holds"]
          and took < HOLD_MS / 1000 / 2,
          "a get over quiet links is not held (%.1f ms, hold %d ms)" % (took * 1000, HOLD_MS), (vals, after))


if __name__ == "__main__":
    p2p.run("linkhold", test, timeout=120)
