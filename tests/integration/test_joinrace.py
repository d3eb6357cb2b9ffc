#!/usr/bin/env python3
"""A put that meets a node joining in front of its key's primary.

The ring is laid out with --node-id around a user's key K: "pre" the node
before it, S its primary, R1 and R2 S's successors, and "writer", a node
far from K that must look K up.  A fake node F (a raw peer-protocol
client that answers only the copies S sends it) joins between K and S: it
sends S a JOIN, and S takes it as predecessor.  Until F goes, S says "not mine" for K while the
rest of the ring, pre included, still names S as K's primary: the
moment in which two relays joining at once lost a value (test_joinput).

  - S hands F its range once per link: five JOINs more on the same link
    get nothing (joins_repeated), a JOIN on a new link (a restart) does;
    a peer could otherwise make S send all it holds again and again.
  - F's own primary STORE for a key of its range is refused by S (status
    2, refused_not_mine), although F is S's predecessor: only a leaving
    predecessor's handover (flag 0x10) is taken for another range, and
    that one is (status 0).  S used to take any primary STORE from its
    predecessor, so a new node's put that found the key's old primary
    stayed there, where no get looks.
  - While F stays, the writer's put of K gives up after looking K up
    again six times over ~3.2 s (puts_relooked), and its log says why.
  - The writer's put of K, made again, is answered "not mine"
    by S, looks K up again a moment later (puts_relooked), and lands at S
    once F has left (LEAVE naming pre): ok, on 3 nodes, readable from
    every node.  It used to fail at once ("timed out"), the relay then
    waiting 20 s to publish again.
  - The value F handed over as it left is readable from every node."""

import os
import socket
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import peerproto as pp  # noqa: E402
from p2p import check, info  # noqa: E402

NAME = "sip:judy@overlay.test"
HANDOVER = 0x10  # proto/proto.h PROTO_STORE_HANDOVER
NOT_MINE = 2
RELOOKS = 6  # dht/ops.c NOT_MINE_RELOOKS
WIDE = 1 << 152  # pre and F this far either side of K: room for a second key


def at(k, off):
    return "%040x" % ((k + off) % p2p.RING)


def names_in(k, n):
    """n user names whose keys lie in (pre, F], K's side of F, other than K."""
    out = []
    for i in range(400000):
        name = "sip:h%d@overlay.test" % i
        x = p2p.id_int(p2p.key_id(name))
        if pp.between(x, (k - WIDE) % p2p.RING, (k + WIDE) % p2p.RING):
            out.append(name)
            if len(out) == n:
                return out
    raise AssertionError("not %d names in (pre, F]" % n)


def stores_seen(socks, key_hex, timeout, enough=None):
    """STORE frames for key_hex that S sends down any of socks within
    timeout, or until `enough` came (each answered, as a node would);
    other frames are read past."""
    seen, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline and (enough is None or seen < enough):
        for s in socks:
            for ftype, txid, body in pp.read_frames(s, 64, 0.05):
                if ftype == pp.STORE:
                    seen += body[:20].hex() == key_hex
                    s.sendall(pp.frame(pp.STORE_R, struct.pack(">BHB", 0, 1, 1), txid))
    return seen


def counter(node, name):
    return node.admin_ok({"cmd": "stats"})[name]


