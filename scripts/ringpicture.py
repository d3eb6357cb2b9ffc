"""The overlay as a picture: gather every node's status and stats, draw the
ring as an SVG, and serve it live (scripts/testbed picture / watch, and
scripts/demo).  Python 3 standard library only.

The SVG is one self-contained file: nodes on a circle by id (clockwise from
the top), coloured by role, sized by records; each node's arc to its first
successor (red when that is not the next answering id on the circle); each
node's fingers, shown on hover, for a node selected by click or by a
#HEX40 fragment (CSS :target, so also without script); the histogram of
lookup hops summed over every node's stats, with 1/2*log2(N) and the mean
marked; and a caption.  Tools can check it against status: every node mark
is <circle class="node" data-id="HEX40" data-roles="sip,gateway,relay">,
data-roles being the node's status "roles" without "dht" (every node has
that one), joined by commas, "" for a plain node.
"""

import http.server
import json
import math
import os
import sys
import threading
import time
import urllib.parse
from xml.sax.saxutils import escape, quoteattr

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))),
                                "tests", "integration"))
import p2p  # noqa: E402

# Gathering -------------------------------------------------------------------


def _ask(node, timeout):
    """status and stats of one node over one admin connection."""
    with p2p.AdminConn(node.sock, timeout) as c:
        st, sa = c.request({"cmd": "status"}), c.request({"cmd": "stats"})
    if not st["ok"] or not sa["ok"]:
        raise p2p.AdminError("%r: %s" % (node, st.get("error") or sa.get("error")))
    return st, sa


def _entry(node, st, sa):
    succ = st.get("successors") or []
    pred = st.get("predecessor")
    return {"index": node.index, "addr": node.addr, "sock": node.sock, "id": st["id"],
            "roles": [r for r in st.get("roles") or [] if r != "dht"],
            "records": int(st.get("records") or 0),
            "succ": succ[0].get("id") if succ else None,
            "pred": pred.get("id") if isinstance(pred, dict) else None,
            "fingers": p2p.sort_ids(f["id"] for f in st.get("fingers") or [] if f.get("id") != st["id"]),
            "hist": [int(x) for x in sa.get("hops_histogram") or []]}


def _check_ring(nodes):
    """Mark each node's successor and predecessor right or wrong: right is
    the neighbouring id among the nodes that answered."""
    m = len(nodes)
    for k, e in enumerate(nodes):
        nxt, prv = nodes[(k + 1) % m]["id"], nodes[(k - 1) % m]["id"]
        if m == 1:
            e["succ_ok"] = e["succ"] in (None, e["id"])
            e["pred_ok"] = e["pred"] in (None, e["id"])
        else:
            e["succ_ok"], e["pred_ok"] = e["succ"] == nxt, e["pred"] == prv


def _sum_hist(nodes):
    total = []
    for e in nodes:
        for h, cnt in enumerate(e["hist"]):
            if h == len(total):
                total.append(0)
            total[h] += cnt
    return total


def snapshot(nodes, overlay, missing=(), not_running=0, gather_s=0.0, when=None):
    """A picture's data from node entries (as gather makes them): sorted
    by id, each successor and predecessor checked, hop histograms summed."""
    nodes = sorted(nodes, key=lambda e: p2p.id_int(e["id"]))
    _check_ring(nodes)
    hist = _sum_hist(nodes)
    lookups = sum(hist)
    return {"time": time.time() if when is None else when, "overlay": overlay, "nodes": nodes,
            "missing": list(missing), "not_running": not_running,
            "wrong_succ": sum(not e["succ_ok"] for e in nodes),
            "wrong_pred": sum(not e["pred_ok"] for e in nodes),
            "hist": hist, "lookups": lookups,
            "mean_hops": sum(h * c for h, c in enumerate(hist)) / lookups if lookups else None,
            "gather_s": gather_s}


def gather(cluster, workers=16, timeout=3.0, deadline=60.0):
    """One snapshot of the cluster's running nodes: status and stats of each
    with at most `workers` admin connections at a time, `timeout` per reply
    and `deadline` seconds in all (nodes not asked by then count as not
    answering).  Nodes stopped or killed through the testbed are not asked."""
    t0 = time.monotonic()
    asked = [n for n in cluster.nodes if n.state == "alive"]
    end = t0 + deadline

    def one(n):
        left = end - time.monotonic()
        if left <= 0:
            raise p2p.AdminError("gathering took longer than %.0fs" % deadline)
        return _ask(n, min(timeout, left))
    res = p2p.parallel_map(one, asked, workers)
    return snapshot([_entry(n, *r) for n, r in zip(asked, res) if isinstance(r, tuple)], cluster.overlay,
                    [n.index for n, r in zip(asked, res) if not isinstance(r, tuple)],
                    len(cluster.nodes) - len(asked), time.monotonic() - t0)


