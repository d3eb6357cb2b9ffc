#!/usr/bin/env python3
"""Hostile input on the peer port and the admin socket: garbage, bad frames,
half-open connections, malformed admin JSON.  The node must drop bad peers,
answer {"ok":false,...} to bad admin lines, and keep serving throughout."""

import json
import os
import random
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import peerproto as pp  # noqa: E402
from p2p import check, expect, info  # noqa: E402

N = 4


frame, node_bytes, store_frame, read_frames = pp.frame, pp.node_bytes, pp.store_frame, pp.read_frames


def hello(overlay, nid_hex=None, port=1):
    return pp.hello(overlay, nid_hex or p2p.addr_id("127.0.0.1:%d" % port), "127.0.0.1", port)


def value_bytes(vid, body, seq=1, ttl=300):
    return pp.Value(vid, body, seq=seq, ttl=ttl).encode()


def pipelined_big_stores(c, t):
    """Three valid STOREs of ~255 KiB each written in one go are all answered:
    the frame size bound applies to each frame, not to what one read brings."""
    bad0 = t.admin_ok({"cmd": "stats"})["bad_frames"]
    keys = c.keys_owned_by(t, 3, prefix="big-")
    chunk = 64 * 1024 - 200
    frames = b""
    for i, k in enumerate(keys):
        vals = [value_bytes("v%d" % j, bytes([65 + j]) * chunk) for j in range(4)]
        frames += store_frame(p2p.key_id(k), vals, txid=10 + i, flags=1)
    check(len(frames) > 3 * 255 * 1024, "three STOREs of %d bytes in all" % len(frames))
    s = peer_conn(t)
    try:
        s.sendall(hello(p2p.OVERLAY) + frames)
        got = [f for f in read_frames(s, 4) if f[0] == 12]
    finally:
        s.close()
    check([(f[1], f[2][:1]) for f in got] == [(10, b"\0"), (11, b"\0"), (12, b"\0")],
          "all three pipelined STOREs answered with status 0", [(f[1], f[2][:4]) for f in got])
    for k in keys:
        vals = p2p.get_values(t, k)
        check(len(vals) == 4, "%s: the 4 values of ~64 KiB are stored" % k, len(vals))
    check(t.admin_ok({"cmd": "stats"})["bad_frames"] == bad0, "no bad frame counted for valid frames")


def long_ttl(c, t):
    """A value whose TTL is beyond its kind's cap (366 days for admin values)
    is refused with a status the sender sees and counted; one at the cap
    reads back with that TTL (the admin JSON packs it as a 64-bit integer:
    it used to come back negative above 2^31 s)."""
    cap = 366 * 86400
    keys = c.keys_owned_by(t, 2, prefix="ttl-")
    refused0 = t.admin_ok({"cmd": "stats"})["values_refused"]
    s = peer_conn(t)
    try:
        s.sendall(hello(p2p.OVERLAY) +
                  store_frame(p2p.key_id(keys[0]), [value_bytes("v", b'"x"', ttl=3000000000)], txid=20, flags=1) +
                  store_frame(p2p.key_id(keys[1]), [value_bytes("v", b'"y"', ttl=cap)], txid=21, flags=1))
        got = [(f[1], f[2][:1]) for f in read_frames(s, 3) if f[0] == 12]
    finally:
        s.close()
    check(got == [(20, b"\x01"), (21, b"\x00")], "a STORE with ttl 3e9 s is refused (status 1), one at the cap "
          "is taken", got)
    check(p2p.get_values(t, keys[0]) == [], "nothing of the refused value is kept")
    check(t.admin_ok({"cmd": "stats"})["values_refused"] == refused0 + 1, "the refusal is counted in values_refused")
    vals = p2p.get_values(t, keys[1])
    check(len(vals) == 1 and cap - 1000 <= vals[0]["expires_in"] <= cap,
          "expires_in of a value at the cap reads back as the cap", vals)


