#!/usr/bin/env python3
"""The overlay as a picture (scripts/testbed picture and watch).

- The drawing alone: a ring with one wrong successor shows exactly that arc
  in red and says "INCONSISTENT".
- 32 nodes, four with roles (proxy peer, SIP only, relay, all three):
  `testbed picture` draws one node mark per node whose data-id and
  data-roles are the ids and roles `status` reports, 32 successor arcs none
  red, the hop histogram of the nodes' stats with 1/2*log2(32) marked, and
  the path of a lookup from node 0 to the key's true owner.
- A node that does not answer (SIGSTOP) is left out and counted in the
  caption.
- Headless Chromium renders the SVG file to a PNG; `testbed watch` serves a
  page that Chromium loads with one node mark per node, and that draws the
  path of a lookup asked through the page's form (from the node selected by
  the URL's #HEX40) to the key's owner.
- The server's limits: an over-long key, an unknown node, a too large body
  are refused; connections beyond 16 get 503 while the others stay open,
  and once the idle ones time out the page is served again; a request for
  another host name (DNS rebinding) or a POST from another site's page is
  refused with 403.
"""

import html.parser
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import sip_util  # noqa: E402
from p2p import check, info  # noqa: E402

sys.path.insert(0, os.path.join(p2p.REPO, "scripts"))
import ringpicture  # noqa: E402

N = 32
TESTBED = os.path.join(p2p.REPO, "scripts", "testbed")
SVG = "{http://www.w3.org/2000/svg}"
# node index -> extra role options (filled in with ports) and the roles status should report
ROLES = {3: ("gateway", ["sip", "gateway"]), 9: ("sip", ["sip"]), 14: ("relay", ["relay"]),
         22: ("all", ["sip", "gateway", "relay"])}


def role_args(kind, sip, turn, relay_ports):
    a = []
    if kind in ("gateway", "sip", "all"):
        a += ["--sip", sip] + (["--gateway"] if kind != "sip" else ["--public", "no"])
    if kind in ("relay", "all"):
        a += ["--relay", "--turn", turn, "--turn-secret", "s", "--relay-ports", relay_ports]
    return a


def start_cluster(h):
    base = sip_util.pick_udp_tcp(2 * len(ROLES) + 10)
    c = h.cluster(0, ports=N)

    def argv(node, bootstrap, _orig=c.argv):
        a = _orig(node, bootstrap)
        if node.index in ROLES:
            k = sorted(ROLES).index(node.index)
            a += role_args(ROLES[node.index][0], "127.0.0.1:%d" % (base + 2 * k), "127.0.0.1:%d" % (base + 2 * k + 1),
                           "%d-%d" % (base + 2 * len(ROLES), base + 2 * len(ROLES) + 9))
        return a
    c.argv = argv
    c.start(N)
    c.wait_consistent(timeout=60)
    for i, (_, want) in ROLES.items():
        p2p.wait_until(lambda i=i, want=want: set(want) <= set(c.nodes[i].status()["roles"]), 20,
                       "node%d takes the roles %s" % (i, want))
    return c


def data_roles(st):
    return ",".join(r for r in st["roles"] if r != "dht")


def marks_of(root):
    return [e for e in root.iter(SVG + "circle") if "node" in (e.get("class") or "").split()]


def testbed(c, *args, timeout=60):
    r = subprocess.run([sys.executable, TESTBED, "--dir", c.rundir] + list(args), capture_output=True,
                       text=True, timeout=timeout)
    check(r.returncode == 0, "testbed %s exits 0" % args[0], r.stdout + r.stderr)
    info(r.stdout.strip())
    return r.stdout


# The drawing alone ------------------------------------------------------------

