#!/usr/bin/env python3
"""The relay's edge against a holder of the overlay's secret (issue 10,
item 4), each attack tried twice, while coturn's turnutils_uclient relays
for an honest user on the same relay with no loss (through the in-process
hand-over: both of its clients allocate here, on 127.0.0.1, with no
--allow-loopback-peers).

Peers: CreatePermission and ChannelBind to private, shared, benchmarking,
IETF and loopback IPv4 ranges, to another port of the node's own IP, to a
range denied inside an allowed one (--relay-deny-peers within
--relay-allow-peers), and on a relay on [::1] to fc00::/7, fec0::/10,
64:ff9b::/96, link-local, multicast, IPv4-mapped and documentation IPv6:
403, counted in refused.peer_denied; the allowed range gets its permission.
Send indications to a denied loopback peer and, with a permission won for
another allocation's relayed address, to a service on the node's own IP
are dropped and counted (dropped.peer_denied), and that service cannot
reach the client through its relayed address either.  (Data is only ever
sent to loopback: denied public-looking peers are checked by the 403.)

Credentials: an EXPIRY in 2100, one beyond --turn-max-ttl, an expired one
(raw clients, and turnutils_uclient with them or self-minted with -W, whose
EXPIRY is a day away): 401, counted in refused.credential_too_long /
credential_expired; turn-credentials mints nothing a relay would refuse.

Quotas: ten self-minted names from one IP stop at --relay-quota-ip; one name
with an EXPIRY per allocation from twelve IPs stops at the per-user quota
of --relay-quota; 486, counted in refused.quota_ip / quota_user; another
user from another IP still gets an allocation.  Bad option values exit 2."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402
from relay_turn import UdpTurn, counted, error_code, rest_credential, stun_req, totals  # noqa: E402

SECRET = "relay-policy-secret"
MAX_TTL = 7200
QUOTA_USER, QUOTA_IP, QUOTA_TOTAL = 10, 30, 60
Y2100 = 4102444800


def quiet(sock, seconds=0.5):
    """True if nothing arrives on sock within seconds."""
    sock.settimeout(seconds)
    try:
        sock.recv(4096)
        return False
    except socket.timeout:
        return True


def bad_options(h):
    """Option values that must not start a node: exit 2, one line saying why."""
    cases = [(["--relay-allow-peers", "10.1.2.3/8"], "relay-allow-peers"),
             (["--relay-deny-peers", "10.0.0.0/8,bogus"], "relay-deny-peers"),
             (["--relay-deny-peers", ",".join(["10.0.%d.0/24" % i for i in range(33)])], "at most 32"),
             (["--relay-quota-ip", "0"], "relay-quota-ip"),
             (["--turn-max-ttl", "10"], "turn-max-ttl")]
    for args, want in cases:
        r = subprocess.run([h.binary, "--overlay", p2p.OVERLAY] + args, capture_output=True, text=True,
                           timeout=10)
        check(r.returncode == 2 and want in r.stderr and r.stderr.count("\n") == 1,
              "%s: exit 2 (%s)" % (" ".join(args)[:60], r.stderr.strip()[:90]), r.stderr)


def denied_twice(c, st, denied, what):
    """CreatePermission and ChannelBind from client c to each denied peer,
    two rounds: 403 every time, each counted in refused.peer_denied."""
    for rnd in (1, 2):
        s0 = st()
        codes = [c.permission(p) for p in denied]
        chans = [c.channel_bind(0x4000 + i, p) for i, p in enumerate(denied)]
        s1 = st()
        check(codes == [403] * len(denied) and chans == [403] * len(denied),
              "round %d: CreatePermission and ChannelBind to %d %s: 403" % (rnd, len(denied), what),
              (codes, chans))
        check(s1["refused"]["peer_denied"] - s0["refused"]["peer_denied"] == 2 * len(denied),
              "... each counted in refused.peer_denied", s1["refused"])


def special_peers(st, server, cred):
    """Special-purpose peers over IPv4, twice: 403 and counted, the allowed
    range allowed, Send indications and datagrams from the host dropped."""
    atk = UdpTurn(server, cred["username"], cred["password"], cred["realm"], "127.0.0.10")
    mate = UdpTurn(server, cred["username"], cred["password"], cred["realm"], "127.0.0.11")
    svc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a service of the node's host
    svc.bind(("127.0.0.1", 0))
    lo2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # loopback, but not the node's IP
    lo2.bind(("127.0.0.2", 0))
    denied = [("10.0.0.1", 9), ("172.16.0.1", 9), ("192.168.1.1", 9), ("100.64.0.1", 9),
              ("198.18.0.1", 9), ("192.0.0.1", 9), lo2.getsockname(), svc.getsockname(),
              ("10.1.2.3", 9)]
    try:
        check(error_code(atk.allocate()) == 0 and error_code(mate.allocate()) == 0,
              "two clients of one user allocate")
        denied_twice(atk, st, denied, "private, special, loopback, own-IP and denied IPv4 peers")
        check(atk.permission(("10.1.3.4", 9)) == 0, "10.1.3.4: a permission (--relay-allow-peers 10.1.0.0/16)")
        check(atk.permission(mate.relayed) == 0,
              "a permission for another allocation's relayed address %s:%d (the node's IP)" % mate.relayed)
        for rnd in (1, 2):
            s0 = st()

            def denied(k):
                return lambda s: s["dropped"]["peer_denied"] - s0["dropped"]["peer_denied"] >= k
            atk.send_ind(svc.getsockname(), b"to the host")   # covered by the permission's IP
            atk.send_ind(lo2.getsockname(), b"to loopback")    # no permission can exist
            # Dropped is proven by the counter; the silence after it only
            # shows nothing went out besides.
            counted(st, denied(2), "both Send indications dropped")
            check(quiet(svc, 0.2) and quiet(lo2, 0.2),
                  "round %d: Send indications to denied peers: nothing arrives" % rnd)
            svc.sendto(b"from the host", atk.relayed)
            s1 = counted(st, denied(3), "the host's datagram dropped")
            check(atk.recv(0.2) is None, "... and the host's service cannot reach the client")
            check(s1["dropped"]["peer_denied"] - s0["dropped"]["peer_denied"] == 3,
                  "... all three dropped and counted in dropped.peer_denied", s1["dropped"])
    finally:
        atk.close()
        mate.close()
        svc.close()
        lo2.close()


def special_peers_v6(node, server, cred):
    def st6():
        return node.admin_ok({"cmd": "relay"})["relay"]

    c = UdpTurn(server, cred["username"], cred["password"], cred["realm"], "::1")
    svc = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    svc.bind(("::1", 0))
    denied = [("fc00::1", 9), ("fec0::1", 9), ("64:ff9b::a00:1", 9), ("fe80::1", 9), ("ff02::1", 9),
              ("::ffff:10.0.0.1", 9), ("2001:db8::1", 9), ("2002:a00:1::1", 9), svc.getsockname()[:2]]
    try:
        check(error_code(c.allocate()) == 0 and ":" in c.relayed[0],
              "a client on ::1 allocates on the IPv6 relay (%s)" % (c.relayed,))
        denied_twice(c, st6, denied, "special-purpose IPv6 peers and the node's ::1")
        check(c.permission(("2001:4860:4860::8888", 9)) == 0, "a global IPv6 peer gets its permission")
        check(c.permission(("2001:db8:1::5", 9)) == 0 and c.permission(("2001:db8:2::5", 9)) == 403,
              "--relay-allow-peers 2001:db8:1::/48 opens that part of the documentation range only")
    finally:
        c.close()
        svc.close()


def uclient_refused(args, port):
    r = subprocess.run(["turnutils_uclient", "-y", "-c", "-n", "5", "-m", "1", "-p", str(port),
                        "-L", "127.0.0.30", "-e", "127.0.0.1"] + args + ["127.0.0.1"],
                       capture_output=True, text=True, timeout=30)
    return "Cannot complete Allocation" in r.stdout + r.stderr


def credentials(node, st, server, port):
    realm = p2p.OVERLAY
    now = int(time.time())
    cases = [("an EXPIRY in 2100", Y2100, "credential_too_long"),
             ("an EXPIRY beyond --turn-max-ttl", now + MAX_TTL + 600, "credential_too_long"),
             ("an expired credential", now - 60, "credential_expired")]
    for rnd in (1, 2):
        for what, expiry, counter in cases:
            user, pw = rest_credential(SECRET, "eve", expiry)
            s0 = st()
            c = UdpTurn(server, user, pw, realm, "127.0.0.31")
            code = error_code(c.allocate())
            c.s.close()
            s1 = st()
            check(code == 401 and s1["refused"][counter] == s0["refused"][counter] + 1 and
                  s1["requests"]["allocations_made"] == s0["requests"]["allocations_made"],
                  "round %d: %s: 401, counted in refused.%s" % (rnd, what, counter), (code, s1["refused"]))
            s0 = st()
            check(uclient_refused(["-u", user, "-w", pw], port) and
                  st()["refused"][counter] > s0["refused"][counter],
                  "... and turnutils_uclient with it gets no allocation")
    s0 = st()
    check(uclient_refused(["-W", SECRET, "-u", "selfie"], port) and
          st()["refused"]["credential_too_long"] > s0["refused"]["credential_too_long"],
          "turnutils_uclient -W (self-minted, a day > --turn-max-ttl %d s): refused" % MAX_TTL)
    r = node.admin({"cmd": "turn-credentials", "user": "alice", "ttl": 86400})
    check(r.get("ok") is False and "turn-max-ttl" in r.get("error", ""),
          "turn-credentials will not mint beyond --turn-max-ttl", r)
    cred = node.admin_ok({"cmd": "turn-credentials", "user": "alice"})
    c = UdpTurn(server, cred["username"], cred["password"], cred["realm"], "127.0.0.32")
    check(cred["ttl"] == MAX_TTL and error_code(c.allocate()) == 0,
          "its default ttl is then --turn-max-ttl (%d), and such a credential is accepted" % cred["ttl"])
    c.close()


def quotas(st, server):
    """Returns the clients whose allocations live (to close at the end)."""
    live, realm = [], p2p.OVERLAY
    exp = int(time.time()) + 600

    def alloc(name, local, expiry=exp):
        user, pw = rest_credential(SECRET, name, expiry)
        c = UdpTurn(server, user, pw, realm, local)
        code = error_code(c.allocate())
        if code == 0:
            live.append(c)
        else:
            c.s.close()
        return code

    for rnd in (1, 2):
        s0 = st()
        t0 = time.monotonic()
        codes = [alloc("self%d" % i, "127.0.0.2") for i in range(10) for _ in range(5)]
        s1 = st()
        want_ok = QUOTA_IP if rnd == 1 else 0
        check(codes.count(0) == want_ok and codes.count(486) == 50 - want_ok,
              "round %d: ten self-minted names from 127.0.0.2: %d allocations, then 486 (%.1fs)"
              % (rnd, codes.count(0), time.monotonic() - t0), codes)
        check(s1["refused"]["quota_ip"] - s0["refused"]["quota_ip"] == 50 - want_ok,
              "... refused by --relay-quota-ip %d and counted" % QUOTA_IP, s1["refused"])
    for rnd in (1, 2):
        s0 = st()
        n = QUOTA_USER + 2 if rnd == 1 else QUOTA_USER
        base = 3 if rnd == 1 else 3 + QUOTA_USER + 2
        codes = [alloc("mallory", "127.0.0.%d" % (base + i), exp + base + i) for i in range(n)]
        s1 = st()
        want_ok = QUOTA_USER if rnd == 1 else 0
        check(codes.count(0) == want_ok and codes.count(486) == n - want_ok,
              "round %d: one name with %d EXPIRY prefixes from %d IPs: %d allocations, then 486"
              % (rnd, n, n, codes.count(0)), codes)
        check(s1["refused"]["quota_user"] - s0["refused"]["quota_user"] == n - want_ok,
              "... refused by the per-user quota (%d) and counted" % QUOTA_USER, s1["refused"])
    check(alloc("carol", "127.0.0.40") == 0, "another user from another IP still gets an allocation")
    s = st()
    check(s["quota_per_ip"] == QUOTA_IP and s["quota_per_user"] == QUOTA_USER and
          s["quota_total"] == QUOTA_TOTAL and s["users"] == 6 + 1 + 1 + 1 and s["client_ips"] == 1 + 10 + 1 + 1,
          "the admin output shows the quotas, the names (self0-5, mallory, carol, honest) and the client IPs"
          " (127.0.0.2, ten of mallory's, carol's, the honest one's) holding allocations", s)
    return live


def test(h):
    for tool in ("turnutils_uclient",):
        check(shutil.which(tool) is not None, "%s is installed (coturn)" % tool)
    bad_options(h)
    base = p2p.pick_ports(2)
    port, port6 = base, base + 1
    pmin = 10000 + (port % 19) * 500
    c = h.cluster(0, ports=2)
    c.extra_args = ["--relay", "--turn", "127.0.0.1:%d" % port, "--turn-secret", SECRET,
                    "--relay-ports", "%d-%d" % (pmin, pmin + 249),
                    "--relay-quota", "%d:%d" % (QUOTA_USER, QUOTA_TOTAL), "--relay-quota-ip", str(QUOTA_IP),
                    "--turn-max-ttl", str(MAX_TTL),
                    "--relay-allow-peers", "10.1.0.0/16", "--relay-deny-peers", "10.1.2.0/24"]
    c.start(1)
    node = c.nodes[0]
    # The IPv6 relay's lists come from a config file, one of them replaced
    # by a flag (flags replace a config file's list).
    conf = os.path.join(h.rundir, "relay6.json")
    with open(conf, "w") as f:
        json.dump({"relay-allow-peers": ["10.7.0.0/16", "10.8.0.0/16"], "relay-deny-peers": "10.9.0.0/16"}, f)
    c.extra_args = ["--relay", "--turn", "[::1]:%d" % port6, "--turn-secret", SECRET,
                    "--relay-ports", "%d-%d" % (pmin + 250, pmin + 499), "--config", conf,
                    "--relay-allow-peers", "2001:db8:1::/48"]
    c.start(1)
    node6 = c.nodes[1]
    p6 = node6.admin_ok({"cmd": "relay"})["relay"]["peers"]
    check(p6["allow"] == ["2001:db8:1::/48"] and p6["deny"] == ["10.9.0.0/16"],
          "config file lists, the allow list replaced by the flag", p6)
    server = ("127.0.0.1", port)

    def st():
        return node.admin_ok({"cmd": "relay"})["relay"]

    s = st()
    check(s["peers"] == {"allow": ["10.1.0.0/16"], "deny": ["10.1.2.0/24"], "allow_loopback": False} and
          s["max_credential_ttl"] == MAX_TTL, "the admin output shows the peer policy and the credential cap",
          (s["peers"], s["max_credential_ttl"]))

    # The honest user: coturn's client, two clients relaying to each other
    # for ~20 s while the attacks run (2.5 s here, 7 s on a fifth of a CPU).
    honest = node.admin_ok({"cmd": "turn-credentials", "user": "honest", "ttl": 600})
    load = subprocess.Popen(["turnutils_uclient", "-u", honest["username"], "-w", honest["password"],
                             "-p", str(port), "-y", "-c", "-n", "1000", "-m", "2", "-l", "160", "-z", "20",
                             "-L", "127.0.0.50", "-e", "127.0.0.1", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    h.extra_procs.append(load)
    p2p.wait_until(lambda: st()["allocations"] >= 2, 10, "the honest client's allocations")
    cred = node.admin_ok({"cmd": "turn-credentials", "user": "mallet", "ttl": 600})
    t0 = time.monotonic()
    special_peers(st, server, cred)
    special_peers_v6(node6, ("::1", port6), cred)
    credentials(node, st, server, port)
    live = quotas(st, server)
    info("attacks took %.1fs" % (time.monotonic() - t0))
    check(load.poll() is None, "the honest client was relaying throughout")
    out, _ = load.communicate(timeout=90)
    (sent, got), lost = totals(out)
    check(sent == 2000 and got == sent and lost == 0,
          "meanwhile the honest uclient relayed with no loss (%d/%d, %s lost)" % (got, sent, lost), out[-400:])
    s = st()
    check(s["relayed_internal"] >= sent, "... in process, on a relay without --allow-loopback-peers")
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    b.settimeout(2)
    b.sendto(stun_req(0x0001), server)
    check(error_code(b.recv(2048)) == 0, "after all that the relay answers Binding")
    b.close()
    for x in live:
        x.s.close()
    info("relay counters: refused %s, dropped %s" % (s["refused"], s["dropped"]))


if __name__ == "__main__":
    p2p.run("relay_policy", test, timeout=240)