def peer_conn(node):
    s = socket.create_connection((node.host, node.port), timeout=5)
    return s


def closed_by_peer(node, data, timeout=5.0):
    """Send data; True if the node closes the connection within timeout."""
    s = peer_conn(node)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not s.recv(65536):
                    return True
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
        return False
    finally:
        s.close()


def still_serving(c, t, what):
    st = t.status()
    check(st.get("id") == t.id, "%s: status still answers" % what)
    other = next(n for n in c.alive() if n is not t)
    key = c.keys_owned_by(t, 1, prefix="sip:bad-%s-" % what.replace(" ", "-"))[0]
    p2p.put(other, key, {"w": what}, ttl=300)
    vals = p2p.get_values(t, key)
    check([v.get("value") for v in vals] == [{"w": what}],
          "%s: put via %r of a key %r owns, get via %r" % (what, other, t, t))


def admin_bad(t, line, what):
    """A malformed line on its own connection gets ok:false with an error."""
    with p2p.AdminConn(t.sock) as a:
        sent = a.send_raw(line)
        try:
            r = a.recv_json(5.0)
        except p2p.AdminError as e:
            raise p2p.Failure("admin %s: no {\"ok\":false} reply (%s; request %s)" %
                              (what, e, "sent" if sent else "cut short by the node"))
    check(r["ok"] is False and isinstance(r.get("error"), str) and r["error"],
          "admin %s -> ok:false, error %r" % (what, r.get("error")), r)


