#!/usr/bin/env python3
"""scripts/demo's main part (scripts/demo.py; the install and build steps
of scripts/demo are left out here), twice:

1. as a user runs it: it exits 0 within 2 minutes, reports the four calls
   (figures 5, 6, 7, 4), each with audio heard both ways for most of the
   talk and with the relay's packet counts, kamailio's view of the overlay
   Record-Route, the ring of 33 nodes consistent and its picture; after it,
   no process it started is left (each names the run directory) and no
   namespace or interface of its tag;
2. with --keep: it returns once the calls are done and leaves the overlay
   running; the p2psipctl commands it prints work from outside its
   namespaces (b holds alice's registration); --stop stops it: every node
   exits 0 on SIGTERM (nothing in its log says otherwise) and nothing is
   left behind.
The tag (names of namespaces and interfaces) differs from the demo's own,
so a demo a user runs cannot clash with this test (both would be in
namespaces of their own anyway)."""

import json
import os
import re
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import REPO, check, info  # noqa: E402

DEMO = os.path.join(REPO, "scripts", "demo.py")
TAG = "demot"
LIMIT_S = 120  # the demo's promise
FIGURES = ("Figure 5", "Figure 6", "Figure 7", "Figure 4")


def demo(h, run, *args, timeout=LIMIT_S + 30):
    """Run scripts/demo.py; returns (exit code, output, seconds)."""
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, DEMO, "--dir", run, "--tag", TAG] + list(args),
                           capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as e:
        raise p2p.Failure("scripts/demo.py %s did not finish within %ds: %s" % (
            " ".join(args), timeout, (e.stdout or b"")[-2000:]))
    return r.returncode, r.stdout + r.stderr, time.monotonic() - t0


def sections(out):
    """{title: [lines]} of the output's "== TITLE" sections."""
    res, cur = {}, None
    for line in out.splitlines():
        if line.startswith("== "):
            cur = line[3:]
            res[cur] = []
        elif cur is not None:
            res[cur].append(line)
    return res


def check_report(out, run):
    secs = sections(out)
    for fig in FIGURES:
        title = next((t for t in secs if t.startswith(fig + ":")), None)
        check(title, "the demo reports %s" % fig, out[-3000:])
        body = "\n".join(secs[title])
        heard = re.findall(r"(\w+) heard (\w+)'s (\d+) Hz tone for ([\d.]+) s", body)
        check(len(heard) == 2 and all(float(s) >= 2.5 for *_, s in heard),
              "%s: both sides heard the other's tone for most of the call (%s)" % (fig, heard), body)
        relayed = [(int(a), int(b)) for a, b in re.findall(r"(\d+) packets to the other side, (\d+) to", body)]
        check(relayed and all(a >= 100 and b >= 100 for a, b in relayed),
              "%s: the relay's packet counts both ways (%s)" % (fig, relayed), body)
        check(re.search(r"^   path: ", body, re.M), "%s: the path is told" % fig, body)
    fig6 = "\n".join(next(v for t, v in secs.items() if t.startswith("Figure 6:")))
    check("Record-Route: <sip:%s;lr>" % p2p.OVERLAY in fig6,
          "figure 6: kamailio's view of the overlay's Record-Route", fig6)
    ring = next((t for t in secs if t.startswith("The ring:")), "")
    check(re.search(r"33 nodes.*ring consistent", ring), "the ring: 33 nodes, consistent (%s)" % ring, out[-2000:])
    svg = os.path.join(run, "ring.svg")
    with open(svg) as f:
        nodes = len(re.findall(r"<circle class=\"node[ \"]", f.read()))
    check(nodes == 33 and svg in out, "the picture %s is written and named (%d nodes)" % (svg, nodes))
    check(any(t.startswith("All four calls worked") for t in secs), "the demo says all four calls worked")


def left_behind(run):
    """Processes naming the run directory, and namespaces and interfaces
    of the tag."""
    procs = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(run in a for a in argv) and not any(a == DEMO for a in argv):
            procs.append((pid, " ".join(argv)[:120]))
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return procs, [n for n in ns if n.startswith(TAG)], re.findall(r"\d+: (%s\w*)" % TAG, links)


def check_clean(run, what):
    try:
        p2p.wait_until(lambda: not any(left_behind(run)), 10, "nothing of the demo left")
    except p2p.WaitTimeout:
        pass
    left = left_behind(run)
    check(not any(left), "%s: no process, namespace or interface left behind" % what, left)


def test(h):
    if os.geteuid() != 0:
        p2p.skip("needs root (network namespaces)")
    run = os.path.join(h.rundir, "run")
    rc, out, took = demo(h, run)
    info("scripts/demo.py took %.1fs; its output:\n# " % took + "\n# ".join(out.splitlines()))
    check(rc == 0 and took < LIMIT_S, "the demo exits 0 within %ds (%s after %.1fs)" % (LIMIT_S, rc, took),
          out[-3000:])
    check_report(out, run)
    check_clean(run, "after the demo")

    run2 = os.path.join(h.rundir, "kept")
    try:
        kept(h, run2)
    finally:
        if os.path.exists(os.path.join(run2, "demo.pid")):  # a check failed: stop it anyway
            subprocess.run([sys.executable, DEMO, "--stop", "--dir", run2], capture_output=True, timeout=40)


def kept(h, run2):
    rc, out, took = demo(h, run2, "--keep")
    check(rc == 0 and took < LIMIT_S, "with --keep it returns 0 once the calls are done (%s after %.1fs)"
          % (rc, took), out[-3000:])
    check_report(out, run2)
    cmds = re.findall(r"^   (\S*p2psipctl) -s (\S+) (.+)$", out, re.M)
    check(len(cmds) >= 3, "it prints p2psipctl commands to explore with", out[-1500:])
    for ctl, sock, args in cmds:
        r = subprocess.run([os.path.join(REPO, ctl), "-s", os.path.join(REPO, sock)] + args.split(),
                           capture_output=True, text=True, timeout=20)
        check(r.returncode == 0, "kept running: p2psipctl -s %s %s answers" % (sock, args), r.stderr[-500:])
        if args == "registrations":
            regs = json.loads(r.stdout)["registrations"]
            check(any("alice" in json.dumps(x) for x in regs), "b holds alice's registration", regs)
    check("scripts/demo --stop --dir %s" % run2 in out, "it says how to stop it", out[-800:])
    r = subprocess.run([sys.executable, DEMO, "--stop", "--dir", run2], capture_output=True, text=True,
                       timeout=40)
    check(r.returncode == 0, "--stop stops it", r.stdout + r.stderr)
    check_clean(run2, "after --stop")
    with open(os.path.join(run2, "demo.log")) as f:
        log = f.read()
    check("FAILED" not in log, "every node exited 0 on SIGTERM at --stop", log[-2000:])


if __name__ == "__main__":
    p2p.run("test_demo", test, timeout=2 * LIMIT_S + 80)
