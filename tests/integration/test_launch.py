#!/usr/bin/env python3
"""p2psipd --launcher starts secured nodes by fork from one process that
initialised OpenSSL: they form a ring and store and find values; they
share libcrypto's relocated pages with the launcher instead of each holding
a private copy; their malloc keeps no per-thread cache (the launcher
restarts itself with GLIBC_TUNABLES set); two forked relays draw
different nonce keys (OpenSSL reseeds its DRBG after fork); a child given a bad option exits 2 with the
message in its log, as an exec'd daemon does; bad request lines (not JSON,
wrong types, unknown keys, longer than the cap) get an error and the
launcher serves the next; a node killed with -9 is reaped and its signal
reported, no zombie left; at EOF on its stdin the launcher exits 0 and the
nodes run on."""

import os
import signal
import socket
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import relay_turn as rt  # noqa: E402
from p2p import check, info  # noqa: E402

N = 6
SECRET = "launch-test-secret"


def shared_libcrypto_kb(pid):
    """Shared_Dirty kB of pid's libcrypto mappings: pages relocated once,
    by the launcher, and shared since."""
    kb, cur = 0, ""
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            if "-" in line.split(" ", 1)[0]:
                cur = line.split()[-1]
            elif line.startswith("Shared_Dirty:") and "libcrypto" in cur:
                kb += int(line.split()[1])
    return kb


def tunables(pid):
    """GLIBC_TUNABLES in pid's environment ("" if unset): glibc read it when
    the process (for a forked node: its launcher) started."""
    with open("/proc/%d/environ" % pid, "rb") as f:
        for var in f.read().split(b"\0"):
            if var.startswith(b"GLIBC_TUNABLES="):
                return var.split(b"=", 1)[1].decode()
    return ""


def add_relay(c, turn_port):
    """One more node through the launcher, serving TURN on turn_port."""
    c.extra_args = ["--relay", "--turn", "127.0.0.1:%d" % turn_port, "--turn-secret", SECRET]
    n = c.add_node()
    c.launch(n, c.pick_bootstrap(n))
    c.extra_args = []
    c.wait_up([n], 30)
    return n


def nonce_of(sock, turn_port):
    """The NONCE of a 401 to an unsigned Allocate: 8 hex digits of expiry,
    16 of HMAC(the relay's random nonce key, expiry || our IP)."""
    r = rt.ask(sock, rt.stun_req(0x0003, rt.attr(0x0019, b"\x11\0\0\0")), ("127.0.0.1", turn_port))
    check(rt.error_code(r) == 401, "unsigned Allocate to :%d: 401" % turn_port, r)
    return rt.parse_attrs(r)[0x0015].decode()


def same_second_nonces(ports):
    """Nonces from every port with one expiry (asked within one second)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(20):
            got = [nonce_of(s, p) for p in ports]
            if len({g[:8] for g in got}) == 1:
                return got
    finally:
        s.close()
    raise p2p.Failure("no two nonces with one expiry in 20 tries")


def test(h):
    base = p2p.pick_ports(2)
    ports = [base, base + 1]  # the two relays' TURN ports
    c = h.cluster(0, secure=True, launcher=True, ports=N + 2)
    c.start(N)
    check(c.launcher is not None and all(n.proc is None and n.starttime for n in c.nodes),
          "the %d nodes were forked by the launcher" % N)
    relays = [add_relay(c, p) for p in ports]
    c.wait_consistent(timeout=60)
    info("ring of %d secured forked nodes consistent" % len(c.nodes))
    p2p.put(c.nodes[1], "launch-key", {"contact": "x"})
    vals = p2p.get_values(c.nodes[-1], "launch-key")
    check([v["value"] for v in vals] == [{"contact": "x"}], "put on node1, get on the last node", vals)

    kb = shared_libcrypto_kb(c.nodes[2].pid)
    check(kb >= 200, "a forked node shares libcrypto's relocated pages (Shared_Dirty %d kB)" % kb)
    tun = tunables(c.nodes[2].pid)
    check("glibc.malloc.tcache_count=0" in tun.split(":"),
          "a forked node's malloc keeps no per-thread cache (the launcher restarted itself with "
          "GLIBC_TUNABLES %r)" % tun)
    with open("/proc/%d/comm" % c.nodes[2].pid) as f:
        comm = f.read().strip()
    check(comm == os.path.basename(c.binary)[:15], "and keeps the binary's process name (%r) for ps and pkill" % comm)

    # The control: one relay's nonce within one second is one value, so
    # different values from two relays mean different keys.
    a, a2, b = same_second_nonces([ports[0], ports[0], ports[1]])
    check(a == a2, "one relay, one second: one nonce", (a, a2))
    check(a[8:] != b[8:], "two forked relays drew different nonce keys (DRBG reseeded after fork)", (a, b))

    la = c.launcher
    bad = [b"not json", b"[1,2]", b'{"argv":"--overlay"}', b'{"argv":[1]}',
           b'{"argv":[],"log":5}', b'{"argv":[],"nice":1}', b'{"cmd":"stop"}',
           b'{"argv":[],"cwd":"/nonexistent-dir"}', b"x" * 70000]
    for line in bad:
        la.proc.stdin.write(line + b"\n")
        la.proc.stdin.flush()
        r = la.reply()
        check(set(r) == {"error"}, "launcher answers %r with an error" % line[:40], r)
    pid = la.spawn(["--bogus"], os.path.join(c.rundir, "bogus.log"))
    code = p2p.wait_value(lambda: la.exit_code(pid), lambda x: x is not None, 10, "the bogus child's exit")
    with open(os.path.join(c.rundir, "bogus.log")) as f:
        text = f.read()
    check(code == 2 and "unknown option --bogus" in text,
          "a child with a bad option exits 2 with the message in its log", (code, text))

    victim = c.nodes[3]
    os.kill(victim.pid, signal.SIGKILL)
    code = c.wait_exit(victim, 5.0)
    check(code == -signal.SIGKILL, "kill -9 of a forked node: the launcher reports signal 9", code)
    check(p2p.proc_state(victim.pid) is None, "the killed node was reaped (no zombie)",
          p2p.proc_state(victim.pid))
    victim.state = "dead"
    check(victim not in c.alive(), "the killed node is not counted alive")
    c.wait_consistent(timeout=60)

    live = c.alive()
    t0 = time.monotonic()
    rc = la.close()
    check(rc == 0, "EOF on stdin: the launcher exits 0", rc)
    info("launcher gone after %.2fs" % (time.monotonic() - t0))
    check(all(n.running(c.binary) for n in live), "its nodes run on after the launcher exits")
    c.launcher = None
    c.wait_consistent(timeout=30)
    vals = p2p.get_values(relays[0], "launch-key")
    check(len(vals) == 1, "and still answer gets", vals)


if __name__ == "__main__":
    p2p.run("test_launch", test, timeout=240)
