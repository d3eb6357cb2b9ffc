#!/usr/bin/env python3
"""A call for a user behind a NAT reaches her through the proxy peer
holding her node's flow (the edge) over TLS, also from a node whose list
of proxy peers does not name the edge yet (the secured mode).

The edge carries a request into the NAT for overlay nodes only (TLS with a
node certificate, sip/edge.c); a node takes the edge's TLS address from
the proxy peer list it last read (sip:OVERLAY in the DHT).  That list can
be older than the edge: a proxy peer reads it every 10 s, and its first
read, 2 s after it starts, may come before the other proxy peer's value;
another node reads it only when it needs a proxy peer.  With the edge
missing from the list, the request went to the edge's plain address, which
took it for a stranger's: 407 at a proxy peer with users, 403 Relay
forbidden at one without (scripts/demo's figure 7 failed so once: carol's
phone answered the 407 with her example.com password and got 403).  Now
the node reads the list again first.

Testbed: interwork.py's, secured, with n, a SIP node that is no proxy
peer (192.0.2.20:5060, public, no users), which has read no proxy peer
list; alice's phone (baresip) registered at b behind the NAT; a plain UA
in carol's namespace sends the INVITE for alice@OVERLAY to n."""

import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interwork as iw  # noqa: E402
import p2p  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import OVERLAY, check, info  # noqa: E402

TAG = "nedg"


def test(h):
    w = iw.World(h, TAG, secure=True, plain=1)  # plain=1: PLAIN_IP is up
    w.start()
    c = w.c
    n = c.add(iw.PLAIN_IP, 7100, "pub", w.sip_node_args(iw.PLAIN_IP), "n")
    c.launch(n, [w.a1])
    c.wait_up([n], 20)
    w.start_phones()
    edge = w.edge()
    before = su.sip_stats(n)
    check(before["proxy_peers_known"] == 0, "n has read no proxy peer list (it names %d peers)"
          % before["proxy_peers_known"], before)
    nodes = {"n": n, "a1": w.a1, "a2": w.a2}
    was = iw.sip_counters(nodes)
    what = "carol->alice@%s through n (b's edge %s)" % (OVERLAY, edge)
    alice = w.phones["alice"]
    ma = alice.mark()
    res = iw.invite_and_take_bye(w.net.ns["carol"], iw.CAROL_IP, 5080, (iw.PLAIN_IP, 5060),
                                 "sip:alice@" + OVERLAY, alice, what)
    after = su.sip_stats(n)
    moved = iw.counters_moved(was, iw.sip_counters(nodes))
    info("%s: %s; n names %d proxy peers now; counters moved %s" % (what, res["status"],
                                                                   after["proxy_peers_known"], moved))
    check(res["status"] == 200, "%s: answered 200" % what, res)
    alice.wait_event("CALL_CLOSED", 5, what, since=ma)
    check(after["counters"]["edge_unknown"] == before["counters"]["edge_unknown"] + 1
          and after["proxy_peers_known"] == 2,
          "%s: n read the proxy peer list for the edge (edge_unknown %d -> %d), which names both now"
          % (what, before["counters"]["edge_unknown"], after["counters"]["edge_unknown"]), after)
    check(moved.get(edge, {}).get("from_nodes") and moved[edge].get("proxied"),
          "%s: the edge %s took it from a node (TLS) and carried it in" % (what, edge), moved)


if __name__ == "__main__":
    su.enter_netns(os.path.abspath(__file__), required=True)  # root in CI: no namespaces is a failure
    p2p.run("sip_natedge", test, timeout=120)
