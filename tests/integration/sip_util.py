"""Helpers for the sip_*.py integration tests (Python 3 standard library).

- sip_cluster(): p2psipd nodes that also serve SIP (--sip on a second port
  range), some of them proxy peers (--gateway), all on loopback.
- Ua: a small SIP user agent over UDP (or TCP) for precise checks: send a
  request, collect the responses; receive requests and answer them.
- sipp(): run a sipp scenario (the XML is written to the run dir).
- Named / Kamailio: an authoritative DNS server for example.com and the
  overlay zone (with TSIG dynamic update), and a conventional SIP proxy for
  example.com, both on loopback ports the test picks.

Every wait is bounded; every process started here is registered with the
harness, which kills it at the end.
"""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time

import p2p
from p2p import HOST, OVERLAY

SIPP = shutil.which("sipp")
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
NAMED = shutil.which("named") or "/usr/sbin/named"


# Ports ------------------------------------------------------------------------

def pick_udp_tcp(n):
    """A base port b such that b..b+n-1 are this test's for UDP and TCP
    (p2p.pick_ports, which reserves both)."""
    return p2p.pick_ports(n)


# Nodes ------------------------------------------------------------------------

class SipCluster(p2p.Cluster):
    """A cluster whose node i also serves SIP on sip_base + i; per-node
    extra arguments in node_args[i] (e.g. ["--gateway", "--dns", ...]), or
    node_args a function of the node ids in index order that returns that
    mapping, called once when the first node starts (in the secured mode
    the ids come from the certificates, known only once nodes are added).
    Everything here is on loopback, which a node refuses as a SIP target
    unless told (--sip-allow-loopback, given unless allow_loopback is
    False or the node's own arguments say "--no-loopback")."""

    def __init__(self, rundir, binary, sip_base, node_args=None, allow_loopback=True, **kw):
        super().__init__(rundir, binary, **kw)
        self.sip_base = sip_base
        self.node_args = node_args or {}
        self.allow_loopback = allow_loopback

    def argv(self, node, bootstrap):
        a = super().argv(node, bootstrap)
        if callable(self.node_args):
            self.node_args = self.node_args([n.id for n in self.nodes])
        extra = list(self.node_args.get(node.index, []))
        if "--no-loopback" in extra:
            extra.remove("--no-loopback")
        elif self.allow_loopback:
            extra.append("--sip-allow-loopback")
        # On loopback every node is reachable, so --public auto would make
        # every SIP node a proxy peer; these tests choose their proxy peers
        # with --gateway and keep the others private.
        if "--gateway" not in extra and "--public" not in extra:
            extra += ["--public", "no"]
        return a + ["--sip", sip_addr(self, node)] + extra


def sip_port(cluster, node):
    return cluster.sip_base + node.index


def sip_addr(cluster, node):
    return "%s:%d" % (HOST, sip_port(cluster, node))


def sip_dest(cluster, node):
    """(host, port) of node's SIP socket, for Ua.send_raw / Ua.do."""
    return (HOST, sip_port(cluster, node))


