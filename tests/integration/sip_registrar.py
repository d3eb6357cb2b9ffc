#!/usr/bin/env python3
"""Registrar and proxy behaviour on a small overlay, driven by a scripted UA:
RFC 3261 10.3 (bindings, query, Expires: 0, "*", 423, 404, 420, CSeq order),
parallel forking with CANCEL of the other branch, CANCEL from the caller,
404 / 480 (expired) / 483 / 482 (loop) / 416, OPTIONS to the node, MESSAGE
over UDP and to a TCP contact; a registration while the AOR's primary lacks
a binding its replica holds (registrations ask the primary alone, queries
and removals every holder)."""

import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import peerproto as pp  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import HOST, OVERLAY, check, info  # noqa: E402

N = 5


addr, bindings = su.sip_dest, su.reg_bindings


def test_registrar(c, A, B):
    ua = su.Ua("carol")
    r = ua.register(addr(c, A), expires=60)
    b = bindings(r)
    check(r.status == 200 and b == {"sip:carol@%s:%d" % (HOST, ua.port): 60},
          "REGISTER: 200 with the binding and its expiry", (r.status, b))
    ua2 = su.Ua("carol")
    r = ua2.register(addr(c, B), expires=120)
    b = bindings(r)
    check(r.status == 200 and len(b) == 2 and b.get("sip:carol@%s:%d" % (HOST, ua2.port)) == 120,
          "a second contact through another node: 200 lists both", b)
    r = ua.do(addr(c, A), "REGISTER", ruri="sip:" + OVERLAY, contact=False)
    check(r.status == 200 and len(bindings(r)) == 2, "a query (no Contact) lists both", bindings(r))
    r = ua.do(addr(c, A), "REGISTER", ruri="sip:" + OVERLAY, headers=["Expires: 5"])
    check(r.status == 423 and r.get("min-expires") == "10", "Expires: 5 gets 423 + Min-Expires",
          (r.status, r.get("min-expires")))
    r = ua.do(addr(c, A), "REGISTER", ruri="sip:" + OVERLAY, contact="*", headers=["Expires: 60"])
    check(r.status == 400, "'*' with a non-zero Expires gets 400", r.status)
    x = su.Ua("x", domain="example.com")
    r = x.do(addr(c, A), "REGISTER", ruri="sip:" + OVERLAY, headers=["Expires: 60"])
    check(r.status == 404, "an AOR of another domain gets 404", r.status)
    r = ua.do(addr(c, A), "REGISTER", ruri="sip:" + OVERLAY, headers=["Expires: 60", "Require: foo"])
    check(r.status == 420 and r.get("unsupported") == "foo", "Require: foo gets 420 Unsupported: foo",
          (r.status, r.get("unsupported")))
    cid = "order-%d@%s" % (ua.port, HOST)
    r1 = ua.register(addr(c, A), expires=60, cseq=50, call_id=cid)
    r2 = ua.register(addr(c, A), expires=60, cseq=40, call_id=cid)
    check(r1.status == 200 and 400 <= r2.status < 500,
          "the same Call-ID with a lower CSeq is refused (10.3 step 7)", (r1.status, r2.status))
    return ua, ua2


def test_fork_answered(c, B, ua, ua2, dave):
    """Both contacts ring, one answers: the other branch is CANCELled."""
    cid, _, _ = dave.request(addr(c, B), "INVITE", ruri="sip:carol@" + OVERLAY,
                             to="<sip:carol@%s>" % OVERLAY)
    inv1, inv2 = ua.recv_request("INVITE"), ua2.recv_request("INVITE")
    check(inv1.get("call-id") == cid and inv2.get("call-id") == cid,
          "INVITE forks to both of carol's contacts", (inv1, inv2))
    mf = int(inv1.get("max-forwards", "0"))
    check(mf < 70 and len(inv1.all("via")) >= 2, "Max-Forwards went down and Vias were added",
          (mf, inv1.all("via")))
    ua.respond(inv1, 180, "Ringing")
    ua2.respond(inv2, 180, "Ringing")
    ua.respond(inv1, 200, "OK")
    can = ua2.recv_request("CANCEL")
    ua2.respond(can, 200, "OK")
    ua2.respond(inv2, 487, "Request Terminated")
    ok = dave.final(cid, "INVITE")
    check(ok.status == 200 and [p.status for p in dave.provisional if p.status == 180],
          "the caller gets 180 and the 200; the ringing branch was CANCELled", ok.status)
    rr = ok.all("record-route")
    target = su.uri_of(ok.get("contact"))
    routes = ["Route: %s" % r for r in reversed(rr)]
    dave.request(addr(c, B), "ACK", ruri=target, to=ok.get("to"), call_id=cid, cseq=1, headers=routes)
    ua.recv_request("ACK")
    dave.request(addr(c, B), "BYE", ruri=target, to=ok.get("to"), call_id=cid, cseq=2, headers=routes)
    ua.respond(ua.recv_request("BYE"), 200, "OK")
    check(dave.final(cid, "BYE").status == 200, "and hangs up", "")


