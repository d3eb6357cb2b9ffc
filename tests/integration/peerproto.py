"""A raw client of the peer protocol, for tests that play a hostile or
broken peer: frame and value encoders (proto/proto.h has the layout),
a frame reader, signing of values with the openssl command (the layout of
dht/cert.h, written independently of our C code), and TLS connections
that present a certificate of the test's choosing.  Standard library and
the openssl command only."""

import hashlib
import socket
import ssl
import struct
import subprocess
import tempfile
import time

HELLO, PING, FIND, NEIGH, NOTIFY, STORE, FETCH, LEAVE, POKE, JOIN = 1, 3, 5, 7, 9, 11, 13, 15, 17, 19
STORE_R = 12
VF_TOMBSTONE, VF_SIGNED = 0x01, 0x02
KIND_JSON, KIND_USER, KIND_PROXY, KIND_RELAY = 1, 2, 3, 4
STORE_REPLICA = 0x01


def frame(ftype, body, txid=1, magic=b"PS", version=1, length=None):
    return magic + bytes([version, ftype]) + struct.pack(">II", txid, len(body) if length is None else length) + body


def node_bytes(nid_hex, ip, port):
    return bytes.fromhex(nid_hex) + b"\x04" + socket.inet_aton(ip) + struct.pack(">H", port)


def hello(overlay, nid_hex, ip="127.0.0.1", port=1):
    ov = overlay.encode()
    return frame(HELLO, node_bytes(nid_hex, ip, port) + bytes([len(ov)]) + ov)


class Value:
    """One stored value as it travels; sign() adds the secured mode's part."""

    def __init__(self, vid, body, seq=None, ttl=300, kind=KIND_JSON, owner="00" * 20, flags=0):
        self.vid = vid.encode() if isinstance(vid, str) else vid
        self.body = body
        self.seq = seq if seq is not None else int(time.time() * 1000)
        self.ttl = ttl
        self.kind = kind
        self.owner = bytes.fromhex(owner)
        self.flags = flags
        self.expires = None
        self.cert = None
        self.sig = None

    def tbs(self, key):
        """The bytes a signature covers (dht/cert.h)."""
        return (b"p2psip-value-v1\0" + key + bytes([len(self.vid)]) + self.vid + bytes([self.kind, self.flags]) +
                struct.pack(">QQI", self.seq, self.expires, len(self.body)) + hashlib.sha256(self.body).digest())

    def sign(self, key_hex, crt, keyfile, expires=None):
        self.flags |= VF_SIGNED
        self.expires = expires if expires is not None else int(time.time()) + self.ttl
        self.cert = der_of(crt)
        self.sig = sign_p256(keyfile, self.tbs(bytes.fromhex(key_hex)))
        return self

    def encode(self):
        out = (bytes([len(self.vid)]) + self.vid + bytes([self.kind, self.flags]) + self.owner +
               struct.pack(">QII", self.seq, self.ttl, len(self.body)) + self.body)
        if self.flags & VF_SIGNED:
            out += struct.pack(">QH", self.expires, len(self.cert)) + self.cert + self.sig
        return out


def store_frame(key_hex, values, txid, flags=0):
    body = bytes.fromhex(key_hex) + bytes([flags]) + struct.pack(">H", len(values))
    body += b"".join(v.encode() if isinstance(v, Value) else v for v in values)
    return frame(STORE, body, txid=txid)


_leftover = {}  # socket -> bytes read past the last whole frame


