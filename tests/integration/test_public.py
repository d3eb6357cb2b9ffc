#!/usr/bin/env python3
"""Run-time choice of the public roles, on test hosts of our own.

Three network namespaces made here: a "public" segment (192.0.2.0/24,
TEST-NET-1), a router that masquerades, and a private segment behind it
(198.51.100.0/24, TEST-NET-2).  Two nodes on the public segment must find
themselves public (two independent peers see them at their own address
and connect back; a third public node, a3, without roles, makes the
second peer each can count on) and take the proxy peer role; a node
behind the NAT must join the overlay through them, find itself not public
(its peers see the router's address) and stay without the role.  Then a
lying peer (tests/integration/peerproto.py's imposter, two fake nodes on
the public segment) slips in as the successor of a1 and of b and answers
their REACH questions with lies: a1 "I cannot connect back to you", b
"you are public at your own address"; asked again, neither decision
moves, and the lie is counted as a dissent.  Then SIP across the NAT: the node
behind it keeps a flow to a proxy peer (sip/flow.c), calls go both ways
with either side hanging up, and the flow moves when its proxy peer dies.
P2PSIP_PCAP=1 records SIP packets on both sides (tcpdump) in the run
directory.  Everything is removed at the end.
Where the machine forbids namespaces (not root, no ip netns) or sipp is
missing, it fails; with P2PSIP_ALLOW_SKIP=1 it skips instead (p2p.skip)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import netns  # noqa: E402
import p2p  # noqa: E402

BIN = os.environ.get("P2PSIP_BIN", os.path.join(HERE, "..", "..", "build", "node", "p2psipd"))
TAG = "p2pt%d" % (os.getpid() % 100000)
NET = netns.Nat(TAG)  # pub (192.0.2.2), a masquerading router, priv (198.51.100.2)
NS = NET.ns
FAILED = []
sh = netns.sh


def ns(name, *args, check=True):
    return NET.run(name, *args, check=check)


def setup():
    # a1 .2, a3 .3 and the liar .5 on the public segment.
    NET.setup(public_addrs=(netns.PUBLIC_PREFIX + "2", netns.PUBLIC_PREFIX + "3", netns.PUBLIC_PREFIX + "5"))


def teardown():
    NET.teardown()


def admin(path, req, timeout=5.0):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall((json.dumps(req) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


def check(cond, what, detail=None):
    print(("ok - " if cond else "not ok - ") + what + ("" if cond or detail is None else " (%s)" % (detail,)))
    if not cond:
        FAILED.append(what)


def wait(pred, timeout, interval=0.25):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            v = pred()
            if v:
                return v
        except (OSError, ValueError):
            pass
        time.sleep(interval)
    return None


def sipp(where, tmp, name, xml, remote, ip, port, keys, timeout=20):
    """Run sipp inside a namespace; returns its Popen."""
    sf = os.path.join(tmp, name + ".xml")
    with open(sf, "w") as f:
        f.write(xml)
    argv = ["ip", "netns", "exec", NS[where], shutil.which("sipp"), remote, "-sf", sf, "-i", ip, "-p", str(port),
            "-m", "1", "-t", "u1", "-timeout", "%ds" % timeout, "-timeout_error", "-nostdin",
            "-trace_msg", "-message_file", os.path.join(tmp, name + ".msg")]
    for k, v in keys:
        argv += ["-key", k, str(v)]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, name + ".err"), "w"))


def bound(where, port):
    """True once something listens on UDP port in namespace where."""
    r = ns(where, "ss", "-Hlnu", "sport = :%d" % port, check=False)
    return r.returncode == 0 and r.stdout.strip() != ""


def messages(tmp, name):
    """A sipp trace as sip_util.Msg objects (with .direction)."""
    import types
    import sip_util
    return sip_util.Sipp.messages(types.SimpleNamespace(trace=os.path.join(tmp, name + ".msg")))


def has(msgs, direction, what, status=None, method=None):
    for m in msgs:
        if m.direction != direction:
            continue
        if what == "request" and not m.is_response and m.method == method:
            return True
        if what == "response" and m.is_response and m.status == status and m.cseq_method() == method:
            return True
    return False


def call(tmp, name, caller, callee, callee_hangs_up=False):
    """One call from caller to callee (dicts: where, node, ip, port, user),
    hung up by the caller or the callee.  Returns (ok, detail): ok when
    INVITE/200/ACK and BYE/200 each reached the other end and both sipp
    instances finished their scenario."""
    import sip_util
    if callee_hangs_up:
        uas_xml, uac_xml = sip_util.uas_bye_xml(hold_ms=300), sip_util.uac_gets_bye_xml()
    else:
        uas_xml, uac_xml = sip_util.UAS_XML, sip_util.uac_xml(hold_ms=300)
    uas = sipp(callee["where"], tmp, name + "-uas", uas_xml, "", callee["ip"], callee["port"], [])
    # The INVITE must not find the callee's port closed (an ICMP error ends
    # the call): wait until its sipp listens.
    if not wait(lambda: bound(callee["where"], callee["port"]), 10, 0.05):
        return False, {"the callee's sipp listens on %d" % callee["port"]: False}
    uac = sipp(caller["where"], tmp, name + "-uac", uac_xml, caller["node"], caller["ip"], caller["port"],
               [("user", caller["user"]), ("domain", "overlay.test"), ("callee", callee["user"]),
                ("callee_domain", "overlay.test")])
    rcs = []
    for p in (uac, uas):
        try:
            rcs.append(p.wait(40))
        except subprocess.TimeoutExpired:
            p.kill()
            rcs.append(p.wait())
    c, d = messages(tmp, name + "-uac"), messages(tmp, name + "-uas")
    hanger, other = (d, c) if callee_hangs_up else (c, d)
    steps = {"200 to INVITE at the caller": has(c, "received", "response", 200, "INVITE"),
             "ACK at the callee": has(d, "received", "request", method="ACK"),
             "BYE at the other end": has(other, "received", "request", method="BYE"),
             "200 to BYE back": has(hanger, "received", "response", 200, "BYE"),
             "sipp rc 0": rcs == [0, 0]}
    return all(steps.values()), {k: v for k, v in steps.items() if not v}


def flow_of(sock):
    return admin(sock, {"cmd": "sip"})["sip"]["flow"]


def record_route_in(sock, user, peer):
    """The user's record as a node reads it, when it carries the route
    through proxy peer `peer` (edge) to the NATed node's reflexive address."""
    got = admin(sock, {"cmd": "get", "key": "sip:%s@overlay.test" % user})
    for v in got.get("values", []):
        body = v.get("value")
        if isinstance(body, dict) and body.get("edge") == peer and body.get("path", "").startswith(
                "sip:192.0.2.1:"):
            return body
    return None