def test_call_and_cancel(c, A, B, ua, ua2, dave):
    # A call answered by one contact, the other rejecting: 200 wins.
    cid, _, _ = dave.request(addr(c, B), "INVITE", ruri="sip:carol@" + OVERLAY,
                             to="<sip:carol@%s>" % OVERLAY)
    inv1, inv2 = ua.recv_request("INVITE"), ua2.recv_request("INVITE")
    ua2.respond(inv2, 486, "Busy Here")
    ua2.recv_request("ACK")  # hop-by-hop ACK of the 486 from the node
    ua.respond(inv1, 180, "Ringing")
    ua.respond(inv1, 200, "OK")
    ok = dave.final(cid, "INVITE")
    rr = ok.all("record-route")
    check(ok.status == 200 and len(rr) == 2,
          "one branch busy, the other answers: the caller gets the 200, two Record-Routes",
          (ok.status, rr))
    target = su.uri_of(ok.get("contact"))
    routes = ["Route: %s" % r for r in reversed(rr)]
    dave.request(addr(c, B), "ACK", ruri=target, to=ok.get("to"), call_id=cid, cseq=1, headers=routes)
    ack = ua.recv_request("ACK")
    check(ack.get("call-id") == cid and not ack.all("route"),
          "the ACK for the 2xx reaches the answering UA with the route set consumed",
          ack.all("route"))
    dave.request(addr(c, B), "BYE", ruri=target, to=ok.get("to"), call_id=cid, cseq=2, headers=routes)
    bye = ua.recv_request("BYE")
    ua.respond(bye, 200, "OK")
    r = dave.final(cid, "BYE")
    check(r.status == 200, "BYE along the route set: 200", r.status)

    # CANCEL from the caller while both ring.
    cid, branch, _ = dave.request(addr(c, A), "INVITE", ruri="sip:carol@" + OVERLAY,
                                  to="<sip:carol@%s>" % OVERLAY, cseq=7)
    inv1, inv2 = ua.recv_request("INVITE"), ua2.recv_request("INVITE")
    ua.respond(inv1, 180, "Ringing")
    ua2.respond(inv2, 180, "Ringing")
    dave.wait(lambda m: m.is_response and m.status == 180 and m.get("call-id") == cid, 5, "180")
    # The CANCEL must carry the INVITE's branch (RFC 3261 9.1).
    lines = ["CANCEL sip:carol@%s SIP/2.0" % OVERLAY,
             "Via: SIP/2.0/UDP %s:%d;branch=%s;rport" % (HOST, dave.port, branch),
             "Max-Forwards: 70", "From: <%s>;tag=%s" % (dave.aor, dave.tag),
             "To: <sip:carol@%s>" % OVERLAY, "Call-ID: %s" % cid, "CSeq: 7 CANCEL",
             "Content-Length: 0"]
    dave.send_raw(addr(c, A), "\r\n".join(lines) + "\r\n\r\n")
    r = dave.final(cid, "CANCEL")
    check(r.status == 200, "CANCEL gets 200", r.status)
    for u, inv in ((ua, inv1), (ua2, inv2)):
        can = u.recv_request("CANCEL")
        u.respond(can, 200, "OK")
        u.respond(inv, 487, "Request Terminated")
    r = dave.final(cid, "INVITE")
    check(r.status == 487, "the INVITE ends with 487 after both branches were cancelled", r.status)