def consistent(snap):
    return bool(snap["nodes"]) and not snap["wrong_succ"] and not snap["wrong_pred"]


def caption(snap):
    n = len(snap["nodes"])
    parts = ["%d nodes" % n]
    if snap["missing"]:
        parts.append("%d did not answer" % len(snap["missing"]))
    if snap["not_running"]:
        parts.append("%d not running" % snap["not_running"])
    parts.append("overlay %s" % snap["overlay"])
    parts.append(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap["time"])))
    if not snap["nodes"]:
        parts.append("no node answered")
    elif consistent(snap):
        parts.append("ring consistent")
    else:
        parts.append("ring INCONSISTENT: %d wrong successors, %d wrong predecessors" %
                     (snap["wrong_succ"], snap["wrong_pred"]))
    return ", ".join(parts)


def run_lookup(snap, key, from_id=None, timeout=10.0):
    """Admin lookup of key on the node with id from_id (default: node 0, or
    the first that answered).  Returns the reply with "from" and "key"
    added; raises ValueError for a node not in the snapshot."""
    nodes = snap["nodes"]
    if from_id:
        src = next((e for e in nodes if e["id"] == from_id), None)
        if src is None:
            raise ValueError("no answering node has id %r" % from_id[:48])
    else:
        src = next((e for e in nodes if e["index"] == 0), nodes[0] if nodes else None)
        if src is None:
            raise ValueError("no node answered")
    r = p2p.admin(src["sock"], {"cmd": "lookup", "key": key}, timeout)
    r.update({"from": src["id"], "key": key})
    return r


# Drawing ---------------------------------------------------------------------

W, H = 1400, 1000
CX, CY, R = 470, 520, 380
ROLE_ORDER = ("gateway", "sip", "relay")  # the fill is the first role a node has
ROLE_NAME = {"gateway": "proxy peer (gateway)", "sip": "SIP (registrar, proxy)", "relay": "relay (TURN)",
             "": "plain DHT node"}

STYLE = """
svg { font-family: sans-serif; background: #fff; }
.ring { fill: none; stroke: #ddd; stroke-width: 1; }
.node { stroke: #fff; stroke-width: .8; cursor: pointer; }
.r-plain { fill: #3b6ea5; } .r-sip { fill: #27ae60; } .r-gateway { fill: #8e44ad; } .r-relay { fill: #e67e22; }
.also-relay { stroke: #e67e22; stroke-width: 2.5; }
.succ { fill: none; stroke: #8aa; stroke-width: 1.2; }
.succ.wrong { stroke: #d00; stroke-width: 2.5; } .node.lost { stroke: #d00; stroke-width: 2.5; }
.fingers { display: none; fill: none; stroke: #444; stroke-width: 1; stroke-opacity: .7; pointer-events: none; }
.nd:hover .fingers, .nd:target .fingers, .nd.sel .fingers { display: inline; }
.nd:target > .node, .nd.sel > .node { stroke: #000; stroke-width: 3; }
.label { font-size: 10px; fill: #555; text-anchor: middle; dominant-baseline: middle; pointer-events: none; }
.title { font-size: 20px; font-weight: bold; } .cap { font-size: 13px; fill: #333; }
.cap.bad { fill: #d00; font-weight: bold; } .legend { font-size: 12px; fill: #333; }
.bar { fill: #6c8ebf; } .axis { stroke: #333; stroke-width: 1; } .tick { font-size: 11px; fill: #333; }
.mark { stroke-width: 2; stroke-dasharray: 6 3; } .mark.log { stroke: #d35400; } .mark.mean { stroke: #16a085; }
.marktext.log { fill: #d35400; } .marktext.mean { fill: #16a085; }
.hop { stroke: #c2185b; stroke-width: 3; fill: none; } .hoptext { font-size: 13px; fill: #c2185b; font-weight: bold; }
.lookupend { fill: none; stroke: #c2185b; stroke-width: 3; }
"""

