#!/usr/bin/env python3
"""The relay agent peer's TURN server, driven by coturn's own clients:
turnutils_stunclient gets the right mapped address; turnutils_uclient with
credentials minted by the node (admin "turn-credentials") allocates, binds
channels (and reserves RTCP ports) and relays between two clients with no
loss, and since both clients allocate on this relay the packets go from
one allocation to the other in process (relayed_internal) with the same
result; a raw client shows that such a packet still needs the receiving
allocation's permission and arrives framed as a Data indication or
ChannelData from the sender's relayed address, while packets to other peers
still cross the sockets; Send indications work too; wrong credentials are
refused; garbage,
truncated attributes, wrong lengths, bad MESSAGE-INTEGRITY and a flood of
Allocates are dropped or answered with the right error code while the relay
keeps serving; a node whose TURN port is taken runs on without the role."""

import base64
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

SECRET = "relay-test-secret"
COOKIE = 0x2112A442


def stun_req(method, attrs=b"", txid=None, length=None):
    txid = txid or os.urandom(12)
    n = len(attrs) if length is None else length
    return struct.pack("!HHI", method, n, COOKIE) + txid + attrs


def attr(t, v):
    pad = (4 - len(v) % 4) % 4
    return struct.pack("!HH", t, len(v)) + v + b"\0" * pad


def counted(st, pred, what, timeout=10.0):
    """The relay's counters once pred(counters) holds: a drop is proven by
    its counter, not by a silence that a slow machine can fake."""
    return p2p.wait_value(st, pred, timeout, what)


def ask(sock, data, addr, timeout=5.0):
    sock.settimeout(timeout)
    sock.sendto(data, addr)
    try:
        return sock.recv(4096)
    except socket.timeout:
        return None


def error_code(resp):
    """ERROR-CODE of a STUN response, or 0 for success, None if not STUN."""
    if not resp or len(resp) < 20:
        return None
    t, n = struct.unpack("!HH", resp[:4])
    if t & 0x0110 == 0x0100:
        return 0
    p = 20
    while p + 4 <= 20 + n:
        at, al = struct.unpack("!HH", resp[p:p + 4])
        if at == 0x0009:
            return (resp[p + 6] & 7) * 100 + resp[p + 7]
        p += 4 + al + (4 - al % 4) % 4
    return None


def xaddr(ip, port, txid=None):
    """XOR-PEER-ADDRESS value (RFC 8489 14.2); an IPv6 address needs the
    transaction id."""
    if ":" not in ip:
        x = struct.unpack("!I", socket.inet_aton(ip))[0] ^ COOKIE
        return struct.pack("!BBHI", 0, 1, port ^ (COOKIE >> 16), x)
    key = struct.pack("!I", COOKIE) + txid
    x = bytes(a ^ b for a, b in zip(socket.inet_pton(socket.AF_INET6, ip), key))
    return struct.pack("!BBH", 0, 2, port ^ (COOKIE >> 16)) + x


def unxor(v, txid=None):
    port = struct.unpack("!H", v[2:4])[0] ^ (COOKIE >> 16)
    if v[1] == 2:
        key = struct.pack("!I", COOKIE) + txid
        return socket.inet_ntop(socket.AF_INET6, bytes(a ^ b for a, b in zip(v[4:20], key))), port
    ip = socket.inet_ntoa(struct.pack("!I", struct.unpack("!I", v[4:8])[0] ^ COOKIE))
    return ip, port


def parse_attrs(msg):
    out = {}
    p = 20
    while p + 4 <= len(msg):
        t, n = struct.unpack("!HH", msg[p:p + 4])
        out.setdefault(t, msg[p + 4:p + 4 + n])
        p += 4 + n + (4 - n % 4) % 4
    return out


def rest_credential(secret, name, expiry):
    """A credential minted as any holder of the overlay's secret can
    (EXPIRY:NAME, base64 HMAC-SHA1): (username, password)."""
    user = "%d:%s" % (expiry, name)
    return user, base64.b64encode(hmac.new(secret.encode(), user.encode(), hashlib.sha1).digest()).decode()


