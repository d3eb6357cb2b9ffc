#!/usr/bin/env python3
"""Malformed SIP over UDP and TCP gets a 4xx or is dropped, never a crash,
never a 2xx; the node keeps serving afterwards (a REGISTER and a call-less
MESSAGE still work) and counts the bad requests."""

import os
import random
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import HOST, OVERLAY, check, expect, info  # noqa: E402


TRANSPORT = ["UDP"]  # the Via names the transport the test is using


def req(method="REGISTER", ruri="sip:" + OVERLAY, headers=None, body="", port=5999,
        content_length=None, via=True):
    h = []
    if via:
        h.append("Via: SIP/2.0/%s %s:%d;branch=z9hG4bK-bad%08x;rport" %
                 (TRANSPORT[0], HOST, port, random.getrandbits(32)))
    h += ["Max-Forwards: 70", "From: <sip:mallory@%s>;tag=m1" % OVERLAY,
          "To: <sip:mallory@%s>" % OVERLAY, "Call-ID: bad-%08x@%s" % (random.getrandbits(32), HOST),
          "CSeq: 1 %s" % method, "Contact: <sip:mallory@%s:%d>" % (HOST, port)]
    if headers is not None:
        h = [x for x in h if x.split(":")[0] not in [y.split(":")[0] for y in headers]] + \
            [y for y in headers if not y.endswith(": DROP")]
        h = [x for x in h if not any(x.split(":")[0] == y.split(":")[0] and y.endswith(": DROP")
                                     for y in headers)]
    cl = len(body.encode()) if content_length is None else content_length
    return ("%s %s SIP/2.0\r\n" % (method, ruri) + "\r\n".join(h) +
            "\r\nContent-Length: %s\r\n\r\n%s" % (cl, body)).encode()


# Cases whose right answer is not a 4xx: a request line with another SIP
# version gets 505 (RFC 3261 21.5.7); sofia's parser skips a header line
# without a colon, so that request is otherwise valid and may succeed.
ALLOWED = {"bad version": (505,), "header without colon": (200,)}


