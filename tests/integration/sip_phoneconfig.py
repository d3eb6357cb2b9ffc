#!/usr/bin/env python3
"""phone-config (README "Phones"): what a node tells a phone attached to it.

Five nodes on loopback: two relays (r1, r2), the phones' node h (--sip,
--turn-secret), a SIP node without the secret, and a node without SIP.
- h's answer: itself as registrar, both relays (each answered a STUN
  Binding), one picked (both get picked over 24 answers), a credential
  the relays' secret verifies, expiring when the username says, the
  baresip line with medianat=turn (or ice); p2psipctl prints it as an
  accounts file or JSON;
- refusals, each with its reason: no secret, no SIP, bad users (';', '@',
  a quote, 65 characters, not a string), bad format/media/ttl, a ttl over
  --turn-max-ttl;
- records under turn:overlay.test that are not usable relays (an address
  carrying config syntax, a host name, TCP only) never reach the answer;
- a relay killed with SIGKILL, whose record is still in the DHT, is left
  out at the next provisioning (it does not answer the probe) and listed
  as unanswered; with both gone the answer says no relay answered."""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import HOST, OVERLAY, check, info  # noqa: E402

SECRET = "phone-secret"
MAX_TTL = 7200


def test(h):
    su.require_sip(h.binary)
    base = p2p.pick_ports(5)
    sip = su.pick_udp_tcp(5)
    turn = su.pick_udp_tcp(2)
    c = h.cluster(0, ports=5, base_port=base, refresh=30)
    common = ["--turn-max-ttl", str(MAX_TTL)]
    args = {0: ["--sip", "%s:%d" % (HOST, sip), "--relay", "--turn", "%s:%d" % (HOST, turn), "--turn-secret", SECRET],
            1: ["--sip", "%s:%d" % (HOST, sip + 1), "--relay", "--turn", "%s:%d" % (HOST, turn + 1),
                "--turn-secret", SECRET],
            2: ["--sip", "%s:%d" % (HOST, sip + 2), "--turn-secret", SECRET],
            3: ["--sip", "%s:%d" % (HOST, sip + 3)],
            4: ["--turn-secret", SECRET]}

    def argv(node, bootstrap, _orig=c.argv):
        return _orig(node, bootstrap) + ["--public", "no"] + common + args[node.index]
    c.argv = argv
    c.start(5)
    c.wait_consistent(timeout=30)
    r1, r2, home, nosecret, nosip = c.nodes
    relays = sorted("%s:%d" % (HOST, turn + i) for i in range(2))
    p2p.wait_until(lambda: sorted(x["addr"] for x in home.admin_ok({"cmd": "relays"})["relays"]) == relays,
                   15, "h lists both relays")

    def ask(node, **kw):
        return node.admin(dict({"cmd": "phone-config", "user": "alice"}, **kw), timeout=10)

    # The answer ----------------------------------------------------------------
    a = ask(home, format="json")
    check(a.get("ok") and a["aor"] == "sip:alice@" + OVERLAY and a["registrar"] == "sip:%s:%d" % (HOST, sip + 2)
          and a["media"] == "relay" and "account" not in a,
          "h names itself registrar for sip:alice@%s (json: no account line)" % OVERLAY, a)
    check(sorted(x["addr"] for x in a["relays"]) == relays and a["relay"] in relays and a["unanswered"] == [],
          "both relays answered the probe; one of them is the phone's", a)
    t = a["turn"]
    expiry = int(t["username"].split(":")[0])
    want = base64.b64encode(hmac.new(SECRET.encode(), t["username"].encode(), hashlib.sha1).digest()).decode()
    check(t["username"].endswith(":alice") and t["password"] == want and t["realm"] == OVERLAY
          and t["ttl"] == MAX_TTL and t["expires"] == expiry,
          "the credential: EXPIRY:alice, HMAC of the overlay's secret, ttl capped to --turn-max-ttl, "
          "expires = EXPIRY", t)
    line = ask(home)
    check(line.get("ok") and line["account"] == "<sip:alice@%s>;outbound=sip:%s:%d;medianat=turn;"
          "stunserver=turn:%s;stunuser=%s;stunpass=%s" % (OVERLAY, HOST, sip + 2, line["relay"],
                                                          line["turn"]["username"], line["turn"]["password"]),
          "the baresip account line (the default format): outbound, medianat=turn, its relay and credential",
          line)
    ice = ask(home, media="ice", ttl=600)
    check(ice.get("ok") and ";medianat=ice;" in ice["account"] and ice["turn"]["ttl"] == 600,
          "media ice: medianat=ice, the same relay parameters; ttl as asked", ice)
    picked = {ask(home)["relay"] for _ in range(24)}
    check(picked == set(relays), "over 24 answers both relays are picked", picked)

    out = subprocess.run([h.ctl, "-s", home.sock, "phone-config", "alice"], capture_output=True, text=True,
                         timeout=15)
    lines = out.stdout.splitlines()
    check(out.returncode == 0 and len(lines) == 3 and lines[0].startswith("# sip:alice@%s through sip:" % OVERLAY)
          and "valid until" in lines[0] and lines[1].startswith("# relays:") and "(this account's)" in lines[1]
          and lines[2].startswith("<sip:alice@%s>;outbound=" % OVERLAY),
          "p2psipctl phone-config prints an accounts file: two comments and the line", out.stdout)
    out = subprocess.run([h.ctl, "-s", home.sock, "phone-config", "bob", "600", "--format", "json", "--media",
                          "ice"], capture_output=True, text=True, timeout=15)
    j = json.loads(out.stdout) if out.returncode == 0 else {}
    check(j.get("aor") == "sip:bob@" + OVERLAY and j["media"] == "ice" and j["turn"]["ttl"] == 600
          and "account" not in j, "p2psipctl phone-config bob 600 --format json --media ice prints the JSON answer",
          out.stdout + out.stderr)
    for bad in (["phone-config"], ["phone-config", "alice", "--format", "xml"], ["phone-config", "alice", "0"],
                ["phone-config", "alice", "1", "2"]):
        rc = subprocess.run([h.ctl, "-s", home.sock] + bad, capture_output=True, timeout=15).returncode
        check(rc == 2, "p2psipctl %s: usage, exit 2" % " ".join(bad), rc)

    # Refusals ----------------------------------------------------------------------
    r = ask(nosecret)
    check(not r["ok"] and "cannot provision relays" in r["error"] and "--turn-secret" in r["error"],
          "a node without --turn-secret says it cannot provision relays", r)
    r = ask(nosip)
    check(not r["ok"] and "no SIP role" in r["error"], "a node without --sip says it is no registrar", r)
    for user in ("al;ice", "alice@x", 'al"ice', "a" * 65, "", 7, None):
        r = home.admin({"cmd": "phone-config", "user": user} if user is not None else {"cmd": "phone-config"})
        check(not r["ok"] and "\"user\" must be" in r["error"], "user %r refused" % (user,), r)
    for kw, what in (({"format": "xml"}, "\"format\" must be"), ({"media": "direct"}, "\"media\" must be"),
                     ({"ttl": 0}, "\"ttl\" must be"), ({"ttl": MAX_TTL + 1}, "above --turn-max-ttl")):
        r = ask(home, **kw)
        check(not r["ok"] and what in r["error"], "%s refused: %s" % (kw, what), r)
    check(ask(home).get("ok"), "and h still provisions honest phones")

    # Records that are no usable relay ---------------------------------------------
    for vid, body in (("x1", {"addr": "127.0.0.1:9;outbound=sip:evil", "transports": ["udp"]}),
                      ("x2", {"addr": "relay.example.com:3478", "transports": ["udp"]}),
                      ("x3", {"addr": "127.0.0.1:%d" % (turn + 1), "transports": ["tcp"]}),
                      ("x4", {"addr": 5, "transports": "udp"})):
        p2p.put(home, "turn:" + OVERLAY, body, ttl=300, vid=vid)
    p2p.wait_until(lambda: len(home.admin_ok({"cmd": "relays"})["relays"]) == 5, 10,
                   "the odd records are listed by relays")
    a = ask(home)
    check(a.get("ok") and sorted(x["addr"] for x in a["relays"]) == relays and "evil" not in a["account"]
          and "example.com" not in a["account"], "records that are no usable relay never reach the answer", a)

    # A relay that died -----------------------------------------------------------
    # Its value must outlive it: wait until the key's primary and replicas
    # all hold the six values (a copy made before the ring took its final
    # shape reaches a new replica with the repair, 300 ms after the change).
    holders = p2p.responsible_nodes(p2p.key_id("turn:" + OVERLAY), c.sorted_ids(), 3)
    p2p.wait_until(lambda: all(c.records().get(i) == 6 for i in holders), 10,
                   "the primary and replicas of turn:%s hold its six values" % OVERLAY)
    c.kill(r1)
    dead = relays[0]
    listed = [x["addr"] for x in home.admin_ok({"cmd": "relays"})["relays"]]
    check(dead in listed, "the killed relay is still under turn:%s (its value lives on)" % OVERLAY, listed)
    a = ask(home)
    check(a.get("ok") and [x["addr"] for x in a["relays"]] == [relays[1]] and a["relay"] == relays[1]
          and a["unanswered"] == [dead] and "turn:%s;" % relays[1] in a["account"],
          "the next provisioning leaves the dead relay out (no answer to the probe) and names the live one", a)
    c.kill(r2)
    r = ask(home)
    check(not r["ok"] and "answered a STUN Binding" in r["error"],
          "with both relays dead: none answered, said so", r)
    info("phone-config checks done")


if __name__ == "__main__":
    p2p.run("sip_phoneconfig", test, timeout=120)
