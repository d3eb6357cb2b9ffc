#!/usr/bin/env python3
"""The public decision needs two independent peers (node/public.c), on
loopback (tests/integration/test_public.py tries it across a real NAT):

- a ring of two: each node has one peer to ask and stays undecided
  ("waiting"), asking again every 5 s and no more often;
- a third node joins: every node is public, two peers agreeing;
- a lying peer (peerproto.Persona, a fake ring member) slips in as a
  node's successor and answers REACH "I see you elsewhere" (a NAT that is
  not there): asked again, the node stays public, the lie counted as a
  dissent, every time;
- with one honest peer left beside the liar, the two disagree: the node
  is not public and says why (a liar can deny, never grant, the public
  roles when it is one of two)."""

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

RETRY = 5.0  # s: CHECK_RETRY_MS
REPEAT = 3


def pub(node):
    return node.status()["public"]


def succ0(node):
    s = node.status()["successors"]
    return s[0]["id"] if s else None


def new_round(node):
    """Ask again now and return the round's outcome."""
    r0 = pub(node)["rounds"]
    p2p.wait_until(lambda: node.admin({"cmd": "check-public"}).get("ok"), 10, "check-public taken")
    return p2p.wait_until(lambda: (lambda p: p if p["rounds"] > r0 else None)(pub(node)), 10,
                          "a new round on %r" % node)


def test(h):
    c = h.cluster(2, ports=3)
    a, b = c.nodes
    p2p.wait_until(lambda: all(pub(n)["rounds"] >= 1 for n in (a, b)), 15, "a first round on both")
    t0 = time.monotonic()
    r0 = pub(a)["rounds"]
    time.sleep(2 * RETRY + 1)  # rounds that would come now, were they allowed
    ps = [pub(n) for n in (a, b)]
    rounds = pub(a)["rounds"] - r0
    check(all(p["public"] is None and p["why"].startswith("waiting") and len(p["last"]) == 1 for p in ps),
          "a ring of two: each node asks its one peer and stays undecided", ps)
    check(1 <= rounds <= 3, "it asks again every %.0f s, no more often (%d rounds in %.0f s)"
          % (RETRY, rounds, time.monotonic() - t0))

    c.start(1)
    c.wait_consistent(timeout=30)
    ps = p2p.wait_until(lambda: (lambda x: x if all(p["public"] is True for p in x) else None)(
        [pub(n) for n in c.nodes]), RETRY + 10, "all three public")
    check(all(p["why"].startswith("2 of 2 peers agree: each sees us at 127.0.0.1:") for p in ps),
          "a third node joins: each node is public, two peers agreeing", [p["why"] for p in ps])

    # A liar slips in after a, lying about the address it sees a at.
    target = a
    st = target.status()
    port = p2p.pick_ports(1)
    succ = [(x["id"], x["addr"].rsplit(":", 1)[0], int(x["addr"].rsplit(":", 1)[1])) for x in st["successors"]]
    liar = pp.Persona(p2p.OVERLAY, "%040x" % ((int(st["id"], 16) + 1) % p2p.RING), "127.0.0.1", port, succ,
                      reachable=1, seen="203.0.113.7:4000")
    threading.Thread(target=liar.accept_loop, daemon=True).start()
    liar.tell(target.addr, pp.POKE)
    p2p.wait_until(lambda: succ0(target) == liar.nid, 10, "the liar is a's successor",
                   describe=lambda x: target.status()["successors"])
    d0 = pub(target)["dissents"]
    for i in range(REPEAT):
        p = new_round(target)
        said = [x for x in p["last"] if x["peer"] == liar.nid]
        check(p["public"] is True and said and said[0]["answer"] == "seen elsewhere" and
              p["why"].startswith("2 of 3 peers agree"),
              "round %d: the liar says it sees a at 203.0.113.7; a stays public on two others' word" % (i + 1), p)
    check(pub(target)["dissents"] - d0 == REPEAT and liar.reach_asked >= REPEAT,
          "each lie counted as a dissent (%d)" % (pub(target)["dissents"] - d0))

    # One honest peer and the liar: they disagree, and a is not public.
    c.kill(c.nodes[2])
    p2p.wait_until(lambda: c.nodes[2].id not in [x["id"] for x in target.status()["successors"]], 15,
                   "a forgets the dead node")
    p = new_round(target)
    answered = [x for x in p["last"] if x["answer"] not in ("no answer", "waiting")]
    check(p["public"] is False and p["why"].startswith("peers disagree") and len(answered) == 2,
          "with one honest peer beside the liar the two disagree: a is not public, and says why", p)
    info("a: %s" % p["why"])

    probe_then_stop(c)


def probe_then_stop(c):
    """A node stopped while it probes a REACH asker's port exits cleanly:
    the probe's connect, cancelled by the shutdown, used to close handles
    the shutdown had closed already (abort in uv_close: session 26's CI).
    The asker's port is a listener whose queue is full, so the probe's
    connect waits (the SYN is dropped) until the node is stopped."""
    node = c.nodes[1]
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    lport = lst.getsockname()[1]
    fill = []
    for _ in range(4):  # past the queue of a backlog of 0: these wait, the next SYNs are dropped
        f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", lport))
        fill.append(f)
    time.sleep(0.1)
    host, port = node.addr.rsplit(":", 1)
    asker = socket.create_connection((host, int(port)), timeout=5)
    asker.sendall(pp.hello(p2p.OVERLAY, "%040x" % 0xab, "127.0.0.1", lport))
    asker.sendall(pp.frame(pp.REACH, struct.pack(">H", lport), txid=7))
    time.sleep(0.2)  # the probe is out, its connect pending (700 ms at most)
    code, took = c.stop(node)
    check(code == 0, "a node stopped while it probes back a REACH asker exits 0 (%.1f s)" % took, code)
    for x in fill + [asker, lst]:
        x.close()


if __name__ == "__main__":
    p2p.run("test_reach", test, timeout=120)
