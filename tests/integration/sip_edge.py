#!/usr/bin/env python3
"""The SIP edge in the secured mode (TLS peer links, signed values, SIP
between nodes over TLS with the node certificates), tried as an attacker
would, inside private network, mount and PID namespaces with named (the
overlay zone and example.com) and kamailio (example.com's proxy and
registrar, digest "secret").  Every attack is refused with its code and
counted while honest phones call in and out (the spec's figures 5, 6, 7
and 4):

- phones register with digest at their home node, which signs their
  records with the user's certificate; a binding a node stored under a
  user's name (a value of another kind) is not taken;
- registrar hijack: a REGISTER for alice's AOR without credentials gets
  401 (a query and "*" too), with bob's credentials 403; at a node without
  users or at the proxy peer 403; alice stays reachable;
- toll fraud: an INVITE for sip:+19005550100@example.com from a stranger
  gets 403 Relay forbidden at the proxy peer and at a node without users,
  407 at a node with users; nothing reaches kamailio;
- SSRF: a MESSAGE for sip:svc@127.0.0.1:PORT;transport=tcp gets 403 at a
  node that does not allow loopback targets (the default), and nothing
  connects to PORT; a stream transport to another port than SIP's on a
  public address is refused even to an authenticated phone;
- reflector: an in-dialog INVITE with our Route naming a third party in
  its Request-URI reaches it once (stateless), not 7 times;
- figure 5: alice calls dave at another node;
- figure 6: alice (407 at her home node) calls carol@example.com through
  the proxy peer (TLS from her node: an overlay node, let through);
- figure 4: alice registers sip:alice@example.com through her home node
  and the proxy peer (407 from her node, then kamailio's 401), and carol
  reaches her there;
- figure 7: carol calls alice@OVERLAY: kamailio finds the proxy peer by DNS."""

import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import HOST, OVERLAY, check, info  # noqa: E402
from sip_auth import counters, make_users  # noqa: E402

N = 5
HOME, HOME2, PLAIN, GW = 0, 1, 2, 3
PUBLIC_IP = "20.1.2.3"  # an address outside the special-purpose ranges, on lo in our namespace


