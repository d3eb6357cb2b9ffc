#!/usr/bin/env python3
"""Real phones with audio through the overlay's relay agent peers (spec
3.2, 3.3.2, figures 5, 6, 7 and 4), baresip 1.0 provisioned by
`phone-config`.

Everything runs in private network, mount and PID namespaces
(sip_util.enter_netns): the namespace the test starts in is the public
segment (192.0.2.0/24) with named and kamailio (example.com) on its
loopback; a masquerading router (netns.Nat) puts alice's home behind a
NAT (198.51.100.0/24).

- a1 (192.0.2.2) and a2 (192.0.2.3): public nodes, proxy peers (DNS
  registration by TSIG UPDATE) and relay agent peers (TURN);
- b (198.51.100.2), alice's home node behind the NAT: not public, it keeps
  a flow to a proxy peer and mints TURN credentials;
- alice: baresip behind the NAT, registered through b; bob: baresip on the
  public segment registered through a2; carol: baresip registered at
  kamailio as carol@example.com.

Each phone's account line comes from `phone-config` on its home node
(carol's, a conventional SIP phone's, is written here).  Each phone sends
a tone (alice 440 Hz, bob 880 Hz, carol 660 Hz) and records what it
decodes; each call is answered automatically, carries audio for a few
seconds, and is checked by the frequency each side heard, by the relays'
per-allocation counters while it is up, and by the route it took.
  1. alice calls bob@overlay.test (figure 5): both phones relay through
     the relay their config named;
  2. alice calls carol@example.com (figure 6) through a proxy peer;
  3. carol calls alice@overlay.test (figure 7): her phone finds a proxy
     peer by RFC 3263 in DNS;
  4. alice binds sip:alice@example.com to her overlay URI through a proxy
     peer (spec 4.2), and carol calls alice@example.com (figure 4).
"""

import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import netns  # noqa: E402
import p2p  # noqa: E402
import phones  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import OVERLAY, check, info  # noqa: E402

TAG = "phn"  # names live in the test's own namespaces: nothing to clash with
SECRET = "overlay-secret"
A1, A2, B = "192.0.2.2", "192.0.2.3", "198.51.100.2"
EXAMPLE_COM = "192.0.2.5"  # named (DNS for example.com and the overlay) and kamailio
BOB_IP, CAROL_IP = "192.0.2.10", "192.0.2.11"
NAT_IP = netns.ROUTER_PUBLIC
TONES = {"alice": 440, "bob": 880, "carol": 660}
TALK_S = 3.0


class Nodes(p2p.Cluster):
    """Nodes on both sides of the NAT: node i runs on side where[i] with
    extra arguments args[i]."""

    def __init__(self, rundir, binary, net):
        super().__init__(rundir, binary, secure=False)
        self.net, self.where, self.args = net, {}, {}

    def add(self, ip, port, where, args):
        n = p2p.Node(len(self.nodes), port, self.rundir, host=ip)
        self.nodes.append(n)
        self.where[n.index], self.args[n.index] = where, list(args)
        return n

    def argv(self, node, bootstrap):
        return self.net.prefix(self.where[node.index]) + super().argv(node, bootstrap) + self.args[node.index]


def relay_args(ip, other, port_base):
    # The relay refuses special-purpose peers (TEST-NET-1 among them) by
    # default: open the testbed's public addresses the calls need (the
    # NAT, the phones, the other relay), not the node's own.
    return ["--relay", "--turn", "%s:3478" % ip, "--turn-secret", SECRET, "--relay-ports",
            "%d-%d" % (port_base, port_base + 199), "--relay-allow-peers",
            "%s/32,%s/32,192.0.2.8/29" % (NAT_IP, other)]


# The testbed's addresses are special-purpose ranges (TEST-NET-1 and -2),
# which a node refuses as SIP targets unless told (sip/README.md "The edge").
ALLOW_TARGETS = ["--sip-allow-targets", "192.0.2.0/24,198.51.100.0/24"]


def start_overlay(h, net, named):
    c = Nodes(os.path.join(h.rundir, "nodes"), h.binary, net)
    h.clusters.append(c)
    gw = ALLOW_TARGETS + ["--gateway", "--public", "yes", "--dns", EXAMPLE_COM, "--dns-update", EXAMPLE_COM,
          "--tsig", named.tsig]
    a1 = c.add(A1, 7000, "pub", ["--sip", A1 + ":5060"] + gw + relay_args(A1, A2, 40000))
    a2 = c.add(A2, 7000, "pub", ["--sip", A2 + ":5060"] + gw + relay_args(A2, A1, 40000))
    b = c.add(B, 7000, "priv", ["--sip", B + ":5060", "--public", "no", "--turn-secret", SECRET] + ALLOW_TARGETS)
    c.launch(a1)
    c.wait_up([a1], 15, joined=False)
    c.launch(a2, [a1])
    c.launch(b, [a1])
    c.wait_up([a2, b], 20)
    return c, a1, a2, b