def test_routing_errors(c, A, B, dave):
    r = dave.do(addr(c, A), "INVITE", ruri="sip:nobody@" + OVERLAY, to="<sip:nobody@%s>" % OVERLAY)
    check(r.status == 404, "INVITE for a user never registered: 404", r.status)
    r = dave.do(addr(c, B), "MESSAGE", ruri="sip:nobody@" + OVERLAY, to="<sip:nobody@%s>" % OVERLAY,
                headers=["Content-Type: text/plain"], body="hi")
    check(r.status == 404, "MESSAGE for a user never registered: 404", r.status)
    r = dave.do(addr(c, A), "INVITE", ruri="sip:carol@" + OVERLAY, max_forwards=0)
    check(r.status == 483, "Max-Forwards: 0 gets 483", r.status)
    r = dave.do(addr(c, A), "INVITE", ruri="tel:+15551234")
    check(r.status == 416, "a tel: Request-URI gets 416", r.status)
    r = dave.do(addr(c, A), "OPTIONS", ruri="sip:" + OVERLAY, contact=False)
    check(r.status == 200 and "INVITE" in (r.get("allow") or ""), "OPTIONS to the node: 200 with Allow",
          (r.status, r.get("allow")))
    # A contact that points back at the node: the request spirals once, then
    # comes back unchanged and is a loop.
    loopy = su.Ua("loopy")
    r = loopy.register(addr(c, A), expires=60,
                       contact="<sip:loopy@%s>" % su.sip_addr(c, A))
    check(r.status == 200, "register a contact pointing at the node itself", r.status)
    r = dave.do(addr(c, B), "MESSAGE", ruri="sip:loopy@" + OVERLAY, to="<sip:loopy@%s>" % OVERLAY,
                headers=["Content-Type: text/plain"], body="loop")
    check(r.status in (482, 483), "a looping request is stopped (482 Loop Detected)", r.status)
    check(r.status == 482, "the loop is detected from our own Via, not by Max-Forwards", r.status)


def test_message_tcp(c, A, B, dave):
    frank = su.Ua("frank", transport="tcp")
    r = frank.register(addr(c, B), expires=60)
    check(r.status == 200, "a TCP UA registers", r.status)
    cid, _, _ = dave.request(addr(c, A), "MESSAGE", ruri="sip:frank@" + OVERLAY,
                             to="<sip:frank@%s>" % OVERLAY,
                             headers=["Content-Type: text/plain"], body="over tcp")
    m = frank.recv_request("MESSAGE")
    check(m.body == "over tcp", "MESSAGE reaches the UA over TCP", m.body)
    frank.respond(m, 200, "OK")
    r = dave.final(cid, "MESSAGE")
    check(r.status == 200, "the MESSAGE's 200 comes back", r.status)
    frank.close()


def test_unregister_and_expiry(c, A, B, ua, ua2, dave):
    r = ua2.register(addr(c, B), expires=0)
    b = bindings(r)
    check(r.status == 200 and list(b) == ["sip:carol@%s:%d" % (HOST, ua.port)],
          "Expires: 0 removes that binding; the 200 lists the other", b)
    r = ua.do(addr(c, A), "REGISTER", ruri="sip:" + OVERLAY, contact="*", headers=["Expires: 0"],
              call_id="star-%d" % ua.port)
    check(r.status == 200 and not r.all("contact"), "'*' with Expires: 0 removes all bindings",
          r.all("contact"))
    r = dave.do(addr(c, A), "MESSAGE", ruri="sip:carol@" + OVERLAY, to="<sip:carol@%s>" % OVERLAY)
    check(r.status in (404, 480), "after removing all bindings, requests get 404/480", r.status)

    erin = su.Ua("erin")
    r = erin.register(addr(c, A), expires=10)
    check(r.status == 200, "erin registers for 10 s", r.status)
    cid, _, _ = dave.request(addr(c, B), "MESSAGE", ruri="sip:erin@" + OVERLAY,
                             to="<sip:erin@%s>" % OVERLAY, body="before")
    m = erin.recv_request("MESSAGE")
    erin.respond(m, 200, "OK")
    check(dave.final(cid, "MESSAGE").status == 200, "erin is reachable while registered", "")
    info("waiting 12 s for erin's binding to expire")
    time.sleep(12)
    r = dave.do(addr(c, B), "MESSAGE", ruri="sip:erin@" + OVERLAY, to="<sip:erin@%s>" % OVERLAY)
    check(r.status == 480, "after the binding expired: 480", r.status)


