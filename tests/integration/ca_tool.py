#!/usr/bin/env python3
"""p2psip-ca, the real binary: init, node, user and show make the files the
README promises, with the modes it promises; the certificates say what they
should (checked with the openssl command, not with our own parser); the
digest file holds the HA1 values of RFC 7616/8760; and every error (missing
CA, wrong overlay, existing files, bad names, bad usage) is one line on
stderr, a non-zero exit, and leaves no file behind or changed."""

import hashlib
import os
import re
import stat
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p2p  # noqa: E402
from p2p import check, info  # noqa: E402

OVERLAY = p2p.OVERLAY


def ca_tool(h, *args, stdin=None):
    p = subprocess.run([h.ca_bin] + list(args), input=(stdin or "").encode(), capture_output=True,
                       timeout=30)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def openssl(*args):
    p = subprocess.run(["openssl"] + list(args), capture_output=True, timeout=30)
    return p.returncode, p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def san(crt):
    rc, out = openssl("x509", "-in", crt, "-noout", "-ext", "subjectAltName")
    return re.findall(r"(URI|DNS):(\S+)", out) if rc == 0 else out


def verified(ca, crt):
    rc, out = openssl("verify", "-CAfile", ca, crt)
    return rc == 0 and out.strip() == "%s: OK" % crt


def same_key(crt, key):
    _, a = openssl("x509", "-in", crt, "-noout", "-pubkey")
    _, b = openssl("pkey", "-in", key, "-pubout")
    return a.strip() == b.strip() and "BEGIN PUBLIC KEY" in a


def ha1(alg, user, realm, pw):
    return hashlib.new(alg, ("%s:%s:%s" % (user, realm, pw)).encode()).hexdigest()


