"""The draft's interworking testbed with real phones (spec 3.2, 3.3.2,
figures 5, 6, 7 and 4), for tests/integration/sip_phones.py and
scripts/demo.py (Python 3 standard library; root, ip, iptables, named,
kamailio and baresip 1.0).

Everything runs in private network, mount and PID namespaces
(sip_util.enter_netns): the namespace the caller starts in is the public
segment (192.0.2.0/24) with named and kamailio (example.com) on its
loopback and on EXAMPLE_COM; a masquerading router (netns.Nat) puts
alice's home behind a NAT (198.51.100.0/24).

- a1 (192.0.2.2) and a2 (192.0.2.3): public nodes, proxy peers (DNS
  registration by TSIG UPDATE) and relay agent peers (TURN);
- b (198.51.100.2), alice's home node behind the NAT: not public, it keeps
  a flow to a proxy peer and mints TURN credentials;
- `plain` more nodes on PLAIN_IP (one port each), DHT only;
- alice: baresip behind the NAT, registered through b; bob: baresip on the
  public segment registered through a2; carol: baresip registered at
  kamailio as carol@example.com.

In the secured mode (secure=True) the nodes hold certificates of an
overlay CA made here, each proxy peer updates DNS with a TSIG key of its
own (docs/named-overlay.conf), and alice and bob are users of the CA
(p2psip-ca user) whom their home nodes challenge (MD5 digest: baresip 1.0
knows no other).

Each phone's account line comes from `phone-config` on its home node
(carol's, a conventional SIP phone's, is written here).  Each phone sends
a tone (alice 440 Hz, bob 880 Hz, carol 660 Hz) and records what it
decodes; each call is answered automatically, carries audio for TALK_S,
and is checked by the frequency each side heard, by the relays'
per-allocation counters while it is up, and by the route it took.  Each
call returns what it saw (a dict) for the caller to show."""

import os
import random
import time

import netns
import p2p
import phones
import sip_util as su
from p2p import OVERLAY, check, info

SECRET = "overlay-secret"
A1, A2, B = "192.0.2.2", "192.0.2.3", "198.51.100.2"
EXAMPLE_COM = "192.0.2.5"  # named (DNS for example.com and the overlay) and kamailio
PLAIN_IP = "192.0.2.20"    # the plain nodes, ports 7001...
BOB_IP, CAROL_IP = "192.0.2.10", "192.0.2.11"
NAT_IP = netns.ROUTER_PUBLIC
TONES = {"alice": 440, "bob": 880, "carol": 660}
TALK_S = 3.0
# Overlay passwords of the secured mode's users; carol's at kamailio is
# "secret", as every example.com user's (sip_util.Kamailio).
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
KAM_PASSWORD = "secret"
CAROL_ACCOUNT = "<sip:carol@example.com>;auth_pass=%s;answermode=auto" % KAM_PASSWORD
# The testbed's addresses are special-purpose ranges (TEST-NET-1 and -2),
# which a node refuses as SIP targets unless told (sip/README.md "The edge").
ALLOW_TARGETS = ["--sip-allow-targets", "192.0.2.0/24,198.51.100.0/24"]


class Nodes(p2p.Cluster):
    """Nodes on both sides of the NAT: node i runs on side where[i] with
    extra arguments args[i]; names[i] is how the testbed calls it."""

    def __init__(self, rundir, binary, net, secure=False):
        super().__init__(rundir, binary, secure=secure)
        self.net, self.where, self.args, self.names = net, {}, {}, {}

    def add(self, ip, port, where, args, name):
        n = p2p.Node(len(self.nodes), port, self.rundir, host=ip)
        if self.secure:
            n.id = self.enrol(n)
        self.nodes.append(n)
        self.where[n.index], self.args[n.index], self.names[n.index] = where, list(args), name
        return n

    def argv(self, node, bootstrap):
        return self.net.prefix(self.where[node.index]) + super().argv(node, bootstrap) + self.args[node.index]

    def name(self, node):
        return self.names[node.index]

    def by_hex(self, hexid):
        n = next((n for n in self.nodes if n.id == hexid), None)
        return self.name(n) if n else hexid[:8]


def relay_args(ip, other, port_base):
    # The relay refuses special-purpose peers (TEST-NET-1 among them) by
    # default: open the testbed's public addresses the calls need (the
    # NAT, the phones, the other relay), not the node's own.
    return ["--relay", "--turn", "%s:3478" % ip, "--turn-secret", SECRET, "--relay-ports",
            "%d-%d" % (port_base, port_base + 199), "--relay-allow-peers",
            "%s/32,%s/32,192.0.2.8/29" % (NAT_IP, other)]


