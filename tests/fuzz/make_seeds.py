#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets added with this script
(admin_value, config, sip_peer, sip_register, sip_peek, dns,
relay_record, relay_tcp) into tests/fuzz/corpus/NAME/seed-*: valid messages as the node
and the integration tests send them, and a few near misses.  What long
libFuzzer runs found is merged next to them (files named by their SHA-1,
see docs/FUZZING.md); regress-* files are inputs that found a bug.

    python3 tests/fuzz/make_seeds.py
"""
import json
import os
import struct

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
NODE = "0123456789abcdef0123456789abcdef01234567"


def write(target, seeds):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for i, s in enumerate(seeds):
        with open(os.path.join(d, "seed-%02d" % i), "wb") as f:
            f.write(s.encode() if isinstance(s, str) else s)


def user_record(**kw):
    r = {"aor": "sip:alice@overlay.test", "contact": "<sip:alice@127.0.0.1:5070>",
         "uri": "sip:alice@127.0.0.1:5070", "expires": 3600, "q": 1000, "call_id": "abc@1",
         "cseq": 7, "path": "sip:127.0.0.1:5060", "node": NODE, "received": "127.0.0.1:5070",
         "transport": "udp"}
    r.update(kw)
    return json.dumps(r, separators=(",", ":"))


def peer(uri="sip:127.0.0.1:5060", node=NODE):
    return json.dumps({"uri": uri, "node": node, "transports": ["udp", "tcp"]},
                      separators=(",", ":"))


def relay(addr="127.0.0.1:3478"):
    return json.dumps({"addr": addr, "transports": ["udp", "tcp"]}, separators=(",", ":"))


# admin get: any bytes a peer stored, as get lists them.
write("admin_value", [
    '{"a":1,"b":[true,null,1.5,"x"]}', "[1,2,3]", '"text"', "42", "-0.0", "1e400", "null",
    "not json at all", b"\xff\xfe binary \x00 bytes", b'"caf\xc3\xa9"', b"\xc3", "",
    '{"a":1,"a":2}', '"nul \\u0000 inside"', user_record(), peer(), relay(),
])

# --config FILE: what test_options writes, every option once, near misses.
write("config", [
    json.dumps({"overlay": "cfg.test", "listen": "127.0.0.1:4000", "admin": "/tmp/a.sock",
                "node-id": NODE, "replicas": 2, "log-level": "debug"}),
    json.dumps({"overlay": "o.test", "bootstrap": ["127.0.0.1:4001", "[::1]:4002"],
                "successors": 8, "refresh": 30, "stabilize-max": 30000}),
    json.dumps({"overlay": "o.test", "sip": "127.0.0.1:5060", "gateway": True,
                "sip-cache-ms": 0, "dns": "127.0.0.1:5353", "dns-update": "::1",
                "tsig": "key:hmac-sha256:c2VjcmV0", "public": "yes"}),
    json.dumps({"overlay": "o.test", "relay": True, "turn": "127.0.0.1:3478",
                "turn-secret": "s", "turn-realm": "r", "relay-ports": "50000-50100",
                "relay-quota": "10:100", "allow-loopback-peers": 1}),
    '{"replicas":"three"}', "[1,2]", '{"overlay":"o.test","unknown":1}',
    '{"bootstrap":"127.0.0.1:1","bootstrap":"127.0.0.1:2"}', '{"gateway":false,"relay":"0"}',
    '{"listen":["127.0.0.1:1","127.0.0.1:2"],"log-level":"loud"}',
])

# sip:OVERLAY values, as gateway.c publishes them.
write("sip_peer", [
    peer(), peer("sip:[::1]:5062"), peer("sip:192.0.2.1"), '{"uri":"sip:127.0.0.1:5060"}',
    peer("sips:127.0.0.1:5061"), peer("sip:a b"), peer(node="x" * 60),
    '{"uri":5,"node":"n"}', "[]", peer("sip:" + "9" * 90),
])

# turn:OVERLAY values, as records.c publishes them.
write("relay_record", [
    relay(), relay("[::1]:3478"), '{"addr":"127.0.0.1:3478","transports":[]}',
    '{"addr":"127.0.0.1:3478"}', '{"addr":1,"transports":["udp"]}', '{"addr":"x","transports":[1,{}]}',
    "[]", "",
])


# REGISTERs as sip_util.py and sipp send them.
def register(contacts, extra=()):
    lines = ["REGISTER sip:overlay.test SIP/2.0",
             "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-py1-0001;rport",
             "Max-Forwards: 70", "From: <sip:alice@overlay.test>;tag=t1",
             "To: <sip:alice@overlay.test>", "Call-ID: reg-alice-5070", "CSeq: 1 REGISTER"]
    lines += ["Contact: %s" % c for c in contacts] + list(extra) + ["Content-Length: 0"]
    return "\r\n".join(lines) + "\r\n\r\n"


write("sip_register", [
    register(["<sip:alice@127.0.0.1:5070>"], ["Expires: 60"]),
    register(['"Alice" <sip:alice@127.0.0.1:5070;transport=tcp>;expires=120;q=0.5']),
    register(["<sip:alice@[::1]:5070>;+sip.instance=\"<urn:uuid:1>\";reg-id=1;ob"]),
    register(["<sip:a@127.0.0.1:1>;q=1.000", "<sips:a@h.test>;expires=0;q=0"]),
    register(["*"], ["Expires: 0"]),
    register(["sip:alice@127.0.0.1:5070;expires=abc"]),
    register(["<sip:alice@127.0.0.1:5070>;q=0.1234;expires=4294967296"], ["Expires: 99999"]),
    register(["<tel:+123>", "<sip:127.0.0.1>"]),
    register(["<sip:m@127.0.0.1:5999>;x=" + "a" * 1100]),
    register(["<sip:m@127.0.0.1:5999>"]).replace("reg-alice-5070", "c" * 600),
])

# Datagrams as the peek before sofia's parse sees them: sipp's REGISTERs,
# compact and odd forms, and near misses it must not read.
write("sip_peek", [
    register(["<sip:alice@127.0.0.1:5070>"], ["Expires: 60"]),
    register(["<sip:a@127.0.0.1:1>"]).replace("Call-ID:", "i :").replace("CSeq: 1", "cseq:  4294967295"),
    register(["<sip:a@127.0.0.1:1>"]).replace("CSeq: 1", "CSeq: 4294967296"),
    register(["<sip:a@127.0.0.1:1>"]).replace("Call-ID: reg-alice-5070", "Call-ID: a@b\r\n call"),
    register(["<sip:a@127.0.0.1:1>"]).replace("Call-ID: reg-alice-5070", "Call-ID: x y"),
    register(["<sip:a@127.0.0.1:1>"], ["Call-ID: second"]),
    register(["<sip:a@127.0.0.1:1>"]).replace("CSeq: 1 REGISTER", "CSeq: 1 INVITE"),
    register(["<sip:a@127.0.0.1:1>"]).replace("\r\n", "\n"),
    register(["<sip:a@127.0.0.1:1>"]).replace("REGISTER sip", "OPTIONS sip", 1),
    register(["<sip:a@127.0.0.1:1>"])[:-4],
])


# DNS answers to the clean-up's SRV query.
def dname(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def srv(target, owner=b"\xc0\x0c", cls=1, port=5060):
    rdata = struct.pack(">HHH", 10, 10, port) + dname(target)
    return owner + struct.pack(">HHIH", 33, cls, 30, len(rdata)) + rdata


def answer(rrs, qname="_sip._udp.overlay.test.", rcode=0, qtype=33):
    head = struct.pack(">HHHHHH", 0x1234, 0x8400 | rcode, 1, len(rrs), 0, 0)
    return head + dname(qname) + struct.pack(">HH", qtype, 1) + b"".join(rrs)


A = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + bytes([127, 0, 0, 1])
write("dns", [
    answer([srv("pp-0123456789ab.overlay.test."), srv("pp-abcdefabcdef.overlay.test.")]),
    answer([srv("pp-00000000000a.overlay.test."), srv("sip.overlay.test."), A]),
    answer([], rcode=3),
    answer([srv("pp-abcdefabcdef.overlay.test.", cls=254)]),
    answer([srv("pp-abcdefabcdef.other.test.")], qname="_sip._tcp.overlay.test."),
    answer([srv("PP-ABCDEFABCDEF.Overlay.Test.", owner=dname("_sip._udp.overlay.test."))]),
    answer([srv("pp-abcdefabcdef.overlay.test.")] * 70),
    answer([], qtype=1),
])


# TURN over TCP: four bytes that seed the read sizes, then a stream.
def stun_seeds():
    d = os.path.join(CORPUS, "stun")
    out = []
    for f in sorted(os.listdir(d)):
        with open(os.path.join(d, f), "rb") as fh:
            b = fh.read()
        if len(b) >= 20 and b[0] < 0x40 and b[4:8] == bytes.fromhex("2112a442") and \
                struct.unpack(">H", b[2:4])[0] + 20 == len(b):
            out.append(b)
    return out


msgs = stun_seeds()
chan = struct.pack(">HH", 0x4000, 5) + b"hello" + b"\0\0\0"
legacy = struct.pack(">HH", 0x7ffe, 4) + b"data"
huge = struct.pack(">HH", 0x0003, 0xfffc) + bytes.fromhex("2112a442") + b"t" * 12
write("relay_tcp", [
    b"\0\0\0\1" + msgs[0] + chan + msgs[1],
    b"\x12\x34\x56\x78" + b"".join(msgs[:8]),
    b"\xff\xff\xff\xff" + chan * 3 + legacy + msgs[2][:30],
    b"\0\0\0\7" + msgs[3] + huge,
    b"\0\1\0\1" + chan + b"\x99junk",
    b"\0\0\0\2" + msgs[4][:4] + b"\x00\x00\x00\x00",
])