# Clicking a node selects it (the fragment, so CSS :target shows its
# fingers); clicking elsewhere clears the selection.
SCRIPT = """
document.addEventListener('click', function (e) {
  var g = e.target.closest ? e.target.closest('.nd') : null;
  if (g) location.hash = g.id; else if (location.hash) location.hash = '';
});
"""


def _angle(hexid):
    return 2 * math.pi * p2p.id_int(hexid) / p2p.RING


def _pt(hexid, r):
    a = _angle(hexid)
    return CX + r * math.sin(a), CY - r * math.cos(a)


def _f(x):
    return "%.1f" % x


def _radii(snap):
    """Node radius from its records: the area grows with them."""
    n = max(1, len(snap["nodes"]))
    rmin = max(2.5, min(6.0, 2 * math.pi * R / n * 0.3))
    rmax = min(14.0, rmin * 2.5)
    top = max([e["records"] for e in snap["nodes"]] + [1])
    return {e["id"]: rmin + (rmax - rmin) * math.sqrt(e["records"] / top) for e in snap["nodes"]}


def _role_classes(roles):
    """Colour classes: the fill of the first role in ROLE_ORDER, a ring
    for a relay that is something else too."""
    fill = next((r for r in ROLE_ORDER if r in roles), "plain")
    cls = "r-" + fill
    if "relay" in roles and fill != "relay":
        cls += " also-relay"
    return cls


def _arc(a_id, b_id, r, cls):
    """Clockwise arc on radius r from a's angle to b's."""
    (x0, y0), (x1, y1) = _pt(a_id, r), _pt(b_id, r)
    large = 1 if p2p.ring_distance(a_id, b_id) > p2p.RING // 2 else 0
    return '<path class="%s" d="M%s %sA%d %d 0 %d 1 %s %s"/>' % (cls, _f(x0), _f(y0), r, r, large, _f(x1), _f(y1))


def _chord(a_id, b_id, r, bend=0.5):
    """A curve from a to b on radius r, pulled toward the centre."""
    (x0, y0), (x1, y1) = _pt(a_id, r), _pt(b_id, r)
    qx, qy = (x0 + x1) / 2 * (1 - bend) + CX * bend, (y0 + y1) / 2 * (1 - bend) + CY * bend
    return "M%s %sQ%s %s %s %s" % (_f(x0), _f(y0), _f(qx), _f(qy), _f(x1), _f(y1))


def _succ_arcs(snap):
    out = ['<g class="succs">']
    arrows = len(snap["nodes"]) <= 128
    for e in snap["nodes"]:
        if not e["succ"] or e["succ"] == e["id"]:
            continue
        if e["succ_ok"]:
            out.append(_arc(e["id"], e["succ"], R - 12, "succ").replace(
                "/>", ' marker-end="url(#arrow)"/>' if arrows else "/>"))
        else:
            out.append(_arc(e["id"], e["succ"], R - 26, "succ wrong").replace(
                "/>", ' data-from="%s" data-to="%s" marker-end="url(#arrowbad)"/>' % (e["id"], e["succ"])))
    out.append("</g>")
    return out


def _node(e, rad, label):
    x, y = _pt(e["id"], R)
    roles = ",".join(e["roles"])
    tip = "node%d %s\nid %s\nroles: %s\nrecords: %d\nsuccessor %s%s\n%d fingers" % (
        e["index"], e["addr"], e["id"], roles or "plain", e["records"], (e["succ"] or "none")[:8],
        "" if e["succ_ok"] else " (WRONG)", len(e["fingers"]))
    out = ['<g class="nd" id="%s">' % e["id"]]
    if e["fingers"]:
        d = "".join(_chord(e["id"], f, R - 4) for f in e["fingers"])
        out.append('<path class="fingers" d="%s"/>' % d)
    out.append('<circle class="node %s" data-id="%s" data-roles="%s" data-index="%d" data-records="%d" '
               'cx="%s" cy="%s" r="%s"><title>%s</title></circle>' %
               (_role_classes(e["roles"]) + ("" if e["succ_ok"] or e["succ"] else " lost"), e["id"], roles,
                e["index"], e["records"],
                _f(x), _f(y), _f(rad), escape(tip)))
    if label:
        lx, ly = _pt(e["id"], R + 18)
        out.append('<text class="label" x="%s" y="%s">%d</text>' % (_f(lx), _f(ly), e["index"]))
    out.append("</g>")
    return out


