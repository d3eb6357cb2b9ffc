#!/usr/bin/env python3
"""Routed puts and gets in the secured mode (issue 9: a put or get must not
pay a TLS handshake with strangers).

A secured ring of 20 nodes is warmed up with puts and gets from every
node.  Then:
  - 30 put-then-gets of new keys from random nodes all read back, travel
    as ROUTE frames (routed_sent, routed_forwarded grow), fall back to the
    iterative path never, and make no TLS handshake at all;
  - an insider, "mallory" (a valid node certificate, no node), sends ROUTE
    frames over TLS to a node that is not the key's owner: a value that
    replaces another node's is routed to the owner and refused there
    (inner STORE_R status 1, values_refused); a primary STORE sent
    "already past the owner" (PROTO_ROUTE_PASSED, skip 0) to a node whose
    predecessor it names as its origin is refused as not that node's key
    (status 2, refused_not_mine): the origin field carries no authority;
    a hop count at the limit, an inner FIND and a malformed inner STORE
    get a failed ROUTE_R, and mallory's link stays up (a PING is
    answered);
and the honest values stay intact and readable everywhere."""

import os
import random
import struct
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import peerproto as pp  # noqa: E402
from p2p import check, info  # noqa: E402

N = 20
ROUTE, ROUTE_R, PING_R = 23, 24, 4
ROUTE_PASSED = 0x01
ROUTE_FAILED = 1
MAX_PATH = 32
COUNTERS = ("tls_handshakes", "routed_sent", "routed_forwarded", "routed_answered", "routed_failed",
            "routed_fallbacks", "values_refused", "refused_not_mine", "bad_frames", "lookups")


def sums(c):
    sts = p2p.parallel_map(lambda n: n.admin_ok({"cmd": "stats"}), c.alive())
    return {k: sum(s.get(k, 0) for s in sts) for k in COUNTERS}


def route_frame(key_hex, inner_type, inner, txid, origin, flags=0, skip=0, hops=0):
    body = (bytes.fromhex(key_hex) + bytes([flags, skip, hops]) + pp.node_bytes(origin, "127.0.0.1", 1) +
            bytes([inner_type]) + struct.pack(">I", len(inner)) + inner)
    return pp.frame(ROUTE, body, txid=txid)


