#!/usr/bin/env python3
"""Make fuzz_cert_ca.h, the seeds in corpus/cert for fuzz_cert.c and those
in corpus/cert_lean for fuzz_cert_lean.c.

Two CAs of overlay fuzz.test (Ed25519 and P-256, valid 100 years) made by
the real p2psip-ca; for each, node and user certificates with values signed
by `openssl` (an implementation of the to-be-signed layout of dht/cert.h
other than ours); and a few inputs that must be refused.  Run after a
change of the input format or of the certificate layout:

    tests/fuzz/gen_cert_seeds.py build/node/p2psip-ca
"""

import hashlib
import os
import re
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OVERLAY = "fuzz.test"


def run(*argv, data=None):
    return subprocess.run(argv, input=data, check=True, capture_output=True).stdout


def der_of(crt):
    return run("openssl", "x509", "-in", crt, "-outform", "DER")


def tbs(key, vid, kind, flags, seq, expires, body):
    return (b"p2psip-value-v1\0" + key + bytes([len(vid)]) + vid + bytes([kind, flags]) +
            struct.pack(">QQI", seq, expires, len(body)) + hashlib.sha256(body).digest())


def ecdsa_raw(der):
    """DER ECDSA-Sig-Value to r and s, 32 bytes each."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 3
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(32, b"\0")
        i += 2 + n
    return out


def sign(keyfile, p256, msg, tmp):
    path = os.path.join(tmp, "tbs")
    with open(path, "wb") as f:
        f.write(msg)
    if p256:
        return ecdsa_raw(run("openssl", "dgst", "-sha256", "-sign", keyfile, path))
    return run("openssl", "pkeyutl", "-sign", "-inkey", keyfile, "-rawin", "-in", path)


def tlv(der, i):
    """(start, end) of the contents of the DER element at i."""
    n, j = der[i + 1], i + 2
    if n & 0x80:
        k = n & 0x7f
        n, j = int.from_bytes(der[j:j + k], "big"), j + k
    return j, j + n


def tbs_of(der):
    """The TBSCertificate of a DER certificate, header included."""
    start, _ = tlv(der, 0)
    _, end = tlv(der, start)
    return der[start:end]


TIME = re.compile(rb"\x17\x0d\d{12}Z|\x18\x0f\d{14}Z")


def set_time(tbs, which, utc, generalized):
    """notBefore (0) or notAfter (1) of tbs set to another time of the same form."""
    m = list(TIME.finditer(tbs))[which]
    new = m.group()[:2] + (utc if m.group()[0] == 0x17 else generalized)
    return tbs[:m.start()] + new + tbs[m.end():]


# Extensions for certificates made with `openssl x509 -req`: the ones we
# issue and variations of them, each signed by the CA.
EXTS = {
    "like-ours": "",
    "two-sans": ",URI:sip:bob@" + OVERLAY,
    "unknown-critical": "\n1.2.3.4=critical,ASN1:NULL",
    "unknown-noncritical": "\n1.2.3.4=ASN1:NULL",
    "skid": "\nsubjectKeyIdentifier=hash",
    "ca-flag": "\nbasicConstraints=critical,CA:TRUE",
    "no-signature-usage": "\nkeyUsage=critical,keyEncipherment",
    "no-basic-constraints": None,
}


def openssl_leaves(ca, kt, tmp):
    """Certificates for node 00..01@fuzz.test issued by `openssl x509`."""
    key = os.path.join(tmp, "leaf-%s.key" % kt)
    algo = ["-algorithm", "ED25519"] if kt == "ed25519" else [
        "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    run("openssl", "genpkey", *algo, "-out", key)
    csr = os.path.join(tmp, "leaf.csr")
    run("openssl", "req", "-new", "-key", key, "-subj", "/CN=leaf", "-out", csr)
    san = "subjectAltName=URI:p2psip:" + "00" * 19 + "01@" + OVERLAY
    out = []
    for name, extra in EXTS.items():
        if extra is None:
            ext = "keyUsage=critical,digitalSignature\n" + san + "\n"
        elif extra.startswith(","):
            ext = "basicConstraints=critical,CA:FALSE\n" + san + extra + "\n"
        else:
            ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n" + san
            ext += extra + "\n"
        # `openssl x509 -req` adds key identifiers unless told not to.
        if name != "skid":
            ext += "subjectKeyIdentifier=none\nauthorityKeyIdentifier=none\n"
        extfile = os.path.join(tmp, "ext")
        with open(extfile, "w") as f:
            f.write(ext)
        crt = os.path.join(tmp, "leaf-%s-%s.crt" % (kt, name))
        run("openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(ca, "ca.crt"), "-CAkey",
            os.path.join(ca, "ca.key"), "-set_serial", "5", "-days", "3650", "-extfile", extfile,
            "-out", crt)
        out.append(der_of(crt))
    return out


def lean_seeds(sel, ca, ders, tmp, kt):
    """Seeds of fuzz_cert_lean.c: each certificate whole, and its TBS (to
    be signed by the CA in the harness) as is and with a field changed."""
    out = []
    for der in ders + openssl_leaves(ca, kt, tmp):
        out.append(bytes([sel]) + der)
        tbs = tbs_of(der)
        out.append(bytes([sel | 2]) + tbs)
    tbs = tbs_of(ders[0])  # the node certificate
    out.append(bytes([sel | 2]) + set_time(tbs, 1, b"200101000000Z", b"20200101000000Z"))
    out.append(bytes([sel | 2]) + set_time(tbs, 0, b"491231000000Z", b"20900101000000Z"))
    out.append(bytes([sel | 2]) + tbs.replace(b"@" + OVERLAY.encode(), b"@fuzz.tesu"))
    return out


def main():
    tool = sys.argv[1] if len(sys.argv) > 1 else "build/node/p2psip-ca"
    out = os.path.join(HERE, "corpus", "cert")
    os.makedirs(out, exist_ok=True)
    seeds, pems, keys, lean = [], {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for sel, kt in ((0, "ed25519"), (1, "p256")):
            ca = os.path.join(tmp, "ca-" + kt)
            run(tool, "init", ca, "--overlay", OVERLAY, "--key", kt, "--days", "36500")
            pems[kt] = open(os.path.join(ca, "ca.crt")).read()
            keys[kt] = open(os.path.join(ca, "ca.key")).read()
            node = os.path.join(tmp, "node-" + kt)
            nid = run(tool, "node", ca, node, "--days", "36500").decode().strip()
            users = os.path.join(tmp, "users-" + kt)
            run(tool, "user", ca, "alice", "--users", users, "--password", "pw", "--days", "36500")
            p256 = kt == "p256"

            def seed(crt, keyfile, key, vid, kind, flags=0, body=b'{"v":1}'):
                der = der_of(crt)
                msg = tbs(key, vid, kind, flags, 7, 4102444800, body)
                sig = sign(keyfile, p256, msg, tmp)
                assert len(sig) == 64
                seeds.append(bytes([sel]) + struct.pack(">H", len(der)) + der + bytes([len(vid)]) +
                             vid + bytes([kind, flags]) + struct.pack(">QQ", 7, 4102444800) + key +
                             sig + body)

            h = lambda s: hashlib.sha1(s.encode()).digest()  # noqa: E731
            seed(node + ".crt", node + ".key", h("any"), b"v1", 1)
            seed(node + ".crt", node + ".key", h("sip:" + OVERLAY), nid.encode(), 3)
            seed(node + ".crt", node + ".key", h("turn:" + OVERLAY), nid.encode(), 4, flags=1, body=b"")
            seed(os.path.join(users, "alice.crt"), os.path.join(users, "alice.key"),
                 h("sip:alice@" + OVERLAY), b"0123456789abcdef0123456789abcdef01234567", 2)
            # A certificate of another CA of the same overlay: refused.
            other = os.path.join(tmp, "other-" + kt)
            run(tool, "init", other, "--overlay", OVERLAY, "--key", kt)
            run(tool, "node", other, other + "-node")
            seed(other + "-node.crt", other + "-node.key", h("any"), b"v1", 1)
            ders = [der_of(c) for c in (node + ".crt", os.path.join(users, "alice.crt"),
                                         os.path.join(ca, "ca.crt"), other + "-node.crt")]
            lean += lean_seeds(sel, ca, ders, tmp, kt)
    seeds.append(b"\x00\x00\x05\x30\x03\x02\x01\x00")  # a truncated SEQUENCE
    with open(os.path.join(HERE, "fuzz_cert_ca.h"), "w") as f:
        f.write("/* Made by gen_cert_seeds.py: the CAs the cert corpus was issued by, and\n"
                " * their keys (fuzz_cert_lean.c signs with them; test keys, used nowhere\n"
                " * else). */\n")
        for kt, name in (("ed25519", "ED25519"), ("p256", "P256")):
            for text, suffix in ((pems[kt], ""), (keys[kt], "_KEY")):
                f.write("#define FUZZ_CERT_CA_%s%s \\\n" % (name, suffix))
                for line in text.splitlines():
                    f.write('  "%s\\n" \\\n' % line)
                f.write("  \"\"\n")
    for i, s in enumerate(seeds):
        with open(os.path.join(out, "seed%02d" % i), "wb") as f:
            f.write(s)
    print("%d seeds in %s" % (len(seeds), out))
    out = os.path.join(HERE, "corpus", "cert_lean")
    os.makedirs(out, exist_ok=True)
    for i, s in enumerate(lean):
        with open(os.path.join(out, "seed%02d" % i), "wb") as f:
            f.write(s)
    print("%d seeds in %s" % (len(lean), out))


if __name__ == "__main__":
    main()