class UdpTurn:
    """A minimal TURN client over UDP with long-term credentials, bound to
    local (127.0.0.1 by default; "::1" for IPv6)."""

    def __init__(self, server, user, password, realm, local="127.0.0.1"):
        self.s = socket.socket(socket.AF_INET6 if ":" in local else socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind((local, 0))
        self.server, self.user, self.realm = server, user, realm
        self.key = hashlib.md5(("%s:%s:%s" % (user, realm, password)).encode()).digest()
        self.nonce = None
        self.relayed = None

    def request(self, method, body=b""):
        """A signed request (after the 401 that gives the nonce); the response.
        body may be a function of the transaction id (IPv6 XOR addresses)."""
        for _ in range(3):
            txid = os.urandom(12)
            b = body(txid) if callable(body) else body
            if self.nonce:
                b += (attr(0x0006, self.user.encode()) + attr(0x0014, self.realm.encode()) +
                      attr(0x0015, self.nonce))
                hdr = struct.pack("!HHI", method, len(b) + 24, COOKIE) + txid
                b += attr(0x0008, hmac.new(self.key, hdr + b, hashlib.sha1).digest())
            self.s.sendto(struct.pack("!HHI", method, len(b), COOKIE) + txid + b, self.server)
            r = self.recv(2.0, lambda m: m[8:20] == txid)
            if r is not None and error_code(r) == 401 and not self.nonce:
                self.nonce = parse_attrs(r)[0x0015]
                continue
            return r
        return None

    def recv(self, timeout, want=lambda m: True):
        """The next datagram from the server that want() accepts, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                m = self.s.recv(70000)
            except socket.timeout:
                return None
            if want(m):
                return m
        return None

    def allocate(self):
        r = self.request(0x0003, attr(0x0019, b"\x11\0\0\0"))
        if r is not None and error_code(r) == 0:
            self.relayed = unxor(parse_attrs(r)[0x0016], r[8:20])
        return r

    def permission(self, *peers):
        """CreatePermission for (ip, port) peers: the response's error code."""
        return error_code(self.request(0x0008, lambda t: b"".join(attr(0x0012, xaddr(ip, port, t))
                                                                  for ip, port in peers)))

    def channel_bind(self, chan, peer):
        return error_code(self.request(0x0009, lambda t: attr(0x000C, struct.pack("!HH", chan, 0)) +
                                       attr(0x0012, xaddr(peer[0], peer[1], t))))

    def close(self):
        """Delete the allocation, if any (Refresh with LIFETIME 0), and close."""
        if self.relayed:
            self.request(0x0004, attr(0x000D, b"\0\0\0\0"))
        self.s.close()

    def send_ind(self, peer, data):
        txid = os.urandom(12)
        self.s.sendto(stun_req(0x0016, attr(0x0012, xaddr(peer[0], peer[1], txid)) + attr(0x0013, data),
                               txid), self.server)


def data_ind(m):
    """(peer, data) of a Data indication, else None."""
    if m is None or len(m) < 20 or struct.unpack("!H", m[:2])[0] != 0x0017:
        return None
    a = parse_attrs(m)
    return unxor(a[0x0012], m[8:20]), a[0x0013]


def raw_internal(node, server, cred):
    """Two raw clients allocating on this relay: a packet from A to B's
    relayed address is handed over in process, and B's side behaves as its
    socket would have: dropped without B's permission for A's relayed
    address, a Data indication from A's relayed address with it, ChannelData
    once B binds a channel.  A packet to a plain UDP peer is not handed over."""
    def st():
        return node.admin_ok({"cmd": "relay"})["relay"]
    a = UdpTurn(server, cred["username"], cred["password"], cred["realm"])
    b = UdpTurn(server, cred["username"], cred["password"], cred["realm"])
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind(("127.0.0.1", 0))
    try:
        check(error_code(a.allocate()) == 0 and error_code(b.allocate()) == 0,
              "raw clients A and B allocate (%s, %s)" % (a.relayed, b.relayed))
        # A without a permission for B: dropped on A's side, nothing handed over.
        s0 = st()
        a.send_ind(b.relayed, b"no-perm-at-a")
        s1 = counted(st, lambda s: s["dropped"]["no_permission"] > s0["dropped"]["no_permission"],
                     "A's Send indication to B dropped")
        check(b.recv(0.2) is None, "without A's permission for B nothing reaches B")
        check(s1["relayed_internal"] == s0["relayed_internal"] and
              s1["dropped"]["no_permission"] == s0["dropped"]["no_permission"] + 1,
              "... dropped at A and counted", (s0["dropped"], s1["dropped"]))
        check(error_code(a.request(0x0008, attr(0x0012, xaddr(*b.relayed)) +
                                   attr(0x0012, xaddr(*plain.getsockname())))) == 0,
              "A: CreatePermission for B's relayed address and a plain peer")
        # B has no permission for A's relayed address: handed over, dropped at B.
        a.send_ind(b.relayed, b"no-perm-at-b")
        s2 = counted(st, lambda s: s["dropped"]["no_permission"] > s1["dropped"]["no_permission"],
                     "the packet to B dropped at B")
        check(b.recv(0.2) is None, "without B's permission for A's relayed address nothing reaches B")
        check(s2["relayed_internal"] == s1["relayed_internal"] + 1 and
              s2["dropped"]["no_permission"] == s1["dropped"]["no_permission"] + 1 and
              s2["rx"]["from_peers"] == s1["rx"]["from_peers"] + 1,
              "... handed over in process, then dropped by B's permission check and counted",
              (s1, s2))
        check(error_code(b.request(0x0008, attr(0x0012, xaddr(*a.relayed)))) == 0,
              "B: CreatePermission for A's relayed address")
        a.send_ind(b.relayed, b"hello B")
        got = data_ind(b.recv(5.0))
        check(got == (a.relayed, b"hello B"),
              "B gets a Data indication from A's relayed address with the data: %r" % (got,))
        # A channel on B to A's relayed address: ChannelData.
        check(error_code(b.request(0x0009, attr(0x000C, b"\x40\x07\0\0") +
                                   attr(0x0012, xaddr(*a.relayed)))) == 0, "B binds channel 0x4007 to A")
        a.send_ind(b.relayed, b"odd-5")
        m = b.recv(5.0)
        check(m == b"\x40\x07\x00\x05odd-5", "B gets ChannelData 0x4007 from A: %r" % (m,))
        s3 = st()
        check(s3["relayed_internal"] == s2["relayed_internal"] + 2, "both went the internal way")
        # To a plain peer: through A's socket, as before.
        a.send_ind(plain.getsockname(), b"to-plain")
        plain.settimeout(5.0)
        try:
            d, frm = plain.recvfrom(2048)
        except socket.timeout:
            d, frm = None, None
        check(d == b"to-plain" and frm == a.relayed, "a plain peer gets A's packet from A's relayed address")
        plain.sendto(b"from-plain", a.relayed)
        got = data_ind(a.recv(5.0))
        check(got == (plain.getsockname(), b"from-plain"), "... and A gets the plain peer's answer: %r" % (got,))
        check(st()["relayed_internal"] == s3["relayed_internal"], "... neither was handed over in process")
    finally:
        for c in (a, b):
            c.close()
        plain.close()


def uclient(args, timeout=60):
    r = subprocess.run(["turnutils_uclient"] + args, capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


def totals(out):
    m = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", out)
    lost = re.search(r"Total lost packets (\d+)", out)
    return (int(m[-1][0]), int(m[-1][1])) if m else (0, 0), int(lost.group(1)) if lost else None


def test(h):
    for tool in ("turnutils_uclient", "turnutils_stunclient"):
        if not shutil.which(tool):
            p2p.skip("%s not installed (apt-get install coturn)" % tool)
    turn_port = p2p.pick_ports(1)
    pmin = 10000 + (turn_port % 19) * 500  # relayed ports: taken ones are skipped
    c = h.cluster(0)
    relay_args = ["--relay", "--turn", "127.0.0.1:%d" % turn_port, "--turn-secret", SECRET,
                  "--allow-loopback-peers", "--relay-ports", "%d-%d" % (pmin, pmin + 499)]
    c.extra_args = relay_args
    c.start(1)
    node = c.nodes[0]
    st = node.admin_ok({"cmd": "status"})
    check("relay" in st["roles"] and st.get("turn") == "127.0.0.1:%d" % turn_port,
          "status lists the relay role and its TURN address", st)
    server = ("127.0.0.1", turn_port)

    # Plain STUN, from another loopback address so the answer cannot be a guess.
    out = subprocess.run(["turnutils_stunclient", "-p", str(turn_port), "-L", "127.0.0.2",
                          "127.0.0.1"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"reflexive addr: ([\d.]+):(\d+)", out)
    check(m and m.group(1) == "127.0.0.2" and 1024 <= int(m.group(2)) <= 65535,
          "turnutils_stunclient: mapped address is the client's (127.0.0.2:%s)" % (m and m.group(2)), out)

    cred = node.admin_ok({"cmd": "turn-credentials", "user": "alice", "ttl": 600})
    check(re.fullmatch(r"\d+:alice", cred["username"]) and cred["realm"] == p2p.OVERLAY and
          cred["ttl"] == 600, "turn-credentials mints EXPIRY:NAME for the overlay's realm", cred)
    auth = ["-u", cred["username"], "-w", cred["password"], "-p", str(turn_port)]

    # Channels, two clients relaying to each other (-y), RTCP allocations
    # with EVEN-PORT/RESERVATION-TOKEN (no -c), 160-byte payloads.
    out = uclient(auth + ["-y", "-n", "200", "-m", "10", "-l", "160", "-e", "127.0.0.1", "127.0.0.1"])
    (sent, got), lost = totals(out)
    check(sent >= 2000 and got == sent and lost == 0,  # RTCP packets count too
          "uclient with channels: %d sent, %d received, %s lost" % (sent, got, lost), out[-600:])
    rs = node.admin_ok({"cmd": "relay"})["relay"]
    check(rs["rx"]["channel_data"] >= 2000 and rs["tx"]["to_clients"] >= 2000,
          "the relay counted the ChannelData it relayed", rs)
    # Both clients of each pair allocate here: every data packet went from
    # one allocation to the other in process, none through the sockets.
    check(rs["relayed_internal"] == sent and rs["rx"]["from_peers"] == sent and
          rs["tx"]["to_peers"] == sent,
          "... all %d of them handed from allocation to allocation in process (relayed_internal %d)"
          % (sent, rs["relayed_internal"]), rs)

    raw_internal(node, server, cred)

    # Send and Data indications (-s).
    rs = node.admin_ok({"cmd": "relay"})["relay"]
    out = uclient(auth + ["-y", "-s", "-c", "-n", "50", "-m", "4", "-l", "160", "-e", "127.0.0.1", "127.0.0.1"])
    (sent, got), lost = totals(out)
    check(sent == 200 and got == sent and lost == 0,
          "uclient with Send/Data indications: %d sent, %d received" % (sent, got), out[-600:])
    rs2 = node.admin_ok({"cmd": "relay"})["relay"]
    check(rs2["relayed_internal"] - rs["relayed_internal"] == sent,
          "... in process too (%d more)" % (rs2["relayed_internal"] - rs["relayed_internal"]))

    # Wrong credentials: refused.
    before = node.admin_ok({"cmd": "relay"})["relay"]
    out = uclient(["-u", cred["username"], "-w", "wrong-password", "-p", str(turn_port), "-y", "-c",
                   "-n", "5", "-m", "1", "-e", "127.0.0.1", "127.0.0.1"], timeout=30)
    after = node.admin_ok({"cmd": "relay"})["relay"]
    check("Cannot complete Allocation" in out and
          after["requests"]["allocations_made"] == before["requests"]["allocations_made"] and
          after["requests"]["auth_failures"] > before["requests"]["auth_failures"],
          "a wrong password gets no allocation (401)", out[-300:])
    out = uclient(["-W", "not-the-overlay-secret", "-u", "eve", "-p", str(turn_port), "-y", "-c",
                   "-n", "5", "-m", "1", "-e", "127.0.0.1", "127.0.0.1"], timeout=30)
    check("Cannot complete Allocation" in out, "credentials minted with another secret are refused")

    # Bad input, from a raw socket.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    drops0 = node.admin_ok({"cmd": "relay"})["relay"]["dropped"]["malformed"]
    bad = [os.urandom(100), b"\x00\x01", stun_req(0x0001, length=64),   # length past the end
           stun_req(0x0001, b"\x00\x06\x00\x08user"),                    # truncated attribute
           stun_req(0x0001, b"\x00\x06\x00\x40abcd"),                    # attribute longer than message
           stun_req(0x0001, attr(0x0006, b"abc"), length=6),             # length not a multiple of 4
           b"\x40\x01\x00\x80abcd", b"\x4f\xff"]                         # ChannelData too short
    for b in bad:
        s.sendto(b, server)
    def relay():
        return node.admin_ok({"cmd": "relay"})["relay"]
    counted(relay, lambda r: r["dropped"]["malformed"] - drops0 >= len(bad), "malformed datagrams counted")
    # The relay answers in order on one socket: had it answered any of them,
    # that answer would come before the Binding's.
    txid = os.urandom(12)
    first = ask(s, stun_req(0x0001, txid=txid), server)
    check(first is not None and first[8:20] == txid and error_code(first) == 0,
          "no answer to any of %d malformed datagrams: the first reply on the socket is a later "
          "Binding's" % len(bad), first and first[:40])
    drops = relay()["dropped"]["malformed"] - drops0
    check(drops == len(bad), "every malformed datagram counted (%d of %d)" % (drops, len(bad)))
    # A signed Allocate with a MESSAGE-INTEGRITY that does not match: 401.
    nonce_resp = ask(s, stun_req(0x0003, attr(0x0019, b"\x11\0\0\0")), server)
    check(error_code(nonce_resp) == 401, "unsigned Allocate: 401", nonce_resp)
    p = 20
    nonce = None
    while p < len(nonce_resp):
        at, al = struct.unpack("!HH", nonce_resp[p:p + 4])
        if at == 0x0015:
            nonce = nonce_resp[p + 4:p + 4 + al]
        p += 4 + al + (4 - al % 4) % 4
    body = (attr(0x0019, b"\x11\0\0\0") + attr(0x0006, cred["username"].encode()) +
            attr(0x0014, p2p.OVERLAY.encode()) + attr(0x0015, nonce))
    body += attr(0x0008, os.urandom(20))
    check(error_code(ask(s, stun_req(0x0003, body), server)) == 401, "bad MESSAGE-INTEGRITY: 401")
    check(error_code(ask(s, stun_req(0x0003, attr(0x0019, b"\x11\0\0\0") + attr(0x0008, b"x" * 20)), server)) == 400,
          "MESSAGE-INTEGRITY without USERNAME/REALM/NONCE: 400")
    check(error_code(ask(s, stun_req(0x0009, attr(0x0019, b"\x11\0\0\0")), server)) == 401,
          "ChannelBind without credentials: 401")

    # A flood of Allocates from many sockets with good credentials: the user
    # quota (default 100) answers 486, then the relay still serves others.
    socks = []
    codes = {}
    key = hashlib.md5(("%s:%s:%s" % (cred["username"], p2p.OVERLAY, cred["password"])).encode()).digest()
    for i in range(130):
        fs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        fs.bind(("127.0.0.1", 0))
        socks.append(fs)
        body = (attr(0x0019, b"\x11\0\0\0") + attr(0x0006, cred["username"].encode()) +
                attr(0x0014, p2p.OVERLAY.encode()) + attr(0x0015, nonce))
        txid = os.urandom(12)
        hdr = struct.pack("!HHI", 0x0003, len(body) + 24, COOKIE) + txid
        mi = hmac.new(key, hdr + body, hashlib.sha1).digest()
        code = error_code(ask(fs, hdr + body + attr(0x0008, mi), server))
        codes[code] = codes.get(code, 0) + 1
    info("Allocate flood from 130 sockets: %s" % codes)
    rs = node.admin_ok({"cmd": "relay"})["relay"]
    # uclient's allocations above may still be alive and count for alice; and
    # a port the OS hands one of these sockets may be one an earlier client
    # of this test used, whose allocation still lives: that 5-tuple rightly
    # gets 437 (RFC 8656 7.2, allocation mismatch).
    reused = codes.get(437, 0)
    check(codes.get(486, 0) >= 30 and codes.get(0, 0) + reused + rs["requests"]["quota_refusals"] >= 130
          and reused <= 5 and set(codes) <= {0, 437, 486},
          "Allocate flood: success up to the quota, then 486", codes)
    for fs in socks:
        fs.close()
    bind = ask(s, stun_req(0x0001), server)
    check(error_code(bind) == 0, "after the floods the relay still answers Binding")
    check(rs["refused"]["quota_user"] >= 30, "... refused by the per-user quota and counted", rs["refused"])
    # 127.0.0.1 holds as many allocations as the per-IP quota (100) allows:
    # another user from another address still relays.
    cred2 = node.admin_ok({"cmd": "turn-credentials", "user": "bob", "ttl": 600})
    out = uclient(["-u", cred2["username"], "-w", cred2["password"], "-p", str(turn_port), "-y", "-c",
                   "-n", "50", "-m", "2", "-l", "160", "-L", "127.0.0.2", "-e", "127.0.0.1", "127.0.0.1"])
    (sent, got), lost = totals(out)
    check(sent == 100 and got == 100 and lost == 0, "... and relays for another user (%d/%d)" % (got, sent))

    # A second node whose TURN port is taken runs on without the role.
    c.extra_args = relay_args
    n2 = c.start(1)[0]
    st2 = n2.admin_ok({"cmd": "status"})
    check("relay" not in st2["roles"] and "turn" not in st2,
          "a node whose --turn port is taken runs without the relay role", st2)
    check(any("cannot serve TURN" in line for line in n2.log_tail(50)), "... and says why in its log")


if __name__ == "__main__":
    p2p.run("relay_turn", test, timeout=240)