def check_drawing():
    ids = p2p.sort_ids(p2p.key_id("n%d" % i) for i in range(5))
    nodes = []
    for k, i in enumerate(ids):
        succ, pred = ids[(k + 1) % 5], ids[(k - 1) % 5]
        nodes.append({"index": k, "addr": "127.0.0.1:%d" % (7000 + k), "sock": "", "id": i,
                      "roles": ["relay"] if k == 1 else [], "records": k, "succ": succ, "pred": pred,
                      "fingers": [x for x in ids if x != i], "hist": [0, k, 1]})
    nodes[2]["succ"] = ids[4]  # skips ids[3]
    snap = ringpicture.snapshot(nodes, "overlay.test", missing=[7])
    root = ET.fromstring(ringpicture.render_svg(snap))
    wrong = [e for e in root.iter(SVG + "path") if e.get("class") == "succ wrong"]
    check(len(wrong) == 1 and (wrong[0].get("data-from"), wrong[0].get("data-to")) == (ids[2], ids[4]),
          "drawing: the one wrong successor is the one red arc", [(e.get("data-from"), e.get("data-to")) for e in wrong])
    check(len([e for e in root.iter(SVG + "path") if e.get("class") == "succ"]) == 4, "drawing: 4 right arcs")
    check(root.get("data-consistent") == "false" and "INCONSISTENT: 1 wrong successors" in root.find(SVG + "title").text
          and "1 did not answer" in root.find(SVG + "title").text,
          "drawing: the caption says inconsistent and counts the node that did not answer",
          root.find(SVG + "title").text)
    check([m.get("data-roles") for m in marks_of(root)] == ["", "relay", "", "", ""], "drawing: data-roles")
    bars = [int(e.get("data-count")) for e in root.iter(SVG + "rect") if e.get("class") == "bar"]
    check(bars == [0, 10, 5], "drawing: the histogram sums the nodes' histograms", bars)
    root = ET.fromstring(ringpicture.render_svg(ringpicture.snapshot([], "overlay.test", missing=[0, 1])))
    check(not marks_of(root) and "no node answered" in root.find(SVG + "title").text,
          "drawing: a ring where no node answered says so", root.find(SVG + "title").text)


# testbed picture ----------------------------------------------------------------

def check_picture(c, path, statuses, key):
    root = ET.parse(path).getroot()
    marks = marks_of(root)
    check(len(marks) == N, "one node mark per node (%d)" % len(marks))
    got = {m.get("data-id"): m.get("data-roles") for m in marks}
    want = {st["id"]: data_roles(st) for st in statuses.values()}
    check(got == want, "data-id and data-roles are the ids and roles of status",
          {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)})
    for i, (_, roles) in ROLES.items():
        check(got[c.nodes[i].id] == ",".join(roles), "node%d is drawn with data-roles %s" % (i, ",".join(roles)))
    check(root.get("data-consistent") == "true" and "%d nodes" % N in root.find(SVG + "title").text and
          "ring consistent" in root.find(SVG + "title").text, "the caption: %d nodes, ring consistent" % N,
          root.find(SVG + "title").text)
    arcs = [e.get("class") for e in root.iter(SVG + "path") if (e.get("class") or "").startswith("succ")]
    check(arcs == ["succ"] * N, "%d successor arcs, none red" % N, arcs)
    hist = next(e for e in root.iter(SVG + "g") if e.get("class") == "hist")
    bars = [int(e.get("data-count")) for e in hist.iter(SVG + "rect")]
    check(sum(bars) == int(hist.get("data-lookups")) > 0, "the hop histogram shows %d lookups" % sum(bars))
    marks = {e.get("class"): float(e.get("data-value")) for e in hist.iter(SVG + "line") if e.get("data-value")}
    check(abs(marks["mark log"] - 2.5) < 1e-6 and 0 < marks["mark mean"] < 10,
          "1/2*log2(32) = 2.5 and the mean (%.2f) are marked" % marks["mark mean"], marks)
    fingers = [g for g in root.iter(SVG + "g") if g.get("class") == "nd" and g.find(SVG + "path") is not None]
    check(len(fingers) == N, "every node has its fingers drawn (shown on hover or selection)", len(fingers))
    lk = next(e for e in root.iter(SVG + "g") if e.get("class") == "lookup")
    check(lk.get("data-from") == c.nodes[0].id and lk.get("data-owner") == c.owner_of(key).id and
          lk.get("data-key") == key, "the lookup from node 0 is drawn to the key's owner", lk.attrib)