def phone_config(node, user):
    """The node's phone-config answer (json format and the baresip line)."""
    r = node.admin({"cmd": "phone-config", "user": user, "format": "baresip"}, timeout=10)
    check(r.get("ok") and r.get("account"), "phone-config %s on %r answers an account line" % (user, node), r)
    return r


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


# What a call shows of the SIP nodes it went through.
SHOWN_COUNTERS = ("proxied", "via_peer", "to_public", "from_public", "auth_challenges", "auth_ok", "from_nodes")


def sip_counters(nodes):
    return {k: su.sip_stats(n)["counters"] for k, n in nodes.items()}


def counters_moved(before, after):
    """{node name: {counter: increase}} for SHOWN_COUNTERS that moved."""
    out = {}
    for k in after:
        d = {c: after[k][c] - before[k][c] for c in SHOWN_COUNTERS if after[k][c] != before[k][c]}
        if d:
            out[k] = d
    return out


class World:
    """The testbed: call start(), then start_phones(), then the calls in
    their order (figure 5, 6, 7, then 4, which needs carol)."""

    def __init__(self, h, tag, secure=False, plain=0, progress=info):
        self.h, self.tag, self.secure, self.plain, self.progress = h, tag, secure, plain, progress
        self.phones = {}

    # The network, DNS, kamailio and the overlay ---------------------------

    def start(self):
        for tool in (su.KAMAILIO, su.NAMED, phones.BARESIP):
            if not tool or not os.access(tool, os.X_OK):
                raise p2p.Failure("%s is not installed (scripts/install-deps --demo installs it)" % tool)
        netns.private_run_dir()
        self.net = netns.Nat(self.tag, public_ns=False)
        pub = (A1, A2, EXAMPLE_COM) + ((PLAIN_IP,) if self.plain else ())
        self.net.setup(public_addrs=pub, private_addrs=(B,))
        if self.plain:
            # b is a full member of the DHT ring, which every node must
            # reach: the NAT lets in its peer port (TCP), nothing else
            # (its SIP comes in through its flow).  Without, lookups and
            # stabilisation through b wait out connection timeouts.
            self.net.open_port("tcp", B, 7000)
        self.net.add_host("bob", [BOB_IP])
        self.net.add_host("carol", [CAROL_IP])
        su.private_resolv_conf(self.h.rundir)
        self.named = su.Named(self.h, 5060, listen=[EXAMPLE_COM], kam_ip=EXAMPLE_COM)
        self.kam = su.Kamailio(self.h, 5060, host=EXAMPLE_COM)
        self.progress("network namespaces (a NAT for alice's home), named and kamailio up after %.1fs"
                      % self.h.elapsed())
        self.start_overlay()

    def sip_node_args(self, ip, users=()):
        """A SIP node's arguments; in the secured mode its phones' users
        (a node challenges a request From one of its users wherever it
        comes from, so a user belongs to her home node only)."""
        a = ["--sip", ip + ":5060"] + ALLOW_TARGETS
        if self.secure and users:
            d = os.path.join(self.h.rundir, "users-" + ip)
            for u in users:
                p2p.ca_tool("user", self.c.cadir, u, "--users", d, "--password", PASSWORDS[u])
            a += ["--users", d, "--sip-digest", "MD5"]
        return a

    def start_overlay(self):
        c = self.c = Nodes(os.path.join(self.h.rundir, "nodes"), self.h.binary, self.net, self.secure)
        self.h.clusters.append(c)
        gw = ["--gateway", "--public", "yes", "--dns", EXAMPLE_COM, "--dns-update", EXAMPLE_COM]
        self.a1 = c.add(A1, 7000, "pub", self.sip_node_args(A1) + gw + relay_args(A1, A2, 40000), "a1")
        self.a2 = c.add(A2, 7000, "pub", self.sip_node_args(A2, ["bob"]) + gw + relay_args(A2, A1, 40000), "a2")
        self.b = c.add(B, 7000, "priv", self.sip_node_args(B, ["alice"]) + ["--public", "no", "--turn-secret", SECRET], "b")
        for pp in (self.a1, self.a2):
            # Secured: each proxy peer writes DNS with a key of its own,
            # for its own name only; open: with the operator's key.
            c.args[pp.index] += ["--tsig", self.named.peer_tsig(pp.id) if self.secure else self.named.tsig]
        if self.secure:
            self.named.reload()
        rest = [c.add(PLAIN_IP, 7001 + i, "pub", [], "n%d" % (i + 1)) for i in range(self.plain)]
        t0 = time.monotonic()
        c.launch(self.a1)
        c.wait_up([self.a1], 15, joined=False)
        c.launch(self.a2, [self.a1])
        c.wait_up([self.a2], 20)
        # The public nodes first, bootstrapping from public nodes only, b
        # last (it joins through a1).
        for n in rest:
            c.launch(n, c.pick_bootstrap(n))
        c.wait_up(rest, 60)
        c.launch(self.b, [self.a1])
        c.wait_up([self.b], 20)
        if rest:
            c.wait_consistent(timeout=60)
        self.join_s = time.monotonic() - t0
        self.progress("%d nodes of %s%s joined in %.1fs, ring consistent" % (
            len(c.nodes), OVERLAY, " (secured: TLS, certificates of the overlay CA)" if self.secure else "",
            self.join_s))
        b = self.b
        p2p.wait_until(lambda: len(b.admin_ok({"cmd": "relays"})["relays"]) == 2, 15,
                       "alice's node behind the NAT lists both relays")
        self.flow = p2p.wait_until(lambda: (lambda f: f if f.get("state") == "up" else None)(
            b.admin_ok({"cmd": "sip"})["sip"]["flow"]), 30, "b keeps a flow to a proxy peer")
        self.srv = p2p.wait_until(lambda: (lambda s: s if len(s) == 2 else None)(self.named.srv()), 15,
                                  "both proxy peers registered in DNS (_sip._udp.%s SRV)" % OVERLAY)
        self.gws = {"a1": self.a1, "a2": self.a2}
        self.sip_nodes = {"a1": self.a1, "a2": self.a2, "b": self.b}
        info("namespaces, named, kamailio, %d nodes and b's flow to %s up after %.1fs"
             % (len(c.nodes), self.flow["peer"], self.h.elapsed()))

    def stop_nodes(self, timeout=10.0):
        """SIGTERM to every node while named still runs (the proxy peers
        take their names out of DNS as they leave); returns what did not
        exit 0 in time, as Harness.cleanup would say it."""
        res = self.c.stop_all(timeout=timeout)
        return ["%r on SIGTERM: %s after %.1fs" % (n, "still running, killed" if code is None else "exit %s" % code,
                                                   took) for n, (code, took) in res.items() if code != 0]

    # Phones ----------------------------------------------------------------

    def account(self, cfg, user):
        """The account line a test phone uses: phone-config's, answering
        calls at once, with the user's password in the secured mode."""
        auth = ";auth_pass=%s" % PASSWORDS[user] if self.secure else ""
        return cfg["account"] + auth + ";answermode=auto"

    def add_phone(self, name, ip, where, accounts, rtp, dns=None):
        p = phones.Phone(name, self.h.rundir, ip, 5070 if where == "priv" else 5060, 4444, accounts,
                         TONES[name], prefix=self.net.prefix(where), rtp=rtp, dns=dns)
        self.h.extra_procs.append(p)
        p.start(lambda: netns.socket_in(self.net.ns[where]))
        self.phones[name] = p
        return p

    def start_phones(self):
        """alice and bob provisioned by phone-config at their home nodes,
        carol at kamailio; each registered."""
        self.cfg = {"alice": phone_config(self.b, "alice"), "bob": phone_config(self.a2, "bob")}
        info("alice: %s" % self.cfg["alice"]["account"])
        alice = self.add_phone("alice", B, "priv", [self.account(self.cfg["alice"], "alice")], (10000, 10099))
        bob = self.add_phone("bob", BOB_IP, "bob", [self.account(self.cfg["bob"], "bob")], (10100, 10199))
        for p, node in ((alice, self.b), (bob, self.a2)):
            check(p.registered(10), "%s's phone registers through %r" % (p.name, node), p.log_tail(10))
        # carol: a conventional phone of example.com, found by DNS,
        # registered at kamailio with digest; no relay of her own (plain RTP).
        carol = self.add_phone("carol", CAROL_IP, "carol", [CAROL_ACCOUNT], (10200, 10299),
                               dns=EXAMPLE_COM + ":53")
        check(carol.registered(10), "carol's phone registers at kamailio (example.com by DNS, digest)",
              carol.log_tail(10))
        relays = {self.a1, self.a2}
        self.relay = {u: relay_node(relays, self.cfg[u]["relay"]) for u in ("alice", "bob")}

    # Calls -----------------------------------------------------------------

    def call(self, caller, callee, uri, users, what):
        """One call, checked: audio both ways, the allocations of users
        (their relays) relaying both ways.  Returns what it saw."""
        before, rr = sip_counters(self.sip_nodes), len(self.kam.log_lines("REQ INVITE"))
        p1, p2 = self.phones[caller], self.phones[callee]
        setup, allocs, heard = talk(p1, p2, uri, {u: self.relay[u] for u in users}, what)
        moved = counters_moved(before, sip_counters(self.sip_nodes))
        info("%s: answered in %.2fs, audio both ways after %.2fs; SIP nodes %s" % (what, setup[0], setup[1], moved))
        check_relayed(allocs, what)
        check_heard(heard, callee, caller, what)
        check_heard(heard, caller, callee, what)
        return {"what": what, "setup": setup, "allocs": allocs, "heard": heard, "moved": moved,
                "relays": {u: self.relay[u] for u in users}, "kamailio": self.kam.log_lines("REQ INVITE")[rr:]}

    def boundary(self, caller, callee, uri, what, counter):
        """A call across the overlay's boundary: alice's allocation carries
        the audio both ways (carol has no relay), and the proxy peer that
        carried it counted it (counter: to_public or from_public); a call
        from the overlay reaches kamailio with Record-Route
        <sip:OVERLAY;lr>."""
        ok_rr = len(self.kam.log_lines("OVERLAY-RR-OK"))
        r = self.call(caller, callee, uri, ["alice"], what)
        carried = [k for k in self.gws if r["moved"].get(k, {}).get(counter)]
        check(len(carried) == 1, "%s went through one proxy peer (%s)" % (what, counter), r["moved"])
        if counter == "to_public":
            check(len(self.kam.log_lines("OVERLAY-RR-OK")) > ok_rr,
                  "%s: kamailio saw Record-Route <sip:%s;lr> on the INVITE" % (what, OVERLAY),
                  self.kam.log_lines("OVERLAY-RR"))
        r["proxy_peer"] = carried[0]
        return r

    def fig5(self):
        """alice calls bob@overlay.test: both phones relay through the
        relay their config named."""
        return self.call("alice", "bob", "sip:bob@" + OVERLAY, ["alice", "bob"], "alice->bob (figure 5)")

    def fig6(self):
        """alice calls carol@example.com through a proxy peer."""
        return self.boundary("alice", "carol", "sip:carol@example.com", "alice->carol (figure 6)", "to_public")

    def fig7(self):
        """carol calls alice@overlay.test: her phone finds a proxy peer by
        RFC 3263 in DNS."""
        return self.boundary("carol", "alice", "sip:alice@" + OVERLAY, "carol->alice@overlay (figure 7)",
                             "from_public")

    def edge(self):
        """The proxy peer holding b's flow now (its name)."""
        peer = self.b.admin_ok({"cmd": "sip"})["sip"]["flow"]["peer"]
        return next(k for k, n in self.gws.items() if peer == "sip:%s:5060" % n.host)

    def fig7_other(self):
        """carol's domain may pick either proxy peer: a call sent to the
        one that is not b's edge reaches alice too, forwarded to the edge
        (in the secured mode over TLS, as a node's: the edge forwards into
        the NAT for nodes only).  A plain UA in carol's namespace sends the
        INVITE; alice answers, hangs up after a moment.  Returns what it
        saw."""
        edge = self.edge()
        other = next(k for k in self.gws if k != edge)
        before = sip_counters(self.sip_nodes)
        alice, what = self.phones["alice"], "carol->alice@overlay through %s, not b's edge %s" % (other, edge)
        ma = alice.mark()
        res = invite_and_take_bye(self.net.ns["carol"], CAROL_IP, 5080, (self.gws[other].host, 5060),
                                  "sip:alice@" + OVERLAY, alice, what)
        moved = counters_moved(before, sip_counters(self.sip_nodes))
        alice.wait_event("CALL_CLOSED", 5, what, since=ma)
        check(res["status"] == 200, "%s: answered 200" % what, res)
        check(moved.get(other, {}).get("from_public") and moved.get(edge, {}).get("proxied"),
              "%s: %s took it from the public side, the edge %s forwarded it" % (what, other, edge), moved)
        if self.secure:
            check(moved[edge].get("from_nodes"), "%s: the edge took it from a node (TLS)" % what, moved)
        return {"what": what, "other": other, "edge": edge, "moved": moved, **res}

    def fig4(self):
        """Spec 4.2: alice binds sip:alice@example.com to her overlay URI
        (REGISTER through her home node and a proxy peer, from her side of
        the NAT: baresip cannot register a contact other than its own
        address), and carol calls alice@example.com."""
        self.bind = bind_public(self.net.ns["priv"], B, 5090, "alice", self.b.host + ":5060",
                                PASSWORDS["alice"] if self.secure else None)
        check(self.bind["status"] == 200, "alice binds sip:alice@example.com -> sip:alice@%s at kamailio "
              "through her home node and a proxy peer" % OVERLAY, self.bind)
        return self.boundary("carol", "alice", "sip:alice@example.com", "carol->alice@example.com (figure 4)",
                             "from_public")


