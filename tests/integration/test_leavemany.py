#!/usr/bin/env python3
"""Nodes that hold many keys still leave on time when the nodes they hand
their keys to do not take them.  A leaving node hands every key it owns
to its two successors, each copy a call of its own; calls nobody answers
fail when their link closes.  Closing a link once failed its calls with
one walk of all calls per call (quadratic): with 35,000 keys a node took
seconds and outlived its supervisor's SIGTERM deadline.  Here a node with
35,000 keys leaves while its successors are stopped, then the two
successors, just woken, leave at once (one hands to the node gone, one
to the other, leaving too): each must exit 0 within 3 s of SIGTERM.  The
second part failed on the quadratic walk."""

import os
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

KEYS = 35000
CONNS = 8     # admin connections filling at once
WINDOW = 200  # requests written on one before its answers are read


def fill(node, names):
    """Put names through node's admin socket, WINDOW requests in flight per
    connection; returns the errors (key, reply or exception)."""
    errors = []

    def one(part):
        try:
            with p2p.AdminConn(node.sock, 30) as conn:
                for i in range(0, len(part), WINDOW):
                    batch = part[i:i + WINDOW]
                    conn.send_raw(b"".join(b'{"cmd":"put","key":"%s","value":1,"ttl":900}\n' % k.encode()
                                           for k in batch))
                    for k in batch:
                        r = conn.recv_json(30)
                        if not r["ok"]:
                            errors.append((k, r))
        except p2p.AdminError as e:
            errors.append((part[0], e))
    threads = [threading.Thread(target=one, args=(names[i::CONNS],)) for i in range(CONNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def test(h):
    # The leaver's id just below two close neighbours: it owns nearly the
    # whole ring, and they are its two successors (the replicas of each key).
    ring = p2p.RING
    ids = ["%040x" % (ring // 1000), "%040x" % (ring // 500), "%040x" % (ring - 1)]
    # No --link-hold: each put waits for its copies' answers, and a held
    # link would make the filling take minutes.
    c = h.cluster(3, ids=ids, replicas=3, refresh=600, extra_args=["--link-hold", "0"])
    c.wait_consistent(timeout=60)
    leaver = [n for n in c.alive() if n.id == ids[2]][0]
    others = [n for n in c.alive() if n is not leaver]

    t0 = time.monotonic()
    errors = fill(leaver, ["sip:many%d@overlay.test" % i for i in range(KEYS)])
    check(not errors, "%d puts through the leaver (%.1fs)" % (KEYS, time.monotonic() - t0), errors[:3])
    owned = leaver.status().get("records")
    check(owned >= KEYS * 0.99, "the leaver holds nearly all %d keys (%s)" % (KEYS, owned))

    for n in others:
        os.kill(n.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        os.kill(leaver.pid, signal.SIGTERM)
        code = c.wait_exit(leaver, 3.0)
        took = time.monotonic() - t0
    finally:
        for n in others:
            os.kill(n.pid, signal.SIGCONT)
    # The two left, just woken, hold every key (the leaver's handover still
    # arriving) and leave at once, as a testbed's stop would have them.
    t1 = time.monotonic()
    for n in others:
        os.kill(n.pid, signal.SIGTERM)
    info("exit %s %.2fs after SIGTERM; %s" % (code, took, leaver.log_tail(4)))
    check(code == 0, "with its successors stopped, the node holding %d keys exits 0 within 3 s of "
          "SIGTERM (%.2fs)" % (owned, took), leaver.log_tail(8))
    leaver.state = "left"

    codes = [c.wait_exit(n, 3.0) for n in others]
    took = time.monotonic() - t1
    info("exits %s %.2fs after SIGTERM; %s" % (codes, took, [n.log_tail(3) for n in others]))
    check(codes == [0, 0], "two nodes holding %d keys each, leaving at once, exit 0 within 3 s of "
          "SIGTERM (%.2fs)" % (owned, took), [n.log_tail(6) for n in others])
    for n in others:
        n.state = "left"


if __name__ == "__main__":
    p2p.run("leavemany", test, timeout=180)