def check_stopped(h, c, out):
    victim = c.nodes[N // 2]
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        testbed(c, "picture", out, "--timeout", "1.5")
        took = time.monotonic() - t0
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    root = ET.parse(out).getroot()
    ids = [m.get("data-id") for m in marks_of(root)]
    check(len(ids) == N - 1 and victim.id not in ids, "a stopped node is left out of the picture")
    check(root.get("data-missing") == "1" and "1 did not answer" in root.find(SVG + "title").text,
          "the caption counts it as not answering", root.find(SVG + "title").text)
    check(took < 15, "and the picture waited for it only its timeout (%.1fs)" % took)


# Chromium -------------------------------------------------------------------------

def chromium(h, *args, timeout=120):
    exe = shutil.which("chromium")
    check(exe is not None, "chromium is installed (scripts/install-deps --test)")
    prof = tempfile.mkdtemp(prefix="chromium-", dir=h.rundir)
    argv = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--user-data-dir=" + prof, "--window-size=1400,1000"] + list(args)
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    info("chromium %s: %.1fs" % (args[-1][:80], time.monotonic() - t0))
    check(r.returncode == 0, "chromium exits 0", r.stderr[-2000:])
    shutil.rmtree(prof, ignore_errors=True)
    return r.stdout


def check_png(path, what):
    with open(path, "rb") as f:
        data = f.read()
    check(data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "%s: a PNG" % what)
    w, hgt = struct.unpack(">II", data[16:24])
    check((w, hgt) == (1400, 1000) and len(data) > 20000,
          "%s: 1400x1000 and not blank (%d bytes)" % (what, len(data)), (w, hgt, len(data)))


class Marks(html.parser.HTMLParser):
    """Node marks, the lookup group and the result line of a dumped page."""

    def __init__(self):
        super().__init__()
        self.ids, self.lookup, self.hops, self.result, self._in_result = [], None, 0, "", False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "circle" and "node" in cls and a.get("data-id"):
            self.ids.append(a["data-id"])
        elif tag == "g" and "lookup" in cls:
            self.lookup = a
        elif tag == "path" and "hop" in cls:
            self.hops += 1
        self._in_result = a.get("id") == "result"

    def handle_data(self, data):
        if self._in_result:
            self.result += data


def parse_page(text):
    p = Marks()
    p.feed(text)
    return p


# testbed watch --------------------------------------------------------------------

def start_watch(h, c):
    log = os.path.join(h.rundir, "watch.log")
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, TESTBED, "--dir", c.rundir, "watch", "--interval", "2"],
                             stdout=f, stderr=subprocess.STDOUT)
    h.extra_procs.append(p)

    def address():
        with open(log) as f:
            m = re.search(r"http://127\.0\.0\.1:(\d+)/", f.read())
        return m and m.group(0)
    url = p2p.wait_until(address, 30, "testbed watch prints its address on 127.0.0.1",
                         describe=lambda _: open(log).read()[-500:])
    info("watch at " + url)
    return url


