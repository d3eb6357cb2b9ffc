#!/usr/bin/env python3
"""scripts/demo's main part: the draft's four calls on one machine, told
in a few lines each (scripts/demo installs and builds first).

    scripts/demo.py [--keep] [--dir DIR] [--tag TAG] [--plain N]
    scripts/demo.py --stop [--dir DIR]

In network namespaces of its own (sip_util.enter_netns; needs root) it
starts named (example.com and overlay.test, TSIG dynamic update),
kamailio as example.com, a secured overlay of 3 + N nodes (two proxy peers
that are relays too, alice's home node behind a NAT, N plain nodes) and
three baresip phones, and places the calls of figures 5, 6, 7 and 4 with
tests/integration/interwork.py, which checks each (audio both ways, relay
packets, the proxy peer, the Record-Route).  What is shown comes from the
nodes' admin sockets, kamailio's log, named and the phones' recordings;
the checks themselves go to DIR/checks.log.  Exit 0 when every call
worked.  --keep leaves it all running (the namespaces live as long as
this script's process inside them) until --stop."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.realpath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, HERE)
import interwork as iw  # noqa: E402
import p2p  # noqa: E402
import ringpicture  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import OVERLAY  # noqa: E402

READY = "--- left running ---"
# The SIP counters a call line shows, as it names them.
COUNTER_NAMES = {"proxied": "proxied", "auth_ok": "digest ok", "via_peer": "sent via a proxy peer",
                 "to_public": "to a public domain", "from_public": "from a public domain"}
TIMEOUT = 110  # the whole run but the stop, watchdog: the demo promises 2 minutes


class Demo:
    def __init__(self, args, out):
        self.args, self.out = args, out

    def say(self, line=""):
        self.out.write(line + "\n")
        self.out.flush()

    # Setting up ------------------------------------------------------------

    def setup(self, h):
        w = self.w = iw.World(h, self.args.tag, secure=True, plain=self.args.plain,
                              progress=lambda m: self.say("   " + m))
        self.say("== Setting up, in network namespaces of its own")
        self.say("   public segment 192.0.2.0/24; alice's home 198.51.100.0/24 behind a NAT (%s)" % iw.NAT_IP)
        self.say("   named on %s: example.com, and overlay.test with dynamic update (TSIG)" % iw.EXAMPLE_COM)
        self.say("   kamailio on %s:5060: proxy and registrar of example.com" % iw.EXAMPLE_COM)
        w.start()
        c = w.c
        flow = w.flow["peer"]
        for n in (w.a1, w.a2):
            self.say("     %-5s %-15s proxy peer (SIP %s), relay (TURN %s:3478)" % (
                c.name(n), n.host, n.host + ":5060", n.host))
        self.say("     %-5s %-15s not public: alice's home node, keeps a flow to proxy peer %s" % (
            "b", w.b.host, self.node_at(flow)))
        if w.plain:
            self.say("     %-5s %-15s plain DHT nodes, ports 7001-%d" % ("n1-n%d" % w.plain, iw.PLAIN_IP,
                                                                        7000 + w.plain))
        self.say("   DNS: _sip._udp.%s SRV -> %s (each proxy peer wrote its own name, with a key of its own)"
                 % (OVERLAY, ", ".join(s.split()[-1] for s in w.srv)))
        w.start_phones()
        self.say("   phones (baresip), alice's and bob's accounts from `p2psipctl phone-config USER --format "
                 "baresip` on their home node, plus their password:")
        for u, home in (("alice", "b"), ("bob", "a2")):
            cfg = w.cfg[u]
            self.say("     %-5s sip:%s@%s registered at %s (MD5 digest), relay %s (%s)" % (
                u, u, OVERLAY, home, cfg["relay"], c.name(w.relay[u])))
        self.say("     carol sip:carol@example.com registered at kamailio (found by DNS, digest)")
        self.say("   ready after %.1fs" % w.h.elapsed())

    def node_at(self, uri):
        """The testbed name of the node whose SIP address uri holds."""
        for n in self.w.sip_nodes.values():
            if n.host + ":5060" in uri:
                return self.w.c.name(n)
        return uri

    # Calls -----------------------------------------------------------------

    def show_call(self, title, r, path):
        self.say()
        self.say("== " + title)
        self.say("   path: " + path)
        self.say("   counted by the SIP nodes: " + "; ".join(
            "%s %s" % (k, ", ".join("%s %d" % (COUNTER_NAMES[c], d[c]) for c in COUNTER_NAMES if d.get(c)))
            for k, d in sorted(r["moved"].items())))
        for u, a in r["allocs"].items():
            n = r["relays"][u]
            self.say("   relay: %s's allocation on %s (relay agent peer %s): %d packets to the other side, "
                     "%d to her phone" % (u, n.host + ":3478", self.w.c.name(n), a["to_peers"], a["to_client"])
                     if u == "alice" else
                     "   relay: %s's allocation on %s (relay agent peer %s): %d packets to the other side, "
                     "%d to his phone" % (u, n.host + ":3478", self.w.c.name(n), a["to_peers"], a["to_client"]))
        heard = r["heard"]
        caller, callee = [p.strip() for p in r["what"].split(" ")[0].split("->")]
        callee = callee.split("@")[0]
        parts = []
        for listener, speaker in ((callee, caller), (caller, callee)):
            a = heard[listener]
            parts.append("%s heard %s's %d Hz tone for %.1f s" % (listener, speaker, iw.TONES[speaker], a["seconds"]))
        self.say("   audio: " + "; ".join(parts))
        self.say("   answered in %.2f s, audio both ways after %.2f s" % r["setup"])

    def edge(self):
        """The proxy peer holding b's flow now."""
        return self.node_at(self.w.b.admin_ok({"cmd": "sip"})["sip"]["flow"]["peer"])

    def into_b(self, gw):
        """The way in to b from proxy peer gw: through b's edge (the
        proxy peer holding its flow through the NAT)."""
        edge = self.edge()
        return "proxy peer %s -> %s" % (gw, "b" if gw == edge else "%s (b's edge) -> b" % edge)

    def calls(self):
        w, c = self.w, self.w.c
        r = w.fig5()
        lk = w.b.admin_ok({"cmd": "lookup", "key": "sip:bob@" + OVERLAY})
        self.show_call("Figure 5: alice@%s (behind a NAT) calls bob@%s" % (OVERLAY, OVERLAY), r,
                       "alice -> b (her home node, checks her digest) -> a2 (bob's home node) -> bob; "
                       "requests back come in through %s (b's edge)" % self.edge())
        self.say("   DHT: b looks sip:bob@%s up: %s, %d hop%s; %s holds it" % (
            OVERLAY, " -> ".join(["b"] + [c.by_hex(x) for x in lk["path"]]), lk["hops"], "" if lk["hops"] == 1 else "s",
            c.by_hex(lk["owner"]["id"])))
        self.results = [r]

        r = w.fig6()
        self.show_call("Figure 6: alice@%s calls carol@example.com" % OVERLAY, r,
                       "alice -> b -> proxy peer %s -> kamailio (example.com, by DNS) -> carol" % r["proxy_peer"])
        rr = [ln.split("RR=[", 1)[1].split("]", 1)[0] for ln in r["kamailio"] if "RR=[" in ln]
        self.say("   kamailio saw the INVITE with Record-Route: %s" % (rr[0] if rr else "(none)"))
        self.results.append(r)

        r = w.fig7()
        self.show_call("Figure 7: carol@example.com calls alice@%s" % OVERLAY, r,
                       "carol -> DNS (NAPTR, SRV of %s) -> %s (alice's home node) -> alice"
                       % (OVERLAY, self.into_b(r["proxy_peer"])))
        o = w.fig7_other()
        self.say("   whatever DNS picks: a bare UA of carol's sends the INVITE to the proxy peer that is not b's "
                 "edge: carol -> %s: %d, alice answered and hung up" % (self.into_b(o["other"]), o["status"]))
        self.say("   the Record-Route carol's UA got in the 200: %s" % ", ".join(o["record_route"]))
        self.results.append(r)

        r = w.fig4()
        b = w.bind
        self.show_call("Figure 4: carol calls alice@example.com, which alice bound to her overlay URI", r,
                       "carol -> kamailio (alice@example.com -> sip:alice@%s) -> %s -> alice"
                       % (OVERLAY, self.into_b(r["proxy_peer"])))
        self.say("   binding: REGISTER sip:alice@example.com, Contact <sip:alice@%s>, sent through b; "
                 "challenged %s; 200 OK" % (OVERLAY, ", ".join("%d by %s" % (s, realm) for s, realm in b["challenges"])))
        self.results.append(r)

    # The ring --------------------------------------------------------------

    def ring(self):
        w, c = self.w, self.w.c
        snap = ringpicture.gather(c)
        lk = ringpicture.run_lookup(snap, "sip:bob@" + OVERLAY, w.b.id)
        svg = os.path.join(self.args.dir, "ring.svg")
        with open(svg, "w") as f:
            f.write(ringpicture.render_svg(snap, lk))
        c.save()
        self.say()
        self.say("== The ring: %s" % ringpicture.caption(snap))
        order = sorted(snap["nodes"], key=lambda e: e["id"])
        names = ["%s%s" % (c.name(c.nodes[e["index"]]), "*" if e["roles"] else "") for e in order]
        for i in range(0, len(names), 17):
            self.say("   " + " ".join(names[i:i + 17]))
        recs = [e["records"] for e in order]
        self.say("   (clockwise from id 0; * SIP roles; records per node %d-%d)" % (min(recs), max(recs)))
        self.say("   picture: %s (the lookup of sip:bob@%s from b drawn on it)" % (short(svg), OVERLAY))

    def keep(self):
        ctl, d = short(self.w.h.ctl or "p2psipctl"), short(self.w.c.rundir)
        self.say()
        self.say("== Left running (--keep): every node's admin socket is %s/nodeK.sock" % d)
        self.say("   (node0 a1, node1 a2, node2 b, node3-node%d n1-n%d)" % (len(self.w.c.nodes) - 1, self.w.plain))
        for cmd in ("node2.sock status", "node2.sock registrations", "node0.sock relay",
                    "node0.sock sip", "node5.sock get sip:alice@%s" % OVERLAY):
            self.say("   %s -s %s/%s" % (ctl, d, cmd))
        self.say("   P2PSIP_RUN=%s scripts/testbed picture ring.svg" % d)
        self.say("   stop it: scripts/demo --stop%s" % ("" if self.args.dir == default_dir() else
                                                         " --dir " + self.args.dir))


    def dump_sip(self, f):
        """The SIP nodes' state, for a failure's post-mortem."""
        w = getattr(self, "w", None)
        for k, n in (getattr(w, "sip_nodes", None) or {}).items():
            try:
                f.write("%s: %s\n" % (k, json.dumps(su.sip_stats(n))))
            except Exception as e:  # noqa: BLE001
                f.write("%s: %s\n" % (k, e))