def _legend(snap):
    counts = {}
    for e in snap["nodes"]:
        key = next((r for r in ROLE_ORDER if r in e["roles"]), "")
        counts[key] = counts.get(key, 0) + 1
    out = ['<g class="legend" transform="translate(940,600)">']
    y = 0
    for key in ROLE_ORDER + ("",):
        out.append('<circle class="swatch %s" cx="8" cy="%d" r="6"/><text x="22" y="%d">%s: %d</text>' %
                   (_role_classes([key]), y, y + 4, ROLE_NAME[key], counts.get(key, 0)))
        y += 20
    top = max([e["records"] for e in snap["nodes"]] + [0])
    for line in ("orange ring: also a relay", "size: records (0 to %d)" % top,
                 "arc: first successor (red: wrong)", "red outline: no successor", "hover or click a node: its fingers"):
        out.append('<text x="2" y="%d">%s</text>' % (y + 4, escape(line)))
        y += 18
    out.append("</g>")
    return out


def _histogram(snap, x0=930, y0=150, w=430, h=330):
    hist, n = snap["hist"], len(snap["nodes"])
    out = ['<g class="hist" data-lookups="%d">' % snap["lookups"],
           '<text class="legend" x="%d" y="%d" font-weight="bold">lookup hops, summed over %d nodes\' stats '
           '(%d lookups)</text>' % (x0, y0 - 20, n, snap["lookups"])]
    out.append('<line class="axis" x1="%d" y1="%d" x2="%d" y2="%d"/>' % (x0, y0 + h, x0 + w, y0 + h))
    if not snap["lookups"]:
        out.append('<text class="tick" x="%d" y="%d">no lookups yet</text></g>' % (x0 + 10, y0 + h / 2))
        return out
    top, bins = max(hist), max(len(hist), 2)
    bw, step = w / bins, (bins + 15) // 16  # at most 16 labels

    def xat(hops):  # the centre of the bar of `hops`, also between bars
        return x0 + bw * (hops + 0.5)
    for hops, cnt in enumerate(hist):
        bh = h * cnt / top
        out.append('<rect class="bar" data-hops="%d" data-count="%d" x="%s" y="%s" width="%s" height="%s">'
                   '<title>%d hops: %d lookups</title></rect>' %
                   (hops, cnt, _f(xat(hops) - bw * 0.4), _f(y0 + h - bh), _f(bw * 0.8), _f(bh), hops, cnt))
        if hops % step == 0:
            out.append('<text class="tick" x="%s" y="%d" text-anchor="middle">%d</text>' % (_f(xat(hops)), y0 + h + 15,
                                                                                            hops))
    out.append('<text class="tick" x="%d" y="%d">%d</text>' % (x0 - 4, y0 + 4, top))
    marks = [("log", 0.5 * math.log2(n) if n > 1 else 0.0, "\u00bd\u00b7log\u2082N = %.2f"),
             ("mean", snap["mean_hops"], "mean = %.2f")]
    for k, (cls, v, fmt) in enumerate(marks):
        x = xat(v)
        out.append('<line class="mark %s" data-value="%.4f" x1="%s" y1="%d" x2="%s" y2="%d"/>' %
                   (cls, v, _f(x), y0 - 5, _f(x), y0 + h))
        out.append('<text class="tick marktext %s" x="%s" y="%d">%s</text>' % (cls, _f(x + 4), y0 + 12 + 16 * k,
                                                                               escape(fmt % v)))
    out.append("</g>")
    return out


def _lookup_path(snap, lk):
    """The last lookup: arrows from the asking node through every node it
    asked, and a ring around the owner."""
    path = [lk["from"]] + list(lk.get("path") or [])
    owner = (lk.get("owner") or {}).get("id")
    if owner and path[-1] != owner:
        path.append(owner)
    out = ['<g class="lookup" data-key=%s data-from="%s" data-owner="%s" data-path="%s">' %
           (quoteattr(lk["key"]), lk["from"], owner or "", ",".join(lk.get("path") or []))]
    for k in range(len(path) - 1):
        if path[k] == path[k + 1]:
            continue
        out.append('<path class="hop" data-hop="%d" d="%s" marker-end="url(#arrowhop)"/>' %
                   (k + 1, _chord(path[k], path[k + 1], R, 0.25)))
        tx, ty = _pt(path[k + 1], R - 30)
        out.append('<text class="hoptext" x="%s" y="%s">%d</text>' % (_f(tx), _f(ty), k + 1))
    if owner:
        ox, oy = _pt(owner, R)
        out.append('<circle class="lookupend" cx="%s" cy="%s" r="14"/>' % (_f(ox), _f(oy)))
    text = "lookup %s from %s: owner %s, hops: %s" % (lk["key"][:60], lk["from"][:8], (owner or "?")[:8],
                                                      lk.get("hops", "?"))
    out.append('<text class="hoptext" x="20" y="%d">%s</text></g>' % (H - 20, escape(text)))
    return out