def snapshot(d):
    """Every file under d with its content, to show an error changed nothing."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.join(root, f)] = fh.read()
    return out


def test_init_node(h, d):
    rc, out, err = ca_tool(h, "--help")
    check(rc == 0 and all(c in out for c in ("init CADIR", "node CADIR OUT", "user CADIR USER", "show")),
          "--help: exit 0, lists init, node, user, show", (rc, out[:300]))

    ca = os.path.join(d, "ca")
    rc, out, err = ca_tool(h, "init", ca, "--overlay", "Overlay.Test")
    cacrt, cakey = os.path.join(ca, "ca.crt"), os.path.join(ca, "ca.key")
    check(rc == 0 and err == "" and os.path.exists(cacrt), "init: exit 0, ca.crt written", (rc, out, err))
    check(mode(cakey) == 0o600, "init: ca.key is mode 0600", oct(mode(cakey)))
    check(san(cacrt) == [("DNS", OVERLAY)], "ca.crt names the overlay (lowercased)", san(cacrt))
    _, text = openssl("x509", "-in", cacrt, "-noout", "-text")
    check("CA:TRUE" in text and "prime256v1" in text, "ca.crt: a CA, P-256 by default", text[:400])
    check(verified(cacrt, cacrt), "ca.crt is self-signed")

    ids = []
    for i in range(4):
        out_base = os.path.join(d, "node%d" % i)
        rc, out, err = ca_tool(h, "node", ca, out_base)
        nid = out.strip()
        crt, key = out_base + ".crt", out_base + ".key"
        check(rc == 0 and re.fullmatch(r"[0-9a-f]{40}", nid) and err == "",
              "node %d: exit 0, prints a 40-hex node id" % i, (rc, out, err))
        check(san(crt) == [("URI", "p2psip:%s@%s" % (nid, OVERLAY))],
              "node %d: the certificate carries p2psip:ID@overlay with the printed id" % i, san(crt))
        check(mode(key) == 0o600, "node %d: key mode 0600" % i, oct(mode(key)))
        check(verified(cacrt, crt) and same_key(crt, key),
              "node %d: issued by the CA (openssl verify), key matches" % i)
        ids.append(nid)
    check(len(set(ids)) == len(ids), "every node gets its own id", ids)
    _, text = openssl("x509", "-in", os.path.join(d, "node0.crt"), "-noout", "-text")
    check("CA:FALSE" in text and "TLS Web Client Authentication" in text and
          "TLS Web Server Authentication" in text, "node certificates: no CA, both TLS roles", text[:600])

    rc, out, err = ca_tool(h, "show", os.path.join(d, "node0.crt"), "--ca", cacrt)
    check(rc == 0 and "node-id: %s" % ids[0] in out and "overlay: %s" % OVERLAY in out and
          "issued-by:" in out, "show --ca: the node id, the overlay, verified", (rc, out, err))

    ced = os.path.join(d, "caed")
    rc, out, err = ca_tool(h, "init", ced, "--overlay", OVERLAY, "--key", "ed25519")
    rc2, out2, err2 = ca_tool(h, "node", ced, os.path.join(d, "ned"))
    _, text = openssl("x509", "-in", os.path.join(d, "ned.crt"), "-noout", "-text")
    check(rc == 0 and rc2 == 0 and "ED25519" in text and
          verified(os.path.join(ced, "ca.crt"), os.path.join(d, "ned.crt")),
          "init --key ed25519: the CA and its nodes use Ed25519", (rc, err, rc2, err2, text[:300]))

    placed = "00000000000000000000000000000000000000aa"
    rc, out, err = ca_tool(h, "node", ca, os.path.join(d, "placed"), "--node-id", placed)
    _, text = openssl("x509", "-in", os.path.join(d, "placed.crt"), "-noout", "-text")
    check(rc == 0 and out.strip() == placed and ("p2psip:%s@%s" % (placed, OVERLAY)) in text,
          "node --node-id: the CA's operator places a node (testbeds)", (rc, out, err))
    rc, out, err = ca_tool(h, "node", ca, os.path.join(d, "badid"), "--node-id", "xyz")
    check(rc == 2 and err.count("\n") == 1 and not os.path.exists(os.path.join(d, "badid.crt")),
          "node --node-id with a bad id: one line, exit 2, no file", (rc, err))
    return ca, cacrt


def test_users(h, d, ca, cacrt):
    users = os.path.join(d, "users")
    rc, out, err = ca_tool(h, "user", ca, "alice", "--users", users)
    lines = out.splitlines()
    m = re.fullmatch(r"password: (\S{16,})", lines[1]) if len(lines) == 2 else None
    check(rc == 0 and lines[0] == "sip:alice@%s" % OVERLAY and m and err == "",
          "user without --password: prints the AOR and a generated password once", (rc, out, err))
    pw = m.group(1)
    check_user(h, users, cacrt, "alice", pw)
    rc, out, err = ca_tool(h, "user", ca, "alice2", "--users", users)
    check(rc == 0 and pw not in out, "another user gets another password")

    rc, out, err = ca_tool(h, "user", ca, "bob", "--users", users, "--password", "s3cret pw:x")
    check(rc == 0 and out == "sip:bob@%s\n" % OVERLAY and "s3cret" not in out + err,
          "user --password PW: prints the AOR only", (rc, out, err))
    check_user(h, users, cacrt, "bob", "s3cret pw:x")
    rc, out, err = ca_tool(h, "user", ca, "carol", "--users", users, "--password", "-", stdin="from stdin\n")
    check(rc == 0, "user --password -: reads stdin", (rc, out, err))
    check_user(h, users, cacrt, "carol", "from stdin")


def check_user(h, users, cacrt, user, pw):
    crt, key, dig = (os.path.join(users, user + e) for e in (".crt", ".key", ".digest"))
    check(san(crt) == [("URI", "sip:%s@%s" % (user, OVERLAY))], "%s: certificate for sip:%s@%s" %
          (user, user, OVERLAY), san(crt))
    check(verified(cacrt, crt) and same_key(crt, key), "%s: issued by the CA, key matches" % user)
    check(mode(key) == 0o600 and mode(dig) == 0o600, "%s: key and digest file mode 0600" % user,
          (oct(mode(key)), oct(mode(dig))))
    with open(dig) as f:
        text = f.read()
    want = "%s:%s:MD5:%s\n%s:%s:SHA-256:%s\n" % (user, OVERLAY, ha1("md5", user, OVERLAY, pw),
                                                  user, OVERLAY, ha1("sha256", user, OVERLAY, pw))
    check(text == want, "%s: digest file holds HA1 for MD5 and SHA-256, realm %s" % (user, OVERLAY),
          (text, want))


def test_errors(h, d, ca, cacrt):
    users = os.path.join(d, "users")
    empty = os.path.join(d, "empty")
    os.mkdir(empty)
    # A CA directory whose key is not its certificate's.
    mixed = os.path.join(d, "mixed")
    other = os.path.join(d, "other")
    ca_tool(h, "init", other, "--overlay", OVERLAY)
    os.mkdir(mixed)
    for f, src in (("ca.crt", ca), ("ca.key", other)):
        with open(os.path.join(src, f), "rb") as a, open(os.path.join(mixed, f), "wb") as b:
            b.write(a.read())
    os.chmod(os.path.join(mixed, "ca.key"), 0o600)
    # Only OUT.crt of OUT exists: OUT.key must not be made either.
    with open(os.path.join(d, "half.crt"), "w") as f:
        f.write("not mine\n")
    cases = [
        ("missing CA directory", 1, ["node", os.path.join(d, "nope"), os.path.join(d, "x")], "no such CA directory"),
        ("a directory without a CA", 1, ["node", empty, os.path.join(d, "x")], "ca.crt: No such file"),
        ("user with a missing CA", 1, ["user", os.path.join(d, "nope"), "dave", "--users", users], "no such CA"),
        ("node, wrong overlay", 1, ["node", ca, os.path.join(d, "x"), "--overlay", "other.test"],
         "is for overlay %s, not other.test" % OVERLAY),
        ("user, wrong overlay", 1, ["user", ca, "dave", "--users", users, "--overlay", "other.test"],
         "not other.test"),
        ("init over an existing CA", 1, ["init", ca, "--overlay", OVERLAY], "ca.key exists"),
        ("init over an existing CA, other overlay", 1, ["init", ca, "--overlay", "other.test"], "exists"),
        ("node over existing files", 1, ["node", ca, os.path.join(d, "node0")], "node0.key exists"),
        ("node where OUT.crt alone exists", 1, ["node", ca, os.path.join(d, "half")], "half.crt exists"),
        ("user over existing files", 1, ["user", ca, "alice", "--users", users], "alice.key exists"),
        ("a user name with a slash", 1, ["user", ca, "../evil", "--users", users], "bad user name"),
        ("a user name with a space", 1, ["user", ca, "a b", "--users", users], "bad user name"),
        ("an empty password", 1, ["user", ca, "dave", "--users", users, "--password", ""], "password"),
        ("a bad overlay name", 1, ["init", os.path.join(d, "ca2"), "--overlay", "bad_name!"], "not a lowercase DNS name"),
        ("a CA key that is not the CA's", 1, ["node", mixed, os.path.join(d, "x")], "is not the key of"),
        ("show --ca of another CA", 1, ["show", os.path.join(d, "node0.crt"), "--ca",
                                        os.path.join(other, "ca.crt")], "certificate refused"),
        ("show a key file", 1, ["show", os.path.join(d, "node0.key")], "not a PEM certificate"),
        ("no command", 2, [], "no command"),
        ("unknown command", 2, ["sign", ca], "unknown command"),
        ("init without --overlay", 2, ["init", os.path.join(d, "ca3")], "--overlay"),
        ("user without --users", 2, ["user", ca, "dave"], "--users"),
        ("node without OUT", 2, ["node", ca], "missing"),
        ("an option the command does not take", 2, ["node", ca, os.path.join(d, "x"), "--users", users], "--users"),
        ("an option without its value", 2, ["node", ca, os.path.join(d, "x"), "--days"], "needs a value"),
        ("a bad --days", 2, ["node", ca, os.path.join(d, "x"), "--days", "0"], "--days"),
        ("a bad --key", 2, ["init", os.path.join(d, "ca4"), "--overlay", OVERLAY, "--key", "rsa"], "--key"),
        ("one argument too many", 2, ["node", ca, os.path.join(d, "x"), "y"], "unexpected"),
    ]
    for what, want_rc, args, text in cases:
        before = snapshot(d)
        rc, out, err = ca_tool(h, *args)
        lines = err.splitlines()
        check(rc == want_rc and len(lines) == 1 and lines[0].startswith("p2psip-ca: ") and text in lines[0]
              and out == "", "%s: exit %d, one line on stderr (%s)" % (what, want_rc, text), (rc, out, err))
        check(snapshot(d) == before, "%s: no file made or changed" % what,
              sorted(set(snapshot(d)) ^ set(before)))


def test(h):
    h.ca_bin = p2p.find_binary("P2PSIP_CA", "build/node/p2psip-ca")
    check(h.ca_bin is not None, "p2psip-ca binary found (P2PSIP_CA or build/node/p2psip-ca)")
    rc, out = openssl("version")
    check(rc == 0, "the openssl command is installed", out)
    info("p2psip-ca %s, %s" % (h.ca_bin, out.strip()))
    d = h.rundir
    ca, cacrt = test_init_node(h, d)
    test_users(h, d, ca, cacrt)
    test_errors(h, d, ca, cacrt)


if __name__ == "__main__":
    p2p.run("ca_tool", test, timeout=120)