def calls_across_nat(tmp, procs, socks):
    """Phones on both sides of the NAT: bob registers through b (behind it),
    alice through a1.  b keeps a flow to one proxy peer, so its records
    carry the route in (edge = that peer, path = b's reflexive address);
    calls go both ways and each side can hang up; then the flow's proxy
    peer is killed and b moves to the other one."""
    import sip_util
    a1, a2, b = socks["a1"], socks["a2"], socks["b"]
    reg = lambda where, node, ip, user, port: sipp(
        where, tmp, "reg-%s-%d" % (user, port), sip_util.REG_XML, node, ip, port + 1,
        [("user", user), ("domain", "overlay.test"), ("contact_port", port), ("reg_cseq", 1),
         ("expires", 300)])
    r1 = reg("priv", "198.51.100.2:5060", "198.51.100.2", "bob", 5070)
    r2 = reg("pub", "192.0.2.2:5060", "192.0.2.2", "alice", 5080)
    ok = r1.wait(20) == 0 and r2.wait(20) == 0
    check(ok, "phones register on both sides of the NAT")
    if not ok:
        return
    flow = wait(lambda: (lambda f: f if f["state"] == "up" and f["natted"] else None)(flow_of(b)), 30)
    check(flow and flow["reflexive"].startswith("192.0.2.1:") and flow["peer"] in (
        "sip:192.0.2.2:5060", "sip:192.0.2.2:5061"),
        "b keeps a flow to a proxy peer and learns its reflexive address (the router's)", flow)
    if not flow:
        return
    rec = wait(lambda: record_route_in(a1, "bob", flow["peer"]), 15)
    check(rec and rec["path"] == "sip:" + flow["reflexive"],
          "bob's record carries the route in: edge = the flow's proxy peer, path = b's reflexive address", rec)
    bob = {"where": "priv", "node": "198.51.100.2:5060", "ip": "198.51.100.2", "port": 5070, "user": "bob"}
    alice = {"where": "pub", "node": "192.0.2.2:5060", "ip": "192.0.2.2", "port": 5080, "user": "alice"}
    ok, why = call(tmp, "bob-alice", bob, alice)
    check(ok, "bob (behind the NAT) calls alice (public): INVITE/200/ACK and the BYE complete", why)
    ok, why = call(tmp, "alice-bob", alice, bob)
    check(ok, "alice calls bob INTO the NAT: INVITE/200/ACK and alice's BYE complete", why)
    ok, why = call(tmp, "alice-bob-2", alice, bob, callee_hangs_up=True)
    check(ok, "alice calls bob into the NAT and bob hangs up: his BYE reaches her", why)
    # A caller whose node is not b's edge: its node routes <edge;lr>,<path;lr>.
    other = "192.0.2.2:5061" if flow["peer"].endswith(":5060") else "192.0.2.2:5060"
    r = reg("pub", other, "192.0.2.2", "carol", 5086)
    check(r.wait(20) == 0, "carol registers through the proxy peer that is not b's edge")
    carol = {"where": "pub", "node": other, "ip": "192.0.2.2", "port": 5086, "user": "carol"}
    ok, why = call(tmp, "carol-bob", carol, bob, callee_hangs_up=True)
    check(ok, "carol calls bob through the other proxy peer and b's edge; bob hangs up", why)
    inv = [m for m in messages(tmp, "carol-bob-uas") if not m.is_response and m.method == "INVITE"]
    vias = [v.split()[1].split(";")[0] for v in (inv[0].all("via") if inv else [])]
    vias = [v if ":" in v else v + ":5060" for v in vias]  # sent-by without port: 5060
    check(vias[-3:-1] == [flow["peer"][4:], other] and vias[0] == "198.51.100.2:5060",
          "the INVITE went carol -> her node -> b's edge -> b", vias)

    # The flow's proxy peer dies: b moves to the other one and re-puts bob.
    victim = "a1" if flow["peer"].endswith(":5060") else "a2"
    survivor, ssock = ("a2", a2) if victim == "a1" else ("a1", a1)
    speer = "sip:192.0.2.2:%d" % (5061 if survivor == "a2" else 5060)
    for name, p in procs:
        if name == victim:
            p.kill()
            p.wait()
    t0 = time.monotonic()
    moved = wait(lambda: (lambda f: f if f["state"] == "up" and f["peer"] == speer else None)(flow_of(b)), 45)
    print("# flow moved from %s to %s in %.1f s" % (flow["peer"], speer, time.monotonic() - t0))
    check(moved and moved["moves"] >= 1, "with the flow's proxy peer (%s) killed, b moves its flow to %s"
          % (victim, survivor), flow_of(b))
    rec = wait(lambda: record_route_in(ssock, "bob", speer), 20)
    check(rec, "and re-puts bob's record with the new edge", rec)
    if victim == "a1":  # alice's own node died with it: she registers through a2
        alice = dict(alice, node="192.0.2.2:5061", port=5084)
        r = reg("pub", alice["node"], "192.0.2.2", "alice", 5084)
        check(r.wait(20) == 0, "alice registers again through the surviving proxy peer")
    ok, why = call(tmp, "alice-bob-3", alice, bob)
    check(ok, "after the move a new call into the NAT completes (INVITE/200/ACK/BYE)", why)