def plant_binding(c, aor, contact_port):
    """A binding of aor held by the key's first replica alone (its primary
    lacks it, as a primary that has just joined would): a user record
    stored there as a replica copy, as the primary's push would."""
    ids = c.sorted_ids()
    primary = p2p.successor_of(p2p.key_id(aor), ids)
    replica = c.by_id(ids[(ids.index(primary) + 1) % len(ids)])
    uri = "sip:%s@%s:%d" % (aor[4:aor.index("@")], HOST, contact_port)
    body = {"aor": aor, "contact": "<%s>" % uri, "uri": uri, "expires": 60, "q": 1000,
            "call_id": "planted@%s" % HOST, "cseq": 1, "path": "sip:%s:1" % HOST, "node": "dd" * 20,
            "received": "%s:%d" % (HOST, contact_port), "transport": "udp"}
    v = pp.Value(p2p.key_id(aor + "|" + uri), json.dumps(body).encode(), ttl=60 + 300,
                 kind=pp.KIND_USER, owner="dd" * 20)
    host, port = replica.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    try:
        s.sendall(pp.hello(OVERLAY, "dd" * 20) +
                  pp.store_frame(p2p.key_id(aor), [v], txid=5, flags=pp.STORE_REPLICA))
        status = pp.store_status(s, 5)
    finally:
        s.close()
    check(status == 0, "a binding planted at the key's first replica only", status)
    held = p2p.get_values(c.by_id(primary), aor, local=True)
    check(held == [], "and the key's primary holds nothing of %s" % aor, held)
    return uri


def test_primary_lacks(c):
    """A registration writes first and reads the bindings from what the
    key's primary alone sends back with its put (dht_put_read, no FETCH);
    where the primary lacks one, the registration still succeeds, and a
    query and a removal, which ask every holder, see it.  A refresh soon
    after sends its put to the primary without a lookup
    (puts_read_direct), through a node that is neither the primary nor the
    node before it (which looks up without asking anyone)."""
    aor = "sip:heidi@" + OVERLAY
    ids = c.sorted_ids()
    R = c.by_id(ids[(ids.index(p2p.successor_of(p2p.key_id(aor), ids)) + 2) % len(ids)])
    planted = plant_binding(c, aor, 40999)
    st0 = R.admin_ok({"cmd": "stats"})
    ua = su.Ua("heidi")
    mine = "sip:heidi@%s:%d" % (HOST, ua.port)
    r = ua.register(addr(c, R), expires=60)
    b = bindings(r)
    check(r.status == 200 and b.get(mine) == 60,
          "a registration while the primary lacks a binding: 200 with the new one", (r.status, b))
    st1 = R.admin_ok({"cmd": "stats"})
    seen = {k: (st0[k], st1[k]) for k in ("gets", "puts_read", "puts_unread")}
    check(st1["gets"] == st0["gets"] and st1["puts_read"] == st0["puts_read"] + 1 and
          st1["puts_unread"] == st0["puts_unread"],
          "that registration read nothing: its one put brought the primary's bindings back", seen)
    r = ua.register(addr(c, R), expires=60)
    st2 = R.admin_ok({"cmd": "stats"})
    seen = {k: (st1[k], st2[k]) for k in ("gets", "puts_read_direct", "puts_unread")}
    check(r.status == 200 and bindings(r) == {mine: 60} and st2["gets"] == st1["gets"] and
          st2["puts_read_direct"] == st1["puts_read_direct"] + 1 and
          st2["puts_unread"] == st1["puts_unread"],
          "a refresh: 200 listing the one binding, its put sent straight to the primary found",
          (r.status, bindings(r), seen))
    r = ua.do(addr(c, R), "REGISTER", ruri="sip:" + OVERLAY, contact=False)
    b = bindings(r)
    check(r.status == 200 and set(b) == {planted, mine},
          "a query asks every holder: it lists the planted binding too", b)
    r = ua.do(addr(c, R), "REGISTER", ruri="sip:" + OVERLAY, contact="*", headers=["Expires: 0"],
              call_id="star-heidi-%d" % ua.port)
    check(r.status == 200, "'*' with Expires: 0", r.status)
    r = ua.do(addr(c, R), "REGISTER", ruri="sip:" + OVERLAY, contact=False)
    check(r.status == 200 and not bindings(r),
          "the removal asked every holder: the planted binding is gone too", bindings(r))
    st3 = R.admin_ok({"cmd": "stats"})
    check(st3["gets_primary"] == st0["gets_primary"] and st3["gets"] == st0["gets"] + 3,
          "queries and removals asked every holder", (st0["gets_primary"], st3["gets"], st0["gets"]))