def route_answer(s, txid, timeout=10.0):
    """(status, inner type, inner body) of the ROUTE_R for txid, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frames = pp.read_frames(s, 1, deadline - time.monotonic())
        if not frames:
            return None
        for t, x, body in frames:
            if t == ROUTE_R and x == txid:
                at = 2 + 20 + 1 + (4 if body[22] == 4 else 16) + 2
                n = struct.unpack(">I", body[at + 1:at + 5])[0]
                return body[0], body[at], body[at + 5:at + 5 + n]
    return None


def new_links(nodes, marks):
    """The log lines of TLS links opened since marks (log sizes)."""
    out = []
    for n in nodes:
        with open(n.log, "rb") as f:
            f.seek(marks[n.index])
            out += ["node%d: %s" % (n.index, line) for line in f.read().decode(errors="replace").splitlines()
                    if "TLS link to" in line]
    return out


def put_then_get(node, key, value):
    p2p.put(node, key, value, ttl=600)
    return p2p.get_values(node, key)


def test(h):
    # debug: the log says what each new TLS link was opened for.
    c = h.cluster(N, secure=True, replicas=3, log_level="debug")
    c.wait_consistent(timeout=90, succ_len=8, full_succ=True)
    nodes = c.alive()
    rnd = random.Random(9)

    # Warm-up: every node puts and gets, which fills fingers and opens the
    # links that routed requests then use.
    warm = [(nodes[i % N], "warm-%d" % i) for i in range(4 * N)]
    res = p2p.parallel_map(lambda j: put_then_get(j[0], j[1], {"w": j[1]}), warm, 4)
    bad = [(j, r) for j, r in zip(warm, res) if isinstance(r, Exception) or len(r) != 1]
    check(not bad, "warm-up: %d put-then-gets from every node read back" % len(warm), bad[:3])

    marks = {n.index: os.path.getsize(n.log) for n in nodes}
    s0 = sums(c)
    jobs = [(rnd.choice(nodes), "sip:r%d@%s" % (i, p2p.OVERLAY)) for i in range(30)]
    res = [put_then_get(n, k, {"r": k}) for n, k in jobs]
    s1 = sums(c)
    d = {k: s1[k] - s0[k] for k in COUNTERS}
    info("counters over the 30 put-then-gets: %s" % d)
    bad = [(j, r) for j, r in zip(jobs, res) if len(r) != 1 or r[0].get("value") != {"r": j[1]}]
    check(not bad, "30 put-then-gets from random nodes read back", bad[:3])
    check(d["routed_sent"] >= 2 * 30 and d["routed_forwarded"] > 0,
          "they travelled routed (routed_sent +%d, routed_forwarded +%d)" % (d["routed_sent"], d["routed_forwarded"]))
    check(d["routed_fallbacks"] == 0 and d["routed_failed"] == 0, "no routed request failed or fell back", d)
    check(d["tls_handshakes"] == 0, "with warm links they made no TLS handshake", new_links(nodes, marks))

    # An insider -----------------------------------------------------------
    cred = os.path.join(c.rundir, "creds")
    os.makedirs(cred)
    p2p.ca_tool("node", c.cadir, os.path.join(cred, "mallory"))
    mallory = (os.path.join(cred, "mallory.crt"), os.path.join(cred, "mallory.key"))
    mid = pp.cert_node_id(mallory[0])
    plain = "shared-key"
    kp = p2p.key_id(plain)
    owner = c.owner_of(plain)
    honest = nodes[0] if nodes[0] is not owner else nodes[1]
    p2p.put(honest, plain, {"h": 1}, ttl=600, vid="shared")
    entry = next(n for n in nodes if n is not owner and n is not honest)
    base = sums(c)
    s = pp.tls_connect(entry.addr, *mallory)
    s.sendall(pp.hello(p2p.OVERLAY, mid))
    now_ms = int(time.time() * 1000)

    evil = pp.Value("shared", b'{"evil":1}', owner=mid, seq=now_ms + 5).sign(kp, *mallory)
    inner = pp.store_frame(kp, [evil], txid=0)[12:]
    s.sendall(route_frame(kp, pp.STORE, inner, txid=21, origin=honest.id))
    a = route_answer(s, 21)
    check(a is not None and a[0] == 0 and a[1] == pp.STORE_R and a[2][0] == 1,
          "a routed STORE replacing another node's value reaches the owner and is refused there (status 1)", a)

    # Past the owner, at a node whose predecessor the origin field names.
    sorted_ids = c.sorted_ids()
    victim = entry
    pred = sorted_ids[(sorted_ids.index(victim.id) - 1) % len(sorted_ids)]
    mine_key = next(k for k in ("m-%d" % i for i in range(100000))
                    if c.owner_of(k) is not victim and c.owner_of(k) is not owner)
    km = p2p.key_id(mine_key)
    own = pp.Value("m-own", b'{"m":1}', owner=mid).sign(km, *mallory)
    s.sendall(route_frame(km, pp.STORE, pp.store_frame(km, [own], txid=0)[12:], txid=22, origin=pred,
                          flags=ROUTE_PASSED, skip=0))
    a = route_answer(s, 22)
    check(a is not None and a[0] == 0 and a[1] == pp.STORE_R and a[2][0] == 2,
          "a primary STORE routed 'past the owner' to a node not responsible, naming its predecessor as "
          "origin, is refused as not its key (status 2)", a)

    for txid, frame, what in (
            (23, route_frame(kp, pp.FETCH, bytes.fromhex(kp), txid=23, origin=mid, hops=MAX_PATH),
             "a hop count at the limit"),
            (24, route_frame(kp, pp.FIND, bytes.fromhex(kp), txid=24, origin=mid), "an inner FIND"),
            (25, route_frame(kp, pp.STORE, b"\x01\x02\x03", txid=25, origin=mid), "a malformed inner STORE")):
        s.sendall(frame)
        a = route_answer(s, txid)
        check(a is not None and a[0] == ROUTE_FAILED, "%s: a failed ROUTE_R" % what, a)
    s.sendall(pp.frame(pp.PING, b"", txid=26))
    check(any(t == PING_R and x == 26 for t, x, _ in pp.read_frames(s, 1, 5.0)),
          "mallory's link is still up (PING answered): a bad inner request is not the link's fault")
    s.close()
    after = sums(c)
    check(after["values_refused"] > base["values_refused"] and after["refused_not_mine"] > base["refused_not_mine"]
          and after["routed_failed"] >= base["routed_failed"] + 2 and after["bad_frames"] > base["bad_frames"],
          "the refusals are counted (values_refused, refused_not_mine, routed_failed, bad_frames)", (base, after))

    vals = p2p.parallel_map(lambda n: p2p.get_values(n, plain), nodes)
    bad = [(n, v) for n, v in zip(nodes, vals) if [x.get("value") for x in v] != [{"h": 1}]]
    check(not bad, "the honest value is intact and readable from all %d nodes" % N, bad[:3])
    check(all(p2p.get_values(n, mine_key) == [] for n in nodes[:5]),
          "the refused primary STORE left nothing behind")
    check(not c.crashed(), "no node died", c.crashed())


if __name__ == "__main__":
    p2p.run("route", test, timeout=300)
