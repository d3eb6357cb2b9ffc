#!/usr/bin/env python3
"""The SIP edge in the secured mode (TLS peer links, signed values):

- phones register with digest at their home node, which signs their
  records with the user's certificate (the DHT takes no other: a user
  record signed by a node is refused); unregistering removes them;
- a node without --users serves no phones (403, counted);
- a binding a node stored under a user's name (a value of another kind,
  which the DHT lets any node store) is not taken;
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import HOST, OVERLAY, check, info  # noqa: E402
from sip_auth import counters, make_users  # noqa: E402

N = 5
HOME, OTHER, PLAIN = 0, 1, 2


def test_register(c, A, P):
    alice = su.Ua("alice")
    r, first = alice.do_auth(su.sip_dest(c, A), "REGISTER", "pw-alice", headers=["Expires: 60"])
    check(first is not None and first.status == 401 and r.status == 200,
          "alice registers with digest at her home node (401, then 200)", r.status)
    vals = p2p.wait_until(lambda: p2p.get_values(P, "sip:alice@" + OVERLAY) or None, 10,
                          "alice's record readable through another node")
    check(len(vals) == 1 and vals[0]["value"]["uri"] == "sip:alice@%s:%d" % (HOST, alice.port),
          "her record is in the DHT, signed with her certificate (the access rules take no other)",
          vals)
    r = alice.register(su.sip_dest(c, P), expires=60)
    check(r.status == 403 and counters(P)["no_users"] >= 1,
          "a node without --users serves no phones: 403, counted", (r.status, r.reason))
    bob = su.Ua("bob")
    r, _ = bob.do_auth(su.sip_dest(c, A), "REGISTER", "pw-bob", headers=["Expires: 60"])
    check(r.status == 200, "bob registers too", r.status)
    return alice, bob


def test_call(c, A, alice, bob):
    dest = su.sip_dest(c, A)
    ruri = "sip:alice@" + OVERLAY
    cid, _ = bob.do_auth(dest, "MESSAGE", "pw-bob", ruri=ruri, to="<%s>" % ruri, wait=False,
                         body="hello")
    m = alice.recv_request("MESSAGE")
    alice.respond(m, 200, "OK")
    check(bob.final(cid, "MESSAGE").status == 200, "bob's MESSAGE reaches alice", "")


def test_forged_record(c, A, P, bob):
    """A node stores a binding for carol as a plain JSON value (any node may
    store values of other kinds under a user's name): nobody takes it."""
    mallory = su.Ua("mallory")
    fake = {"aor": "sip:carol@" + OVERLAY, "contact": "<sip:carol@%s:%d>" % (HOST, mallory.port),
            "uri": "sip:carol@%s:%d" % (HOST, mallory.port), "expires": 600, "q": 1000,
            "call_id": "x", "cseq": 1, "path": "sip:" + su.sip_addr(c, P), "node": P.id,
            "received": "", "transport": "udp"}
    P.admin_ok({"cmd": "put", "key": "sip:carol@" + OVERLAY, "value": fake, "ttl": 600})
    ruri = "sip:carol@" + OVERLAY
    r, _ = bob.do_auth(su.sip_dest(c, A), "MESSAGE", "pw-bob", ruri=ruri, to="<%s>" % ruri)
    check(r.status == 404, "a binding stored by a node, not by the user: not taken (404)", r.status)
    mallory._poll(0.5)
    check(not mallory.queue, "and nothing reached the address it named", mallory.queue)


def test_unregister(c, A, P, alice):
    r, _ = alice.do_auth(su.sip_dest(c, A), "REGISTER", "pw-alice", headers=["Expires: 0"],
                         call_id="unreg-alice")
    check(r.status == 200, "alice unregisters (the removal signed with her certificate)", r.status)
    p2p.wait_until(lambda: not p2p.get_values(P, "sip:alice@" + OVERLAY) or None, 10,
                   "alice's record gone from the DHT")


def test(h):
    cadir = os.path.join(h.rundir, "c0", "ca")
    os.makedirs(os.path.dirname(cadir), exist_ok=True)
    p2p.ca_tool("init", cadir, "--overlay", OVERLAY)
    users = make_users(h, "users", {"alice": "pw-alice", "bob": "pw-bob"}, cadir=cadir)
    c = su.sip_cluster(h, N, node_args={HOME: ["--users", users]}, secure=True)
    nodes = c.alive()
    A, P = nodes[HOME], nodes[PLAIN]
    alice, bob = test_register(c, A, P)
    test_call(c, A, alice, bob)
    test_forged_record(c, A, P, bob)
    test_unregister(c, A, P, alice)


if __name__ == "__main__":
    p2p.run("sip_edge", test, timeout=240)
