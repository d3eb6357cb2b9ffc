#!/usr/bin/env python3
"""TURN over TCP between client and relay (RFC 8656 section 2.1; the relayed
transport stays UDP), on the same IP and port as UDP.

coturn's turnutils_uclient -t relays between two clients over channels (odd
payload sizes, so ChannelData padding is exercised both ways) and over
Send/Data indications with no loss, every packet handed from one allocation
to the other in process; the turn: record lists "tcp".  A raw client checks
what uclient cannot show: Binding over TCP, an allocation bound to its
connection (data for the client comes down it, padded; the same address and
port over UDP is another 5-tuple; closing the connection deletes the
allocation), and a packet from one TCP client's allocation to another's
relayed address, handed over in process and framed for B's connection only
once B has a permission.  Bad streams (garbage, a length that never arrives,
huge lengths, a malformed message in good framing) close only their own
connection and are counted while a uclient over TCP keeps relaying with no
loss; the connection limit (1000) refuses the next one.
(turnutils_stunclient has no TCP mode, hence the raw Binding.)"""

import hashlib
import hmac
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402
from relay_turn import COOKIE, attr, counted, parse_attrs, unxor, xaddr  # noqa: E402  (STUN helpers)

SECRET = "relay-tcp-secret"
IDLE = 10        # RELAY_TCP_IDLE in relay/relay_int.h
MAX_CLIENTS = 1000  # RELAY_TCP_MAX_CLIENTS


def error_code(msg):
    if struct.unpack("!H", msg[:2])[0] & 0x0110 == 0x0100:
        return 0
    e = parse_attrs(msg).get(0x0009)
    return (e[2] & 7) * 100 + e[3] if e else None


class TcpTurn:
    """A minimal TURN client over one TCP connection."""

    def __init__(self, server, user, password, realm, local=None):
        self.s = socket.create_connection(server, timeout=10, source_address=local)
        self.user, self.realm = user, realm
        self.key = hashlib.md5(("%s:%s:%s" % (user, realm, password)).encode()).digest()
        self.nonce = None

    def recv_exact(self, n):
        b = b""
        while len(b) < n:
            chunk = self.s.recv(n - len(b))
            if not chunk:
                raise EOFError("connection closed")
            b += chunk
        return b

    def read_msg(self):
        """One framed message: STUN, or ChannelData with its padding."""
        hdr = self.recv_exact(4)
        n = struct.unpack("!H", hdr[2:4])[0]
        if hdr[0] < 0x40:
            return hdr + self.recv_exact(16 + n)
        return hdr + self.recv_exact(n + (4 - n % 4) % 4)

    def build(self, method, body=b"", sign=True):
        """(message, txid), signed with the key and the last nonce if sign."""
        txid = os.urandom(12)
        if sign and self.nonce:
            body += (attr(0x0006, self.user.encode()) + attr(0x0014, self.realm.encode()) +
                     attr(0x0015, self.nonce))
            hdr = struct.pack("!HHI", method, len(body) + 24, COOKIE) + txid
            body += attr(0x0008, hmac.new(self.key, hdr + body, hashlib.sha1).digest())
        return struct.pack("!HHI", method, len(body), COOKIE) + txid + body, txid

    def request(self, method, body=b"", sign=True):
        msg, txid = self.build(method, body, sign)
        self.s.sendall(msg)
        while True:
            m = self.read_msg()
            if m[0] < 0x40 and m[8:20] == txid:
                return m

    def signed(self, method, body=b""):
        """A request with long-term credentials, after the 401 that gives the nonce."""
        if not self.nonce:
            r = self.request(method, body, sign=False)
            if error_code(r) != 401:
                return r
            self.nonce = parse_attrs(r)[0x0015]
        return self.request(method, body)