def render_svg(snap, lookup=None, script=True):
    """The picture as SVG text.  lookup: a run_lookup() reply to draw;
    script: include the click-to-select script (off when the SVG goes
    inside the watch page, which has its own)."""
    n = len(snap["nodes"])
    rad = _radii(snap)
    ok = consistent(snap)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" class="ringpicture" '
           'data-nodes="%d" data-missing="%d" data-consistent="%s" data-time="%d">' %
           (W, H, W, H, n, len(snap["missing"]), "true" if ok else "false", snap["time"]),
           "<title>%s</title>" % escape(caption(snap)),
           "<style>%s</style>" % STYLE,
           "<defs>"]
    for mid, colour, size in (("arrow", "#8aa", 4), ("arrowbad", "#d00", 4), ("arrowhop", "#c2185b", 4)):
        out.append('<marker id="%s" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="%d" markerHeight="%d" '
                   'orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="%s"/></marker>' %
                   (mid, size, size, colour))
    out.append("</defs>")
    out.append('<rect width="%d" height="%d" fill="#fff"/>' % (W, H))
    out.append('<text class="title" x="20" y="32">The ring of %s: %d nodes</text>' % (escape(snap["overlay"]), n))
    out.append('<text class="cap%s" x="20" y="54">%s</text>' % ("" if ok else " bad", escape(caption(snap))))
    out.append('<circle class="ring" cx="%d" cy="%d" r="%d"/>' % (CX, CY, R))
    out += _legend(snap) + _histogram(snap) + _succ_arcs(snap)
    out.append('<g class="nodes">')
    for e in snap["nodes"]:
        out += _node(e, rad[e["id"]], n <= 64)
    out.append("</g>")
    if lookup and lookup.get("ok"):
        out += _lookup_path(snap, lookup)
    out.append('<text class="tick" x="%d" y="%d" text-anchor="end">gathered in %.1fs</text>' %
               (W - 20, H - 20, snap["gather_s"]))
    if script:
        out.append("<script><![CDATA[%s]]></script>" % SCRIPT)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def state_json(snap, lookup=None):
    """The watch server's JSON: what the picture shows, as data."""
    return {"time": snap["time"], "overlay": snap["overlay"], "consistent": consistent(snap),
            "caption": caption(snap), "missing": snap["missing"], "gather_s": round(snap["gather_s"], 3),
            "hops_histogram": snap["hist"], "mean_hops": snap["mean_hops"], "lookup": lookup,
            "nodes": [{k: e[k] for k in ("index", "addr", "id", "roles", "records", "succ", "succ_ok")}
                      for e in snap["nodes"]]}


# Serving ---------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>p2psip overlay %(title)s</title>
<style>
body { font-family: sans-serif; margin: 8px; }
#bar { display: flex; gap: 1em; align-items: center; flex-wrap: wrap; margin-bottom: 4px; }
#result { color: #c2185b; } #status { color: #777; font-size: 12px; }
#pic svg { display: block; width: 100%%; height: calc(100vh - 56px); }
</style></head><body>
<form id="lk"><div id="bar">
<label>lookup key <input id="key" name="key" size="40" maxlength="%(maxkey)d" placeholder="sip:alice@overlay.test"
 required></label><span>from <span id="from">node 0</span> (click a node to choose)</span>
