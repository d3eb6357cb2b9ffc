#!/usr/bin/env python3
"""Two sipp UAs register through two different nodes of a 16-node overlay;
an INVITE/180/200/ACK/BYE call between them completes.  The user record is
in the DHT (readable from any node) with the path of the node it came
through, both nodes record-route, in-dialog requests follow the route set,
and the admin socket shows the registration and the counters."""

import json
import time
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import OVERLAY, check, info  # noqa: E402

N = 16


def test(h):
    if not su.SIPP:
        p2p.skip("sipp is not installed")
    # alice's node keeps located records long enough for the moves below to
    # meet a stale one.
    c = su.sip_cluster(h, N, node_args={11: ["--sip-cache-ms", "30000"]})
    nodes = c.alive()
    bob_node, alice_node, other = nodes[3], nodes[11], nodes[7]
    ports = su.pick_udp_tcp(6)
    bob_reg, bob_uas, alice_uac = ports, ports + 1, ports + 2

    st = alice_node.status()
    check(st.get("sip") == su.sip_addr(c, alice_node) and "sip" in st.get("roles", []),
          "status shows the sip role and address", {k: st.get(k) for k in ("sip", "roles")})

    rc, s = su.sipp_register(h, su.sip_addr(c, bob_node), "bob", bob_uas, bob_reg, expires=120)
    check(rc == 0, "bob REGISTERs through %r: 200" % bob_node, s.describe())
    ok200 = [m for m in s.messages() if m.is_response and m.status == 200]
    contacts = ok200[0].all("contact") if ok200 else []
    check(len(contacts) == 1 and ("127.0.0.1:%d" % bob_uas) in contacts[0] and
          "expires=" in contacts[0], "the 200 lists bob's binding with its expiry", contacts)

    regs = su.registrations(bob_node)
    check(any(r.get("aor") == "sip:bob@" + OVERLAY and str(bob_uas) in r.get("contact", "")
              for r in regs), "registrations on bob's node show the binding", regs)

    vals = p2p.get_values(other, "sip:bob@" + OVERLAY)
    bodies = [v.get("value") if isinstance(v.get("value"), dict) else json.loads(v.get("value", "{}"))
              for v in vals]
    check(len(bodies) == 1 and bodies[0].get("path") == "sip:" + su.sip_addr(c, bob_node) and
          bodies[0].get("cseq") == 1, "the user record is in the DHT with bob's node as path",
          vals)

    uas = su.Sipp(h, "bob-uas", su.UAS_XML, None, bob_uas, timeout=30)
    uac = su.Sipp(h, "alice-uac", su.uac_xml(hold_ms=500), su.sip_addr(c, alice_node), alice_uac,
                  keys=[("user", "alice"), ("domain", OVERLAY), ("callee", "bob"),
                        ("callee_domain", OVERLAY)], timeout=30)
    rc_uac, rc_uas = uac.wait(), uas.wait()
    check(rc_uac == 0, "alice's call through %r completes (INVITE/200/ACK/BYE/200)" % alice_node,
          uac.describe())
    check(rc_uas == 0, "bob's UA saw INVITE, ACK and BYE", uas.describe())

    msgs = uac.messages()
    ok = [m for m in msgs if m.is_response and m.status == 200 and m.cseq_method() == "INVITE"]
    rr = ok[0].all("record-route") if ok else []
    want = ["<sip:%s;lr>" % su.sip_addr(c, bob_node), "<sip:%s;lr>" % su.sip_addr(c, alice_node)]
    check(rr == want, "both nodes record-route (bob's nearest bob)", rr)
    bye = [m for m in msgs if m.method == "BYE"]
    check(bye and bye[0].all("route") == list(reversed(want)), "the BYE follows the route set",
          bye[0].all("route") if bye else None)

    sa, sb = su.sip_stats(alice_node), su.sip_stats(bob_node)
    info("alice's node: %s" % json.dumps(sa.get("counters")))
    check(sa["counters"]["lookups"] >= 1 and sa["counters"]["proxied"] >= 3,
          "alice's node looked bob up and proxied INVITE, ACK and BYE", sa["counters"])
    check(sb["registrations"] == 1 and sb["counters"]["register_ok"] == 1,
          "bob's node holds one registration", sb)
    check(sb["counters"]["stateless_forwarded"] >= 3,
          "bob's node, the last hop to his phone, forwarded INVITE, ACK and BYE without transactions",
          sb["counters"])
    moved(h, c, alice_node, bob_node, other, ports)
    dead_home(c, nodes[5], [n for i, n in enumerate(nodes) if i in (0, 1, 2, 4, 6, 8, 9, 10)])


