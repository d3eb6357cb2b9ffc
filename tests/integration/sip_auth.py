#!/usr/bin/env python3
"""Digest authentication of phones at their home node (--users DIR, RFC
3261 22 with RFC 8760), in the open mode:

- REGISTER without credentials: 401 with a SHA-256 and an MD5 challenge, in
  the order --sip-digest says, answered statelessly (our To tag); with
  SHA-256 or MD5 credentials: 200; a wrong password, a nonce not ours, a
  digest URI that is not the Request-URI: 403; another user's AOR: 403; a
  query lists the user's own bindings;
- an INVITE whose From is one of the node's users: 407 (its ACK absorbed),
  then with credentials it goes on, our realm's Proxy-Authorization
  consumed; with another user's credentials: 403;
- over the TCP connection the user registered on, no challenge;
- a caller of another domain reaches the node's user without any;
- a node without --users behaves as before (anyone registers);
- the users' files are read at start and watched: registering and a
  made-up name read no file, a changed password, a new user and a removed
  one count at once (inotify), and an overflow of inotify's queue makes
  the node read the directory again;
- sipp registers and calls with [authentication] (MD5);
- baresip registers with digest through its home node and calls another
  baresip through the overlay.
Every refusal is counted in {"cmd":"sip"}."""

import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import wave

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
import sip_util as su  # noqa: E402
from p2p import HOST, OVERLAY, check, info  # noqa: E402

N = 5
BARESIP = shutil.which("baresip") or "/usr/bin/baresip"


def make_users(h, name, users, cadir=None):
    """A users directory as p2psip-ca user fills it; users: {name: password}."""
    cadir = cadir or os.path.join(h.rundir, "userca")
    if not os.path.exists(os.path.join(cadir, "ca.crt")):
        p2p.ca_tool("init", cadir, "--overlay", OVERLAY)
    d = os.path.join(h.rundir, name)
    for u, pw in users.items():
        p2p.ca_tool("user", cadir, u, "--users", d, "--password", pw)
    return d


def counters(node):
    return su.sip_stats(node)["counters"]


