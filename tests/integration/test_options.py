#!/usr/bin/env python3
"""Command line: bad options exit 2 with one line on stderr; good ones run,
a config file is read and flags win over it, the admin socket is mode 0600,
log lines carry a timestamp, SIGINT exits 0 within 2 s, a busy port fails."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, expect, info  # noqa: E402


def run_bad(h, argv, timeout=5.0):
    """Run the daemon; returns (exit code or None if it kept running, stderr)."""
    p = subprocess.Popen([h.binary] + argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    h.extra_procs.append(p)
    try:
        _, err = p.communicate(timeout=timeout)
        return p.returncode, err.decode(errors="replace")
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        return None, err.decode(errors="replace")


def start(h, argv, log):
    with open(log, "wb") as f:
        p = subprocess.Popen([h.binary] + argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                             preexec_fn=p2p._pdeathsig)
    h.extra_procs.append(p)
    return p


def wait_status(sock, p, timeout=10.0):
    def up():
        if p.poll() is not None:
            raise p2p.Failure("daemon exited %s at start" % p.returncode)
        return p2p.admin_ok(sock, {"cmd": "status"}, 2.0)
    return p2p.wait_until(up, timeout, "admin socket %s answers" % sock, 0.1)


def exit_within(p, sig, timeout):
    t0 = time.monotonic()
    p.send_signal(sig)
    try:
        code = p.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - t0


def test(h):
    p2p._load_libc()
    d = h.rundir
    base = p2p.pick_ports(4)
    ok_args = ["--overlay", p2p.OVERLAY, "--listen", "127.0.0.1:%d" % base, "--admin", os.path.join(d, "bad.sock")]

    def cfg(name, text):
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def without(flag):
        i = ok_args.index(flag)
        return ok_args[:i] + ok_args[i + 2:]

    cases = [
        ("unknown flag", ok_args + ["--bogus-flag"]),
        ("missing --overlay", without("--overlay")),
        ("--overlay without its value", without("--overlay") + ["--overlay"]),
        ("empty overlay", without("--overlay") + ["--overlay", ""]),
        ("--listen without a port", without("--listen") + ["--listen", "127.0.0.1"]),
        ("--listen 300.1.1.1:4000", without("--listen") + ["--listen", "300.1.1.1:4000"]),
        ("--listen port 70000", without("--listen") + ["--listen", "127.0.0.1:70000"]),
        ("--listen port -1", without("--listen") + ["--listen", "127.0.0.1:-1"]),
        ("--listen name:abc", without("--listen") + ["--listen", "localhost:abc"]),
        ("--bootstrap nonsense", ok_args + ["--bootstrap", "nonsense"]),
        ("--bootstrap 1.2.3:4", ok_args + ["--bootstrap", "1.2.3:4"]),
        ("--node-id too short", ok_args + ["--node-id", "abc"]),
        ("--node-id not hex", ok_args + ["--node-id", "g" * 40]),
        ("--node-id 41 digits", ok_args + ["--node-id", "0" * 41]),
        ("--replicas 0", ok_args + ["--replicas", "0"]),
        ("--replicas abc", ok_args + ["--replicas", "abc"]),
        ("--replicas -1", ok_args + ["--replicas", "-1"]),
        ("--successors abc", ok_args + ["--successors", "abc"]),
        ("--successors 0", ok_args + ["--successors", "0"]),
        ("--log-level loud", ok_args + ["--log-level", "loud"]),
        ("--refresh soon", ok_args + ["--refresh", "soon"]),
        ("stray positional argument", ok_args + ["stray"]),
        ("--config of a missing file", ok_args + ["--config", os.path.join(d, "missing.json")]),
        ("--config not JSON", ok_args + ["--config", cfg("notjson.json", "{overlay: nope")]),
        ("--config replicas of the wrong type", ok_args + ["--config", cfg("type.json", '{"replicas":"three"}')]),
        ("--config that is a JSON array", ok_args + ["--config", cfg("array.json", "[1,2]")]),
    ]
    wrong = []
    for what, argv in cases:
        code, err = run_bad(h, argv)
        lines = err.splitlines()
        if code != 2 or len(lines) != 1 or not lines[0].strip():
            wrong.append("%s: exit %s, stderr %r" % (what, "none (still running)" if code is None else code, err[:300]))
        else:
            info("%-36s -> exit 2: %s" % (what, lines[0][:100]))
    check(not wrong, "%d bad command lines each exit 2 with one line on stderr" % len(cases),
          "\n  " + "\n  ".join(wrong))

    # A good command line with port 0.
    sock0 = os.path.join(d, "zero.sock")
    p = start(h, ["--overlay", p2p.OVERLAY, "--listen", "127.0.0.1:0", "--admin", sock0], os.path.join(d, "zero.log"))
    st = wait_status(sock0, p)
    host, port = st["listen"].rsplit(":", 1)
    check(host == "127.0.0.1" and int(port) > 0, "--listen 127.0.0.1:0: status shows the picked port %s" % port)
    check(st["id"] == p2p.addr_id(st["listen"]), "default id = SHA-1 of the listen address")
    check(st.get("predecessor") in (None, {"id": st["id"], "addr": st["listen"]}) and
          all(s.get("id") == st["id"] for s in st.get("successors") or []),
          "a ring of one: no other node as successor or predecessor", st)
    mode = stat.S_IMODE(os.stat(sock0).st_mode)
    check(mode & 0o077 == 0, "admin socket: no access for group and others (mode %o)" % mode)
    expect(mode == 0o600, "admin socket mode is exactly 0600 as documented (%o)" % mode)
    code, took = exit_within(p, signal.SIGINT, 2.0)
    check(code == 0, "SIGINT: exit 0 within 2 s (%s after %.2fs)" % (code, took))
    with open(os.path.join(d, "zero.log"), errors="replace") as f:
        lines = [x for x in f.read().splitlines() if x.strip()]
    untimed = [x for x in lines if not re.search(r"\d\d:\d\d:\d\d", x)]
    check(lines and not untimed, "%d log lines, each with a timestamp" % len(lines), untimed[:3])

    # Config file, with flags winning.
    nid = p2p.key_id("configured node")
    sock1 = os.path.join(d, "cfg.sock")
    conf = cfg("good.json", json.dumps({"overlay": "cfg.test", "listen": "127.0.0.1:%d" % (base + 1),
                                        "admin": sock1, "node-id": nid, "replicas": 2, "log-level": "debug"}))
    p = start(h, ["--config", conf, "--listen", "127.0.0.1:%d" % (base + 2)], os.path.join(d, "cfg.log"))
    st = wait_status(sock1, p)
    check(st.get("overlay") == "cfg.test" and st.get("id") == nid,
          "--config: overlay and node-id taken from the file", st)
    check(st.get("listen") == "127.0.0.1:%d" % (base + 2), "--listen on the command line wins over the file")

    # A busy port: a second daemon on the same address must fail, not hang.
    code, err = run_bad(h, ["--overlay", p2p.OVERLAY, "--listen", "127.0.0.1:%d" % (base + 2),
                            "--admin", os.path.join(d, "busy.sock")])
    check(code not in (None, 0) and err.strip(), "listen port in use: exits non-zero with a message (exit %s: %s)"
          % (code, err.strip()[:100]))
    code, took = exit_within(p, signal.SIGTERM, 2.0)
    check(code == 0, "SIGTERM: exit 0 within 2 s (%s after %.2fs)" % (code, took))


if __name__ == "__main__":
    p2p.run("options", test, timeout=90)