def call(h, c, alice_node, uas_port, uac_port, name):
    uas = su.Sipp(h, name + "-uas", su.UAS_XML, None, uas_port, timeout=30)
    uac = su.Sipp(h, name + "-uac", su.uac_xml(hold_ms=200), su.sip_addr(c, alice_node), uac_port,
                  keys=[("user", "alice"), ("domain", OVERLAY), ("callee", "bob"),
                        ("callee_domain", OVERLAY)], timeout=30)
    return uac.wait(), uas.wait(), uac


def moved(h, c, alice_node, bob_node, other, ports):
    """alice's node reuses bob's record from its cache, and a stale one
    (bob moved to another node and contact) costs no failed call: the dead
    branch sends it back to the DHT."""
    bob_reg, bob_uas, alice_uac, bob_uas2 = ports, ports + 1, ports + 2, ports + 3
    before = su.sip_stats(alice_node)["counters"]
    rc_uac, rc_uas, _ = call(h, c, alice_node, bob_uas, alice_uac, "again")
    after = su.sip_stats(alice_node)["counters"]
    check(rc_uac == 0 and rc_uas == 0 and after["lookups_cached"] > before["lookups_cached"],
          "a second call reuses the record alice's node located for the first",
          (rc_uac, rc_uas, before.get("lookups_cached"), after.get("lookups_cached")))
    rc1, _ = su.sipp_register(h, su.sip_addr(c, other), "bob", bob_uas2, bob_reg, expires=120)
    rc2, _ = su.sipp_register(h, su.sip_addr(c, bob_node), "bob", bob_uas, bob_reg, expires=0, cseq=2)
    check(rc1 == 0 and rc2 == 0, "bob moves: registers through %r, unregisters at %r" % (other, bob_node))
    rc_uac, rc_uas, uac = call(h, c, alice_node, bob_uas2, alice_uac, "moved")
    end = su.sip_stats(alice_node)["counters"]
    check(rc_uac == 0 and rc_uas == 0, "the next call reaches bob at his new contact", uac.describe())
    check(end["lookups_stale"] >= 1, "it went to the stale record first, then back to the DHT",
          {k: end.get(k) for k in ("lookups", "lookups_cached", "lookups_stale")})


def dead_home(c, home, via):
    """A phone's home node is killed: each node a request for the phone
    goes through forwards it to the dead node's port and gets back an ICMP
    port unreachable.  The kernel gives it to one of the node's two UDP
    sockets by hash (sip/regsock.c: the REGISTER socket takes about half),
    and either way nta fails the branch at once, not after 32 s.  The
    REGISTER sockets that took one still serve."""
    dora, alice = su.Ua("dora"), su.Ua("alice")
    check(dora.register(su.sip_dest(c, home), expires=120).status == 200,
          "dora registers through %r" % home, "")
    c.kill(home)
    ruri = "sip:dora@" + OVERLAY
    slow = []
    for n in via:
        t0 = time.monotonic()
        try:
            st = alice.do(su.sip_dest(c, n), "MESSAGE", ruri=ruri, to="<%s>" % ruri, body="hi",
                          timeout=10).status
        except p2p.Failure:
            st = None
        ms = (time.monotonic() - t0) * 1000
        if st is None or st < 300 or ms > 3000:
            slow.append((str(n), st, round(ms)))
    check(not slow, "a MESSAGE toward the killed home node fails within 3 s at each of %d "
          "nodes" % len(via), slow)
    dead = []
    for i, n in enumerate(via):
        ua = su.Ua("reg%d" % i)
        st = ua.register(su.sip_dest(c, n), expires=60).status
        ua.close()
        if st != 200:
            dead.append((str(n), st))
    check(not dead, "and each of them still registers phones", dead)
    dora.close(), alice.close()


if __name__ == "__main__":
    p2p.run("sip_call", test, timeout=150)
