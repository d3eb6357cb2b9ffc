#!/usr/bin/env python3
"""The relay agent peer's TURN server, driven by coturn's own clients:
turnutils_stunclient gets the right mapped address; turnutils_uclient with
credentials minted by the node (admin "turn-credentials") allocates, binds
channels (and reserves RTCP ports) and relays between two clients with no
loss; Send indications work too; wrong credentials are refused; garbage,
truncated attributes, wrong lengths, bad MESSAGE-INTEGRITY and a flood of
Allocates are dropped or answered with the right error code while the relay
keeps serving; a node whose TURN port is taken runs on without the role."""

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


def ask(sock, data, addr, timeout=1.0):
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

    # Send and Data indications (-s).
    out = uclient(auth + ["-y", "-s", "-c", "-n", "50", "-m", "4", "-l", "160", "-e", "127.0.0.1", "127.0.0.1"])
    (sent, got), lost = totals(out)
    check(sent == 200 and got == sent and lost == 0,
          "uclient with Send/Data indications: %d sent, %d received" % (sent, got), out[-600:])

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
        check(ask(s, b, server, 0.3) is None, "no answer to malformed %r" % b[:12])
    drops = node.admin_ok({"cmd": "relay"})["relay"]["dropped"]["malformed"] - drops0
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
    import hashlib
    import hmac
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
    # uclient's allocations above may still be alive and count for alice.
    check(codes.get(486, 0) >= 30 and codes.get(0, 0) + rs["requests"]["quota_refusals"] >= 130
          and set(codes) <= {0, 486}, "Allocate flood: success up to the quota, then 486", codes)
    for fs in socks:
        fs.close()
    bind = ask(s, stun_req(0x0001), server)
    check(error_code(bind) == 0, "after the floods the relay still answers Binding")
    cred2 = node.admin_ok({"cmd": "turn-credentials", "user": "bob", "ttl": 600})
    out = uclient(["-u", cred2["username"], "-w", cred2["password"], "-p", str(turn_port), "-y", "-c",
                   "-n", "50", "-m", "2", "-l", "160", "-e", "127.0.0.1", "127.0.0.1"])
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