def read_frames(s, count, timeout=10.0):
    """Read at least count frames (type, txid, body), HELLO_R included; fewer
    if the peer closes or the time runs out.  Bytes of a frame not yet whole
    wait for the next call on the same socket."""
    buf, out = _leftover.pop(s, b""), []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        while len(buf) >= 12 and len(buf) >= 12 + struct.unpack(">I", buf[8:12])[0]:
            n = struct.unpack(">I", buf[8:12])[0]
            out.append((buf[3], struct.unpack(">I", buf[4:8])[0], buf[12:12 + n]))
            buf = buf[12 + n:]
        if len(out) >= count:
            break
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            break
        except (ConnectionResetError, ssl.SSLError, OSError):
            chunk = b""
        if not chunk:
            break
        buf += chunk
    while len(buf) >= 12 and len(buf) >= 12 + struct.unpack(">I", buf[8:12])[0]:
        n = struct.unpack(">I", buf[8:12])[0]
        out.append((buf[3], struct.unpack(">I", buf[4:8])[0], buf[12:12 + n]))
        buf = buf[12 + n:]
    if buf:
        _leftover[s] = buf
    return out


def closed_by_peer(s, timeout=5.0):
    """True if the other end closes s within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not s.recv(65536):
                return True
        except socket.timeout:
            return False
        except (ConnectionResetError, ssl.SSLError, OSError):
            return True
    return False


def store_status(s, txid, timeout=10.0):
    """The status byte of the STORE_R for txid, or None if none came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frames = read_frames(s, 1, deadline - time.monotonic())
        if not frames:
            return None
        for t, x, body in frames:
            if t == STORE_R and x == txid:
                return body[0]
    return None


# Certificates and signatures ------------------------------------------------

def run(*argv, data=None):
    return subprocess.run(argv, input=data, check=True, capture_output=True, timeout=30).stdout


def der_of(crt):
    return run("openssl", "x509", "-in", crt, "-outform", "DER")


def ecdsa_raw(der):
    """DER ECDSA-Sig-Value to r and s, 32 bytes each."""
    i = 2 if der[1] < 0x80 else 3
    out = b""
    for _ in range(2):
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(32, b"\0")
        i += 2 + n
    return out


def sign_p256(keyfile, msg):
    with tempfile.NamedTemporaryFile() as f:
        f.write(msg)
        f.flush()
        return ecdsa_raw(run("openssl", "dgst", "-sha256", "-sign", keyfile, f.name))