def test_late_checks(c, A, B):
    """A registration that only adds writes first and checks what its put
    brought back: a lower CSeq of the same Call-ID through another node (not
    in that node's own table) gets 400 and the binding stays as the higher
    CSeq left it; a contact spelled otherwise replaces its binding; a
    contact beyond the limit gets 403 and is withdrawn."""
    ivan = su.Ua("ivan")
    mine = "sip:ivan@%s:%d" % (HOST, ivan.port)
    cid = "late-%d@%s" % (ivan.port, HOST)
    st0 = B.admin_ok({"cmd": "stats"})
    r1 = ivan.register(addr(c, A), expires=120, cseq=50, call_id=cid)
    r2 = ivan.register(addr(c, B), expires=60, cseq=40, call_id=cid)
    st1 = B.admin_ok({"cmd": "stats"})
    check(r1.status == 200 and r2.status == 400 and r2.reason == "Out of Order CSeq" and
          st1["puts_read"] > st0["puts_read"],
          "a lower CSeq through another node: 400 after the write", (r1.status, r2.status, r2.reason))
    b = bindings(ivan.do(addr(c, A), "REGISTER", ruri="sip:" + OVERLAY, contact=False))
    check(set(b) == {mine} and b[mine] > 100, "and the binding is as CSeq 50 left it (120 s)", b)
    dup = su.Ua("judy")
    r = dup.register(addr(c, A), expires=90, contact="<sip:judy@Dup.Example:5999>")
    r = dup.register(addr(c, A), expires=60, contact="<sip:judy@dup.example:5999>",
                     call_id="dup2-%d" % dup.port)
    b = bindings(r)
    check(r.status == 200 and len(b) == 1 and list(b.values()) == [60],
          "the same contact spelled otherwise replaces its binding", (r.status, b))
    many = su.Ua("mallory", transport="tcp")  # 32 bindings do not fit a UDP answer
    conts = ["<sip:m%d@%s:%d>" % (i, HOST, 7000 + i) for i in range(33)]
    r1 = many.register(addr(c, A), contact=", ".join(conts[:16]), call_id="many1-%d" % many.port)
    r2 = many.register(addr(c, B), contact=", ".join(conts[16:32]), call_id="many2-%d" % many.port)
    r3 = many.register(addr(c, B), contact=conts[32], call_id="many3-%d" % many.port)
    b = bindings(many.do(addr(c, A), "REGISTER", ruri="sip:" + OVERLAY, contact=False))
    check(r1.status == 200 and r2.status == 200 and r3.status == 403 and len(b) == 32 and
          "sip:m32@%s:7032" % HOST not in b,
          "a contact beyond the limit (32 per AOR): 403, and it is withdrawn",
          (r1.status, r2.status, r3.status, len(b)))