def phone_config(node, user):
    """The node's phone-config answer (json format and the baresip line)."""
    r = node.admin({"cmd": "phone-config", "user": user, "format": "baresip"}, timeout=10)
    check(r.get("ok") and r.get("account"), "phone-config %s on %r answers an account line" % (user, node), r)
    return r


def account(cfg):
    """The account line a test phone uses: phone-config's, answering calls
    at once.  (Digest credentials, once the overlay asks for them, go
    here: ";auth_pass=...".)"""
    return cfg["account"] + ";answermode=auto"


def relay_allocs(node):
    st = node.admin_ok({"cmd": "relay"})["relay"]
    return st["allocation_list"]


def alloc_of(node, user):
    """The live allocation of user (the NAME of EXPIRY:NAME) on a relay."""
    for a in relay_allocs(node):
        if a["user"].split(":", 1)[-1] == user:
            return a
    return None


def relay_node(nodes, addr):
    for n in nodes:
        if addr.startswith(n.host + ":"):
            return n
    raise p2p.Failure("no relay node at %s" % addr)


def talk(caller, callee, uri, relays, what):
    """caller dials uri; callee answers (answermode=auto); both ends say
    CALL_ESTABLISHED; after TALK_S the relays' allocations are read (a
    dict user -> relay node: the allocations that must be relaying), the
    caller hangs up, both ends close.  Returns (setup seconds, the
    allocations by user, each side's recording analysed)."""
    mc, md = caller.mark(), callee.mark()
    t0 = time.monotonic()
    caller.dial(uri)
    caller.wait_event("CALL_ESTABLISHED", 15, what, since=mc)
    callee.wait_event("CALL_ESTABLISHED", 5, what, since=md)
    setup = time.monotonic() - t0
    # Audio both ways: each side has received RTP.
    caller.wait_event("CALL_RTPESTAB", 10, what, since=mc)
    callee.wait_event("CALL_RTPESTAB", 5, what, since=md)
    media = time.monotonic() - t0
    time.sleep(TALK_S)
    allocs = {u: alloc_of(n, u) for u, n in relays.items()}
    caller.hangup()
    caller.wait_event("CALL_CLOSED", 5, what, since=mc)
    callee.wait_event("CALL_CLOSED", 5, what, since=md)
    info("%s: dial to both ends closed in %.1fs" % (what, time.monotonic() - t0))
    heard = {}
    for p in (caller, callee):
        recs = p.archive_recordings(what.split()[0] + "-%d" % int(t0))
        dec = [r for r in recs if r.endswith("-dec.wav")]
        heard[p.name] = phones.analyse(dec[-1], sorted(set(TONES.values()))) if dec else None
    return (setup, media), allocs, heard


def check_heard(heard, listener, speaker, what):
    """The listener's recording: the speaker's tone (sent at amplitude 0.5:
    rms 0.35, power 0.0625), over most of the talk, not the others'."""
    a = heard.get(listener)
    want = TONES[speaker]
    check(a and a["seconds"] >= TALK_S - 0.5 and a["coverage"] >= 0.9 and a["dominant"] == want
          and a["power"][want] > 0.03 and all(a["power"][want] > 100 * v for f, v in a["power"].items()
                                              if f != want),
          "%s: %s heard %s's %d Hz tone (%.1f s, %.0f%% of it loud)" % (
              what, listener, speaker, want, a["seconds"] if a else 0, 100 * a["coverage"] if a else 0), a)


def check_relayed(allocs, what, min_packets=100):
    for user, a in allocs.items():
        check(a and a["to_peers"] >= min_packets and a["to_client"] >= min_packets,
              "%s: %s's allocation relayed both ways (to peers %s, to the phone %s)"
              % (what, user, a and a["to_peers"], a and a["to_client"]), a)


CAROL_ACCOUNT = "<sip:carol@example.com>;auth_pass=secret;answermode=auto"


def gw_counters(gws, name):
    return {k: su.sip_stats(n)["counters"][name] for k, n in gws.items()}


def boundary(caller, callee, uri, relay, gws, kam, what, counter):
    """A call across the overlay's boundary: alice's allocation on relay
    carries the audio both ways (carol has no relay), each side hears the
    other, and the proxy peer that carried it counted it (counter:
    to_public or from_public); a call from the overlay reaches kamailio
    with Record-Route <sip:OVERLAY;lr>."""
    before, rr = gw_counters(gws, counter), len(kam.log_lines("OVERLAY-RR-OK"))
    setup, allocs, heard = talk(caller, callee, uri, {"alice": relay}, what)
    after = gw_counters(gws, counter)
    carried = [k for k in gws if after[k] > before[k]]
    info("%s: answered in %.2fs, audio both ways after %.2fs; proxy peer %s, alice's relay %s"
         % (what, setup[0], setup[1], carried, relay.host))
    check(len(carried) == 1, "%s went through one proxy peer (%s)" % (what, counter), (before, after))
    if counter == "to_public":
        check(len(kam.log_lines("OVERLAY-RR-OK")) > rr,
              "%s: kamailio saw Record-Route <sip:%s;lr> on the INVITE" % (what, OVERLAY),
              kam.log_lines("OVERLAY-RR"))
    check_relayed(allocs, what)
    for listener in (caller, callee):
        speaker = callee if listener is caller else caller
        check_heard(heard, listener.name, speaker.name, what)