class Baresip:
    """One baresip 1.0 phone (the smallest set-up that registers and calls:
    G.711, a WAV file of 8 kHz silence as microphone (module aufile; ausine
    makes 48 kHz only), no player), driven over ctrl_tcp (netstrings
    carrying JSON)."""

    def __init__(self, h, name, port, account):
        self.name, self.port, self.ctrl = name, port, port + 2  # TLS would take port + 1
        self.dir = os.path.join(h.rundir, "baresip-" + name)
        os.makedirs(self.dir, exist_ok=True)
        mic = os.path.join(self.dir, "mic.wav")
        with wave.open(mic, "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
            w.writeframes(b"\0\0" * 8000 * 30)
        conf = ["poll_method epoll", "sip_listen %s:%d" % (HOST, port), "net_interface %s" % HOST,
                "audio_source aufile,%s" % mic, "rtp_ports %d-%d" % (port + 10, port + 19),
                "module_path /usr/lib/baresip/modules", "module g711.so", "module aufile.so",
                "module ctrl_tcp.so", "module_tmp account.so", "module_app menu.so",
                "ctrl_tcp_listen %s:%d" % (HOST, self.ctrl)]
        with open(os.path.join(self.dir, "config"), "w") as f:
            f.write("\n".join(conf) + "\n")
        with open(os.path.join(self.dir, "accounts"), "w") as f:
            f.write(account + "\n")
        self.log = os.path.join(self.dir, "baresip.log")
        self.proc = su.start_proc(h, [BARESIP, "-f", self.dir, "-v"], self.log)
        self.buf, self.events, self.sock = b"", [], None
        deadline = time.monotonic() + 10
        while self.sock is None:
            try:
                self.sock = socket.create_connection((HOST, self.ctrl), timeout=1)
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise p2p.Failure("baresip %s did not start: %s" % (name, su.tail(self.log, 8)))
                time.sleep(0.1)

    def _pump(self, timeout):
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return
        self.buf += self.sock.recv(65536)
        while True:
            m = re.match(rb"(\d{1,7}):", self.buf)
            if not m or len(self.buf) < m.end() + int(m.group(1)) + 1:
                return
            n = int(m.group(1))
            self.events.append(json.loads(self.buf[m.end():m.end() + n]))
            self.buf = self.buf[m.end() + n + 1:]

    def command(self, cmd, params=None):
        req = {"command": cmd, "token": "t%d" % time.monotonic_ns()}
        if params is not None:
            req["params"] = params
        data = json.dumps(req).encode()
        self.sock.sendall(b"%d:%s," % (len(data), data))

    def registered(self, timeout):
        """REGISTER answered 200 (its event may come before ctrl_tcp is
        connected, so the log says it)."""
        p2p.wait_until(lambda: any(re.search(r"%s@\S+: .*200 OK" % self.name, l)
                                   for l in su.tail(self.log, 200)) or None, timeout,
                       "baresip %s registered" % self.name, describe=lambda x: su.tail(self.log, 6))

    def wait_event(self, etype, timeout):
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e.get("type") == etype:
                    self.events.remove(e)
                    return e
            if time.monotonic() > deadline:
                raise p2p.Failure("baresip %s: no %s within %.0fs (events %s; log %s)" % (
                    self.name, etype, timeout, [e.get("type") for e in self.events][-8:],
                    su.tail(self.log, 10)))
            self._pump(0.2)


def shape(r, ua):
    """A 401 as a UA sees it: status line, header names in order, values but
    the Via branch, Call-ID, CSeq and the nonce (which change per request
    or per second)."""
    out = [r.first]
    for n, v in r.headers:
        if n in ("via", "call-id", "cseq"):
            v = re.sub(r"branch=[^;]+", "branch=B", v) if n == "via" else ""
        out.append((n, re.sub(r'nonce="[0-9a-f]+"', 'nonce="N"', v)))
    return out


def test_challenge_paths(c, A, ua):
    """The 401 built at the peek (a plain REGISTER without credentials)
    and the one sofia builds (the same REGISTER with a Require line, which
    only sofia judges): the same answer, header for header."""
    dest = su.sip_dest(c, A)
    before = counters(A)
    peeked = ua.register(dest, expires=60, call_id="peek-%d" % ua.port)
    mid = counters(A)
    sofia = ua.register(dest, expires=60, call_id="sofia-%d" % ua.port,
                        headers=["Require: x-made-up"])
    after = counters(A)
    check(mid["challenged_peeked"] == before["challenged_peeked"] + 1 and
          mid["auth_challenges"] == before["auth_challenges"] + 1,
          "a REGISTER without credentials is challenged at the peek (challenged_peeked)",
          (before, mid))
    check(after["challenged_peeked"] == mid["challenged_peeked"] and
          after["auth_challenges"] == mid["auth_challenges"] + 1 and sofia.status == 401,
          "one with a Require line is challenged by sofia", (mid, after, sofia))
    check(shape(peeked, ua) == shape(sofia, ua),
          "the peek's 401 is sofia's, header for header", (peeked.raw, sofia.raw))
    # A retransmission of the peeked REGISTER gets the same bytes again.
    _, _, text = ua.request(dest, "REGISTER", call_id="again-%d" % ua.port, cseq=7,
                            headers=["Expires: 60"])
    first = ua.final("again-%d" % ua.port, "REGISTER")
    ua.send_raw(dest, text)
    second = ua.final("again-%d" % ua.port, "REGISTER")
    check(first.raw == second.raw and counters(A)["register_resent_peeked"] >
          after["register_resent_peeked"], "its retransmission gets the kept bytes again",
          (first.raw, second.raw))


def shape200(r):
    """A registrar's answer as a UA sees it: status line, header names in
    order, values but those that change per request or per second."""
    out = [r.first]
    for n, v in r.headers:
        if n in ("call-id", "cseq", "date"):
            v = ""
        out.append((n, re.sub(r"branch=[^;]+", "branch=B", v)))
    return out


def registered_text(ua, dest, call_id, headers):
    """REGISTER, 401, REGISTER with credentials: (the final answer, the
    second REGISTER's text)."""
    ua.request(dest, "REGISTER", call_id=call_id, cseq=1, headers=headers)
    ch = su.challenges(ua.final(call_id, "REGISTER"))[0]
    cred = su.digest_credentials(ch, "REGISTER", "sip:" + OVERLAY, ua.user, "pw-" + ua.user)
    _, _, text = ua.request(dest, "REGISTER", call_id=call_id, cseq=2,
                            headers=headers + ["Authorization: " + cred])
    return ua.final(call_id, "REGISTER"), text


def test_answer_paths(c, A, ua):
    """The registrar's 200 built from the request's own lines (over UDP)
    and the one sofia builds (the same REGISTER with a folded line, which
    the peek does not read): the same answer, header for header; a
    retransmission gets the same bytes; a 423 is built the same way."""
    dest = su.sip_dest(c, A)
    before = counters(A)
    built, text = registered_text(ua, dest, "built-%d" % ua.port, ["Expires: 60"])
    mid = counters(A)
    sofia, _ = registered_text(ua, dest, "sofia200-%d" % ua.port,
                               ["Expires: 60", "Subject: folded\r\n line"])
    after = counters(A)
    check(built.status == 200 and
          mid["register_answers_built"] == before["register_answers_built"] + 1,
          "the 200 to a REGISTER over UDP is built from its lines (register_answers_built)",
          (built.raw, before["register_answers_built"], mid["register_answers_built"]))
    check(sofia.status == 200 and after["register_answers_built"] == mid["register_answers_built"],
          "the same REGISTER with a folded line gets sofia's 200", (sofia.raw, after))
    check(shape200(built) == shape200(sofia) and
          (su.tag_of(built.get("to")) or "").startswith("p2psl"),
          "the built 200 is sofia's, header for header (stateless To tag, Contact, Date)",
          (built.raw, sofia.raw))
    ua.send_raw(dest, text)
    again = ua.final("built-%d" % ua.port, "REGISTER")
    check(again.raw == built.raw and counters(A)["register_resent_peeked"] >
          after["register_resent_peeked"], "its retransmission gets the kept bytes again",
          (built.raw, again.raw))
    brief, _ = registered_text(ua, dest, "brief-%d" % ua.port, ["Expires: 5"])
    check(brief.status == 423 and brief.get("min-expires") and
          counters(A)["register_answers_built"] == after["register_answers_built"] + 1,
          "a 423 (Min-Expires) is built from the lines too", brief.raw)


def test_direct_paths(c, A, ua, other):
    """A REGISTER with credentials that the peek reads plainly goes to the
    registrar from the peek (register_direct: sofia parses the peeked
    bytes, no tport read, no nta dispatch); the same REGISTER with a folded
    line goes through sofia's transport and nta as before.  Each kind of
    credentials gets the same answer on both paths and moves the same
    counters.  (A stale nonce takes SIP_NONCE_TTL_S, 300 s, to make; both
    paths reach it through the same sip__auth_check().  Nonces are not
    tracked per use, so a replay is no refusal on either path.)"""
    dest = su.sip_dest(c, A)
    keys = ("auth_ok", "auth_failed", "auth_wrong_user", "auth_challenges", "register_ok",
            "register_failed")

    def made_up(hs, cid):
        ch = {"realm": OVERLAY, "nonce": "00000000deadbeef" + "0" * 32, "qop": "auth",
              "algorithm": "SHA-256"}
        cred = su.digest_credentials(ch, "REGISTER", "sip:" + OVERLAY, ua.user, "pw-" + ua.user)
        return ua.do(dest, "REGISTER", ruri="sip:" + OVERLAY, call_id=cid, cseq=1,
                     headers=hs + ["Authorization: " + cred])

    def other_realm(hs, cid):
        ch = {"realm": "example.com", "nonce": "abc", "qop": "auth", "algorithm": "MD5"}
        cred = su.digest_credentials(ch, "REGISTER", "sip:" + OVERLAY, ua.user, "pw")
        return ua.do(dest, "REGISTER", ruri="sip:" + OVERLAY, call_id=cid, cseq=1,
                     headers=hs + ["Authorization: " + cred])

    def wrong_uri(hs, cid):
        ua.request(dest, "REGISTER", ruri="sip:" + OVERLAY, call_id=cid, cseq=1, headers=hs)
        ch = su.challenges(ua.final(cid, "REGISTER"))[0]
        cred = su.digest_credentials(ch, "REGISTER", "sip:other.test", ua.user, "pw-" + ua.user)
        return ua.do(dest, "REGISTER", ruri="sip:" + OVERLAY, call_id=cid, cseq=2,
                     headers=hs + ["Authorization: " + cred])

    def auth(password, user=None, expires=60):
        return lambda hs, cid: ua.do_auth(dest, "REGISTER", password, user=user, call_id=cid,
                                          ruri="sip:" + OVERLAY,
                                          headers=["Expires: %d" % expires] + hs[1:])[0]
    cases = [("right credentials", 200, auth("pw-" + ua.user)),
             ("a wrong password", 403, auth("wrong")),
             ("another user's credentials for this AOR", 403, auth("pw-" + other, user=other)),
             ("a nonce the node never made", 403, made_up),
             ("a digest URI other than the Request-URI", 403, wrong_uri),
             ("credentials for another realm only", 401, other_realm),
             ("an Expires below the minimum", 423, auth("pw-" + ua.user, expires=5))]
    for i, (what, want, fn) in enumerate(cases):
        got = {}
        for path, extra in (("direct", []), ("sofia", ["Subject: folded\r\n line"])):
            before = counters(A)
            r = fn(["Expires: 60"] + extra, "dp%d-%s-%d" % (i, path, ua.port))
            after = counters(A)
            got[path] = (r.status, {k: after[k] - before[k] for k in keys},
                         after["register_direct"] - before["register_direct"])
        check(got["direct"][0] == got["sofia"][0] == want and got["direct"][1] == got["sofia"][1]
              and got["direct"][2] >= 1 and got["sofia"][2] == 0,
              "%s: %d and the same counters on the direct path and sofia's" % (what, want), got)


def test_no_dialog(c, A, ua):
    """Our stateless To tag makes no dialog: a BYE "in" the one of our 401
    (sipp sends one so for every REGISTER it gives up on) gets 481 at once,
    without a lookup or a transaction; a REGISTER with that tag is still
    the registrar's."""
    dest = su.sip_dest(c, A)
    cid = "nodialog-%d" % ua.port
    tag = su.tag_of(ua.register(dest, expires=60, call_id=cid).get("to"))
    before = counters(A)
    to = "<%s>;tag=%s" % (ua.aor, tag)
    r = ua.do(dest, "BYE", ruri=ua.aor, to=to, call_id=cid, cseq=9)
    after = counters(A)
    check(r.status == 481 and after["no_dialog"] == before["no_dialog"] + 1 and
          after["lookups"] == before["lookups"] and after["proxied"] == before["proxied"],
          "a BYE with our stateless To tag: 481, no lookup", (r.status, before, after))
    r, _ = ua.do_auth(dest, "REGISTER", "pw-" + ua.user, headers=["Expires: 60"], call_id=cid + "r",
                      to=to)
    check(r.status == 200 and counters(A)["no_dialog"] == after["no_dialog"],
          "a REGISTER with that tag registers", r.status)


def test_challenge_flood(c, A, ua):
    """One source sends 2,000 REGISTERs without credentials, 2,000 a
    second: the peek challenges no more of them than the source's rate
    allows (50/s, burst 100), the rest are refused then dropped as sofia's
    path would, and another source still registers."""
    dest = su.sip_dest(c, A)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    me = s.getsockname()[1]
    before = counters(A)
    t0 = time.monotonic()
    for i in range(2000):
        if i % 50 == 49:
            time.sleep(max(0.0, t0 + (i + 1) / 2000 - time.monotonic()))
        s.sendto(("REGISTER sip:%s SIP/2.0\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bK-cf%d;rport\r\n"
                  "Max-Forwards: 70\r\nFrom: <sip:alice@%s>;tag=cf%d\r\nTo: <sip:alice@%s>\r\n"
                  "Call-ID: cf-%d-%d\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@%s:%d>\r\n"
                  "Content-Length: 0\r\n\r\n" % (OVERLAY, HOST, me, i, OVERLAY, i, OVERLAY, me, i,
                                                    HOST, me)).encode(), dest)
    codes = []
    while select.select([s], [], [], 1.0)[0]:
        codes.append(int(s.recv(65535).split(b" ", 2)[1]))
    s.close()
    after = counters(A)
    d = {k: after[k] - before[k] for k in ("challenged_peeked", "rate_limited", "rate_dropped",
                                           "shed_peeked")}
    check(0 < d["challenged_peeked"] <= 110 and d["rate_dropped"] >= 1500 and d["rate_limited"] > 0,
          "2,000 REGISTERs without credentials from one source: at most its burst challenged at "
          "the peek, then 503 and dropped, counted", d)
    check(len(codes) <= 112 and codes.count(401) == d["challenged_peeked"] and 503 in codes,
          "it got at most an answer per request of its burst: %d answers" % len(codes),
          sorted(set(codes)))
    r, first = ua.do_auth(dest, "REGISTER", "pw-alice", headers=["Expires: 60"],
                          call_id="after-flood-%d" % ua.port)
    check(first.status == 401 and r.status == 200,
          "meanwhile alice, another source, is challenged and registers", (first, r))


def test_register(c, A, ua):
    dest = su.sip_dest(c, A)
    before = counters(A)["challenged_peeked"]
    r = ua.register(dest, expires=60)
    chs = su.challenges(r)
    check(r.status == 401 and [x.get("algorithm") for x in chs] == ["SHA-256", "MD5"] and
          all(x.get("realm") == OVERLAY and x.get("qop") == "auth" for x in chs),
          "REGISTER without credentials: 401, a SHA-256 then an MD5 challenge (RFC 8760)",
          (r.status, chs))
    check((su.tag_of(r.get("to")) or "").startswith("p2psl"),
          "the challenge is a stateless answer (our stateless To tag)", r.get("to"))
    check(counters(A)["challenged_peeked"] == before + 1,
          "that challenge was built at the peek, before sofia parsed the REGISTER",
          counters(A)["challenged_peeked"])
    test_challenge_paths(c, A, ua)
    test_answer_paths(c, A, ua)
    test_direct_paths(c, A, ua, "erin")
    test_no_dialog(c, A, ua)
    test_challenge_flood(c, A, ua)
    for alg in ("SHA-256", "MD5"):
        r, first = ua.do_auth(dest, "REGISTER", "pw-alice", alg=alg,
                              headers=["Expires: 60"], call_id="reg-alice-%s" % alg)
        check(r.status == 200 and first.status == 401,
              "alice registers with %s credentials: 401 then 200" % alg, r.status)
    r, _ = ua.do_auth(dest, "REGISTER", "wrong", headers=["Expires: 60"])
    check(r.status == 403, "a wrong password: 403", r.status)
    r, _ = ua.do_auth(dest, "REGISTER", "pw-erin", user="erin", headers=["Expires: 60"])
    check(r.status == 403, "erin's credentials for alice's AOR: 403", r.status)
    # Credentials the node did not ask for: a made-up nonce; a digest URI
    # other than the Request-URI.
    ch = {"realm": OVERLAY, "nonce": "00000000deadbeef" + "0" * 32, "qop": "auth",
          "algorithm": "SHA-256"}
    cred = su.digest_credentials(ch, "REGISTER", "sip:" + OVERLAY, "alice", "pw-alice")
    r = ua.do(dest, "REGISTER", headers=["Expires: 60", "Authorization: " + cred])
    check(r.status == 403, "a nonce the node never made: 403", r.status)
    r, first = ua.do_auth(dest, "REGISTER", "pw-alice", headers=["Expires: 60"])
    ch = su.challenges(first)[0]
    cred = su.digest_credentials(ch, "REGISTER", "sip:other.test", "alice", "pw-alice")
    r = ua.do(dest, "REGISTER", headers=["Expires: 60", "Authorization: " + cred])
    check(r.status == 403, "a digest URI that is not the Request-URI: 403", r.status)
    r, _ = ua.do_auth(dest, "REGISTER", "pw-alice", contact=False, call_id="query-alice")
    check(r.status == 200 and list(su.reg_bindings(r)) == ["sip:alice@%s:%d" % (HOST, ua.port)],
          "an authenticated query lists alice's own binding", su.reg_bindings(r))
    st = counters(A)
    check(st["auth_failed"] >= 3 and st["auth_wrong_user"] >= 1 and st["auth_ok"] >= 3 and
          st["auth_challenges"] >= 5, "the admin counters saw the challenges and refusals", st)


def users_of(node):
    return su.sip_stats(node)["users"]


def wait_users(node, pred, what, timeout=10):
    """Waits (bounded) until pred(users) holds; the users object."""
    u = p2p.wait_value(lambda: users_of(node), pred, timeout, what)
    check(pred(u), what, u)
    return u


def digest_lines(user, password):
    """USER.digest's lines (node/ca.c): SHA-256 and MD5 HA1s."""
    lines = ""
    for alg, h in (("SHA-256", hashlib.sha256), ("MD5", hashlib.md5)):
        ha1 = h(("%s:%s:%s" % (user, OVERLAY, password)).encode()).hexdigest()
        lines += "%s:%s:%s:%s\n" % (user, OVERLAY, alg, ha1)
    return lines


def write_digest(d, user, password):
    """Replaces DIR/USER.digest at once (a new file renamed over the old,
    mode 0600), as an operator changing a password would."""
    lines = digest_lines(user, password)
    tmp = os.path.join(d, ".%s.tmp" % user)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, lines.encode())
    os.close(fd)
    os.rename(tmp, os.path.join(d, user + ".digest"))