def short(path):
    """path relative to here when it is below, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def unconfined_named(d):
    """Debian's AppArmor profile for /usr/sbin/named lets it read its
    configuration from /etc/bind only.  Where that profile is loaded, the
    demo runs a copy of named from its run directory: profiles attach by
    path, and none names the copy."""
    try:
        with open("/sys/kernel/security/apparmor/profiles") as f:
            if not any(line.split(" ")[0] in ("named", su.NAMED) for line in f):
                return
    except OSError:
        return
    copy = os.path.join(d, "named.bin")
    shutil.copy2(su.NAMED, copy)
    su.NAMED = copy


def default_dir():
    return os.path.join(REPO, "demo-run")


def inside(args):
    """PID 1 of the namespaces: run the demo; with --keep, stay until
    SIGTERM."""
    out = sys.stdout
    log = open(os.path.join(args.dir, "checks.log"), "w")
    sys.stdout = log  # the checks' "ok - ..." lines
    h = p2p.Harness("demo", TIMEOUT)
    h.rundir = args.dir
    unconfined_named(args.dir)
    if not h.binary:
        out.write("demo: no p2psipd binary (build it: ninja -C build)\n")
        return 1
    demo = Demo(args, out)

    def on_signal(sig, _frame):
        raise p2p.Failure("interrupted by signal %d" % sig)
    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.alarm(TIMEOUT)
    p2p.raise_nofile(4096)
    rc = 0
    try:
        demo.say("p2psip demo: draft-marocco-p2psip-interwork-00 on this machine, secured overlay %s" % OVERLAY)
        demo.setup(h)
        demo.calls()
        demo.ring()
        demo.say()
        demo.say("== All four calls worked (%.0f s); the checks made: %s" % (h.elapsed(), short(log.name)))
        signal.alarm(0)
        if args.keep:
            demo.keep()
            demo.say(READY)
            # The launcher has gone; from here on, write to a file.
            fd = os.open(os.path.join(args.dir, "demo.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            while True:
                signal.pause()
    except p2p.Failure as e:
        if not args.keep or "signal %d" % signal.SIGTERM not in str(e):
            rc = 1
            demo.say("FAILED: %s" % e)
            demo.dump_sip(log)
    except BaseException as e:  # noqa: BLE001  (the demo says what broke, then stops everything)
        rc = 1
        import traceback
        traceback.print_exc(file=log)
        demo.dump_sip(log)
        demo.say("FAILED: %s: %s (see %s and the logs under %s)" % (type(e).__name__, e, log.name, args.dir))
    finally:
        signal.alarm(0)
        w = getattr(demo, "w", None)
        problems = w.stop_nodes() if w and getattr(w, "c", None) else []
        problems += h.cleanup(rc != 0)
        for p in problems:
            demo.say("FAILED at stop: " + p.splitlines()[0])
            rc = 1
    return rc


def launch_kept(args):
    """--keep: run the demo in its namespaces in the background, show its
    output until it is ready, note its process for --stop."""
    argv, env = su.netns_argv(os.path.realpath(__file__), sys.argv[1:])
    # stderr too: nothing of ours may hold the caller's output open.
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    with open(os.path.join(args.dir, "demo.pid"), "w") as f:
        f.write("%d\n" % p.pid)
    for raw in p.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        if line == READY:
            return 0
        print(line, flush=True)
    return p.wait() or 1


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def kept_pid(d):
    """The process a --keep run left in d (unshare, outside the
    namespaces), or None."""
    try:
        with open(os.path.join(d, "demo.pid")) as f:
            pid = int(f.read())
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return pid if b"demo.py" in f.read() else None
    except (OSError, ValueError):
        return None


def stop(args):
    """--stop: SIGTERM to the demo's PID 1 (unshare, its parent, ignores
    it); it stops everything and the namespaces go with it."""
    path, pid = os.path.join(args.dir, "demo.pid"), kept_pid(args.dir)
    if pid is None:
        if os.path.exists(path):
            os.unlink(path)
        sys.exit("demo: nothing left running in %s" % args.dir)
    for k in children(pid):
        os.kill(k, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if os.path.exists("/proc/%d" % pid):
        for k in children(pid):
            os.kill(k, signal.SIGKILL)  # PID 1's death takes every process of the namespace
    os.unlink(path)
    print("demo stopped (logs and ring.svg stay in %s)" % args.dir)
    return 0


def clear_dir(d):
    """Empty the run directory of the last demo; refuse a directory that
    is not one (no checks.log) or a demo still running there."""
    os.makedirs(d, exist_ok=True)
    names = os.listdir(d)
    if names and "checks.log" not in names:
        sys.exit("demo: %s is not a demo's run directory (no checks.log); give another --dir" % d)
    if kept_pid(d):
        sys.exit("demo: a demo left running by --keep uses %s: scripts/demo --stop first" % d)
    for name in names:
        p = os.path.join(d, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="leave it running (stop with --stop)")
    ap.add_argument("--stop", action="store_true", help="stop a demo left running by --keep")
    ap.add_argument("--dir", default=default_dir(), help="run directory (default demo-run)")
    ap.add_argument("--tag", default="demo", help="prefix of the namespaces' and interfaces' names")
    ap.add_argument("--plain", type=int, default=30, help="plain nodes besides a1, a2 and b (default 30)")
    args = ap.parse_args()
    args.dir = os.path.abspath(args.dir)
    if args.stop:
        return stop(args)
    if os.environ.get(su.NETNS_ENV) == "1":
        su.enter_netns(os.path.realpath(__file__), required=True)  # sets lo up
        return inside(args)
    if os.geteuid() != 0:
        sys.exit("demo: needs root (network namespaces, a NAT, named on port 53)")
    clear_dir(args.dir)
    if args.keep:
        return launch_kept(args)
    su.enter_netns(os.path.realpath(__file__), required=True, args=sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