def bind_public(ns, ip, port, user, via, overlay_pw, public_pw=KAM_PASSWORD):
    """REGISTER sip:USER@example.com -> <sip:USER@OVERLAY> at kamailio,
    sent from ip:port in namespace ns to via (the home node), answering
    the home node's challenge (407, the overlay's realm, overlay_pw) and
    kamailio's (401, public_pw), each with its own header.  Returns
    {"status", "challenges": [(status, realm)...], "contact"}."""
    sock = netns.socket_in(ns, kind=2)  # SOCK_DGRAM
    sock.bind((ip, port))
    ua = su.Ua(user, domain="example.com", sock=sock)
    dest = (via.rsplit(":", 1)[0], int(via.rsplit(":", 1)[1]))
    ruri, contact = "sip:example.com", "<sip:%s@%s>" % (user, OVERLAY)
    call_id = "bind-%s-%08x" % (user, random.getrandbits(32))
    creds, seen = {}, []
    try:
        for cseq in range(1, 5):
            ua.request(dest, "REGISTER", ruri=ruri, call_id=call_id, cseq=cseq, contact=contact,
                       headers=["Expires: 300"] + ["%s: %s" % kv for kv in creds.items()])
            r = ua.final(call_id, "REGISTER")
            if r.status not in (401, 407):
                return {"status": r.status, "challenges": seen, "contact": r.get("contact")}
            ch = su.challenges(r)[0]
            seen.append((r.status, ch.get("realm")))
            pw = overlay_pw if r.status == 407 else public_pw
            name = "Proxy-Authorization" if r.status == 407 else "Authorization"
            creds[name] = su.digest_credentials(ch, "REGISTER", ruri, user, pw)
        return {"status": None, "challenges": seen, "contact": None}
    finally:
        ua.close()



