#!/usr/bin/env python3
"""Bindings outlive a restart of the node they were registered through, and
stay under the phones' control (issue 8, item 8):

- carol (two contacts) and dan register through node R; R is killed with
  SIGKILL and started again with the same id: its table of what it put in
  the DHT starts empty, while the bindings live on in the DHT;
- a REGISTER query through R lists carol's two bindings, and R takes them
  back into its own table (the admin lists them again);
- a refresh of one of them through R replaces it (one value per contact,
  the new expiry in the DHT);
- Expires: 0 for the other one through R removes it from the DHT (before
  the fix: 500 Location Service Failed);
- "*" for dan through R removes his binding from the DHT, and a MESSAGE to
  him gets 404 at once and never reaches his phone (before: 200 while the
  binding stayed live for its whole expiry);
- carol's last binding, which R put, removed through another node: gone
  from the DHT, 404 (before: overwritten by an expired copy, 480)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import HOST, OVERLAY, check, info  # noqa: E402

N = 5


addr, bindings = su.sip_dest, su.reg_bindings


def values(node, user):
    """The live user records of sip:USER@OVERLAY, as {contact uri: body}."""
    out = {}
    for v in p2p.get_values(node, "sip:%s@%s" % (user, OVERLAY)):
        body = v.get("value")
        if isinstance(body, dict):
            out[body.get("uri")] = body
    return out


def uri(ua):
    return "sip:%s@%s:%d" % (ua.user, HOST, ua.port)


def no_request(ua, seconds):
    """True when ua receives no request within seconds."""
    try:
        m = ua.wait(lambda x: not x.is_response, seconds, "a request")
    except p2p.Failure:
        return True
    info("unexpected request at %s: %r" % (ua.user, m))
    return False


def test(h):
    c = su.sip_cluster(h, N)
    nodes = c.alive()
    R, other, caller = nodes[2], nodes[4], nodes[1]
    c1, c2, dan = su.Ua("carol"), su.Ua("carol"), su.Ua("dan")
    for ua in (c1, c2, dan):
        r = ua.register(addr(c, R), expires=300)
        check(r.status == 200, "%s registers %s through %r" % (ua.user, uri(ua), R), r.status)
    check(set(values(other, "carol")) == {uri(c1), uri(c2)} and
          set(values(other, "dan")) == {uri(dan)},
          "the bindings are in the DHT", (values(other, "carol"), values(other, "dan")))

    info("killing %r (SIGKILL) and starting it again with the same id" % R)
    c.kill(R)
    c.restart(R)
    c.wait_consistent(timeout=60)
    check(su.registrations(R) == [], "after the restart R's own table is empty",
          su.registrations(R))

    r = c1.do(addr(c, R), "REGISTER", ruri="sip:" + OVERLAY, contact=False,
              call_id="query-%d" % c1.port)
    b = bindings(r)
    check(r.status == 200 and set(b) == {uri(c1), uri(c2)},
          "a query through the restarted node lists both bindings", (r.status, b))
    regs = p2p.wait_until(lambda: (lambda x: x if len(x) == 2 else None)(su.registrations(R)), 5,
                          "R takes its bindings back", describe=lambda x: su.registrations(R))
    check(sorted(x["contact"] for x in regs) == sorted("<%s>" % uri(u) for u in (c1, c2)),
          "and takes the bindings it put before the restart back into its table", regs)

    r = c1.register(addr(c, R), expires=600)
    b = bindings(r)
    vals = values(other, "carol")
    check(r.status == 200 and b.get(uri(c1)) == 600 and uri(c2) in b,
          "a refresh through R after the restart: 200 with the new expiry", (r.status, b))
    check(set(vals) == {uri(c1), uri(c2)} and vals[uri(c1)].get("expires") == 600,
          "the refresh replaced the old binding in the DHT (one value per contact)", vals)

    r = c2.register(addr(c, R), expires=0)
    b = bindings(r)
    check(r.status == 200 and list(b) == [uri(c1)],
          "Expires: 0 through R for a binding put before the restart: 200 lists the other",
          (r.status, r.reason, b))
    vals = values(other, "carol")
    check(set(vals) == {uri(c1)}, "and the binding is gone from the DHT", vals)

    r = dan.do(addr(c, R), "REGISTER", ruri="sip:" + OVERLAY, contact="*",
               headers=["Expires: 0"], call_id="star-%d" % dan.port)
    check(r.status == 200 and not r.all("contact"),
          "'*' through R for dan (registered before the restart): 200, no bindings",
          (r.status, r.all("contact")))
    vals = values(other, "dan")
    check(vals == {}, "dan's binding is gone from the DHT", vals)
    caller_ua = su.Ua("erin")
    t0 = time.monotonic()
    r = caller_ua.do(addr(c, caller), "MESSAGE", ruri="sip:dan@" + OVERLAY,
                     to="<sip:dan@%s>" % OVERLAY, headers=["Content-Type: text/plain"],
                     body="still there?", timeout=10)
    took = time.monotonic() - t0
    check(r.status == 404 and took < 3, "a MESSAGE to dan gets 404 at once (%.1f s)" % took,
          r.status)
    check(no_request(dan, 1.0), "and nothing reaches dan's phone", "")

    # The last binding, put by R, removed through another node.
    r = c1.register(addr(c, other), expires=0)
    check(r.status == 200 and not r.all("contact"),
          "Expires: 0 through another node than the registrar's: 200", (r.status, bindings(r)))
    vals = values(caller, "carol")
    check(vals == {}, "carol's last binding is gone from the DHT", vals)
    r = caller_ua.do(addr(c, caller), "MESSAGE", ruri="sip:carol@" + OVERLAY,
                     to="<sip:carol@%s>" % OVERLAY, headers=["Content-Type: text/plain"],
                     body="anyone?", timeout=10)
    check(r.status == 404, "a MESSAGE to carol gets 404 (unregistered), not 480 (expired)",
          r.status)
    check(no_request(c1, 0.5) and no_request(c2, 0.5), "and reaches none of her phones", "")
    for ua in (c1, c2, dan, caller_ua):
        ua.close()


if __name__ == "__main__":
    p2p.run("sip_restart", test, timeout=180)