def uclient(args, timeout=90):
    r = subprocess.run(["turnutils_uclient"] + args, capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


def totals(out):
    m = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", out)
    lost = re.search(r"Total lost packets (\d+)", out)
    return (int(m[-1][0]), int(m[-1][1])) if m else (0, 0), int(lost.group(1)) if lost else None


def closed_within(s, seconds):
    """True if the server closes s within seconds (reads and discards)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not s.recv(65536):
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
    return False


def internal_tcp(a, a_relayed, server, cred, stats):
    """Client A (connection a, channel 0x4001 bound to a plain peer) sends to
    the relayed address of client B, also over TCP: the packet is handed
    over in process (copied out of A's stream buffer), needs B's permission
    for A's relayed address, and reaches B as a Data indication, then as
    ChannelData padded to 4 on B's connection."""
    b = TcpTurn(server, cred["username"], cred["password"], cred["realm"])
    try:
        r = b.signed(0x0003, attr(0x0019, b"\x11\0\0\0"))
        check(error_code(r) == 0, "a second client B allocates over TCP", r)
        b_relayed = unxor(parse_attrs(r)[0x0016])
        check(error_code(a.signed(0x0009, attr(0x000C, b"\x40\x02\0\0") +
                                  attr(0x0012, xaddr(*b_relayed)))) == 0,
              "A binds channel 0x4002 to B's relayed address")
        s0 = stats()
        a.s.sendall(b"\x40\x02\x00\x03no!\0")
        s1 = counted(stats, lambda s: s["dropped"]["no_permission"] > s0["dropped"]["no_permission"],
                     "the packet to B dropped at B")
        b.s.settimeout(0.2)
        try:
            m = b.read_msg()
        except socket.timeout:
            m = None
        b.s.settimeout(10)
        check(m is None and s1["relayed_internal"] == s0["relayed_internal"] + 1 and
              s1["dropped"]["no_permission"] == s0["dropped"]["no_permission"] + 1,
              "without B's permission for A's relayed address: handed over, dropped, counted", m)
        check(error_code(b.signed(0x0008, attr(0x0012, xaddr(*a_relayed)))) == 0,
              "B: CreatePermission for A's relayed address")
        a.s.sendall(b"\x40\x02\x00\x05hello\0\0\0")
        m = b.read_msg()
        at = parse_attrs(m)
        check(struct.unpack("!H", m[:2])[0] == 0x0017 and at.get(0x0013) == b"hello" and
              unxor(at[0x0012]) == a_relayed, "B gets a Data indication from A's relayed address", m)
        check(error_code(b.signed(0x0009, attr(0x000C, b"\x40\x03\0\0") +
                                  attr(0x0012, xaddr(*a_relayed)))) == 0, "B binds channel 0x4003 to A")
        a.s.sendall(b"\x40\x02\x00\x07seven!!\0")
        m = b.read_msg()
        check(m == b"\x40\x03\x00\x07seven!!\0", "B gets ChannelData 0x4003, padded to 4", m)
        check(stats()["relayed_internal"] == s0["relayed_internal"] + 3, "all three went the internal way")
    finally:
        b.s.close()


def test(h):
    if not shutil.which("turnutils_uclient"):
        p2p.skip("turnutils_uclient not installed (apt-get install coturn)")
    turn_port = p2p.pick_ports(1)
    pmin = 10000 + (turn_port % 19) * 500
    c = h.cluster(0)
    c.extra_args = ["--relay", "--turn", "127.0.0.1:%d" % turn_port, "--turn-secret", SECRET,
                    "--allow-loopback-peers", "--relay-ports", "%d-%d" % (pmin, pmin + 499)]
    c.start(1)
    node = c.nodes[0]
    server = ("127.0.0.1", turn_port)

    def stats():
        return node.admin_ok({"cmd": "relay"})["relay"]

    rel = p2p.wait_until(lambda: node.admin_ok({"cmd": "relays"})["relays"], 10, "turn: record")
    check(len(rel) == 1 and rel[0]["addr"] == "127.0.0.1:%d" % turn_port and
          rel[0]["transports"] == ["udp", "tcp"], "the turn: record lists udp and tcp", rel)
    cred = node.admin_ok({"cmd": "turn-credentials", "user": "alice", "ttl": 600})
    auth = ["-u", cred["username"], "-w", cred["password"], "-p", str(turn_port)]

    # coturn's client over TCP: channels with RTCP reservations, 161-byte
    # payloads (ChannelData padded to 164 both ways); then Send/Data.
    out = uclient(auth + ["-t", "-y", "-n", "100", "-m", "10", "-l", "161", "-e", "127.0.0.1",
                          "127.0.0.1"])
    (sent, got), lost = totals(out)
    check(sent >= 1000 and got == sent and lost == 0,
          "uclient -t with channels: %d sent, %d received, %s lost" % (sent, got, lost), out[-600:])
    st = stats()
    check(st["tcp"]["accepted"] >= 10 and st["rx"]["channel_data"] >= 1000 and
          st["tx"]["to_clients"] >= 1000 and st["dropped"]["malformed"] == 0,
          "the relay took the connections and relayed ChannelData over them", st)
    # Both clients of each pair allocate here: handed over in process.
    check(st["relayed_internal"] == sent and st["rx"]["from_peers"] == sent,
          "... each of the %d from one allocation to the other in process (relayed_internal %d)"
          % (sent, st["relayed_internal"]), st)
    out = uclient(auth + ["-t", "-y", "-s", "-c", "-n", "50", "-m", "4", "-l", "99", "-e",
                          "127.0.0.1", "127.0.0.1"])
    (sent, got), lost = totals(out)
    check(sent == 200 and got == 200 and lost == 0,
          "uclient -t with Send/Data indications: %d sent, %d received" % (sent, got), out[-600:])
    check(stats()["relayed_internal"] - st["relayed_internal"] == sent, "... in process too")
    p2p.wait_until(lambda: stats()["allocations"] == 0 and stats()["tcp"]["connections"] == 0, 15,
                   "uclient's connections and allocations gone")
    check(True, "closing uclient's connections deleted their allocations")

    # Binding over TCP: the mapped address is the connection's own.
    t = TcpTurn(server, cred["username"], cred["password"], cred["realm"])
    r = t.request(0x0001, sign=False)
    check(error_code(r) == 0 and unxor(parse_attrs(r)[0x0020]) == t.s.getsockname(),
          "Binding over TCP: XOR-MAPPED-ADDRESS is the client's %s:%d" % t.s.getsockname())

    # An allocation over TCP, its data path, and its 5-tuple.
    r = t.signed(0x0003, attr(0x0019, b"\x11\0\0\0"))
    check(error_code(r) == 0, "Allocate over TCP (401, then success)", r)
    relayed = unxor(parse_attrs(r)[0x0016])
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(10)
    pa = peer.getsockname()
    check(error_code(t.signed(0x0008, attr(0x0012, xaddr(*pa)))) == 0, "CreatePermission over TCP")
    peer.sendto(b"hello", relayed)
    m = t.read_msg()
    a = parse_attrs(m)
    check(struct.unpack("!H", m[:2])[0] == 0x0017 and a.get(0x0013) == b"hello" and
          unxor(a[0x0012]) == pa, "a peer's datagram reaches the client as a Data indication over TCP")
    check(error_code(t.signed(0x0009, attr(0x000C, b"\x40\x01\0\0") + attr(0x0012, xaddr(*pa)))) == 0,
          "ChannelBind over TCP")
    peer.sendto(b"12345", relayed)
    peer.sendto(b"abc", relayed)
    m1, m2 = t.read_msg(), t.read_msg()
    check(m1 == b"\x40\x01\x00\x0512345\0\0\0" and m2 == b"\x40\x01\x00\x03abc\0",
          "ChannelData to the client is padded to 4 over TCP", (m1, m2))
    t.s.sendall(b"\x40\x01\x00\x07seven!!\0" + b"\x40\x01\x00\x02ok\0\0")
    d1, _ = peer.recvfrom(100)
    d2, _ = peer.recvfrom(100)
    check((d1, d2) == (b"seven!!", b"ok"), "padded ChannelData from the client reaches the peer unpadded")
    # The same address and port over UDP is another 5-tuple: a signed
    # Refresh from there finds no allocation (437), over TCP it does.
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(t.s.getsockname())
    u.settimeout(10)
    u.sendto(t.build(0x0004)[0], server)
    check(error_code(u.recv(2048)) == 437, "the TCP client's address and port over UDP: no allocation (437)")
    u.close()
    check(error_code(t.signed(0x0004)) == 0, "the same Refresh over the connection: success")
    check(stats()["allocations"] == 1, "one allocation, held by the connection")
    internal_tcp(t, relayed, server, cred, stats)
    t.s.close()
    p2p.wait_until(lambda: stats()["allocations"] == 0, 10, "allocation deleted with its connection")
    check(True, "closing the connection deleted its allocation")
    peer.close()

    # Bad streams, while uclient over TCP keeps relaying.
    before = stats()
    load = subprocess.Popen(["turnutils_uclient"] + auth +
                            ["-t", "-y", "-c", "-n", "800", "-m", "4", "-l", "160", "-z", "20",
                             "-e", "127.0.0.1", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    h.extra_procs.append(load)
    p2p.wait_until(lambda: stats()["allocations"] >= 2, 10, "the load's allocations")
    quick = {
        "garbage": b"\xff" + os.urandom(200),
        "STUN without the magic cookie": struct.pack("!HHI", 1, 0, 0x12345678) + os.urandom(12),
        "huge STUN length": struct.pack("!HHI", 1, 0xFFFC, COOKIE) + os.urandom(12),
        "huge ChannelData length": b"\x40\x01\xff\xf0" + os.urandom(64),
        "STUN length not a multiple of 4": struct.pack("!HHI", 1, 6, COOKIE) + os.urandom(18),
        "an attribute overrunning its message": struct.pack("!HHI", 1, 8, COOKIE) + os.urandom(12) +
        b"\x00\x06\x00\x40abcd",
        "a reserved channel number": b"\x80\x00\x00\x04abcd",
    }
    for what, data in quick.items():
        s = socket.create_connection(server, timeout=3)
        s.sendall(data)
        check(closed_within(s, 5), "%s over TCP: connection closed" % what)
        s.close()
    st = stats()
    n_bad = st["tcp"]["closed_malformed"] - before["tcp"]["closed_malformed"]
    check(n_bad == len(quick) and st["dropped"]["malformed"] - before["dropped"]["malformed"] == len(quick),
          "each bad stream counted once (%d of %d)" % (n_bad, len(quick)), st["tcp"])
    # A length that never arrives: the connection waits, then the idle
    # timeout closes it (it has no allocation).
    slow = socket.create_connection(server, timeout=3)
    slow.sendall(struct.pack("!HHI", 1, 100, COOKIE) + os.urandom(12) + b"\0" * 10)
    t0 = time.monotonic()
    check(not closed_within(slow, 3), "a message whose length never arrives: kept while it may come")
    check(closed_within(slow, IDLE + 5) and IDLE - 1 <= time.monotonic() - t0 <= IDLE + 5,
          "... and closed by the idle timeout after %.1fs" % (time.monotonic() - t0))
    check(stats()["tcp"]["closed_idle"] > before["tcp"]["closed_idle"], "... and counted as idle")
    slow.close()
    out, _ = load.communicate(timeout=60)
    (sent, got), lost = totals(out)
    check(sent == 3200 and got == 3200 and lost == 0,
          "meanwhile uclient -t relayed with no loss (%d/%d)" % (got, sent), out[-400:])

    # The connection limit: 1000 open, the next one is accepted and closed.
    conns = []
    try:
        for _ in range(MAX_CLIENTS):
            conns.append(socket.create_connection(server, timeout=3))
        p2p.wait_until(lambda: stats()["tcp"]["connections"] == MAX_CLIENTS, 20, "1000 connections")
        extra = socket.create_connection(server, timeout=3)
        check(closed_within(extra, 5) and stats()["tcp"]["refused"] == 1,
              "connection %d is refused (closed at once, counted)" % (MAX_CLIENTS + 1))
        extra.close()
    finally:
        for s in conns:
            s.close()
    p2p.wait_until(lambda: stats()["tcp"]["connections"] == 0, 20, "the 1000 connections gone")
    b = TcpTurn(server, "", "", "")
    check(error_code(b.request(0x0001, sign=False)) == 0,
          "after all that, Binding over TCP is answered and the node is alive")
    b.s.close()


if __name__ == "__main__":
    p2p.run("relay_tcp", test, timeout=180)
