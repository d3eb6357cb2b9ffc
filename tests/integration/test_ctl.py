#!/usr/bin/env python3
"""p2psipctl: status/put/get/lookup/stats/raw against real nodes; the
requests it sends and its exit codes against a scripted fake admin socket
(exit 1 on ok:false or no usable reply, 2 on usage errors).  Commands it
does not know are passed through as {"cmd":NAME} (node/ctl.c usage)."""

import json
import os
import socket
import subprocess
import sys
import threading

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402


class FakeAdmin:
    """A unix socket that records each request line and answers with the
    next scripted reply (bytes; None = close without answering)."""

    def __init__(self, path):
        self.path = path
        self.requests = []
        self.reply = b'{"ok":true}\n'
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(8)
        self.srv.settimeout(0.2)
        self.stop = False
        self.th = threading.Thread(target=self.loop, daemon=True)
        self.th.start()

    def loop(self):
        while not self.stop:
            try:
                conn, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                buf = b""
                try:
                    while b"\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                except OSError:
                    pass
                self.requests.append(buf.split(b"\n")[0])
                if self.reply is not None:
                    try:
                        conn.sendall(self.reply)
                    except OSError:
                        pass

    def close(self):
        self.stop = True
        self.th.join(2)
        self.srv.close()


def ctl(h, sock, *args, timeout=15):
    p = subprocess.run([h.ctl, "-s", sock] + list(args), stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def test(h):
    if not h.ctl or not os.access(h.ctl, os.X_OK):
        raise p2p.Failure("no p2psipctl (build build/node/p2psipctl, or set P2PSIP_CTL)")
    c = h.cluster(3, replicas=2)
    c.wait_consistent(timeout=40)
    a, b = c.nodes[1], c.nodes[2]

    rc, out, err = ctl(h, a.sock, "status")
    check(rc == 0 and a.id in out, "ctl status: exit 0, shows the node id", (rc, out[:300], err[:300]))

    rc, out, err = ctl(h, a.sock, "put", "sip:ctl@overlay.test", '{"contact":"sip:x@127.0.0.1","n":[1,2]}', "120")
    check(rc == 0, "ctl put KEY JSON TTL: exit 0", (rc, out[:300], err[:300]))
    vals = p2p.get_values(b, "sip:ctl@overlay.test")
    check([v.get("value") for v in vals] == [{"contact": "sip:x@127.0.0.1", "n": [1, 2]}]
          and 0 < vals[0].get("expires_in", 0) <= 120,
          "the value ctl put is JSON (not a string) with the given ttl, read through another node", vals)

    rc, out, err = ctl(h, b.sock, "get", "sip:ctl@overlay.test")
    check(rc == 0 and "sip:x@127.0.0.1" in out and a.id in out, "ctl get: exit 0, shows the value and its owner",
          (rc, out[:300], err[:300]))

    owner = c.owner_of("sip:ctl@overlay.test")
    rc, out, err = ctl(h, b.sock, "lookup", "sip:ctl@overlay.test")
    check(rc == 0 and owner.id in out and p2p.key_id("sip:ctl@overlay.test") in out,
          "ctl lookup: exit 0, shows the key id and the true owner %r" % owner, (rc, out[:300], err[:300]))

    rc, out, err = ctl(h, a.sock, "put", "sip:ctl2@overlay.test", '"plain"')
    check(rc == 0 and [v.get("value") for v in p2p.get_values(b, "sip:ctl2@overlay.test")] == ["plain"],
          "ctl put without a ttl: exit 0, value stored", (rc, out[:200], err[:200]))

    rc, out, err = ctl(h, a.sock, "stats")
    check(rc == 0 and "lookups" in out, "ctl stats: exit 0", (rc, out[:200], err[:200]))

    rc, out, err = ctl(h, a.sock, "raw", '{"cmd":"lookup","key":"sip:ctl@overlay.test"}')
    check(rc == 0 and owner.id in out, "ctl raw JSON: passed through, exit 0", (rc, out[:200], err[:200]))
    rc, out, err = ctl(h, a.sock, "frobnicate")
    check(rc == 1, "ctl with a command the daemon does not know: exit 1 (ok:false)", (rc, out[:200], err[:200]))

    rc, out, err = ctl(h, os.path.join(h.rundir, "no-such.sock"), "status")
    check(rc not in (0, 2) and err.strip(), "ctl on a missing socket: exit %s with a message" % rc, (rc, err[:200]))

    # The fake admin socket.
    fake = FakeAdmin(os.path.join(h.rundir, "fake.sock"))
    try:
        scripted = [
            (("status",), {"cmd": "status"}),
            (("put", "k", '{"x":[1,2]}', "30"), {"cmd": "put", "key": "k", "value": {"x": [1, 2]}, "ttl": 30}),
            (("get", "k"), {"cmd": "get", "key": "k"}),
            (("lookup", "k"), {"cmd": "lookup", "key": "k"}),
            (("stats",), {"cmd": "stats"}),
            (("leave",), {"cmd": "leave"}),
            (("frobnicate",), {"cmd": "frobnicate"}),
            (("raw", '{"cmd":"x","n":[1]}'), {"cmd": "x", "n": [1]}),
        ]
        for args, want in scripted:
            for reply, want_rc in ((b'{"ok":true,"values":[],"owner":{"id":"00","addr":"x"}}\n', 0),
                                   (b'{"ok":false,"error":"scripted failure"}\n', 1)):
                fake.reply = reply
                n = len(fake.requests)
                rc, out, err = ctl(h, fake.path, *args)
                got = fake.requests[n:]
                try:
                    req = json.loads(got[0]) if len(got) == 1 else got
                except ValueError:
                    req = got
                check(req == want and rc == want_rc, "ctl %s: sends %s; exit %d on %s" %
                      (" ".join(args), json.dumps(want), want_rc, "ok:true" if want_rc == 0 else "ok:false"),
                      (rc, got, out[:200], err[:200]))
        for reply, what in ((b"this is not json\n", "a reply that is not JSON"),
                            (None, "no reply (closed)"),
                            (b'{"no_ok":1}\n', "a reply without ok")):
            fake.reply = reply
            rc, out, err = ctl(h, fake.path, "status")
            check(rc not in (0, 2), "ctl status on %s: exit %s" % (what, rc), (rc, out[:200], err[:200]))

        fake.reply = b'{"ok":true}\n'
        n = len(fake.requests)
        for args in ((), ("put", "k"), ("get",), ("lookup",), ("get", "a", "b"), ("raw",),
                     ("put", "k", "1", "soon"), ("put", "k", "1", "0"), ("put", "k", "not json")):
            rc, out, err = ctl(h, fake.path, *args)
            check(rc == 2, "ctl %s: usage error, exit 2" % (" ".join(args) or "(no command)"), (rc, out[:200], err[:200]))
        check(len(fake.requests) == n, "usage errors send nothing to the socket", fake.requests[n:])
    finally:
        fake.close()


if __name__ == "__main__":
    p2p.run("ctl", test, timeout=90)