def tls_connect(addr, crt=None, keyfile=None, timeout=5.0):
    """A TLS 1.3 connection to a node's peer port presenting crt/keyfile (or
    no certificate).  The node's own certificate is not checked: the test
    plays the client, and what matters is what the node accepts."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if crt:
        ctx.load_cert_chain(crt, keyfile)
    host, port = addr.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        return ctx.wrap_socket(raw)
    except (ssl.SSLError, OSError):
        raw.close()
        raise


def cert_node_id(crt):
    """The node id a certificate of p2psip-ca carries (SAN p2psip:ID@OVERLAY)."""
    text = run("openssl", "x509", "-in", crt, "-noout", "-ext", "subjectAltName").decode()
    start = text.index("p2psip:") + len("p2psip:")
    return text[start:start + 40]



# A ring member that lies ------------------------------------------------------

NEIGH_R, FIND_R, FETCH_R, REACH, REACH_R, FIND_DONE = 8, 6, 14, 21, 22, 0x01
RING = 1 << 160


def between(x, a, b):
    """x in the ring interval (a, b] (ids as ints)."""
    return 0 < (x - a) % RING <= (b - a) % RING


class Persona:
    """One fake node: an id, a listening address, the successors it names
    in NEIGH_R, and the REACH_R it gives: reachable (0/1) and seen
    ("IP:PORT", or None for the address the question came from)."""

    def __init__(self, overlay, nid, ip, port, succ, reachable, seen=None):
        self.overlay, self.nid, self.ip, self.port = overlay, nid, ip, port
        self.succ = succ  # [(id hex, ip, port)]
        self.reachable, self.seen = reachable, seen
        self.pred = None
        self.reach_asked = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(16)

    def node(self):
        return node_bytes(self.nid, self.ip, self.port)

    def hello(self, ftype):
        ov = self.overlay.encode()
        return frame(ftype, self.node() + bytes([len(ov)]) + ov)

    def answer(self, ftype, txid, body, peer):
        """The reply to one request (None: none)."""
        if ftype == HELLO:
            return self.hello(HELLO + 1)
        if ftype == PING:
            return frame(PING + 1, self.node(), txid)
        if ftype == NEIGH:
            if len(body) >= 27:
                self.pred = body[:27]
            out = (b"\x01" + self.pred) if self.pred else b"\x00"
            out += bytes([len(self.succ)]) + b"".join(node_bytes(*s) for s in self.succ)
            return frame(NEIGH_R, out, txid)
        if ftype == FIND:
            key = int.from_bytes(body[:20], "big")
            s0 = self.succ[0]
            done = between(key, int(self.nid, 16), int(s0[0], 16))
            return frame(FIND_R, bytes([FIND_DONE if done else 0, 1]) + node_bytes(*s0), txid)
        if ftype == STORE:
            count = struct.unpack(">H", body[21:23])[0] if len(body) >= 23 else 0
            return frame(STORE_R, struct.pack(">BHB", 0, count, 1), txid)
        if ftype == FETCH:
            return frame(FETCH_R, body[:20] + b"\x00\x00\x00", txid)
        if ftype == REACH:
            self.reach_asked += 1
            ip, port = (self.seen.rsplit(":", 1) if self.seen else peer)
            return frame(REACH_R, bytes([self.reachable]) + node_bytes("00" * 20, ip, int(port)), txid)
        if ftype in (NOTIFY, POKE, JOIN, LEAVE):
            return frame(ftype + 1, b"", txid)
        return None

    def serve(self, conn, peer):
        buf = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 12 and len(buf) >= 12 + struct.unpack(">I", buf[8:12])[0]:
                    n = struct.unpack(">I", buf[8:12])[0]
                    ftype, txid, body = buf[3], struct.unpack(">I", buf[4:8])[0], buf[12:12 + n]
                    buf = buf[12 + n:]
                    out = self.answer(ftype, txid, body, peer)
                    if out:
                        conn.sendall(out)
        except OSError:
            return
        finally:
            conn.close()

    def accept_loop(self):
        import threading
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn, peer), daemon=True).start()

    def tell(self, addr, ftype):
        """Connect to a node and send it one frame naming this persona
        (POKE: "look at me"; NOTIFY: "I might be your predecessor"), then
        answer what comes on that connection as a node would: the node may
        send its requests down it."""
        import threading
        host, port = addr.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=5)
        s.settimeout(None)
        s.sendall(self.hello(HELLO) + frame(ftype, self.node(), txid=7))
        threading.Thread(target=self.serve, args=(s, (host, int(port))), daemon=True).start()


def imposter_main(conf):
    """Run personas from a JSON config until stdin closes: {"overlay": O,
    "personas": [{"id", "ip", "port", "succ": [[id, ip, port]...],
    "reachable", "seen", "poke": ADDR or "notify": ADDR}]}.  Prints
    "ready" once each persona has told its node, then one line per second:
    the REACH questions each persona answered."""
    import json
    import sys
    import threading
    c = json.loads(conf)
    ps = []
    for p in c["personas"]:
        x = Persona(c["overlay"], p["id"], p["ip"], p["port"], [tuple(s) for s in p["succ"]],
                    p["reachable"], p.get("seen"))
        threading.Thread(target=x.accept_loop, daemon=True).start()
        ps.append((x, p))
    for x, p in ps:
        if p.get("poke"):
            x.tell(p["poke"], POKE)
        if p.get("notify"):
            x.tell(p["notify"], NOTIFY)
    print("ready", flush=True)

    def report():
        while True:
            print("reach " + " ".join(str(x.reach_asked) for x, _ in ps), flush=True)
            time.sleep(1.0)
    threading.Thread(target=report, daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "imposter":
        imposter_main(sys.argv[2])