def test(h):
    k = p2p.id_int(p2p.key_id(NAME))
    q = p2p.RING // 4
    layout = [("pre", -WIDE), ("S", 2 * WIDE), ("R1", 2 * WIDE + 10), ("R2", 2 * WIDE + 20),
              ("writer", q), ("far1", 2 * q), ("far2", 3 * q)]
    c = h.cluster(0, replicas=3, ports=len(layout) + 2, refresh=60)
    c.start(len(layout), ids=[at(k, off) for _, off in layout])
    nodes = {name: c.by_id(at(k, off)) for name, off in layout}
    c.wait_consistent(timeout=60)
    s_node, pre = nodes["S"], nodes["pre"]
    name2, name3 = names_in(k, 2)
    p2p.put(nodes["far1"], name3, {"before": "F"}, ttl=600)
    k3 = p2p.key_id(name3)

    # F: an id between K and S, an address where nothing listens (pre,
    # told of it by S, finds nobody there and keeps S as its successor).
    f_id = at(k, WIDE)
    f_port = p2p.pick_ports(1)
    f = socket.create_connection(("127.0.0.1", s_node.port), timeout=5)
    f.sendall(pp.hello(p2p.OVERLAY, f_id, "127.0.0.1", f_port) +
              pp.frame(pp.JOIN, pp.node_bytes(f_id, "127.0.0.1", f_port), txid=3))
    p2p.wait_until(lambda: (s_node.status().get("predecessor") or {}).get("id") == f_id or None, 10,
                   "S takes F as its predecessor", describe=lambda _: s_node.status().get("predecessor"))
    # (it may try F a moment, and drops it when nobody answers there)
    p2p.wait_until(lambda: pre.status()["successors"][0]["id"] == s_node.id or None, 10,
                   "pre names S as its successor", describe=lambda _: pre.status()["successors"][:1])

    # Its range, once per link: a JOIN again on the same link gets nothing
    # (joins_repeated); on a new link (a node restarted) it does.
    # Read for a while, not just to the first copy: S sends this key twice
    # for that JOIN (the range between pre and F, then all it holds outside
    # its own), and the second must not count as sent again below.
    check(stores_seen([f], k3, 2.0) >= 1, "S hands F its range: a copy of a key of it")
    j0 = counter(s_node, "joins_repeated")
    for i in range(5):
        f.sendall(pp.frame(pp.JOIN, pp.node_bytes(f_id, "127.0.0.1", f_port), txid=20 + i))
    check(stores_seen([f], k3, 1.5) == 0, "5 JOINs more on that link: nothing sent again")
    check(counter(s_node, "joins_repeated") == j0 + 5, "counted in joins_repeated",
          counter(s_node, "joins_repeated") - j0)
    f2 = socket.create_connection(("127.0.0.1", s_node.port), timeout=5)
    f2.sendall(pp.hello(p2p.OVERLAY, f_id, "127.0.0.1", f_port) +
               pp.frame(pp.JOIN, pp.node_bytes(f_id, "127.0.0.1", f_port), txid=3))
    check(stores_seen([f, f2], k3, 5.0, enough=1) >= 1, "a JOIN on a new link (F restarted): its range again")

    # F's own primary STORE for a key of F's range: refused.
    n0 = counter(s_node, "refused_not_mine")
    own = pp.Value("f-own", b'{"f":1}', owner=f_id)
    f.sendall(pp.store_frame(p2p.key_id(NAME), [own], txid=5))
    st = pp.store_status(f, 5)
    check(st == NOT_MINE, "a primary STORE from S's predecessor for a key of its range: not mine (2)", st)
    check(counter(s_node, "refused_not_mine") == n0 + 1, "counted in refused_not_mine")
    # The same from a leaving predecessor (its handover): taken.
    handed = pp.Value("f-handed", b'{"handed":1}', owner=f_id)
    f.sendall(pp.store_frame(p2p.key_id(name2), [handed], txid=6, flags=HANDOVER))
    st = pp.store_status(f, 6)
    check(st == 0, "the predecessor's handover of a key of its range (flag 0x10): taken (0)", st)

    # While F stays (it keeps telling S it is there), the put gives up
    # after its last lookup again, ~3.2 s, and says why in its log.
    writer = nodes["writer"]
    r0 = counter(writer, "puts_relooked")
    stop = threading.Event()

    def keep_f():
        while not stop.wait(0.3):
            f.sendall(pp.frame(pp.NOTIFY, pp.node_bytes(f_id, "127.0.0.1", f_port), txid=4))
    keeper = threading.Thread(target=keep_f, daemon=True)
    keeper.start()
    t0 = time.monotonic()
    r = writer.admin({"cmd": "put", "key": NAME, "value": {"contact": "sip:judy@192.0.2.6"}, "ttl": 600}, 20)
    took = time.monotonic() - t0
    stop.set()
    keeper.join(5)
    check(not r.get("ok"), "a put while S keeps F as predecessor fails", r)
    check(3.0 < took < 15.0, "after the lookups again (%.1fs: 50 ms, doubling, six times)" % took)
    check(counter(writer, "puts_relooked") - r0 == RELOOKS, "puts_relooked counts them",
          counter(writer, "puts_relooked") - r0)
    p2p.wait_until(lambda: "not its own" in open(writer.log).read() or None, 5,
                   "the writer's log says why the put gave up")
    check((s_node.status().get("predecessor") or {}).get("id") == f_id, "S still had F as predecessor")

    # The writer's put, in the moment S is not K's primary but pre says so.
    r0, n1 = counter(writer, "puts_relooked"), counter(s_node, "refused_not_mine")
    result = {}

    def put():
        result["r"] = writer.admin({"cmd": "put", "key": NAME, "value": {"contact": "sip:judy@192.0.2.7"},
                                    "ttl": 600}, 15)
    t = threading.Thread(target=put, daemon=True)
    t.start()
    p2p.wait_until(lambda: counter(s_node, "refused_not_mine") > n1 or "r" in result or None, 10,
                   "the writer's STORE reaches S")
    check("r" not in result, "the put is still going after S said not mine", result.get("r"))
    # F leaves: S's predecessor is pre again, and K is S's.
    leave = b"\x01" + pp.node_bytes(pre.id, "127.0.0.1", pre.port) + b"\x01" + \
        pp.node_bytes(s_node.id, "127.0.0.1", s_node.port)
    f.sendall(pp.frame(pp.LEAVE, leave, txid=7))
    t.join(20)
    r = result.get("r")
    check(r is not None and r.get("ok") and r.get("replicas") == 3,
          "the put that met F's join lands once F has left, on 3 nodes", r)
    check(counter(writer, "puts_relooked") > r0, "after looking K up again (puts_relooked)",
          counter(writer, "puts_relooked"))
    f.close()
    f2.close()

    want = [{"contact": "sip:judy@192.0.2.7"}]
    got = p2p.parallel_map(lambda n: [v["value"] for v in p2p.get_values(n, NAME)], c.alive())
    check(all(g == want for g in got), "the value is readable from all %d nodes" % len(got), got)
    check([v["value"] for v in p2p.get_values(s_node, NAME, local=True)] == want, "S, K's primary, holds it")
    got = p2p.parallel_map(lambda n: [v["value"] for v in p2p.get_values(n, name2)], c.alive())
    check(all(g == [{"handed": 1}] for g in got), "what F handed over as it left is readable everywhere", got)
    check(not c.crashed(), "no node died", c.crashed())
    info("writer's lookups again: %d" % (counter(writer, "puts_relooked") - r0))


if __name__ == "__main__":
    p2p.run("joinrace", test, timeout=120)