def has_sip(binary):
    """True if this p2psipd knows --sip (the SIP role is wired in)."""
    try:
        r = subprocess.run([binary, "--help"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"--sip" in r.stdout + r.stderr


def require_sip(binary):
    """Fail (never skip) unless the daemon has the SIP role: its absence is
    a defect of this build, not of the machine."""
    if not has_sip(binary):
        raise p2p.Failure("%s --help does not mention --sip: the SIP role is missing" % binary)


def sip_cluster(h, n, node_args=None, **kw):
    """Start n SIP nodes (node_args: index -> extra argv, or a function of
    the nodes' ids in index order that returns that, for roles that depend
    on the ring order or keys named after ids; secure=True: the secured
    mode) and wait until the ring is consistent."""
    require_sip(h.binary)
    sub = os.path.join(h.rundir, "c%d" % len(h.clusters))
    base = p2p.pick_ports(max(n, 1))
    sip_base = pick_udp_tcp(max(n, 1) + 1)
    c = SipCluster(sub, h.binary, sip_base, node_args=node_args, base_port=base,
                   port_count=max(n, 1), **kw)
    h.clusters.append(c)
    t0 = time.monotonic()
    c.start(n)
    c.wait_consistent(timeout=60)
    p2p.info("%d SIP nodes up in %.1fs (SIP ports %d..%d)" % (n, time.monotonic() - t0,
                                                            sip_base, sip_base + n - 1))
    return c


def sip_stats(node):
    r = node.admin_ok({"cmd": "sip"})
    return r.get("sip") if isinstance(r.get("sip"), dict) else r


def registrations(node):
    r = node.admin_ok({"cmd": "registrations"})
    return r.get("registrations")


# A small SIP user agent ----------------------------------------------------------

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
           "l": "content-length", "c": "content-type", "k": "supported", "s": "subject"}


class Msg:
    """A parsed SIP message: first line, headers (lower-case names, in
    order), body."""

    def __init__(self, data, source=None):
        self.raw = data
        self.source = source
        text = data.decode("utf-8", "replace")
        head, _, self.body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        self.first = lines[0]
        self.headers = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and self.headers:
                n, v = self.headers[-1]
                self.headers[-1] = (n, v + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            self.headers.append((COMPACT.get(name, name), value.strip()))
        parts = self.first.split(" ", 2)
        self.is_response = parts[0].startswith("SIP/")
        self.status = int(parts[1]) if self.is_response and parts[1].isdigit() else None
        self.reason = parts[2] if self.is_response and len(parts) > 2 else ""
        self.method = None if self.is_response else parts[0]
        self.uri = None if self.is_response else (parts[1] if len(parts) > 1 else None)

    def all(self, name):
        """Every value of a header, comma-separated lists split (roughly:
        no commas inside quotes or angle brackets expected here)."""
        out = []
        for n, v in self.headers:
            if n == name.lower():
                out += [x.strip() for x in re.split(r",(?![^<]*>)", v) if x.strip()]
        return out

    def get(self, name, default=None):
        for n, v in self.headers:
            if n == name.lower():
                return v
        return default

    def cseq_method(self):
        v = self.get("cseq", "")
        return v.split()[-1] if v else None

    def __repr__(self):
        return "<%s>" % self.first


def tag_of(value):
    m = re.search(r";\s*tag=([^;>\s]+)", value or "")
    return m.group(1) if m else None


def uri_of(value):
    m = re.search(r"<([^>]*)>", value or "")
    return m.group(1) if m else (value or "").split(";")[0].strip()


class Ua:
    """A SIP UA on one UDP (or TCP) socket bound to 127.0.0.1 (or sock, a
    UDP socket already bound: e.g. one netns.socket_in made elsewhere)."""

    def __init__(self, user, domain=OVERLAY, port=0, transport="udp", sock=None):
        self.user, self.domain, self.transport = user, domain, transport
        self.host = sock.getsockname()[0] if sock else HOST
        if sock:
            self.sock, self.conns = sock, {}
        elif transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((HOST, port))
            self.conns = {}
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((HOST, port))
            self.sock.listen(8)
            self.conns = {}
        self.port = self.sock.getsockname()[1]
        self.tag = "t%08x" % random.getrandbits(32)
        self.queue = []
        self.bufs = {}
        self.n = 0

    def close(self):
        for c in self.conns.values():
            c.close()
        self.sock.close()

    @property
    def aor(self):
        return "sip:%s@%s" % (self.user, self.domain)

    @property
    def contact(self):
        t = "" if self.transport == "udp" else ";transport=tcp"
        return "<sip:%s@%s:%d%s>" % (self.user, self.host, self.port, t)

    def _tcp_conn(self, dest):
        c = self.conns.get(dest)
        if c is None:
            c = socket.create_connection(dest, timeout=5)
            self.conns[dest] = c
            self.bufs[c] = b""
        return c

    def send_raw(self, dest, data):
        if isinstance(data, str):
            data = data.encode()
        if self.transport == "udp":
            self.sock.sendto(data, dest)
        else:
            self._tcp_conn(dest).sendall(data)

    def _poll(self, timeout):
        """Read what arrives within timeout into self.queue."""
        import select
        socks = [self.sock] + list(self.conns.values())
        r, _, _ = select.select(socks, [], [], max(0, timeout))
        for s in r:
            if self.transport == "udp":
                data, src = s.recvfrom(65535)
                self.queue.append(Msg(data, src))
            elif s is self.sock:
                c, src = s.accept()
                self.conns[src] = c
                self.bufs[c] = b""
            else:
                data = s.recv(65535)
                if not data:
                    for k, v in list(self.conns.items()):
                        if v is s:
                            del self.conns[k]
                    s.close()
                    continue
                self.bufs[s] += data
                self._split_stream(s)

    def _split_stream(self, s):
        buf = self.bufs[s]
        while b"\r\n\r\n" in buf:
            head, _, rest = buf.partition(b"\r\n\r\n")
            m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
            n = int(m.group(1)) if m else 0
            if len(rest) < n:
                break
            src = None
            for k, v in self.conns.items():
                if v is s:
                    src = k
            self.queue.append(Msg(head + b"\r\n\r\n" + rest[:n], src))
            buf = rest[n:]
        self.bufs[s] = buf

    def wait(self, pred, timeout, what):
        """The first queued message matching pred, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.queue):
                if pred(m):
                    return self.queue.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise p2p.Failure("%s: nothing within %.1fs (queued: %s)" % (what, timeout, self.queue[-5:]))
            self._poll(min(left, 0.2))

    def request(self, dest, method, ruri=None, to=None, headers=(), body="", call_id=None,
                cseq=None, from_tag=None, max_forwards=70, contact=True, raw_extra=""):
        """Build and send a request; returns (call_id, branch, text)."""
        self.n += 1
        call_id = call_id or "c%d-%08x@%s" % (self.n, random.getrandbits(32), self.host)
        branch = "z9hG4bK-py%d-%08x" % (self.n, random.getrandbits(32))
        cseq = cseq if cseq is not None else self.n
        ruri = ruri or "sip:%s" % self.domain
        to = to or "<%s>" % self.aor
        tp = "UDP" if self.transport == "udp" else "TCP"
        lines = ["%s %s SIP/2.0" % (method, ruri),
                 "Via: SIP/2.0/%s %s:%d;branch=%s;rport" % (tp, self.host, self.port, branch)]
        if max_forwards is not None:
            lines.append("Max-Forwards: %d" % max_forwards)
        lines += ["From: <%s>;tag=%s" % (self.aor, from_tag or self.tag), "To: %s" % to,
                  "Call-ID: %s" % call_id, "CSeq: %d %s" % (cseq, method)]
        if contact:
            lines.append("Contact: %s" % (self.contact if contact is True else contact))
        lines += list(headers)
        lines.append("Content-Length: %d" % len(body.encode()))
        text = "\r\n".join(lines) + "\r\n" + raw_extra + "\r\n" + body
        self.send_raw(dest, text)
        return call_id, branch, text

    def final(self, call_id, method, timeout=8.0):
        """The final response to (call_id, method); provisional ones are
        collected in self.provisional."""
        self.provisional = []
        while True:
            m = self.wait(lambda x: x.is_response and x.get("call-id") == call_id and
                          x.cseq_method() == method, timeout, "%s response" % method)
            if m.status >= 200:
                return m
            self.provisional.append(m)

    def do(self, dest, method, timeout=8.0, **kw):
        """request() then final(): the final response."""
        call_id, _, _ = self.request(dest, method, **kw)
        return self.final(call_id, method, timeout)

    def register(self, dest, expires=60, contact=True, cseq=None, call_id=None, headers=()):
        hdrs = list(headers)
        if expires is not None:
            hdrs.append("Expires: %d" % expires)
        return self.do(dest, "REGISTER", ruri="sip:%s" % self.domain, contact=contact,
                       cseq=cseq, call_id=call_id or "reg-%s-%d" % (self.user, self.port),
                       headers=hdrs)

    def do_auth(self, dest, method, password, user=None, alg=None, ruri=None, headers=(),
                call_id=None, wait=True, **kw):
        """request() with digest authentication: on a 401/407 answer (ACKed
        when the request was an INVITE), the same request again (same
        Call-ID, next CSeq) with credentials for the challenge with
        algorithm alg (default: the first).  Returns (final, challenge
        response or None); with wait False, the Call-ID instead of the final
        answer to the second request (a call the test answers itself)."""
        ruri = ruri or "sip:%s" % self.domain
        call_id = call_id or "auth-%s-%08x" % (self.user, random.getrandbits(32))
        cid, branch, _ = self.request(dest, method, ruri=ruri, headers=headers, call_id=call_id, **kw)
        first = self.final(cid, method)
        if first.status not in (401, 407):
            return first, None
        if method == "INVITE":
            self.ack_final(dest, first, ruri, branch)
        chs = challenges(first)
        ch = next((c for c in chs if alg is None or c.get("algorithm", "MD5").upper() == alg.upper()),
                  None)
        if ch is None:
            raise p2p.Failure("no %s challenge in %s" % (alg, first.headers))
        name = "Authorization" if first.status == 401 else "Proxy-Authorization"
        cred = digest_credentials(ch, method, ruri, user or self.user, password)
        cid, _, _ = self.request(dest, method, ruri=ruri, call_id=cid,
                                 headers=list(headers) + ["%s: %s" % (name, cred)], **kw)
        return (self.final(cid, method) if wait else cid), first

    def ack_final(self, dest, resp, ruri, branch):
        """The hop-by-hop ACK of a non-2xx final answer to an INVITE (RFC
        3261 17.1.1.3: same branch, the answer's To)."""
        cseq = int(resp.get("cseq").split()[0])
        lines = ["ACK %s SIP/2.0" % ruri,
                 "Via: SIP/2.0/%s %s:%d;branch=%s;rport" % ("UDP" if self.transport == "udp" else "TCP",
                                                          self.host, self.port, branch),
                 "Max-Forwards: 70", "From: %s" % resp.get("from"), "To: %s" % resp.get("to"),
                 "Call-ID: %s" % resp.get("call-id"), "CSeq: %d ACK" % cseq, "Content-Length: 0"]
        self.send_raw(dest, "\r\n".join(lines) + "\r\n\r\n")

    def recv_request(self, method, timeout=8.0):
        return self.wait(lambda x: not x.is_response and x.method == method, timeout,
                         "incoming %s" % method)

    def respond(self, req, status, reason, headers=(), body="", to_tag=None):
        """Answer req (a Msg) on the address it came from (UDP: its source
        or the top Via's rport/received; TCP: the same connection)."""
        lines = ["SIP/2.0 %d %s" % (status, reason)]
        for name in ("via", "record-route"):
            for v in req.all(name):
                lines.append("%s: %s" % ("Via" if name == "via" else "Record-Route", v))
        to = req.get("to")
        if status > 100 and not tag_of(to):
            to += ";tag=%s" % (to_tag or self.tag)
        lines += ["From: %s" % req.get("from"), "To: %s" % to, "Call-ID: %s" % req.get("call-id"),
                  "CSeq: %s" % req.get("cseq")]
        if status < 300 and req.method in ("INVITE", "SUBSCRIBE"):
            lines.append("Contact: %s" % self.contact)
        lines += list(headers)
        lines.append("Content-Length: %d" % len(body.encode()))
        self.send_raw(req.source, "\r\n".join(lines) + "\r\n\r\n" + body)


def challenges(resp):
    """The digest challenges of a 401/407, in order: dicts of their
    parameters (unquoted), header values kept whole (they hold commas)."""
    name = "www-authenticate" if resp.status == 401 else "proxy-authenticate"
    out = []
    for n, v in resp.headers:
        if n == name and v.lower().startswith("digest"):
            out.append({k.lower(): a or b for k, a, b in
                        re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))', v[6:])})
    return out


def digest_credentials(ch, method, uri, user, password, cnonce="0a4f113b", nc="00000001",
                       realm=None, response=None):
    """The Authorization value answering challenge ch (RFC 7616, qop=auth
    when offered): MD5 or SHA-256 as ch says."""
    import hashlib
    alg = ch.get("algorithm", "MD5")
    hf = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[alg.upper()]
    h = lambda x: hf(x.encode()).hexdigest()
    realm = realm or ch["realm"]
    ha1, ha2 = h("%s:%s:%s" % (user, realm, password)), h("%s:%s" % (method, uri))
    qop = "auth" if "auth" in ch.get("qop", "").split(",") else None
    if response is None:
        response = h(":".join([ha1, ch["nonce"], nc, cnonce, qop, ha2]) if qop else
                     ":".join([ha1, ch["nonce"], ha2]))
    v = 'Digest username="%s", realm="%s", nonce="%s", uri="%s", response="%s", algorithm=%s' % (
        user, realm, ch["nonce"], uri, response, alg)
    if qop:
        v += ', qop=auth, nc=%s, cnonce="%s"' % (nc, cnonce)
    return v


def status_of(m):
    return m.status if isinstance(m, Msg) else m


def reg_bindings(resp):
    """{contact uri: expires} from a REGISTER response."""
    out = {}
    for v in resp.all("contact"):
        m = re.search(r"expires=(\d+)", v)
        out[uri_of(v)] = int(m.group(1)) if m else None
    return out


# sipp -------------------------------------------------------------------------------

REG_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register">
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[user]@[domain]>
      Call-ID: [call_id]
      CSeq: [reg_cseq] REGISTER
      Contact: <sip:[user]@[local_ip]:[contact_port];transport=[transport]>
      Expires: [expires]
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""

# The answer to a BYE.
OK_TO_BYE = """  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
"""

# The UAS's answer: 200 with an SDP offer, retransmitted until the ACK.
OK_200_SDP = """  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
"""

UAS_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uas">
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[
      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
""" + OK_200_SDP + """  <recv request="ACK" crlf="true"/>
  <recv request="BYE"/>
""" + OK_TO_BYE + """  <timewait milliseconds="500"/>
</scenario>
"""

# The caller's side of an answer: provisional responses, the 200 (its
# Record-Route kept as the route set), the ACK along it.
ANSWERED_ACK = """  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[callee]@[callee_domain]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      [routes]
      Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""

# The UAC's BYE waits for an action ("pause" of a few seconds) so a test can
# do something in the middle of the call (kill a proxy peer).
UAC_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[callee]@[callee_domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[callee]@[callee_domain]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
""" + ANSWERED_ACK + """  <pause milliseconds="%(hold_ms)d"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[callee]@[callee_domain]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      [routes]
      Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" timeout="%(bye_timeout_ms)d"/>
</scenario>
"""


def uac_xml(hold_ms=500, bye_timeout_ms=20000):
    return UAC_XML % {"hold_ms": hold_ms, "bye_timeout_ms": bye_timeout_ms}


# The callee hangs up: after the ACK it sends the BYE along the route set it
# learnt from the INVITE's Record-Route (in order, RFC 3261 12.1.1) to the
# caller's Contact, through the node it got the INVITE from.
UAS_BYE_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uas-bye">
  <recv request="INVITE" crlf="true" rrs="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="remote"/>
      <ereg regexp=".*" search_in="hdr" header="To:" check_it="true" assign_to="local"/>
    </action>
  </recv>
""" + OK_200_SDP + """  <recv request="ACK" crlf="true"/>
  <pause milliseconds="%(hold_ms)d"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: [$local];tag=[pid]SIPpTag01[call_number]
      To: [$remote]
      [last_Call-ID:]
      CSeq: 1 BYE
      [routes]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" timeout="%(bye_timeout_ms)d"/>
</scenario>
"""

# The caller of UAS_BYE_XML: it answers the callee's BYE.
UAC_GETS_BYE_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac-gets-bye">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[callee]@[callee_domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[callee]@[callee_domain]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
""" + ANSWERED_ACK + """  <recv request="BYE" timeout="%(bye_timeout_ms)d"/>
""" + OK_TO_BYE + """  <timewait milliseconds="500"/>
</scenario>
"""


def uas_bye_xml(hold_ms=300, bye_timeout_ms=20000):
    return UAS_BYE_XML % {"hold_ms": hold_ms, "bye_timeout_ms": bye_timeout_ms}


def uac_gets_bye_xml(bye_timeout_ms=20000):
    return UAC_GETS_BYE_XML % {"bye_timeout_ms": bye_timeout_ms}


class Sipp:
    """One sipp process; its message trace lands in the run dir."""

    def __init__(self, h, name, xml, remote, local_port, keys=(), transport="u1", extra=(),
                 calls=1, timeout=30, host=HOST, prefix=()):
        """host: the address it binds; prefix: runs it elsewhere (["ip",
        "netns", "exec", NS])."""
        if not SIPP:
            p2p.skip("sipp is not installed")
        self.name = name
        sf = os.path.join(h.rundir, name + ".xml")
        with open(sf, "w") as f:
            f.write(xml)
        self.trace = os.path.join(h.rundir, name + ".msg")
        self.errs = os.path.join(h.rundir, name + ".err")
        self.out = os.path.join(h.rundir, name + ".out")
        argv = list(prefix) + [SIPP] + ([remote] if remote else []) + [
            "-sf", sf, "-i", host, "-p", str(local_port), "-m", str(calls), "-t", transport,
            "-trace_msg", "-message_file", self.trace, "-trace_err", "-error_file", self.errs,
            "-timeout", "%ds" % timeout, "-timeout_error", "-nostdin"]
        for k, v in keys:
            argv += ["-key", k, str(v)]
        argv += list(extra)
        self.argv = argv
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         close_fds=True)
        h.extra_procs.append(self.proc)
        self.timeout = timeout

    def wait(self, extra=10):
        try:
            return self.proc.wait(self.timeout + extra)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def messages(self):
        """The trace as a list of Msg (sent and received)."""
        try:
            with open(self.trace, "rb") as f:
                data = f.read()
        except OSError:
            return []
        out = []
        for block in re.split(rb"\n-{20,}[^\n]*\n", b"\n" + data):
            m = re.match(rb"(UDP|TCP) message (sent|received)[^\n]*:\n\n", block)
            if not m:
                continue
            text = block[m.end():].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            msg = Msg(text.rstrip(b"\r\n") + b"\r\n\r\n" if b"\r\n\r\n" not in text else text)
            msg.direction = m.group(2).decode()
            out.append(msg)
        return out

    def received(self, method):
        """True once the trace (written as messages come) shows a request
        of this method received."""
        return any(m.direction == "received" and not m.is_response and m.method == method
                   for m in self.messages())

    def wait_received(self, method, timeout=15.0):
        """Wait until this sipp has received a method request (e.g. the ACK
        that puts a call up): a condition, not a guess of how long it takes."""
        p2p.wait_until(lambda: self.received(method), timeout, "sipp %s received a %s" % (self.name, method),
                       0.1, describe=lambda _: self.describe())

    def describe(self):
        tail = []
        for path in (self.out, self.errs):
            try:
                with open(path, "rb") as f:
                    tail += f.read().decode(errors="replace").splitlines()[-6:]
            except OSError:
                pass
        return "sipp %s rc=%s; %s" % (self.name, self.proc.returncode, " | ".join(tail))


def sipp_register(h, node_addr, user, contact_port, local_port, expires=120, cseq=1,
                  transport="u1", domain=OVERLAY, name=None):
    s = Sipp(h, name or "reg-%s-%d" % (user, cseq), REG_XML, node_addr, local_port,
             keys=[("user", user), ("domain", domain), ("contact_port", contact_port),
                   ("reg_cseq", cseq), ("expires", expires)],
             transport=transport, extra=["-cid_str", "reg-%s-%d@%s" % (user, contact_port, HOST)],
             timeout=15)
    rc = s.wait()
    return rc, s


# Support processes ------------------------------------------------------------------

class ProcGroup:
    """A helper daemon in its own process group (kamailio forks workers that
    outlive a SIGKILL of their parent): kill() takes the whole group.  Has
    the poll/kill/wait the harness calls on extra_procs at cleanup."""

    def __init__(self, popen):
        self.popen = popen
        self.pid = popen.pid

    def poll(self):
        """None while any process of the group is left."""
        rc = self.popen.poll()
        try:
            os.killpg(self.pid, 0)
            return None
        except ProcessLookupError:
            return rc

    def kill(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout=None):
        return self.popen.wait(timeout)


def start_proc(h, argv, log, env=None):
    with open(log, "ab") as out:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             close_fds=True, env=env, start_new_session=True)
    g = ProcGroup(p)
    h.extra_procs.append(g)
    return g


def tail(path, n=20):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").splitlines()[-n:]
    except OSError as e:
        return ["(no %s: %s)" % (path, e)]


def wait_port(port, kind=socket.SOCK_DGRAM, timeout=10.0, host=HOST):
    """Wait until something listens on host:port (TCP: connectable; UDP
    on 127.0.0.1: bound, seen as the bind failing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if kind == socket.SOCK_STREAM:
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                return True
            except OSError:
                pass
        elif not p2p.port_free(port, HOST, (socket.SOCK_DGRAM,)):
            return True
        time.sleep(0.1)
    return False


# A private network namespace ---------------------------------------------------------

NETNS_ENV = "P2PSIP_SIP_NETNS"


UNSHARE_ARGS = ["--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                "--propagation", "private"]


def netns_argv(script, args=()):
    """The command (and environment) that runs script with args in new
    namespaces, as enter_netns does."""
    return ([shutil.which("unshare") or "unshare"] + UNSHARE_ARGS +
            [os.environ.get("PYTHON", __import__("sys").executable), script] + list(args),
            dict(os.environ, **{NETNS_ENV: "1"}))


def enter_netns(script, required=False, args=()):
    """Re-run script inside new network, mount and PID namespaces (so named
    can own 127.0.0.1:53, kamailio can be given its own resolv.conf without
    touching the host, and nothing started inside outlives the test: when
    the script, PID 1 there, ends, the kernel kills the rest), or fail (skip
    with P2PSIP_ALLOW_SKIP=1, unless required) when that is not allowed.
    args: the script's arguments there.
    Returns only inside the namespace."""
    if os.environ.get(NETNS_ENV) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare] + UNSHARE_ARGS + ["true"],
                           capture_output=True) if unshare else None
    if not probe or probe.returncode != 0:
        why = "cannot create namespaces (unshare %s): %s" % (
            " ".join(UNSHARE_ARGS), probe.stderr.decode(errors="replace").strip() if probe else "no unshare")
        if required:
            print("FAIL %s: %s" % (os.path.basename(script), why))
            raise SystemExit(1)
        p2p.cannot_run(os.path.basename(script), why)
    argv, env = netns_argv(script, args)
    os.execvpe(argv[0], argv, env)


def private_resolv_conf(rundir):
    """Point this mount namespace's /etc/resolv.conf at 127.0.0.1 (kamailio
    has no other way to be told its DNS server)."""
    path = os.path.join(rundir, "resolv.conf")
    with open(path, "w") as f:
        f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
    subprocess.run(["mount", "--bind", path, "/etc/resolv.conf"], check=True)


# named -------------------------------------------------------------------------------

class Named:
    """bind9 on 127.0.0.1:53 (inside the namespace): example.com points at
    kamailio by NAPTR/SRV/A; the overlay zone starts with only NAPTR records
    and takes RFC 2136 updates under the operator's update-policy of
    docs/named-overlay.conf: one TSIG key per proxy peer (peer_tsig), named
    after its pp- name, that may write only that name's address and the
    _sip._udp/_sip._tcp SRV records; the operator's own key (tsig, KEY)
    may write anything."""

    KEY = "overlay-admin"
    POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs",
                          "named-overlay.conf")

    def __init__(self, h, kam_port, overlay=OVERLAY, listen=(), kam_ip="127.0.0.1"):
        """listen: addresses to serve on besides 127.0.0.1; kam_ip:
        kamailio's address (sip.example.com)."""
        self.dir = os.path.join(h.rundir, "named")
        os.makedirs(self.dir, exist_ok=True)
        self.secret = self._secret()
        self.tsig = "%s:hmac-sha256:%s" % (self.KEY, self.secret)
        self.overlay = overlay
        self.keys = {self.KEY: self.secret}
        self._write_keys()
        with open(self.POLICY) as f:
            policy = f.read().replace("overlay.test", overlay)
        with open(os.path.join(self.dir, "overlay-zone.conf"), "w") as f:
            f.write(policy)
        conf = os.path.join(self.dir, "named.conf")
        with open(conf, "w") as f:
            f.write("""options {
  directory "%(d)s";
  pid-file none;
  listen-on port 53 { %(listen)s };
  listen-on-v6 { none; };
  recursion no;
  dnssec-validation no;
  notify no;
  session-keyfile "%(d)s/session.key";
  managed-keys-directory "%(d)s";
};
controls { };
include "%(d)s/keys.conf";
zone "example.com" { type primary; file "%(d)s/example.com.zone"; };
include "%(d)s/overlay-zone.conf";
""" % {"d": self.dir, "listen": " ".join(a + ";" for a in ("127.0.0.1",) + tuple(listen))})
        with open(os.path.join(self.dir, "example.com.zone"), "w") as f:
            f.write("""$TTL 30
@ IN SOA ns.example.com. admin.example.com. 1 60 60 600 30
@ IN NS ns.example.com.
ns IN A 127.0.0.1
@ IN NAPTR 10 10 "S" "SIP+D2U" "" _sip._udp.example.com.
_sip._udp IN SRV 10 10 %d sip.example.com.
sip IN A %s
""" % (kam_port, kam_ip))
        with open(os.path.join(self.dir, "%s.zone" % overlay), "w") as f:
            f.write("""$TTL 30
@ IN SOA ns.%(o)s. admin.%(o)s. 1 60 60 600 30
@ IN NS ns.%(o)s.
ns IN A 127.0.0.1
@ IN NAPTR 10 10 "S" "SIP+D2U" "" _sip._udp.%(o)s.
@ IN NAPTR 20 10 "S" "SIP+D2T" "" _sip._tcp.%(o)s.
""" % {"o": overlay})
        self.log = os.path.join(self.dir, "named.log")
        chk = subprocess.run(["named-checkconf", conf], capture_output=True, timeout=20)
        if chk.returncode != 0:
            raise p2p.Failure("named.conf: %s" % (chk.stdout + chk.stderr).decode(errors="replace"))
        self.proc = start_proc(h, [NAMED, "-g", "-n", "1", "-c", conf], self.log)
        if not wait_port(53, socket.SOCK_STREAM, 15):
            raise p2p.Failure("named did not start: %s" % " | ".join(tail(self.log, 8)))

    @staticmethod
    def _secret():
        return __import__("base64").b64encode(os.urandom(32)).decode()

    def _write_keys(self):
        with open(os.path.join(self.dir, "keys.conf"), "w") as f:
            for name, secret in sorted(self.keys.items()):
                f.write('key "%s" { algorithm hmac-sha256; secret "%s"; };\n' % (name, secret))

    def pp_name(self, node_id):
        """A proxy peer's DNS name, as sip/dnsreg.c writes it."""
        return "pp-%s.%s." % (node_id[:12].lower(), self.overlay)

    def peer_tsig(self, node_id, name=None):
        """--tsig for the proxy peer with this node id: a key of its own,
        named after its pp- name (or `name`), known to named after reload()."""
        name = name or self.pp_name(node_id)
        if name not in self.keys:
            self.keys[name] = self._secret()
            self._write_keys()
        return "%s:hmac-sha256:%s" % (name, self.keys[name])

    def reload(self, timeout=15.0):
        """Make named read its keys again (SIGHUP) and wait until it has."""
        def done():
            with open(self.log, errors="replace") as f:
                return f.read().count("reloading configuration succeeded")
        n0 = done()
        self.proc.popen.send_signal(signal.SIGHUP)
        p2p.wait_until(lambda: done() > n0, timeout, "named reloaded its configuration",
                       describe=lambda x: tail(self.log, 5))

    def nsupdate(self, lines, tsig=None):
        """Send one UPDATE of the overlay zone signed with tsig (the
        operator's key by default): (exit code, nsupdate's error output)."""
        name, alg, secret = (tsig or self.tsig).split(":", 2)
        script = "server 127.0.0.1 53\nzone %s\n%s\nsend\n" % (self.overlay, "\n".join(lines))
        r = subprocess.run(["nsupdate", "-y", "%s:%s:%s" % (alg, name, secret)],
                           input=script.encode(), capture_output=True, timeout=20)
        return r.returncode, r.stderr.decode(errors="replace")

    def query(self, name, rtype):
        """Answer records as text lines (dig +short)."""
        r = subprocess.run(["dig", "@127.0.0.1", "-p", "53", "+short", "+time=2", "+tries=1",
                            name, rtype], capture_output=True, timeout=10)
        return [x for x in r.stdout.decode().splitlines() if x.strip()]

    def srv(self, proto="udp"):
        return sorted(self.query("_sip._%s.%s" % (proto, self.overlay), "SRV"))


# kamailio ----------------------------------------------------------------------------

KAMAILIO_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=1
listen=udp:%(host)s:%(port)d
listen=tcp:%(host)s:%(port)d
alias="example.com"
use_dns_cache=on
use_dns_failover=on
dns_try_naptr=on
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
modparam("tm", "fr_timer", 2000)
modparam("tm", "fr_inv_timer", 20000)

request_route {
  xlog("L_INFO", "REQ $rm $ru from $si:$sp ci=$ci RR=[$hdr(Record-Route)] Route=[$hdr(Route)]\\n");
  if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
  if (has_totag()) {
    if (loose_route()) { route(RELAY); exit; }
    if (is_method("ACK")) { if (t_check_trans()) { t_relay(); } exit; }
    sl_send_reply("404", "Not here");
    exit;
  }
  if (is_method("CANCEL")) { if (t_check_trans()) { route(RELAY); } exit; }
  t_check_trans();
  if (loose_route()) { route(RELAY); exit; }
  if (is_method("REGISTER")) {
    if (!pv_auth_check("example.com", "secret", "0", "1")) {
      auth_challenge("example.com", "0");
      exit;
    }
    if (!save("location")) { sl_reply_error(); }
    exit;
  }
  # Spec 3.1: a request from the overlay must carry <sip:OVERLAY;lr>.
  if (is_method("INVITE") && $fd == "%(overlay)s") {
    if ($hdr(Record-Route) =~ "<sip:%(overlay)s;lr>") {
      xlog("L_INFO", "OVERLAY-RR-OK ci=$ci\\n");
    } else {
      xlog("L_INFO", "OVERLAY-RR-MISSING ci=$ci\\n");
      sl_send_reply("403", "No overlay Record-Route");
      exit;
    }
  }
  if (is_method("INVITE|SUBSCRIBE")) { record_route(); }
  if ($rd == "example.com") {
    if (!lookup("location")) { sl_send_reply("404", "Not Found"); exit; }
  }
  route(RELAY);
}

route[RELAY] {
  if (!t_relay()) { sl_reply_error(); }
  exit;
}
"""


class Kamailio:
    """kamailio as the proxy/registrar of example.com (digest password
    "secret" for every user), on 127.0.0.1:port, resolving by RFC 3263
    through the namespace's resolv.conf (named), with DNS failover."""

    def __init__(self, h, port, overlay=OVERLAY, host=HOST):
        self.port, self.host = port, host
        self.cfg = os.path.join(h.rundir, "kamailio.cfg")
        with open(self.cfg, "w") as f:
            f.write(KAMAILIO_CFG % {"port": port, "overlay": overlay, "host": host})
        self.log = os.path.join(h.rundir, "kamailio.log")
        chk = subprocess.run([KAMAILIO, "-c", "-f", self.cfg], capture_output=True, timeout=20)
        if chk.returncode != 0:
            raise p2p.Failure("kamailio config: %s" % chk.stderr.decode(errors="replace")[-800:])
        self.proc = start_proc(h, [KAMAILIO, "-DD", "-E", "-f", self.cfg], self.log)
        if not wait_port(port, socket.SOCK_STREAM, 15, host):
            raise p2p.Failure("kamailio did not start: %s" % " | ".join(tail(self.log, 8)))

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def log_lines(self, pattern):
        try:
            with open(self.log, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [l for l in text.splitlines() if re.search(pattern, l)]


def public_network(h):
    """named (example.com and the overlay zone) and kamailio as the proxy of
    example.com resolving through it, inside the test's namespaces: returns
    (named, kamailio).  Skips without sipp, kamailio, named or --sip."""
    if not SIPP or not os.path.exists(KAMAILIO) or not os.path.exists(NAMED):
        p2p.skip("needs sipp, kamailio and named")
    require_sip(h.binary)
    private_resolv_conf(h.rundir)
    kport = pick_udp_tcp(1)
    named = Named(h, kport)
    return named, Kamailio(h, kport)


REG_AUTH_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register-auth">
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[user]@[domain]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: [contact]
      Expires: 120
      Content-Length: 0

    ]]>
  </send>
  <recv response="401" auth="true"/>
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[user]@[domain]>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: [contact]
      [authentication]
      Expires: 120
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""


def sipp_register_auth(h, via_addr, user, contact, local_port, domain="example.com", name=None,
                       password="secret", **kw):
    """REGISTER user@domain through via_addr, answering the digest challenge
    with password (MD5: sipp knows no other; the digest URI is the
    Request-URI, sip:domain, which sipp would otherwise make the address
    it sends to). kw: Sipp's host and prefix."""
    s = Sipp(h, name or "regauth-%s" % user, REG_AUTH_XML, via_addr, local_port,
             keys=[("user", user), ("domain", domain), ("contact", contact)],
             extra=["-au", user, "-ap", password, "-auth_uri", domain], timeout=20, **kw)
    return s.wait(), s
