#!/usr/bin/env python3
"""Run-time choice of the public roles, on test hosts of our own.

Three network namespaces made here: a "public" segment (192.0.2.0/24,
TEST-NET-1), a router that masquerades, and a private segment behind it
(198.51.100.0/24, TEST-NET-2).  Two nodes on the public segment must find
themselves public (a peer sees them at their own address and connects
back) and take the proxy peer role; a node behind the NAT must join the
overlay through them, find itself not public (its peer sees the router's
address) and stay without the role.  Everything is removed at the end.
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


def call_across_nat(tmp):
    """bob registers behind the NAT through b, alice on the public segment
    through a1; bob calls alice through the overlay.  (Calls *into* the NAT
    need a flow kept open from b to a public node, which is not built yet:
    b's SIP port cannot be reached from outside.)"""
    import sip_util
    reg = lambda where, node, ip, user, port: sipp(
        where, tmp, "reg-" + user, sip_util.REG_XML, node, ip, port + 1,
        [("user", user), ("domain", "overlay.test"), ("contact_port", port), ("reg_cseq", 1),
         ("expires", 120)])
    r1 = reg("priv", "198.51.100.2:5060", "198.51.100.2", "bob", 5070)
    r2 = reg("pub", "192.0.2.2:5060", "192.0.2.2", "alice", 5080)
    ok = r1.wait(20) == 0 and r2.wait(20) == 0
    check(ok, "phones register on both sides of the NAT")
    if not ok:
        return
    uas = sipp("pub", tmp, "uas-alice", sip_util.UAS_XML, "", "192.0.2.2", 5080, [])
    time.sleep(0.5)
    uac = sipp("priv", tmp, "uac-bob", sip_util.uac_xml(hold_ms=300), "198.51.100.2:5060", "198.51.100.2",
               5070, [("user", "bob"), ("domain", "overlay.test"), ("callee", "alice"),
                      ("callee_domain", "overlay.test")])
    rc_uac, rc_uas = uac.wait(30), uas.wait(30)

    def lines(name):
        try:
            return open(os.path.join(tmp, name + ".msg"), errors="replace").read().splitlines()
        except OSError:
            return []
    got_200 = any(ln.startswith("SIP/2.0 200") for ln in lines("uac-bob"))
    got_ack = any(ln.startswith("ACK ") for ln in lines("uas-alice"))
    check(got_200 and got_ack, "a phone behind the NAT calls one on the public segment through the overlay: "
          "INVITE answered 200 across the NAT, ACK delivered", (got_200, got_ack))
    # Known gap: the BYE follows Route <sip:overlay.test;lr> from the
    # private node, which resolves the overlay through DNS; these test hosts
    # have no DNS, so it fails here (sip_gateway.py covers it with named).
    print("# BYE across the NAT without DNS: uac rc %s, uas rc %s" % (rc_uac, rc_uas))


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
                    "--log-level", os.environ.get("P2PSIP_LOG_LEVEL", "info")]
            if boot:
                argv += ["--bootstrap", boot]
            log = open(os.path.join(tmp, name + ".log"), "w")
            procs.append((name, subprocess.Popen(argv, stdout=log, stderr=log)))
            return sock

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
            call_across_nat(tmp)
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
