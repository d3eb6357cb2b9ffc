#!/usr/bin/env python3
"""One secured node under valgrind's memcheck in a ring of three: it joins
over TLS, stores and serves values, answers a local get, refuses a bad
admin request and a stranger's garbage on its peer port, is asked for its
stats, and leaves on SIGTERM.  memcheck must report no error (invalid
reads or writes, uses of uninitialised memory, bad frees) and no
definitely lost block, and the node must exit 0."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

VG_ERR = 97  # valgrind's exit code when it found errors


def test(h):
    if not shutil.which("valgrind"):
        raise p2p.Failure("valgrind is not installed (scripts/install-deps --test installs it)")
    c = h.cluster(3, secure=True)
    c.wait_consistent(timeout=30)
    n = c.add_node()
    log = os.path.join(c.rundir, "valgrind.log")
    argv = ["valgrind", "--error-exitcode=%d" % VG_ERR, "--leak-check=full",
            "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite", "--num-callers=30",
            "--log-file=" + log] + c.argv(n, [c.nodes[0]])
    with open(n.log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                preexec_fn=p2p._pdeathsig)
    try:
        exercise(c, n)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(10)
    with open(log, errors="replace") as f:
        report = f.read()
    summary = re.findall(r"ERROR SUMMARY: (\d+) errors", report)
    lost = re.findall(r"definitely lost: ([\d,]+) bytes", report)
    info("valgrind: exit %s, error summary %s, definitely lost %s" % (rc, summary, lost or ["0"]))
    check(rc == 0 and summary == ["0"],
          "the node under memcheck: exit 0, no memory error, nothing definitely lost",
          "exit %s; %s" % (rc, report[-3000:]))


def exercise(c, n):
    def joined():
        st = n.status(timeout=20)
        others = [x.status(timeout=20) for x in c.nodes[:3]]
        linked = [o for o in others if (o.get("predecessor") or {}).get("id") == st.get("id")]
        return st.get("predecessor") and st.get("successors") and linked
    p2p.wait_until(joined, 90, "the node under valgrind joined: someone's predecessor", 0.5)
    keys = ["sip:vg%d@overlay.test" % i for i in range(12)]
    for i, k in enumerate(keys):
        p2p.put(n if i % 2 else c.nodes[i % 3], k, {"i": i}, ttl=300, timeout=20)
    for i, k in enumerate(keys):
        for via in (n, c.nodes[(i + 1) % 3]):
            vals = p2p.get_values(via, k, timeout=20)
            check([v.get("value") for v in vals] == [{"i": i}], "%s read via %r" % (k, via), vals)
    ids = sorted(x.status(timeout=20)["id"] for x in c.nodes)
    mine = [k for k in keys if n.id in p2p.responsible_nodes(p2p.key_id(k), ids, 3)]
    p2p.wait_until(lambda: all(p2p.get_values(n, k, timeout=20, local=True) for k in mine), 60,
                   "the node under valgrind holds the %d keys it owns or replicates" % len(mine), 0.5)
    r = n.admin({"cmd": "get", "key": 7}, timeout=20)
    check(not r["ok"], "a get whose key is not a string is refused", r)
    # A stranger: plain bytes where a TLS handshake should be.
    s = socket.create_connection((n.host, n.port), timeout=5)
    s.sendall(b"\x00\x00\x00\x10garbage-garbage!" * 4)
    s.close()
    r = n.admin({"cmd": "remove", "key": keys[1]}, timeout=20)
    check(r.get("ok"), "the node withdraws a value it put", r)
    st = n.admin({"cmd": "stats"}, timeout=20)
    check(st.get("ok"), "stats answered", st)


if __name__ == "__main__":
    p2p.run("valgrind", test, timeout=300)