<button>look up</button><span id="result"></span><span id="status">%(status)s</span></div></form>
<div id="pic">%(svg)s</div>
<script>
(function () {
  var pic = document.getElementById('pic'), st = document.getElementById('status');
  var form = document.getElementById('lk'), key = document.getElementById('key');
  var sel = location.hash.slice(1), busy = false, again = false;
  function apply() {
    pic.querySelectorAll('.nd.sel').forEach(function (g) { g.classList.remove('sel'); });
    var g = sel ? document.getElementById(sel) : null;
    if (g) g.classList.add('sel');
    document.getElementById('from').textContent =
      g ? 'node ' + g.querySelector('.node').dataset.index + ' (' + sel.slice(0, 8) + ')' : 'node 0';
  }
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch('picture.svg?embed=1', {cache: 'no-store'}).then(function (r) {
      if (!r.ok) throw new Error('HTTP ' + r.status);
      return r.text();
    }).then(function (t) {
      pic.innerHTML = t;
      apply();
      st.textContent = 'updated ' + new Date().toLocaleTimeString();
    }).catch(function (e) {
      st.textContent = 'refresh failed: ' + e.message;
    }).finally(function () {
      busy = false;
      if (again) { again = false; refresh(); }
    });
  }
  pic.addEventListener('click', function (e) {
    var g = e.target.closest('.nd');
    sel = g ? g.id : '';
    history.replaceState(null, '', sel ? '#' + sel : location.pathname + location.search);
    apply();
  });
  window.addEventListener('hashchange', function () { sel = location.hash.slice(1); apply(); });
  form.addEventListener('submit', function (e) {
    e.preventDefault();
    var out = document.getElementById('result');
    out.textContent = 'looking up ...';
    fetch('lookup', {method: 'POST', body: new URLSearchParams({key: key.value, from: sel})})
      .then(function (r) { return r.json(); })
      .then(function (j) {
        out.textContent = j.ok ? 'owner ' + j.owner.id.slice(0, 8) + ' after ' + j.hops + ' hops'
                               : 'lookup failed: ' + j.error;
        refresh();
      }).catch(function (e) { out.textContent = 'lookup failed: ' + e.message; });
  });
  apply();
  setInterval(refresh, %(interval_ms)d);
  var q = new URLSearchParams(location.search).get('lookup');
  if (q) { key.value = q; form.requestSubmit(); }
})();
</script></body></html>
"""

MAX_KEY = 512       # characters of a lookup key from the page
MAX_BODY = 4096     # bytes of a POST body
MAX_CLIENTS = 16    # connections served at once; more get 503
CLIENT_TIMEOUT = 5  # seconds a client may take to send its request


class Watch:
    """The live state behind the watch page: the last snapshot (one gather
    at a time, at most every `interval` seconds, only while someone asks),
    the last lookup, and the SVG drawn from them (one per flavour)."""

    def __init__(self, load, interval=3.0, workers=16, timeout=3.0):
        self.load, self.interval, self.workers, self.timeout = load, interval, workers, timeout
        self.lock = threading.Lock()
        self.snap, self.snap_at, self.error, self.thread = None, 0.0, None, None
        self.lookup, self.lookup_seq = None, 0
        self.lookup_lock = threading.Lock()
        self.svgs = {}  # script flag -> (snapshot, lookup_seq, svg)

    def _gather(self):
        snap, err = None, None
        try:
            snap = gather(self.load(), self.workers, self.timeout, deadline=max(30.0, 4 * self.timeout))
        except (Exception, SystemExit) as e:  # a run dir gone shows on the page; the server goes on
            err = "%s: %s" % (type(e).__name__, e)
        finally:
            with self.lock:
                if snap is not None:
                    self.snap, self.snap_at = snap, time.monotonic()
                self.error, self.thread = err, None

    def current(self, wait=None):
        """The newest snapshot, after waiting (at most `wait` seconds) for a
        gather this call started or found running when the last one is
        older than the interval.  None if there never was one."""
        with self.lock:
            if self.thread is None and (self.snap is None or time.monotonic() - self.snap_at >= self.interval):
                self.thread = threading.Thread(target=self._gather, daemon=True)
                self.thread.start()
            t = self.thread
        if t is not None:
            t.join(wait if wait is not None else max(30.0, 4 * self.timeout) + 5)
        return self.snap

    def svg(self, script):
        snap = self.current()
        if snap is None:
            return None
        with self.lock:
            lk, seq = self.lookup, self.lookup_seq
            old = self.svgs.get(script)
        if old and old[0] is snap and old[1] == seq:
            return old[2]
        text = render_svg(snap, lk, script)
        with self.lock:
            self.svgs[script] = (snap, seq, text)
        return text

    def do_lookup(self, key, from_id):
        """(HTTP status, reply) of one lookup; one runs at a time."""
        if not self.lookup_lock.acquire(blocking=False):
            return 503, {"ok": False, "error": "a lookup is running; try again"}
        try:
            snap = self.current(wait=0) or self.current()
            if snap is None:
                return 503, {"ok": False, "error": "no picture yet: %s" % self.error}
            try:
                r = run_lookup(snap, key, from_id or None)
            except ValueError as e:
                return 400, {"ok": False, "error": str(e)}
            except p2p.AdminError as e:
                return 504, {"ok": False, "error": str(e)}
            with self.lock:
                self.lookup = r if r.get("ok") else None
                self.lookup_seq += 1
            return 200, r
        finally:
            self.lookup_lock.release()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep no list of threads

    def __init__(self, addr, watch, title, interval):
        super().__init__(addr, _Handler)
        self.watch, self.title, self.interval = watch, title, interval
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = CLIENT_TIMEOUT
    server_version = "p2psip-watch"

    def log_message(self, fmt, *args):
        pass  # one line per refresh every few seconds would drown the terminal

    def _send(self, code, ctype, body):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, code, obj):
        self._send(code, "application/json", json.dumps(obj) + "\n")

    def _foreign(self):
        """Refuse (403) a request named for another host (a DNS rebinding
        page) or sent from another site's page (a cross-site POST).  A
        request without Host (HTTP/1.0 by hand) comes from no browser."""
        port = self.server.server_address[1]
        ours = ("127.0.0.1:%d" % port, "localhost:%d" % port)
        origin = self.headers.get("Origin")
        if self.headers.get("Host") in ours + (None,) and (origin is None or origin in ["http://" + h for h in ours]):
            return False
        self._send(403, "text/plain", "this server answers only pages of http://127.0.0.1:%d/\n" % port)
        return True

    def do_GET(self):
        if self._foreign():
            return
        w = self.server.watch
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/":
            svg = w.svg(False)
            self._send(200, "text/html; charset=utf-8", PAGE % {
                "title": escape(self.server.title), "maxkey": MAX_KEY, "interval_ms": int(self.server.interval * 1000),
                "svg": svg or "", "status": "" if svg else escape("no picture yet: %s" % w.error)})
        elif url.path == "/picture.svg":
            svg = w.svg("embed=1" not in url.query)
            if svg is None:
                self._send(503, "text/plain", "no picture yet: %s\n" % w.error)
            else:
                self._send(200, "image/svg+xml", svg)
        elif url.path == "/state.json":
            snap = w.current()
            if snap is None:
                self._json(503, {"ok": False, "error": "no picture yet: %s" % w.error})
            else:
                self._json(200, dict(state_json(snap, w.lookup), ok=True))
        else:
            self._send(404, "text/plain", "not found\n")

    def do_POST(self):
        if self._foreign():
            return
        if urllib.parse.urlsplit(self.path).path != "/lookup":
            return self._send(404, "text/plain", "not found\n")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._json(411, {"ok": False, "error": "a Content-Length is needed"})
        if not 0 <= length <= MAX_BODY:
            return self._json(413, {"ok": False, "error": "body over %d bytes" % MAX_BODY})
        try:
            form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"), max_num_fields=4)
        except ValueError as e:
            return self._json(400, {"ok": False, "error": "bad form: %s" % e})
        key, frm = form.get("key", [""])[0], form.get("from", [""])[0]
        if not 0 < len(key) <= MAX_KEY:
            return self._json(400, {"ok": False, "error": "key must have 1 to %d characters" % MAX_KEY})
        if frm and (len(frm) != 40 or any(c not in "0123456789abcdef" for c in frm)):
            return self._json(400, {"ok": False, "error": "from must be a node id (40 lowercase hex digits)"})
        self._json(*self.server.watch.do_lookup(key, frm))


def serve(load, host="127.0.0.1", port=0, interval=3.0, workers=16, timeout=3.0, title="", announce=print):
    """Serve the watch page until interrupted.  load() returns the Cluster
    to gather from (called again for each gather, so that nodes started or
    killed meanwhile show)."""
    srv = _Server((host, port), Watch(load, interval, workers, timeout), title, interval)
    announce("watching %s at http://%s:%d/ (Ctrl-C to stop)" % (title, host, srv.server_address[1]))
    try:
        srv.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