def http(url, data=None, timeout=30, headers=None):
    """(status, body) of a GET, or a POST of data (bytes)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers or {}), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def check_watch(h, c, url, statuses):
    st, body = http(url)
    check(st == 200 and len(parse_page(body).ids) == N, "GET / serves the page with %d node marks" % N, st)
    st, body = http(url + "state.json")
    js = json.loads(body)
    check(st == 200 and js["consistent"] and len(js["nodes"]) == N, "state.json: %d nodes, consistent" % N, body[:300])
    page = parse_page(chromium(h, "--virtual-time-budget=5000", "--dump-dom", url))
    check(sorted(page.ids) == sorted(s["id"] for s in statuses.values()),
          "Chromium loads the page and it draws %d node marks, the ids of status (%d)" % (N, len(page.ids)))
    src = c.nodes[5]
    key = next(k for k in ("key-%d" % i for i in range(1000)) if c.owner_of(k) is not src)
    page = parse_page(chromium(h, "--virtual-time-budget=8000", "--dump-dom",
                               url + "?lookup=" + urllib.parse.quote(key) + "#" + src.id))
    lk = page.lookup or {}
    check(lk.get("data-key") == key and lk.get("data-from") == src.id and lk.get("data-owner") == c.owner_of(key).id,
          "a lookup asked through the page is drawn from the selected node to the key's owner", (lk, page.result))
    check(page.hops >= 1 and page.result.startswith("owner " + c.owner_of(key).id[:8]),
          "its path is drawn (%d arrows) and the page names the owner" % page.hops, page.result)
    shot = os.path.join(h.rundir, "watch.png")
    chromium(h, "--virtual-time-budget=5000", "--screenshot=" + shot, url + "#" + src.id)
    check_png(shot, "screenshot of the watch page")


def check_limits(url):
    form = urllib.parse.urlencode
    st, body = http(url + "lookup", form({"key": "k" * (ringpicture.MAX_KEY + 1)}).encode())
    check(st == 400 and "key" in body, "an over-long key is refused (400)", (st, body))
    st, body = http(url + "lookup", form({"key": "k", "from": "0" * 40}).encode())
    check(st == 400 and "no answering node" in body, "a lookup from an unknown node is refused (400)", (st, body))
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))
    st, _ = http(url + "state.json", headers={"Host": "rebound.example:%d" % port})
    check(st == 403, "a request named for another host (DNS rebinding) is refused (403)", st)
    st, _ = http(url + "lookup", form({"key": "csrf-key"}).encode(), headers={"Origin": "http://evil.example"})
    lk = json.loads(http(url + "state.json")[1])["lookup"]
    check(st == 403 and (lk or {}).get("key") != "csrf-key", "a lookup posted by another site's page is refused "
          "(403) and not run", (st, lk))
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"POST /lookup HTTP/1.0\r\nContent-Length: 100000\r\n\r\n")
        reply = s.recv(200)
    check(reply.startswith(b"HTTP/1.0 413"), "a body over %d bytes is refused (413) before it is read" %
          ringpicture.MAX_BODY, reply)
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(ringpicture.MAX_CLIENTS)]
    try:
        p2p.wait_until(lambda: http(url, timeout=10)[0] == 503, 10, "a connection beyond %d gets 503" % len(idle))
        check(True, "with %d connections held open the next is turned away (503)" % len(idle))
        t0 = time.monotonic()
        dropped = []
        for s in idle:
            s.settimeout(ringpicture.CLIENT_TIMEOUT + 10)
            try:
                dropped.append(s.recv(100) == b"")
            except OSError:
                dropped.append(False)
        took = time.monotonic() - t0
        check(all(dropped) and took < ringpicture.CLIENT_TIMEOUT + 5,
              "the server drops the idle connections after its client timeout (%.1fs)" % took, dropped)
    finally:
        for s in idle:
            s.close()
    st, body = http(url)
    check(st == 200 and len(parse_page(body).ids) == N, "then the page is served again")


def test(h):
    check_drawing()
    c = start_cluster(h)
    for i in range(24):
        p2p.put(c.nodes[(i * 7) % N], "picture-%d" % i, {"i": i}, ttl=600)
    c.save()
    out = os.path.join(h.rundir, "ring.svg")
    key = "sip:alice@overlay.test"
    testbed(c, "picture", out, "--lookup", key, "--node", "0")
    sts = c.status_all()
    check(all(isinstance(s, dict) for s in sts.values()), "every node answers status")
    check_picture(c, out, sts, key)
    shot = os.path.join(h.rundir, "ring.png")
    chromium(h, "--screenshot=" + shot, "file://" + out + "#" + c.nodes[0].id)
    check_png(shot, "Chromium's rendering of the SVG")
    check_stopped(h, c, os.path.join(h.rundir, "stopped.svg"))
    c.wait_consistent(timeout=60)
    url = start_watch(h, c)
    check_watch(h, c, url, sts)
    check_limits(url)
    keep = os.environ.get("P2PSIP_PICTURE_OUT")
    if keep:  # to look at them
        os.makedirs(keep, exist_ok=True)
        for f in ("ring.svg", "ring.png", "watch.png"):
            shutil.copy(os.path.join(h.rundir, f), keep)


if __name__ == "__main__":
    p2p.run("test_picture", test, timeout=300)