def write_digest_new(d, user, password):
    """DIR/USER.digest written in place, as p2psip-ca does."""
    fd = os.open(os.path.join(d, user + ".digest"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, digest_lines(user, password).encode())
    os.close(fd)


def test_users_dir(h, c, A, alice, dA):
    """The users' files are read once, at start, and again when inotify
    says they changed: no file is read for a registration or a made-up
    name, and a new password, a new user or a removed one counts at once."""
    dest = su.sip_dest(c, A)
    u = wait_users(A, lambda u: u["complete"],
                   "the node read its users directory at start and watches it")
    check(u["known"] == 2 and u["watched"], "it knows its two users (alice, erin)", u)
    r, _ = alice.do_auth(dest, "REGISTER", "pw-alice", headers=["Expires: 60"], call_id="dir-1")
    mallory = su.Ua("mallory")
    r2, _ = mallory.do_auth(dest, "REGISTER", "pw", headers=["Expires: 60"])
    after = users_of(A)
    check(r.status == 200 and r2.status == 403 and after["files_read"] == u["files_read"],
          "alice registers and a made-up user is refused without a file read", (r.status, r2.status, u, after))
    write_digest(dA, "alice", "new-pw")
    wait_users(A, lambda x: x["changes"] > after["changes"], "inotify told the node of alice's new password")
    r, _ = alice.do_auth(dest, "REGISTER", "pw-alice", headers=["Expires: 60"], call_id="dir-2")
    r2, _ = alice.do_auth(dest, "REGISTER", "new-pw", headers=["Expires: 60"], call_id="dir-3")
    check(r.status == 403 and r2.status == 200, "the old password is refused at once, the new one taken",
          (r.status, r2.status))
    before = users_of(A)
    write_digest(dA, "alice", "pw-alice")
    wait_users(A, lambda x: x["changes"] > before["changes"], "alice's password is back")
    p2p.ca_tool("user", os.path.join(h.rundir, "userca"), "ivan", "--users", dA, "--password", "pw-ivan")
    wait_users(A, lambda x: x["known"] == 3, "a user added by p2psip-ca is known at once")
    ivan = su.Ua("ivan")
    r, _ = ivan.do_auth(dest, "REGISTER", "pw-ivan", headers=["Expires: 60"])
    check(r.status == 200, "ivan registers", r.status)
    before = users_of(A)
    os.unlink(os.path.join(dA, "ivan.digest"))
    wait_users(A, lambda x: x["changes"] > before["changes"], "inotify told the node ivan's file went")
    r, _ = ivan.do_auth(dest, "REGISTER", "pw-ivan", headers=["Expires: 60"])
    check(r.status == 403, "a removed user is refused at once", r.status)


def test_users_overflow(c, A, dA):
    """Users added faster than the node reads inotify's queue (it is
    stopped meanwhile): the events overflow, the node says so and reads the
    directory again, and then knows every user."""
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        queued = int(f.read())  # Debian's default: 16,384
    n = queued // 2 + 500  # two events each (a write, a close): more than are queued
    check(n <= 40000, "the test can add more users than inotify queues events (%d queued)" % queued, n)
    before = users_of(A)["known"]
    c.send_signal(A, signal.SIGSTOP)
    try:
        for i in range(n):
            write_digest_new(dA, "bulk%d" % i, "pw-bulk%d" % i)
    finally:
        c.send_signal(A, signal.SIGCONT)
    u = wait_users(A, lambda x: x["complete"] and x["known"] == before + n,
                   "after the overflow the node read the directory again and knows all %d new users" % n,
                   timeout=30)
    with open(A.log) as f:
        check("inotify lost events" in f.read(), "its log says inotify lost events", u)
    ua = su.Ua("bulk%d" % (n - 1))
    r, _ = ua.do_auth(su.sip_dest(c, A), "REGISTER", "pw-bulk%d" % (n - 1), headers=["Expires: 60"])
    check(r.status == 200, "the last user added registers", r.status)


def test_calls(c, A, B, alice, erin):
    """alice (UDP) and erin (TCP) at A; bob, a plain UA at B (no users)."""
    dest = su.sip_dest(c, A)
    bob = su.Ua("bob")
    check(bob.register(su.sip_dest(c, B), expires=60).status == 200,
          "bob registers at a node without --users, no credentials (open mode, as before)", "")
    before = counters(A)["acks_absorbed"]
    ruri = "sip:bob@" + OVERLAY
    cid = "inv-alice-%d" % alice.port
    cid2, branch, _ = alice.request(dest, "INVITE", ruri=ruri, to="<%s>" % ruri, call_id=cid)
    r = alice.final(cid2, "INVITE")
    alice.ack_final(dest, r, ruri, branch)
    check(r.status == 407 and [x.get("algorithm") for x in su.challenges(r)] == ["SHA-256", "MD5"],
          "alice's INVITE without credentials: 407 with both challenges", r.status)
    p2p.wait_until(lambda: counters(A)["acks_absorbed"] > before or None, 5,
                   "the ACK of the 407 absorbed (not routed on)")
    _, first = alice.do_auth(dest, "INVITE", "pw-alice", ruri=ruri, to="<%s>" % ruri, wait=False)
    inv = bob.recv_request("INVITE")
    check(first.status == 407 and not inv.get("proxy-authorization"),
          "with credentials the INVITE reaches bob; our realm's Proxy-Authorization was consumed",
          inv.get("proxy-authorization"))
    bob.respond(inv, 486, "Busy Here")
    r = alice.final(inv.get("call-id"), "INVITE")
    check(r.status == 486, "bob's answer comes back", r.status)
    r, _ = alice.do_auth(dest, "MESSAGE", "pw-erin", user="erin", ruri=ruri, to="<%s>" % ruri)
    check(r.status == 403, "a MESSAGE from alice with erin's credentials: 403", r.status)
    # erin registered over TCP: her requests on that connection need no
    # credentials (the connection cannot be forged; a UDP source can).
    r, _ = erin.do_auth(dest, "REGISTER", "pw-erin", headers=["Expires: 60"])
    check(r.status == 200, "erin registers over TCP", r.status)
    cid, _, _ = erin.request(dest, "MESSAGE", ruri=ruri, to="<%s>" % ruri, body="hi")
    m = bob.recv_request("MESSAGE")
    bob.respond(m, 200, "OK")
    check(erin.final(cid, "MESSAGE").status == 200,
          "erin's MESSAGE on the TCP connection she registered over needs no credentials", "")
    # A caller of another domain reaches alice (registered at A) unchallenged.
    carol = su.Ua("carol", domain="example.com")
    ruri = "sip:alice@" + OVERLAY
    cid, _, _ = carol.request(su.sip_dest(c, B), "MESSAGE", ruri=ruri, to="<%s>" % ruri, body="x")
    m = alice.recv_request("MESSAGE")
    alice.respond(m, 200, "OK")
    check(carol.final(cid, "MESSAGE").status == 200,
          "carol@example.com reaches alice without credentials", "")
    bob.close()


def test_sipp(h, c, B):
    """sipp (MD5 only, takes the first challenge): a node offering MD5."""
    ports = su.pick_udp_tcp(3)
    before = counters(B)["register_answers_built"]
    rc, s = su.sipp_register_auth(h, su.sip_addr(c, B), "dave", "<sip:dave@%s:%d>" % (HOST, ports),
                                  ports + 1, domain=OVERLAY, name="dave-reg", password="pw-dave")
    check(rc == 0 and counters(B)["register_answers_built"] > before,
          "sipp registers dave with [authentication] (MD5), the 200 built from its lines",
          s.describe())


def test_baresip(h, c, B, D):
    if not os.path.exists(BARESIP):
        raise p2p.Failure("baresip is not installed")
    base = su.pick_udp_tcp(50)
    acct = '<sip:%s@%s>;auth_pass=%s;outbound="sip:%s;lr";regint=60;answermode=%s'
    frank = Baresip(h, "frank", base, acct % ("frank", OVERLAY, "pw-frank", su.sip_addr(c, D), "auto"))
    gina = Baresip(h, "gina", base + 25, acct % ("gina", OVERLAY, "pw-gina", su.sip_addr(c, B), "manual"))
    frank.registered(15)
    gina.registered(15)
    check(counters(B)["register_answers_built"] > 0 and counters(D)["register_answers_built"] > 0,
          "two baresips register with digest at their home nodes, the 200s built from the "
          "REGISTERs' lines", (counters(B), counters(D)))
    gina.command("dial", "sip:frank@" + OVERLAY)
    frank.wait_event("CALL_ESTABLISHED", 15)
    gina.wait_event("CALL_ESTABLISHED", 15)
    check(counters(B)["auth_ok"] >= 2, "gina's call was authenticated at her home node",
          counters(B))
    gina.command("hangup")
    frank.wait_event("CALL_CLOSED", 10)
    check(True, "gina calls frank through the overlay, the call is set up and hung up")


def test(h):
    dA = make_users(h, "usersA", {"alice": "pw-alice", "erin": "pw-erin"})
    dB = make_users(h, "usersB", {"dave": "pw-dave", "gina": "pw-gina"})
    dD = make_users(h, "usersD", {"frank": "pw-frank"})
    md5 = ["--sip-digest", "MD5"]  # baresip 1.0 gives up on any SHA-256 challenge
    c = su.sip_cluster(h, N, node_args={0: ["--users", dA], 1: ["--users", dB] + md5,
                                        3: ["--users", dD] + md5})
    nodes = c.alive()
    A, B, C, D = nodes[0], nodes[1], nodes[2], nodes[3]
    alice, erin = su.Ua("alice"), su.Ua("erin", transport="tcp")
    test_register(c, A, alice)
    test_users_dir(h, c, A, alice, dA)
    test_calls(c, A, C, alice, erin)
    test_sipp(h, c, B)
    test_baresip(h, c, B, D)
    test_users_overflow(c, A, dA)
    info("A counters: %s" % {k: v for k, v in counters(A).items() if "auth" in k or "ack" in k})


if __name__ == "__main__":
    p2p.run("sip_auth", test, timeout=240)