def test(h):
    if not os.access(phones.BARESIP, os.X_OK):
        raise p2p.Failure("baresip is not installed (scripts/install-deps installs it)")
    for tool in (su.SIPP, su.KAMAILIO, su.NAMED):
        if not tool or not os.access(tool, os.X_OK):
            raise p2p.Failure("%s is not installed" % tool)
    netns.private_run_dir()
    net = netns.Nat(TAG, public_ns=False)
    net.setup(public_addrs=(A1, A2, EXAMPLE_COM), private_addrs=(B,))
    net.add_host("bob", [BOB_IP])
    net.add_host("carol", [CAROL_IP])
    su.private_resolv_conf(h.rundir)
    named = su.Named(h, 5060, listen=[EXAMPLE_COM], kam_ip=EXAMPLE_COM)
    kam = su.Kamailio(h, 5060, host=EXAMPLE_COM)
    c, a1, a2, b = start_overlay(h, net, named)
    relays = {a1, a2}
    p2p.wait_until(lambda: len(b.admin_ok({"cmd": "relays"})["relays"]) == 2, 15,
                   "alice's node behind the NAT lists both relays")
    flow = p2p.wait_until(lambda: (lambda f: f if f.get("state") == "up" else None)(
        b.admin_ok({"cmd": "sip"})["sip"]["flow"]), 30, "b keeps a flow to a proxy peer")
    info("namespaces, named, kamailio, 3 nodes and b's flow to %s up after %.1fs" % (flow["peer"], h.elapsed()))

    acfg, bcfg = phone_config(b, "alice"), phone_config(a2, "bob")
    info("alice: %s" % acfg["account"])
    alice = phones.Phone("alice", h.rundir, B, 5070, 4444, [account(acfg)], TONES["alice"],
                         prefix=net.prefix("priv"), rtp=(10000, 10099))
    bob = phones.Phone("bob", h.rundir, BOB_IP, 5060, 4444, [account(bcfg)], TONES["bob"],
                       prefix=net.prefix("bob"), rtp=(10100, 10199))
    for p in (alice, bob):
        h.extra_procs.append(p)
    alice.start(lambda: netns.socket_in(net.ns["priv"]))
    bob.start(lambda: netns.socket_in(net.ns["bob"]))
    for p, node in ((alice, b), (bob, a2)):
        check(p.registered(10), "%s's phone registers through %r" % (p.name, node), p.log_tail(10))

    ra, rb = relay_node(relays, acfg["relay"]), relay_node(relays, bcfg["relay"])
    setup, allocs, heard = talk(alice, bob, "sip:bob@" + OVERLAY, {"alice": ra, "bob": rb},
                                "alice->bob (figure 5)")
    info("alice->bob: answered in %.2fs, audio both ways after %.2fs; alice relays through %s, bob through %s"
         % (setup[0], setup[1], acfg["relay"], bcfg["relay"]))
    check_relayed(allocs, "alice->bob")
    check_heard(heard, "bob", "alice", "alice->bob")
    check_heard(heard, "alice", "bob", "alice->bob")

    # carol: a conventional phone of example.com, found by DNS, registered
    # at kamailio with digest; no relay of her own (plain RTP).
    carol = phones.Phone("carol", h.rundir, CAROL_IP, 5060, 4444, [CAROL_ACCOUNT], TONES["carol"],
                         prefix=net.prefix("carol"), rtp=(10200, 10299), dns=EXAMPLE_COM + ":53")
    h.extra_procs.append(carol)
    carol.start(lambda: netns.socket_in(net.ns["carol"]))
    check(carol.registered(10), "carol's phone registers at kamailio (example.com by DNS, digest)",
          carol.log_tail(10))
    gws = {"a1": a1, "a2": a2}
    boundary(alice, carol, "sip:carol@example.com", ra, gws, kam, "alice->carol (figure 6)", "to_public")
    boundary(carol, alice, "sip:alice@" + OVERLAY, ra, gws, kam, "carol->alice@overlay (figure 7)",
             "from_public")
    # Spec 4.2: alice binds her public AOR to her overlay URI through a proxy
    # peer (sipp from her side of the NAT: baresip cannot register a contact
    # other than its own address).
    rc, s = su.sipp_register_auth(h, A1 + ":5060", "alice", "<sip:alice@%s>" % OVERLAY, 5090, name="alice-pub",
                                  host=B, prefix=net.prefix("priv"))
    check(rc == 0, "alice binds sip:alice@example.com -> sip:alice@%s at kamailio through proxy peer a1"
          % OVERLAY, s.describe())
    boundary(carol, alice, "sip:alice@example.com", ra, gws, kam, "carol->alice@example.com (figure 4)",
             "from_public")


if __name__ == "__main__":
    su.enter_netns(os.path.abspath(__file__), required=True)  # root in CI: no namespaces is a failure
    p2p.run("sip_phones", test, timeout=150)
