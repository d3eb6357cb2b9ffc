#!/usr/bin/env python3
"""Real phones with audio through the overlay's relay agent peers (spec
3.2, 3.3.2, figures 5, 6, 7 and 4), baresip 1.0 provisioned by
`phone-config`, in the open mode on the smallest testbed of
interwork.py (three nodes: two proxy peers and relays, alice's home node
behind a NAT; see there for the network):
  1. alice calls bob@overlay.test (figure 5): both phones relay through
     the relay their config named;
  2. alice calls carol@example.com (figure 6) through a proxy peer;
  3. carol calls alice@overlay.test (figure 7): her phone finds a proxy
     peer by RFC 3263 in DNS; and a plain UA of hers calls alice through
     the proxy peer that is not alice's node's edge;
  4. alice binds sip:alice@example.com to her overlay URI through her home
     node and a proxy peer (spec 4.2), and carol calls alice@example.com
     (figure 4).
scripts/demo shows the same calls in the secured mode with 33 nodes
(tests/integration/test_demo.py)."""

import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import interwork  # noqa: E402
import p2p  # noqa: E402
import sip_util as su  # noqa: E402

TAG = "phn"  # names live in the test's own namespaces: nothing to clash with


def test(h):
    w = interwork.World(h, TAG)
    w.start()
    w.start_phones()
    w.fig5()
    w.fig6()
    w.fig7()
    w.fig7_other()
    w.fig4()


if __name__ == "__main__":
    su.enter_netns(os.path.abspath(__file__), required=True)  # root in CI: no namespaces is a failure
    p2p.run("sip_phones", test, timeout=150)
