#!/usr/bin/env python3
"""Make fuzz_cert_ca.h and the seeds in corpus/cert for fuzz_cert.c.

Two CAs of overlay fuzz.test (Ed25519 and P-256, valid 100 years) made by
the real p2psip-ca; for each, node and user certificates with values signed
by `openssl` (an implementation of the to-be-signed layout of dht/cert.h
other than ours); and a few inputs that must be refused.  Run after a
change of the input format or of the certificate layout:

    tests/fuzz/gen_cert_seeds.py build/node/p2psip-ca
"""

import hashlib
import os
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


def main():
    tool = sys.argv[1] if len(sys.argv) > 1 else "build/node/p2psip-ca"
    out = os.path.join(HERE, "corpus", "cert")
    os.makedirs(out, exist_ok=True)
    seeds, pems = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for sel, kt in ((0, "ed25519"), (1, "p256")):
            ca = os.path.join(tmp, "ca-" + kt)
            run(tool, "init", ca, "--overlay", OVERLAY, "--key", kt, "--days", "36500")
            pems[kt] = open(os.path.join(ca, "ca.crt")).read()
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
    seeds.append(b"\x00\x00\x05\x30\x03\x02\x01\x00")  # a truncated SEQUENCE
    with open(os.path.join(HERE, "fuzz_cert_ca.h"), "w") as f:
        f.write("/* Made by gen_cert_seeds.py: the CAs the cert corpus was issued by. */\n")
        for kt, name in (("ed25519", "ED25519"), ("p256", "P256")):
            f.write("#define FUZZ_CERT_CA_%s \\\n" % name)
            for line in pems[kt].splitlines():
                f.write('  "%s\\n" \\\n' % line)
            f.write("  \"\"\n")
    for i, s in enumerate(seeds):
        with open(os.path.join(out, "seed%02d" % i), "wb") as f:
            f.write(s)
    print("%d seeds in %s" % (len(seeds), out))


if __name__ == "__main__":
    main()