def succ0(sock):
    succ = admin(sock, {"cmd": "status"})["successors"]
    return succ[0]["id"] if succ else None


def lying_peer(tmp, socks):
    """Two fake nodes on the public segment lie to a1 and b about REACH;
    asked again, neither moves: two independent peers must agree."""
    st = {k: admin(s, {"cmd": "status"}) for k, s in socks.items()}

    def persona(target, port, reachable, seen, how, to):
        succ = [[x["id"], x["addr"].rsplit(":", 1)[0], int(x["addr"].rsplit(":", 1)[1])]
                for x in st[target]["successors"]]
        return {"id": "%040x" % ((int(st[target]["id"], 16) + 1) % (1 << 160)), "ip": "192.0.2.5",
                "port": port, "succ": succ, "reachable": reachable, "seen": seen, how: to}
    # a1 hears "I cannot connect back to you" from a fake successor it is
    # poked to adopt; b hears "you are public at your own address" from a
    # fake successor of b's successor's choosing (b is behind the NAT: it
    # finds the liar when it stabilizes).
    conf = {"overlay": "overlay.test", "personas": [
        persona("a1", 7100, 0, None, "poke", st["a1"]["listen"]),
        persona("b", 7101, 1, st["b"]["listen"], "notify", st["b"]["successors"][0]["addr"])]}
    liar = subprocess.Popen(["ip", "netns", "exec", NS["pub"], sys.executable, os.path.join(HERE, "peerproto.py"),
                             "imposter", json.dumps(conf)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=open(os.path.join(tmp, "liar.log"), "w"), text=True)
    try:
        check(liar.stdout.readline().strip() == "ready", "the lying peer is up and has told a1 and b's successor")
        lid = {k: p["id"] for k, p in zip(("a1", "b"), conf["personas"])}
        inside = wait(lambda: all(succ0(socks[k]) == lid[k] for k in socks), 45)
        check(inside, "the lying peer is the successor of both a1 and b",
              {k: succ0(s) for k, s in socks.items()})
        before = {k: admin(s, {"cmd": "status"})["public"] for k, s in socks.items()}
        for k, s in socks.items():
            r = wait(lambda s=s: admin(s, {"cmd": "check-public"}).get("ok"), 10)
            check(r, "admin check-public starts a new round on %s" % k)
        after = {k: wait(lambda s=s, k=k: (lambda p: p if p["rounds"] > before[k]["rounds"] else None)(
            admin(s, {"cmd": "status"})["public"]), 20) for k, s in socks.items()}
        if not all(after.values()):
            check(False, "both rounds ended", after)
            return
        liar_says = {k: [x for x in after[k]["last"] if x["peer"] == lid[k]] for k in socks}
        check(after["a1"]["public"] is True and liar_says["a1"] and liar_says["a1"][0]["answer"] == "not reachable"
              and "agree" in after["a1"]["why"] and after["a1"]["dissents"] > before["a1"]["dissents"],
              "a1, told by the liar it cannot be reached, stays public on the word of two others; the lie is "
              "counted as a dissent", after["a1"])
        check(after["b"]["public"] is False and liar_says["b"] and liar_says["b"][0]["answer"] == "reachable"
              and "NAT" in after["b"]["why"] and after["b"]["dissents"] > before["b"]["dissents"],
              "b, told by the liar it is public, stays behind its NAT on the word of two others; the lie is "
              "counted as a dissent", after["b"])
        print("# a1: %s\n# b: %s" % (after["a1"]["why"], after["b"]["why"]))
    finally:
        liar.stdin.close()
        liar.terminate()
        liar.wait(10)
    healed = wait(lambda: all(succ0(socks[k]) != lid[k] for k in socks), 30)
    check(healed, "with the liar gone, a1 and b drop it from their ring tables")


def main():
    if not os.access(BIN, os.X_OK):
        print("FAIL public: no daemon at %s (build it, or set P2PSIP_BIN)" % BIN)
        return 1
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"):
        p2p.cannot_run("public", "needs root, ip and iptables to make network namespaces")
    try:
        sh("ip", "netns", "add", TAG + "probe")
        sh("ip", "netns", "del", TAG + "probe")
    except subprocess.CalledProcessError as e:
        p2p.cannot_run("public", "this machine forbids network namespaces: %s" % e.stderr.strip())
    skipped = None
    tmp = tempfile.mkdtemp(prefix="p2psip-public-")
    procs = []
    try:
        setup()

        def start(name, where, listen, sip, turn, boot=None):
            sock = os.path.join(tmp, name + ".sock")
            argv = ["ip", "netns", "exec", NS[where], BIN, "--overlay", "overlay.test", "--listen", listen,
                    "--admin", sock, "--log-level", os.environ.get("P2PSIP_LOG_LEVEL", "info")]
            if sip:
                argv += ["--sip", sip, "--turn", turn, "--turn-secret", "overlay-secret",
                         # documentation ranges stand for the public and the NATed side here
                         "--sip-allow-targets", "192.0.2.0/24,198.51.100.0/24"]
            if boot:
                argv += ["--bootstrap", boot]
            log = open(os.path.join(tmp, name + ".log"), "w")
            procs.append((name, subprocess.Popen(argv, stdout=log, stderr=log)))
            return sock

        if os.environ.get("P2PSIP_PCAP") and shutil.which("tcpdump"):
            # Debugging aid: SIP packets on both sides of the NAT.
            for where in ("pub", "priv"):
                argv = ["ip", "netns", "exec", NS[where], "tcpdump", "-i", "any", "-n", "-U", "-w",
                        os.path.join(tmp, where + ".pcap"), "udp portrange 5060-5090"]
                procs.append(("tcpdump-" + where, subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                                   stderr=subprocess.DEVNULL)))
            time.sleep(0.5)
        a1 = start("a1", "pub", "192.0.2.2:7000", "192.0.2.2:5060", "192.0.2.2:3478")
        wait(lambda: admin(a1, {"cmd": "status"}), 10, 0.05)  # the others bootstrap from it
        a2 = start("a2", "pub", "192.0.2.2:7001", "192.0.2.2:5061", "192.0.2.2:3479", "192.0.2.2:7000")
        a3 = start("a3", "pub", "192.0.2.3:7000", None, None, "192.0.2.2:7000")
        b = start("b", "priv", "198.51.100.2:7000", "198.51.100.2:5060", "198.51.100.2:3478", "192.0.2.2:7000")

        def decided(sock):
            st = admin(sock, {"cmd": "status"})
            return st if st["public"]["public"] is not None else None

        sa1, sa2, sa3, sb = (wait(lambda s=s: decided(s), 20) for s in (a1, a2, a3, b))
        check(sa1 and sa2 and sa3 and sb, "all four nodes reached a decision within 20 s")
        if not (sa1 and sa2 and sa3 and sb):
            return 1
        for name, st in (("a1", sa1), ("a2", sa2)):
            check(st["public"]["public"] is True, "%s on the public segment is public" % name, st["public"])
            check("gateway" in st["roles"], "%s took the proxy peer role" % name, st["roles"])
            check("relay" in st["roles"] and st.get("turn", "").startswith("192.0.2.2:"),
                  "%s took the relay role" % name, (st["roles"], st.get("turn")))
        check(sb["public"]["public"] is False, "the node behind the NAT is not public", sb["public"])
        check("198.51.100.2" in sb["public"]["why"] and "192.0.2.1" in sb["public"]["why"],
              "it says why: the peer sees the router's address, not its own", sb["public"]["why"])
        check("gateway" not in sb["roles"] and "relay" not in sb["roles"] and "sip" in sb["roles"],
              "it serves SIP phones but is neither proxy peer nor relay", sb["roles"])
        # Joined through a public node: a ring of four.
        ids = {admin(s, {"cmd": "status"})["id"] for s in (a1, a2, a3, b)}
        ring = wait(lambda: all({x["id"] for x in admin(s, {"cmd": "status"})["successors"]} ==
                                ids - {admin(s, {"cmd": "status"})["id"]} for s in (a1, a2, a3, b)), 20)
        check(ring, "the node behind the NAT is part of a consistent ring of four")
        # It stores and reads through the overlay.
        put = admin(b, {"cmd": "put", "key": "sip:nat@overlay.test", "value": {"x": 1}, "ttl": 60})
        check(put.get("ok") is True, "a put from behind the NAT succeeds", put)
        got = admin(a1, {"cmd": "get", "key": "sip:nat@overlay.test"})
        check(got.get("ok") and len(got["values"]) == 1, "a public node reads it", got)
        # Proxy peers are published for the overlay; the NATed node is not one.
        pp = admin(b, {"cmd": "get", "key": "sip:overlay.test"})
        owners = sorted(v["owner"] for v in pp.get("values", []))
        check(owners == sorted([sa1["id"], sa2["id"]]), "sip:overlay.test lists the two public nodes only",
              owners)
        # Relays likewise: every node lists the two public relays, not itself.
        rl = wait(lambda: (lambda r: r if len(r.get("relays", [])) == 2 else None)(
            admin(b, {"cmd": "relays"})), 15)
        addrs = sorted(x["addr"] for x in (rl or {}).get("relays", []))
        check(addrs == ["192.0.2.2:3478", "192.0.2.2:3479"], "relays from behind the NAT lists the two public relays",
              addrs)
        cred = admin(b, {"cmd": "turn-credentials", "user": "alice", "ttl": 600})
        check(cred.get("ok") and cred["username"].endswith(":alice") and cred["password"],
              "the node behind the NAT mints TURN credentials for its phones", cred)
        lying_peer(tmp, {"a1": a1, "b": b})
        if shutil.which("sipp"):
            calls_across_nat(tmp, procs, {"a1": a1, "a2": a2, "b": b})
        elif p2p.skips_allowed():
            skipped = "sipp not installed: no call across the NAT"
        else:
            check(False, "sipp is installed, for the calls across the NAT (%s=1 skips them)" % p2p.ALLOW_SKIP)
    finally:
        for name, p in procs:
            p.terminate()
        for name, p in procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
        teardown()
        if FAILED:
            for f in os.listdir(tmp):
                if f.endswith(".log"):
                    print("# --- %s" % f)
                    print("".join("#   " + line for line in open(os.path.join(tmp, f)).readlines()[-8:]))
        if not os.environ.get("P2PSIP_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("# kept %s" % tmp)
    print("%d failed" % len(FAILED) if FAILED else "all ok")
    if not FAILED and skipped:
        print("SKIP public: %s" % skipped)
        return p2p.SKIP
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