def invite_and_take_bye(ns, ip, port, dest, uri, callee, what):
    """A bare UA at ip:port in namespace ns calls uri through dest with an
    audio offer, ACKs the 200 along its Record-Route, has callee (a Phone,
    answering automatically) hang up and answers its BYE.  Returns
    {"status", "record_route": [...]}."""
    sock = netns.socket_in(ns, kind=2)  # SOCK_DGRAM
    sock.bind((ip, port))
    ua = su.Ua("carol", domain="example.com", sock=sock)
    sdp = ("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
           "m=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n" % (ip, ip, port + 2))
    call_id = "x-%08x" % random.getrandbits(32)
    mc = callee.mark()
    try:
        ua.request(dest, "INVITE", ruri=uri, to="<%s>" % uri, call_id=call_id, cseq=1,
                   headers=["Content-Type: application/sdp"], body=sdp)
        r = ua.final(call_id, "INVITE", timeout=10)
        rr = r.all("record-route")
        if r.status != 200:
            return {"status": r.status, "record_route": rr}
        # RFC 3261 12.1.2: the UAC's route set is the Record-Route reversed.
        # The first entry is dest, which record-routes (a proxy peer).
        route = [su.uri_of(x) for x in reversed(rr)]
        ua.request(dest, "ACK", ruri=su.uri_of(r.get("contact")), to=r.get("to"),
                   call_id=call_id, cseq=1, contact=False, headers=["Route: <%s>" % x for x in route])
        callee.wait_event("CALL_ESTABLISHED", 5, what, since=mc)
        callee.hangup()
        bye = ua.recv_request("BYE", timeout=10)
        ua.respond(bye, 200, "OK")
        return {"status": 200, "record_route": rr}
    finally:
        ua.close()
