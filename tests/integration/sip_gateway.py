#!/usr/bin/env python3
"""Interworking with a conventional SIP network (spec 3.1, 4.2, 5.2, 5.3),
all inside a private network namespace: named serves example.com (NAPTR/SRV/A
to kamailio) and the overlay zone, which the proxy peers fill by RFC 2136
UPDATE with TSIG, each with a key of its own that the zone's update-policy
(docs/named-overlay.conf) lets write only its own name and the SRV records;
kamailio is example.com's proxy and registrar.

- proxy peers publish SRV/A for the overlay in DNS;
- overlay -> public: alice (ordinary node) calls carol@example.com through a
  proxy peer found in the DHT; kamailio checks Record-Route <sip:OVERLAY;lr>
  and no proxy peer's own address is in the route set;
- public -> overlay: carol calls bob@OVERLAY; kamailio finds a proxy peer by
  RFC 3263; that proxy peer is killed mid-call and the BYE still completes;
  its DNS records are gone within 2 s, and a new call from carol right
  after the first completes (before: kamailio sent the new call's ACK for
  the 2xx to the dead peer, whose records stayed 30-50 s, and bob never
  got it);
- public AOR (4.2): alice registers sip:alice@example.com with her overlay
  URI as contact through a proxy peer, the digest challenge passing through;
  carol calls alice@example.com and reaches her in the overlay;
- a proxy peer that leaves gracefully withdraws its DNS records."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import HOST, OVERLAY, check, info  # noqa: E402

N = 6
GATEWAYS = (1, 2, 3)


def counters(node):
    return su.sip_stats(node)["counters"]


def overlay_to_public(h, c, kam, alice_node, gw_addrs, ports):
    carol_reg, carol_uas, alice_uac = ports, ports + 1, ports + 2
    rc, s = su.sipp_register_auth(h, kam.addr, "carol", "<sip:carol@%s:%d>" % (HOST, carol_uas),
                                  carol_reg, name="carol-reg")
    check(rc == 0, "carol registers at kamailio (digest)", s.describe())
    uas = su.Sipp(h, "carol-uas", su.UAS_XML, None, carol_uas, timeout=30)
    uac = su.Sipp(h, "alice-to-carol", su.uac_xml(500), su.sip_addr(c, alice_node), alice_uac,
                  keys=[("user", "alice"), ("domain", OVERLAY), ("callee", "carol"),
                        ("callee_domain", "example.com")], timeout=30)
    rc_uac, rc_uas = uac.wait(), uas.wait()
    check(rc_uac == 0 and rc_uas == 0, "alice (overlay) calls carol@example.com: call completes",
          (uac.describe(), uas.describe()))
    inv = [m for m in uac.messages() if m.method == "INVITE"]
    cid = inv[0].get("call-id") if inv else None
    check(kam.log_lines(r"OVERLAY-RR-OK ci=%s" % cid) and not kam.log_lines("OVERLAY-RR-MISSING"),
          "kamailio saw Record-Route <sip:%s;lr> on the INVITE from the overlay" % OVERLAY,
          kam.log_lines("OVERLAY-RR"))
    ok = [m for m in uac.messages() if m.is_response and m.status == 200 and
          m.cseq_method() == "INVITE"]
    rr = ok[0].all("record-route") if ok else []
    check("<sip:%s;lr>" % OVERLAY in rr and not any(g in r for r in rr for g in gw_addrs),
          "the route set names the overlay, never a proxy peer's own address", rr)


def public_to_overlay(h, c, kam, named, bob_node, gws, ports):
    bob_reg, bob_uas, carol_uac = ports + 3, ports + 4, ports + 5
    rc, s = su.sipp_register(h, su.sip_addr(c, bob_node), "bob", bob_uas, bob_reg)
    check(rc == 0, "bob registers in the overlay", s.describe())
    before = {g.index: counters(g)["from_public"] for g in gws}
    uas = su.Sipp(h, "bob-uas", su.UAS_XML, None, bob_uas, timeout=40)
    uac = su.Sipp(h, "carol-to-bob", su.uac_xml(hold_ms=5000), kam.addr, carol_uac,
                  keys=[("user", "carol"), ("domain", "example.com"), ("callee", "bob"),
                        ("callee_domain", OVERLAY)], timeout=40)

    def carrier():
        for g in gws:
            if counters(g)["from_public"] > before[g.index]:
                return g
        return None
    g = p2p.wait_until(carrier, 10, "a proxy peer carried carol's INVITE")
    uas.wait_received("ACK")  # the call is up; the BYE comes 5 s later
    info("killing proxy peer %r mid-call" % g)
    port = " %d " % su.sip_port(c, g)
    t0 = time.monotonic()
    c.kill(g)
    check(not uas.received("BYE"), "its proxy peer killed mid-call, before the BYE")
    p2p.wait_until(lambda: not any(port in r for r in named.srv()), 60,
                   "the killed proxy peer's SRV records gone", interval=0.05,
                   describe=lambda x: named.srv())
    took = time.monotonic() - t0
    check(took <= 2.0, "the killed proxy peer's records leave DNS within 2 s (%.2f s)" % took)
    rc_uac, rc_uas = uac.wait(), uas.wait()
    check(rc_uac == 0 and rc_uas == 0,
          "carol (public) calls bob@%s; with its proxy peer killed mid-call the BYE completes"
          % OVERLAY, (uac.describe(), uas.describe()))
    ok = [m for m in uac.messages() if m.is_response and m.status == 200 and
          m.cseq_method() == "INVITE"]
    rr = ok[0].all("record-route") if ok else []
    check("<sip:%s;lr>" % OVERLAY in rr, "the INVITE's route set names the overlay", rr)
    byes = kam.log_lines(r"REQ BYE .*ci=%s" % (ok[0].get("call-id") if ok else "none"))
    check(byes, "the BYE went through kamailio along <sip:%s;lr>" % OVERLAY, byes)
    uas = su.Sipp(h, "bob-uas2", su.UAS_XML, None, bob_uas, timeout=30)
    uac = su.Sipp(h, "carol-to-bob2", su.uac_xml(500), kam.addr, ports + 13,
                  keys=[("user", "carol"), ("domain", "example.com"), ("callee", "bob"),
                        ("callee_domain", OVERLAY)], timeout=30)
    rc_uac, rc_uas = uac.wait(), uas.wait()
    check(rc_uac == 0 and rc_uas == 0,
          "then a new call from carol to bob@%s completes (bob gets the ACK)" % OVERLAY,
          (uac.describe(), uas.describe()))
    return g


def overlay_failover(h, c, kam, alice_node, gws, ports):
    """alice calls carol again; the proxy peer carrying the call is killed;
    alice's node sends the BYE to another proxy peer (one from the DHT list,
    failing over past the dead ones)."""
    carol_uas, alice_uac = ports + 10, ports + 11
    rc, s = su.sipp_register_auth(h, kam.addr, "carol", "<sip:carol@%s:%d>" % (HOST, carol_uas),
                                  ports + 12, name="carol-reg2")
    check(rc == 0, "carol registers again", s.describe())
    live = [g for g in gws if g.running(c.binary)]
    before = {g.index: counters(g)["to_public"] for g in live}
    uas = su.Sipp(h, "carol-uas2", su.UAS_XML, None, carol_uas, timeout=40)
    uac = su.Sipp(h, "alice-to-carol2", su.uac_xml(hold_ms=5000), su.sip_addr(c, alice_node),
                  alice_uac, keys=[("user", "alice"), ("domain", OVERLAY), ("callee", "carol"),
                                   ("callee_domain", "example.com")], timeout=40)

    def carrier():
        for g in live:
            if counters(g)["to_public"] > before[g.index]:
                return g
        return None
    g = p2p.wait_until(carrier, 15, "a proxy peer carried alice's INVITE")
    uas.wait_received("ACK")
    info("killing proxy peer %r mid-call" % g)
    c.kill(g)
    check(not uas.received("BYE"), "its proxy peer killed mid-call, before the BYE")
    rc_uac, rc_uas = uac.wait(), uas.wait()
    check(rc_uac == 0 and rc_uas == 0,
          "alice's call to carol survives the loss of its proxy peer: the BYE fails over",
          (uac.describe(), uas.describe()))
    return g


def public_aor(h, c, kam, alice_node, gw, ports):
    alice_reg, alice_uas, alice_pub, carol_uac = ports + 6, ports + 7, ports + 8, ports + 9
    rc, s = su.sipp_register(h, su.sip_addr(c, alice_node), "alice", alice_uas, alice_reg)
    check(rc == 0, "alice registers in the overlay (4.1)", s.describe())
    rc, s = su.sipp_register_auth(h, su.sip_addr(c, gw), "alice", "<sip:alice@%s>" % OVERLAY,
                                  alice_pub, name="alice-public-reg")
    msgs = s.messages()
    ch = [m for m in msgs if m.is_response and m.status == 401]
    check(rc == 0 and ch and 'realm="example.com"' in (ch[0].get("www-authenticate") or ""),
          "alice registers sip:alice@example.com -> <sip:alice@%s> through proxy peer %r; "
          "kamailio's 401 challenge reaches her and her answer is accepted" % (OVERLAY, gw),
          s.describe())
    uas = su.Sipp(h, "alice-uas", su.UAS_XML, None, alice_uas, timeout=30)
    uac = su.Sipp(h, "carol-to-alice", su.uac_xml(500), kam.addr, carol_uac,
                  keys=[("user", "carol"), ("domain", "example.com"), ("callee", "alice"),
                        ("callee_domain", "example.com")], timeout=30)
    rc_uac, rc_uas = uac.wait(), uas.wait()
    check(rc_uac == 0 and rc_uas == 0,
          "carol calls sip:alice@example.com and reaches alice in the overlay",
          (uac.describe(), uas.describe()))


def test(h):
    named, kam = su.public_network(h)

    def args(ids):
        """Each proxy peer gets a key of its own (docs/DNS.md)."""
        out = {i: ["--dns", "127.0.0.1"] + (["--gateway", "--dns-update", "127.0.0.1", "--tsig",
                                             named.peer_tsig(ids[i])] if i in GATEWAYS else [])
               for i in range(len(ids))}
        named.reload()
        return out
    c = su.sip_cluster(h, N, node_args=args)
    nodes = c.alive()
    gws = [nodes[i] for i in GATEWAYS]
    gw_addrs = [su.sip_addr(c, g) for g in gws]
    st = gws[0].status()
    check("gateway" in st.get("roles", []), "proxy peers show the gateway role", st.get("roles"))

    want = sorted("10 10 %d" % su.sip_port(c, g) for g in gws)
    got = p2p.wait_until(lambda: [r for r in named.srv() if r.startswith("10 10")]
                         if len(named.srv()) == len(gws) else None, 15,
                         "SRV records of the proxy peers in DNS", describe=lambda x: named.srv())
    check(sorted(" ".join(r.split()[:3]) for r in got) == want,
          "every proxy peer added its _sip._udp SRV by TSIG-signed UPDATE", got)
    check(len(named.srv("tcp")) == len(gws), "and its _sip._tcp SRV", named.srv("tcp"))
    target = got[0].split()[3]
    check(named.query(target, "A") == ["127.0.0.1"], "and the A record of the SRV target", target)
    vals = p2p.wait_until(lambda: [v for v in p2p.get_values(nodes[0], "sip:" + OVERLAY)]
                          if len(p2p.get_values(nodes[0], "sip:" + OVERLAY)) == len(gws) else None,
                          15, "proxy peer values in the DHT",
                          describe=lambda x: p2p.get_values(nodes[0], "sip:" + OVERLAY))
    uris = sorted(v["value"]["uri"] for v in vals if isinstance(v.get("value"), dict))
    check(uris == sorted("sip:" + a for a in gw_addrs),
          "every proxy peer is published under sip:%s in the DHT" % OVERLAY, vals)

    ports = su.pick_udp_tcp(14)
    overlay_to_public(h, c, kam, nodes[0], gw_addrs, ports)
    public_aor(h, c, kam, nodes[5], gws[0], ports)
    # Last, as they kill proxy peers.
    dead = public_to_overlay(h, c, kam, named, nodes[4], gws, ports)
    dead2 = overlay_failover(h, c, kam, nodes[0], gws, ports)
    alive = [g for g in gws if g is not dead and g is not dead2]
    st = counters(nodes[0])
    info("alice's node: via_peer %d, peer_failover %d" % (st["via_peer"], st["peer_failover"]))

    leaver = alive[0]
    port = su.sip_port(c, leaver)
    c.stop(leaver)
    gone = p2p.wait_until(lambda: not any(" %d " % port in r for r in named.srv()), 10,
                          "the leaving proxy peer's SRV is withdrawn", describe=lambda x: named.srv())
    check(gone, "a proxy peer that leaves removes its SRV records", named.srv())
    # Stop the nodes while named still runs (the harness stops helpers first).
    res = c.stop_all(timeout=5.0)
    check(all(code == 0 for code, _ in res.values()), "every node leaves cleanly", res)


if __name__ == "__main__":
    su.enter_netns(os.path.abspath(__file__))
    p2p.run("sip_gateway", test, timeout=240)