def test_quick_copies(c):
    """A registrar's write asks the primary not to wait for its replicas'
    answers (PROTO_STORE_QUICK): the copies go one-way, counted as
    copies_quick, gathered into one STORES per replica (the three contacts'
    puts reach the primary together, well within its 200 ms), and every one
    of the key's holders has the bindings."""
    def quick(field="copies_quick"):
        return sum(n.admin_ok({"cmd": "stats"}).get(field, 0) for n in c.alive())
    last = [None]

    def settled():  # the copies of the tests before have gone (200 ms): counters still
        now = (quick(), quick("copies_quick_batches"))
        same, last[0] = now == last[0], now
        return same
    p2p.wait_until(settled, 10, "no copies gathered at any primary", 0.5)
    q0, b0 = last[0]
    key = "sip:quinn@" + OVERLAY
    holders = [c.by_id(i) for i in p2p.responsible_nodes(p2p.key_id(key), c.sorted_ids(), c.replicas)]
    # Through a node that holds no copy: the primary's copies are what is
    # counted (a registrar that is the primary itself stores locally).
    R = next(n for n in c.alive() if n not in holders)
    ua = su.Ua("quinn")
    conts = ["<sip:quinn@%s:%d>" % (HOST, 7100 + i) for i in range(3)]
    r = ua.register(addr(c, R), expires=60, contact=", ".join(conts))
    check(r.status == 200 and len(bindings(r)) == 3, "quinn registers three contacts", r.status)

    def held():
        return [n for n in holders if len(p2p.get_values(n, key, local=True)) < 3]
    p2p.wait_until(lambda: not held(), 5, "the bindings on all %d holders" % len(holders), 0.1,
                   describe=lambda _: "missing on %s" % held())
    check(quick() - q0 == 3 * (c.replicas - 1), "the primary sent its %d copies one-way (copies_quick %d -> %d)"
          % (3 * (c.replicas - 1), q0, quick()))
    check(quick("copies_quick_batches") - b0 == c.replicas - 1,
          "one STORES to each replica carried them (copies_quick_batches %d -> %d)"
          % (b0, quick("copies_quick_batches")))


def test_table_growth(c, A):
    """600 users registered through A, each refreshed, each removed.  The
    registrar's tables grow from 512 to 1,024 buckets a step at a time
    (two buckets moved per binding added) from the 513th binding on, so
    the first refreshes look up bindings still in the old buckets: each
    must be found and replaced, not held twice, and each removal must find
    its binding."""
    # 32 sources, each well under the per-source limit (--sip-rate 50)
    # however fast the node answers: ~19 requests from each per pass.
    uas = [su.Ua("grow") for _ in range(32)]
    users = 600

    def reg(i, expires, cseq):
        user, ua = "grow%d" % i, uas[i % len(uas)]
        return ua.do(addr(c, A), "REGISTER", ruri="sip:" + OVERLAY,
                     to="<sip:%s@%s>" % (user, OVERLAY),
                     contact="<sip:%s@%s:%d>" % (user, HOST, ua.port),
                     headers=["Expires: %d" % expires], call_id="grow-%d-%d" % (i, ua.port),
                     cseq=cseq)

    def each(expires, cseq, want):
        bad = []
        for i in range(users):
            r = reg(i, expires, cseq)
            if r.status != 200 or len(bindings(r)) != want:
                bad.append((i, r.status, bindings(r)))
        held = [b for b in su.registrations(A) if b["aor"].startswith("sip:grow")]
        return bad, held

    bad, held = each(60, 1, 1)
    check(not bad and len(held) == users and {b["cseq"] for b in held} == {1},
          "%d users registered through one node: held once each" % users,
          (len(held), bad[:3]))
    bad, held = each(120, 2, 1)
    check(not bad and len(held) == users and {b["cseq"] for b in held} == {2},
          "each refreshed while the tables grew: still held once each, the refresh replacing",
          (len(held), sorted({b["cseq"] for b in held}), bad[:3]))
    bad, held = each(0, 3, 0)
    check(not bad and not held, "each removed: none left", (len(held), bad[:3]))


def test(h):
    c = su.sip_cluster(h, N)
    nodes = c.alive()
    A, B = nodes[0], nodes[3]
    ua, ua2 = test_registrar(c, A, B)
    dave = su.Ua("dave")
    test_fork_answered(c, B, ua, ua2, dave)
    test_call_and_cancel(c, A, B, ua, ua2, dave)
    test_routing_errors(c, A, B, dave)
    test_message_tcp(c, A, B, dave)
    test_unregister_and_expiry(c, A, B, ua, ua2, dave)
    test_primary_lacks(c)
    test_late_checks(c, A, B)
    test_quick_copies(c)
    test_table_growth(c, A)
    st = su.sip_stats(A)
    info("node A counters: %s" % st.get("counters"))
    check(st["counters"]["loops"] >= 1 and st["counters"]["too_many_hops"] >= 1,
          "the admin counters saw the loop and the 483", st["counters"])


if __name__ == "__main__":
    p2p.run("sip_registrar", test, timeout=180)