def test(h):
    # Ids spread evenly: the node under attack owns a quarter of the keys
    # (keys_owned_by finds its keys whatever ports the test got).
    c = h.cluster(N, replicas=2, ids=p2p.even_ids(N))
    c.wait_consistent(timeout=60)
    t = c.nodes[1]
    rnd = random.Random(3)

    # Peer port: each of these must make the node drop the connection.
    garbage = bytes(rnd.getrandbits(8) for _ in range(8192))
    cases = [
        ("8 KiB of random bytes", garbage),
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("a TLS ClientHello-like record", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64),
        ("wrong version", frame(1, b"", version=9)),
        ("type 0", frame(0, b"")),
        ("type 200", frame(200, b"")),
        ("declared body length 4 GiB", frame(1, b"", length=0xFFFFFFFF)),
        ("declared body length 256 KiB + 1", frame(1, b"", length=256 * 1024 + 1)),
        ("HELLO with a truncated node", frame(1, b"\x01\x02\x03\x04\x05")),
        ("HELLO with family 7", frame(1, bytes(20) + b"\x07" + bytes(6) + b"\x01a")),
        ("HELLO with trailing bytes", frame(1, hello(p2p.OVERLAY)[12:] + b"junk")),
        ("HELLO for another overlay", hello("evil.test")),
        ("HELLO then FIND with a 3-byte key", hello(p2p.OVERLAY) + frame(5, b"abc", txid=2)),
        ("HELLO then STORE claiming 65535 values", hello(p2p.OVERLAY) +
         frame(11, bytes(20) + b"\x00" + b"\xff\xff", txid=3)),
    ]
    pipelined_big_stores(c, t)
    long_ttl(c, t)
    bad0 = t.admin_ok({"cmd": "stats"})["bad_frames"]
    slow = []
    for what, data in cases:
        if not closed_by_peer(t, data):
            slow.append(what)
    # STYLE.md rule 12: a misbehaving peer is logged, told off and dropped;
    # a request with a malformed body must not linger unanswered.
    expect(not slow, "peer port: the node drops the connection after each of %d bad inputs" % len(cases),
           "still open 5 s after: %s" % slow)
    check(t.running(c.binary), "node still running after the bad frames")
    bad1 = t.admin_ok({"cmd": "stats"})["bad_frames"]
    check(bad1 - bad0 >= len(cases), "every dropped bad input counted in bad_frames (%d -> %d)" % (bad0, bad1))

    # Half-open peer connections, held while everything else goes on.
    held = []
    for _ in range(20):
        held.append(peer_conn(t))
    s = peer_conn(t)
    s.sendall(b"PS\x01")
    held.append(s)
    s = peer_conn(t)
    s.sendall(frame(1, b"", length=1000) + b"0123456789")
    held.append(s)
    for _ in range(30):  # connect and reset at once
        s = peer_conn(t)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    # Admin socket: held idle and half-written connections.
    aheld = [p2p.AdminConn(t.sock) for _ in range(10)]
    part = p2p.AdminConn(t.sock)
    part.send_raw(b'{"cmd":"sta')
    aheld.append(part)
    still_serving(c, t, "with 22 half-open peer and 11 admin connections held")

    bad_lines = [
        ("not JSON", b"hello there\n"),
        ("random bytes", bytes(b for b in garbage[:3000] if b != 10) + b"\n"),
        ("a JSON array", b"[1,2,3]\n"),
        ("a JSON string", b'"status"\n'),
        ("JSON null", b"null\n"),
        ("an object without cmd", b"{}\n"),
        ("unknown cmd", b'{"cmd":"explode"}\n'),
        ("cmd of the wrong type", b'{"cmd":5}\n'),
        ("put with a numeric key", b'{"cmd":"put","key":1,"value":1,"ttl":10}\n'),
        ("put with a string ttl", b'{"cmd":"put","key":"k","value":1,"ttl":"10"}\n'),
        ("put with a negative ttl", b'{"cmd":"put","key":"k","value":1,"ttl":-5}\n'),
        ("put without value", b'{"cmd":"put","key":"k","ttl":10}\n'),
        ("put with a numeric value_id", b'{"cmd":"put","key":"k","value":1,"ttl":10,"value_id":7}\n'),
        ("get without key", b'{"cmd":"get"}\n'),
        ("lookup with a null key", b'{"cmd":"lookup","key":null}\n'),
        ("truncated JSON", b'{"cmd":"status"\n'),
        ("a NUL inside a string", b'{"cmd":"stat\\u0000us"}\n'),
        ("30000-deep nesting", b"[" * 30000 + b"]" * 30000 + b"\n"),
        ("a 70 KiB line", b"a" * (70 * 1024) + b"\n"),
        ("a put of a 70 KiB value", json.dumps({"cmd": "put", "key": "k", "value": "v" * (70 * 1024),
                                               "ttl": 10}).encode() + b"\n"),
    ]
    for what, line in bad_lines:
        admin_bad(t, line, what)

    with p2p.AdminConn(t.sock) as a:
        a.send_raw(b'{"cmd":"nope"}\nnot json\n{"cmd":"status"}\n{"cmd":"status"}\n')
        rs = [a.recv_json(5.0) for _ in range(4)]
    check([r["ok"] for r in rs] == [False, False, True, True] and rs[3].get("id") == t.id,
          "admin: 4 pipelined lines (2 bad, 2 status) get 4 replies in order on one connection",
          [(r["ok"], r.get("error")) for r in rs])
    with p2p.AdminConn(t.sock) as a:
        a.send_raw(b'{"cmd":')
        time.sleep(0.2)
        a.send_raw(b'"status"}')
        time.sleep(0.2)
        a.send_raw(b'\n')
        r = a.recv_json(5.0)
    check(r["ok"] and r.get("id") == t.id, "admin: a request split over 3 writes is answered")

    still_serving(c, t, "after the malformed admin lines")

    for s in held:
        s.close()
    for a in aheld:
        a.close()
    time.sleep(0.5)
    still_serving(c, t, "after the held connections closed")
    r = c.wait_consistent(timeout=30)
    check(r.consistent, "ring still consistent over all %d nodes" % N)
    crashed = c.crashed()
    check(not crashed, "no node died", crashed)


if __name__ == "__main__":
    p2p.run("badinput", test, timeout=120)
