#!/usr/bin/env python3
"""Run-time choice of the public roles, on test hosts of our own.

Three network namespaces made here: a "public" segment (192.0.2.0/24,
TEST-NET-1), a router that masquerades, and a private segment behind it
(198.51.100.0/24, TEST-NET-2).  Two nodes on the public segment must find
themselves public (a peer sees them at their own address and connects
back) and take the proxy peer role; a node behind the NAT must join the
overlay through them, find itself not public (its peer sees the router's
address) and stay without the role.  Then SIP across the NAT: the node
behind it keeps a flow to a proxy peer (sip/flow.c), calls go both ways
with either side hanging up, and the flow moves when its proxy peer dies.
P2PSIP_PCAP=1 records SIP packets on both sides (tcpdump) in the run
directory.  Everything is removed at the end.
Skipped where the machine forbids namespaces (not root, no ip netns)."""

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
BIN = os.environ.get("P2PSIP_BIN", os.path.join(HERE, "..", "..", "build", "node", "p2psipd"))
TAG = "p2pt%d" % (os.getpid() % 100000)
NS = {"pub": TAG + "pub", "rtr": TAG + "rtr", "priv": TAG + "prv"}
FAILED = []


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def ns(name, *args, check=True):
    return sh("ip", "netns", "exec", NS[name], *args, check=check)


def setup():
    for n in NS.values():
        sh("ip", "netns", "add", n)
    # veth pairs: pub <-> rtr, priv <-> rtr
    sh("ip", "link", "add", TAG + "a0", "type", "veth", "peer", "name", TAG + "a1")
    sh("ip", "link", "add", TAG + "b0", "type", "veth", "peer", "name", TAG + "b1")
    sh("ip", "link", "set", TAG + "a0", "netns", NS["pub"])
    sh("ip", "link", "set", TAG + "a1", "netns", NS["rtr"])
    sh("ip", "link", "set", TAG + "b0", "netns", NS["priv"])
    sh("ip", "link", "set", TAG + "b1", "netns", NS["rtr"])
    for n in NS:
        ns(n, "ip", "link", "set", "lo", "up")
    ns("pub", "ip", "addr", "add", "192.0.2.2/24", "dev", TAG + "a0")
    ns("pub", "ip", "link", "set", TAG + "a0", "up")
    ns("pub", "ip", "route", "add", "default", "via", "192.0.2.1")
    ns("rtr", "ip", "addr", "add", "192.0.2.1/24", "dev", TAG + "a1")
    ns("rtr", "ip", "addr", "add", "198.51.100.1/24", "dev", TAG + "b1")
    ns("rtr", "ip", "link", "set", TAG + "a1", "up")
    ns("rtr", "ip", "link", "set", TAG + "b1", "up")
    ns("rtr", "sysctl", "-qw", "net.ipv4.ip_forward=1")
    ns("rtr", "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "198.51.100.0/24",
       "-o", TAG + "a1", "-j", "MASQUERADE")
    # A NAT, not just a router: nothing from outside may open a connection in.
    ns("rtr", "iptables", "-A", "FORWARD", "-i", TAG + "a1", "-o", TAG + "b1", "-m", "conntrack",
       "--ctstate", "NEW", "-j", "DROP")
    ns("priv", "ip", "addr", "add", "198.51.100.2/24", "dev", TAG + "b0")
    ns("priv", "ip", "link", "set", TAG + "b0", "up")
    ns("priv", "ip", "route", "add", "default", "via", "198.51.100.1")


def teardown():
    for n in NS.values():
        sh("ip", "netns", "del", n, check=False)


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
    time.sleep(0.5)
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


def main():
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"):
        print("skip: needs root, ip and iptables to make network namespaces")
        return 77
    if not os.access(BIN, os.X_OK):
        print("skip: no daemon at %s" % BIN)
        return 77
    try:
        sh("ip", "netns", "add", TAG + "probe")
        sh("ip", "netns", "del", TAG + "probe")
    except subprocess.CalledProcessError as e:
        print("skip: this machine forbids network namespaces: %s" % e.stderr.strip())
        return 77
    tmp = tempfile.mkdtemp(prefix="p2psip-public-")
    procs = []
    try:
        setup()

        def start(name, where, listen, sip, turn, boot=None):
            sock = os.path.join(tmp, name + ".sock")
            argv = ["ip", "netns", "exec", NS[where], BIN, "--overlay", "overlay.test", "--listen", listen,
                    "--sip", sip, "--turn", turn, "--turn-secret", "overlay-secret", "--admin", sock,
                    # documentation ranges stand for the public and the NATed side here
                    "--sip-allow-targets", "192.0.2.0/24,198.51.100.0/24",
                    "--log-level", os.environ.get("P2PSIP_LOG_LEVEL", "info")]
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
        time.sleep(0.3)
        a2 = start("a2", "pub", "192.0.2.2:7001", "192.0.2.2:5061", "192.0.2.2:3479", "192.0.2.2:7000")
        b = start("b", "priv", "198.51.100.2:7000", "198.51.100.2:5060", "198.51.100.2:3478", "192.0.2.2:7000")

        def decided(sock):
            st = admin(sock, {"cmd": "status"})
            return st if st["public"]["public"] is not None else None

        sa1, sa2, sb = (wait(lambda s=s: decided(s), 20) for s in (a1, a2, b))
        check(sa1 and sa2 and sb, "all three nodes reached a decision within 20 s")
        if not (sa1 and sa2 and sb):
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
        # Joined through a public node: a ring of three.
        ring = wait(lambda: all(len(admin(s, {"cmd": "status"})["successors"]) == 2 for s in (a1, a2, b)), 20)
        check(ring, "the node behind the NAT is part of a consistent ring of three")
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
        if shutil.which("sipp"):
            calls_across_nat(tmp, procs, {"a1": a1, "a2": a2, "b": b})
        else:
            print("# sipp not installed: no call across the NAT")
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
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