class Listener:
    """A TCP listener counting connections (an internal service)."""

    def __init__(self, ip, port=0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.sock.settimeout(0.2)
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
                self.accepted += 1
                c.close()
            except OSError:
                pass


def call_done(ua, dest, ok, cid):
    """ACK the 2xx along its route set, then BYE; returns the BYE's answer."""
    rr = ok.all("record-route")
    target = su.uri_of(ok.get("contact"))
    routes = ["Route: %s" % r for r in reversed(rr)]
    ua.request(dest, "ACK", ruri=target, to=ok.get("to"), call_id=cid, cseq=1, headers=routes)
    return routes, target


def test_register(c, A, P, G):
    alice = su.Ua("alice")
    r, first = alice.do_auth(su.sip_dest(c, A), "REGISTER", "pw-alice", headers=["Expires: 300"])
    check(first is not None and first.status == 401 and r.status == 200,
          "alice registers with digest at her home node (401, then 200)", r.status)
    vals = p2p.wait_until(lambda: p2p.get_values(P, "sip:alice@" + OVERLAY) or None, 10,
                          "alice's record readable through another node")
    check(len(vals) == 1 and vals[0]["value"]["uri"] == "sip:alice@%s:%d" % (HOST, alice.port),
          "her record is in the DHT (signed with her certificate: the DHT takes no other)", vals)
    bob = su.Ua("bob")
    r, _ = bob.do_auth(su.sip_dest(c, A), "REGISTER", "pw-bob", headers=["Expires: 300"])
    check(r.status == 200, "bob registers too", r.status)
    return alice, bob


def test_hijack(c, A, P, G, alice, bob):
    mallory = su.Ua("alice")  # claims alice's AOR
    dest = su.sip_dest(c, A)
    before = counters(A)
    r = mallory.register(dest, expires=300)
    check(r.status == 401, "a REGISTER for alice's AOR without credentials: 401", r.status)
    r = mallory.do(dest, "REGISTER", contact=False)
    check(r.status == 401, "a query of alice's bindings without credentials: 401", r.status)
    r = mallory.do(dest, "REGISTER", contact="*", headers=["Expires: 0"])
    check(r.status == 401, "removing them all with '*' without credentials: 401", r.status)
    r, _ = mallory.do_auth(dest, "REGISTER", "pw-bob", user="bob", headers=["Expires: 300"])
    check(r.status == 403, "with bob's credentials: 403", r.status)
    for node, what in ((P, "a node without users"), (G, "the proxy peer")):
        r = mallory.register(su.sip_dest(c, node), expires=300)
        check(r.status == 403, "at %s: 403" % what, (r.status, r.reason))
    after = counters(A)
    check(after["auth_challenges"] - before["auth_challenges"] >= 3 and
          after["auth_wrong_user"] > before["auth_wrong_user"],
          "the home node counted the challenges and the wrong user", after)
    vals = p2p.get_values(P, "sip:alice@" + OVERLAY)
    check([v["value"]["uri"] for v in vals] == ["sip:alice@%s:%d" % (HOST, alice.port)],
          "alice's binding is untouched", vals)
    mallory.close()


def test_forged_record(c, A, P, bob):
    """A node stores a binding for erin as a plain JSON value (any node may
    store values of other kinds under a user's name): nobody takes it."""
    fake = su.Ua("fake")
    body = {"aor": "sip:erin@" + OVERLAY, "contact": "<sip:erin@%s:%d>" % (HOST, fake.port),
            "uri": "sip:erin@%s:%d" % (HOST, fake.port), "expires": 600, "q": 1000,
            "call_id": "x", "cseq": 1, "path": "sip:" + su.sip_addr(c, P), "node": P.id,
            "received": "", "transport": "udp"}
    P.admin_ok({"cmd": "put", "key": "sip:erin@" + OVERLAY, "value": body, "ttl": 600})
    ruri = "sip:erin@" + OVERLAY
    r, _ = bob.do_auth(su.sip_dest(c, A), "MESSAGE", "pw-bob", ruri=ruri, to="<%s>" % ruri)
    check(r.status == 404, "a binding stored by a node, not by the user: not taken (404)", r.status)
    fake._poll(0.5)
    check(not fake.queue, "and nothing reached the address it named", fake.queue)
    fake.close()


def test_toll_fraud(c, A, P, G, kam):
    mallory = su.Ua("mallory", domain="evil.example")
    ruri = "sip:+19005550100@example.com"
    for node, want, what in ((G, 403, "the proxy peer"), (P, 403, "a node without users"),
                             (A, 407, "a node with users")):
        before = counters(node)
        cid, branch, _ = mallory.request(su.sip_dest(c, node), "INVITE", ruri=ruri, to="<%s>" % ruri)
        r = mallory.final(cid, "INVITE")
        mallory.ack_final(su.sip_dest(c, node), r, ruri, branch)
        after = counters(node)
        counted = (after["relay_forbidden"] > before["relay_forbidden"] if want == 403
                   else after["auth_challenges"] > before["auth_challenges"])
        check(r.status == want and counted, "a stranger's INVITE to %s at %s: %d, counted" %
              (ruri, what, want), (r.status, r.reason))
    r = mallory.do(su.sip_dest(c, G), "INVITE", ruri="sip:+19005550100@%s" % kam.addr,
                   to="<sip:+19005550100@%s>" % kam.addr)
    check(r.status == 403, "and to kamailio's IP address at the proxy peer: 403", r.status)
    time.sleep(0.5)
    check(not kam.log_lines("19005550100"), "nothing of it reached kamailio",
          kam.log_lines("19005550100"))
    mallory.close()


def test_ssrf(c, A, P, alice):
    svc = Listener(HOST)
    mallory = su.Ua("mallory", domain="evil.example")
    ruri = "sip:svc@%s:%d;transport=tcp" % (HOST, svc.port)
    before = counters(P)["target_refused"]
    r = mallory.do(su.sip_dest(c, P), "MESSAGE", ruri=ruri, to="<sip:svc@%s>" % HOST, body="QUIT")
    check(r.status == 403 and counters(P)["target_refused"] > before,
          "MESSAGE %s at a node with the default target policy: 403, counted" % ruri,
          (r.status, r.reason))
    for ruri in ("sip:svc@%s;maddr=%s;transport=tcp" % (PUBLIC_IP, HOST),
                 "sip:svc@localhost:%d;transport=tcp" % svc.port):
        r = mallory.do(su.sip_dest(c, P), "MESSAGE", ruri=ruri, to="<sip:svc@%s>" % HOST,
                       body="QUIT")
        check(r.status == 403, "and %s: 403 (%s)" % (ruri, r.reason), r.status)
    pub = Listener(PUBLIC_IP)
    ruri = "sip:svc@%s:%d;transport=tcp" % (PUBLIC_IP, pub.port)
    r, _ = alice.do_auth(su.sip_dest(c, A), "MESSAGE", "pw-alice", ruri=ruri,
                         to="<sip:svc@%s>" % PUBLIC_IP, body="HELO")
    check(r.status == 403, "a stream transport to port %d of a public address: 403, even for an "
          "authenticated phone" % pub.port, (r.status, r.reason))
    time.sleep(0.5)
    check(svc.accepted == 0 and pub.accepted == 0, "nothing connected to either service",
          (svc.accepted, pub.accepted))
    svc.stop = pub.stop = True
    mallory.close()


def test_reflector(c, G):
    victim = su.Ua("victim", domain="victim.example")
    mallory = su.Ua("mallory", domain="evil.example")
    ruri = "sip:victim@%s:%d" % (HOST, victim.port)
    before = counters(G)["stateless_in_dialog"]
    mallory.request(su.sip_dest(c, G), "INVITE", ruri=ruri, to="<%s>;tag=forged" % ruri,
                    headers=["Route: <sip:%s;lr>" % OVERLAY])
    time.sleep(4.0)  # nta would have sent it again at 0.5, 1.5 and 3.5 s
    victim._poll(0.2)
    got = [m for m in victim.queue if m.method == "INVITE"]
    check(len(got) == 1 and counters(G)["stateless_in_dialog"] > before,
          "an in-dialog INVITE with our Route naming a third party reaches it once in 4 s "
          "(stateless), not again and again", len(got))
    victim.queue.clear()
    r = mallory.do(su.sip_dest(c, G), "INVITE", ruri=ruri, to="<%s>" % ruri)
    victim._poll(1.0)
    check(r.status == 403 and not victim.queue,
          "out of dialog it is refused (403) and the third party gets nothing", r.status)
    victim.close()
    mallory.close()


def test_fig5(c, A, B, alice):
    dave = su.Ua("dave")
    r, _ = dave.do_auth(su.sip_dest(c, B), "REGISTER", "pw-dave", headers=["Expires: 300"])
    check(r.status == 200, "dave registers at his home node", r.status)
    dest, ruri = su.sip_dest(c, A), "sip:dave@" + OVERLAY
    cid, first = alice.do_auth(dest, "INVITE", "pw-alice", ruri=ruri, to="<%s>" % ruri, wait=False)
    inv = dave.recv_request("INVITE")
    dave.respond(inv, 180, "Ringing")
    dave.respond(inv, 200, "OK")
    ok = alice.final(cid, "INVITE")
    check(first.status == 407 and ok.status == 200,
          "figure 5: alice (407, then credentials) calls dave at another node", ok.status)
    routes, target = call_done(alice, dest, ok, cid)
    dave.recv_request("ACK")
    alice.request(dest, "BYE", ruri=target, to=ok.get("to"), call_id=cid, cseq=3, headers=routes)
    dave.respond(dave.recv_request("BYE"), 200, "OK")
    check(alice.final(cid, "BYE").status == 200, "and hangs up", "")
    dave.close()


def test_fig6(h, c, A, G, kam, alice, ports):
    rc, s = su.sipp_register_auth(h, kam.addr, "carol", "<sip:carol@%s:%d>" % (HOST, ports + 1),
                                  ports, name="carol-reg")
    check(rc == 0, "carol registers at kamailio (digest)", s.describe())
    uas = su.Sipp(h, "carol-uas", su.UAS_XML, None, ports + 1, timeout=30)
    before = counters(G)
    dest, ruri = su.sip_dest(c, A), "sip:carol@example.com"
    cid, first = alice.do_auth(dest, "INVITE", "pw-alice", ruri=ruri, to="<%s>" % ruri,
                               wait=False, body="")
    ok = alice.final(cid, "INVITE", timeout=15)
    after = counters(G)
    check(first.status == 407 and ok.status == 200 and after["to_public"] > before["to_public"] and
          after["from_nodes"] > before["from_nodes"],
          "figure 6: alice (407 at her node) calls carol@example.com through the proxy peer, "
          "which takes it from her node over TLS", (ok.status, after))
    routes, target = call_done(alice, dest, ok, cid)
    # The BYE only once the proxy peer has sent the ACK on: sent at once,
    # it can overtake the ACK (kamailio's two workers, a descheduled node),
    # and carol's sipp takes a BYE before the ACK for a failed call.
    p2p.wait_until(lambda: counters(G)["acks_forwarded"] > after["acks_forwarded"] or None, 10,
                   "the proxy peer sent the ACK on", describe=lambda _: counters(G)["acks_forwarded"])
    alice.request(dest, "BYE", ruri=target, to=ok.get("to"), call_id=cid, cseq=3, headers=routes)
    check(alice.final(cid, "BYE", timeout=15).status == 200 and uas.wait() == 0,
          "carol gets the ACK and the BYE", uas.describe())


def test_fig4(h, c, A, kam, alice, ports):
    """alice registers sip:alice@example.com -> her overlay AOR through her
    home node (407 there) and the proxy peer (kamailio's 401)."""
    dest, ruri = su.sip_dest(c, A), "sip:example.com"
    cid = "pubreg-alice"
    args = dict(ruri=ruri, to="<sip:alice@example.com>", call_id=cid, contact="<sip:alice@%s>" % OVERLAY,
                headers=["Expires: 300"])
    _, _, _ = alice.request(dest, "REGISTER", **args)
    r407 = alice.final(cid, "REGISTER")
    pa = su.digest_credentials(su.challenges(r407)[0], "REGISTER", ruri, "alice", "pw-alice")
    args["headers"] = ["Expires: 300", "Proxy-Authorization: " + pa]
    alice.request(dest, "REGISTER", **args)
    r401 = alice.final(cid, "REGISTER", timeout=15)
    wa = su.digest_credentials(su.challenges(r401)[0], "REGISTER", ruri, "alice", "secret") \
        if r401.status == 401 else ""
    args["headers"] = ["Expires: 300", "Proxy-Authorization: " + pa, "Authorization: " + wa]
    alice.request(dest, "REGISTER", **args)
    r = alice.final(cid, "REGISTER", timeout=15)
    check(r407.status == 407 and r401.status == 401 and r.status == 200,
          "figure 4: alice registers sip:alice@example.com -> <sip:alice@%s> through her home "
          "node (407) and a proxy peer (kamailio's 401)" % OVERLAY,
          (r407.status, r401.status, r.status))
    uac = su.Sipp(h, "carol-to-alice-pub", su.uac_xml(300), kam.addr, ports + 2,
                  keys=[("user", "carol"), ("domain", "example.com"), ("callee", "alice"),
                        ("callee_domain", "example.com")], timeout=30)
    answer_call(alice)
    check(uac.wait() == 0, "carol calls alice@example.com and reaches alice in the overlay",
          uac.describe())


def answer_call(ua):
    inv = ua.recv_request("INVITE", timeout=15)
    ua.respond(inv, 180, "Ringing")
    ua.respond(inv, 200, "OK")
    ua.recv_request("ACK", timeout=15)
    ua.respond(ua.recv_request("BYE", timeout=15), 200, "OK")


def test_fig7(h, c, A, G, kam, alice, ports):
    before = counters(G)["from_public"]
    uac = su.Sipp(h, "carol-to-alice", su.uac_xml(300), kam.addr, ports + 3,
                  keys=[("user", "carol"), ("domain", "example.com"), ("callee", "alice"),
                        ("callee_domain", OVERLAY)], timeout=30)
    answer_call(alice)
    check(uac.wait() == 0 and counters(G)["from_public"] > before,
          "figure 7: carol calls alice@%s: kamailio finds the proxy peer by DNS, the call "
          "completes" % OVERLAY, uac.describe())


def test(h):
    named, kam = su.public_network(h)
    subprocess.run(["ip", "addr", "add", PUBLIC_IP + "/32", "dev", "lo"], check=True)
    cadir = os.path.join(h.rundir, "c0", "ca")
    os.makedirs(os.path.dirname(cadir), exist_ok=True)
    p2p.ca_tool("init", cadir, "--overlay", OVERLAY)
    u1 = make_users(h, "users1", {"alice": "pw-alice", "bob": "pw-bob"}, cadir=cadir)
    u2 = make_users(h, "users2", {"dave": "pw-dave"}, cadir=cadir)
    gw = ["--gateway", "--dns", "127.0.0.1", "--dns-update", "127.0.0.1", "--tsig", named.tsig]
    c = su.sip_cluster(h, N, secure=True, node_args={
        HOME: ["--users", u1, "--dns", "127.0.0.1"], HOME2: ["--users", u2],
        PLAIN: ["--no-loopback"], GW: gw})
    nodes = c.alive()
    A, B, P, G = nodes[HOME], nodes[HOME2], nodes[PLAIN], nodes[GW]
    p2p.wait_until(lambda: named.srv() or None, 15, "the proxy peer's SRV records in DNS")
    alice, bob = test_register(c, A, P, G)
    test_hijack(c, A, P, G, alice, bob)
    test_forged_record(c, A, P, bob)
    test_toll_fraud(c, A, P, G, kam)
    test_ssrf(c, A, P, alice)
    test_reflector(c, G)
    ports = su.pick_udp_tcp(6)
    test_fig5(c, A, B, alice)
    test_fig6(h, c, A, G, kam, alice, ports)
    test_fig7(h, c, A, G, kam, alice, ports)
    test_fig4(h, c, A, kam, alice, ports)
    for n, name in ((A, "home"), (P, "plain"), (G, "proxy peer")):
        info("%s: %s" % (name, {k: v for k, v in counters(n).items() if v and k in (
            "auth_challenges", "auth_ok", "auth_failed", "auth_wrong_user", "acks_absorbed",
            "no_users", "from_nodes", "relay_forbidden", "target_refused", "stateless_in_dialog")}))
    res = c.stop_all(timeout=5.0)
    check(all(code == 0 for code, _ in res.values()), "every node leaves cleanly", res)


if __name__ == "__main__":
    su.enter_netns(os.path.abspath(__file__))
    p2p.run("sip_edge", test, timeout=300)