def cases():
    rnd = random.Random(1234)
    yield "random bytes", bytes(rnd.getrandbits(8) for _ in range(300))
    yield "empty line only", b"\r\n\r\n"
    yield "request line only", b"INVITE sip:bob@overlay.test SIP/2.0\r\n\r\n"
    yield "bad version", req().replace(b"SIP/2.0\r\n", b"SIP/7.1\r\n", 1)
    yield "no Via", req(via=False)
    yield "no Call-ID", req(headers=["Call-ID: DROP"])
    yield "no From", req(headers=["From: DROP"])
    yield "CSeq method mismatch", req(headers=["CSeq: 1 INVITE"])
    yield "CSeq not a number", req(headers=["CSeq: abc REGISTER"])
    yield "Max-Forwards not a number", req(method="MESSAGE", ruri="sip:bob@" + OVERLAY,
                                           headers=["Max-Forwards: lots"])
    yield "Content-Length larger than the datagram", req(method="MESSAGE", body="x", content_length=5000)
    yield "negative Content-Length", req(method="MESSAGE", body="x", content_length="-1")
    yield "Contact garbage", req(headers=["Contact: <<<sip:@@@>>>"])
    yield "Contact expires not a number", req(headers=["Contact: <sip:m@%s:5999>;expires=soon" % HOST])
    yield "q out of range", req(headers=["Contact: <sip:m@%s:5999>;q=7.5" % HOST])
    yield "Expires not a number", req(headers=["Expires: never"])
    yield "too many contacts", req(headers=["Contact: " + ", ".join(
        "<sip:m%d@%s:5999>" % (i, HOST) for i in range(40))])
    yield "huge To user", req(headers=["To: <sip:%s@%s>" % ("u" * 3000, OVERLAY)])
    yield "To not a SIP URI", req(headers=["To: <mailto:m@example.com>"])
    yield "star with a contact", req(headers=["Contact: *, <sip:m@%s:5999>" % HOST, "Expires: 0"])
    # A user record holds UTF-8 text of bounded length: a REGISTER whose
    # record would not decode is refused, not registered unreachable.
    yield "Contact not UTF-8", req().replace(b"<sip:mallory@", b"<sip:mall\xb1ory@")
    yield "Call-ID not UTF-8", req().replace(b"Call-ID: bad-", b"Call-ID: bad-\xff")
    yield "Contact longer than a user record holds", req(headers=[
        "Contact: <sip:m@%s:5999>;x=%s" % (HOST, "a" * 1100)])
    yield "Call-ID longer than a user record holds", req(headers=["Call-ID: %s@%s" % ("c" * 600, HOST)])
    yield "Contact host not a host name", req(headers=["Contact: sip:m@>"])
    yield "Contact with a path", req(headers=["Contact: <sip:m@%s/x:5999>" % HOST])
    yield "Contact with '>' in its password", req(headers=["Contact: sip:m:5>x@%s:5999" % HOST])
    yield "Contact URI longer than a user record holds", req(headers=[
        "Contact: <sip:m@%s:5999;x=%s>" % (HOST, "a" * 1100)])
    yield "many Vias", req(method="MESSAGE", ruri="sip:bob@" + OVERLAY, headers=[
        "Via: " + ", ".join("SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%d" % (6000 + i, i) for i in range(200))])
    yield "many Routes to self", None  # filled in by the test (needs the node's address)
    yield "unsolicited response", (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKx\r\n"
                                   b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\n"
                                   b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    yield "NUL bytes in headers", req().replace(b"Max-Forwards: 70", b"Max-Forwards: 7\x000")
    yield "header without colon", req().replace(b"Max-Forwards: 70", b"Max-Forwards 70")
    yield "unknown scheme Request-URI", req(method="OPTIONS", ruri="xyz:whatever")


# How long the answers to a batch of bad requests are collected: a node
# that answers only after a DHT lookup (a 404, or a 2xx that must not come)
# on a loaded machine still answers within it.
WINDOW = 5.0


def collect(socks, window):
    """Every message each socket receives within window seconds (a TCP
    socket the node closes is done early)."""
    import select
    out = {s: [] for s in socks}
    live = list(socks)
    end = time.monotonic() + window
    while live and time.monotonic() < end:
        ready, _, _ = select.select(live, [], [], max(0, end - time.monotonic()))
        for s in ready:
            try:
                data = s.recv(65535)
            except OSError:
                data = b""
            if not data:
                live.remove(s)
                continue
            out[s].append(su.Msg(data))
    return out


def answers(sock, timeout):
    out = []
    sock.settimeout(timeout)
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            data = sock.recv(65535)
        except (socket.timeout, ConnectionResetError):
            break
        if not data:
            break
        out.append(su.Msg(data))
        sock.settimeout(max(0.01, t_end - time.monotonic()))
    return out


def test(h):
    c = su.sip_cluster(h, 3)
    node = c.alive()[1]
    dest = (HOST, su.sip_port(c, node))
    self_route = "Route: " + ", ".join(["<sip:%s;lr>" % su.sip_addr(c, node)] * 40)
    bad = []
    for transport in ("udp", "tcp"):
        TRANSPORT[0] = transport.upper()
        # Each case on its own socket, all sent, then the answers of all of
        # them collected over one long window: a late 2xx is caught too.
        sent = []
        for name, data in cases():
            if data is None:
                data = req(method="MESSAGE", ruri="sip:bob@" + OVERLAY, headers=[self_route])
            if transport == "udp":
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((HOST, 0))
                s.sendto(data, dest)
            else:
                s = socket.create_connection(dest, timeout=3)
                try:
                    s.sendall(data)
                except OSError:
                    pass
            sent.append((name, s))
            if not node.running(c.binary):
                raise p2p.Failure("node died after %s/%s" % (transport, name))
        got = collect([s for _, s in sent], WINDOW)
        for name, s in sent:
            s.close()
            codes = [m.status for m in got[s] if m.is_response]
            text = "%s/%s -> %s" % (transport, name, codes or "dropped")
            if any(not (400 <= x < 500) and x not in ALLOWED.get(name, ()) for x in codes
                   if x and x >= 200):
                bad.append(text)
            info(text)
        if not node.running(c.binary):
            raise p2p.Failure("node died after the %s cases" % transport)
    check(not bad, "malformed requests get 4xx (505 for another version) or nothing", bad)
    # A TCP stream that never ends its headers, and one giant header block.
    s = socket.create_connection(dest, timeout=3)
    try:
        s.sendall(b"MESSAGE sip:bob@overlay.test SIP/2.0\r\nX-Junk: " + b"a" * 300000)
    except OSError:
        pass
    answers(s, 0.5)
    s.close()
    check(node.running(c.binary), "the node survives all of it", node)
    # A REGISTER over UDP longer than the node reads (RFC 3261 18.1.1 wants
    # one so long on TCP): 513, counted.
    TRANSPORT[0] = "UDP"
    before = su.sip_stats(node)["counters"]["register_truncated"]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.sendto(req(headers=["X-Pad: " + "a" * 6000]), dest)
    codes = [m.status for m in answers(s, 2.0) if m.is_response]
    s.close()
    after = su.sip_stats(node)["counters"]["register_truncated"]
    check(codes == [513] and after == before + 1,
          "a REGISTER over UDP longer than the node reads gets 513, counted", (codes, after - before))
    ua = su.Ua("victor")
    r = ua.register(dest, expires=60)
    check(r.status == 200, "and still registers a well-formed UA", r.status)
    st = su.sip_stats(node)
    expect(st["counters"]["bad_requests"] > 0 or st["counters"]["register_failed"] > 0,
           "the admin counters saw bad requests", st["counters"])


if __name__ == "__main__":
    p2p.run("sip_badinput", test, timeout=120)
