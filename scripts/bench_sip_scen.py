"""sipp scenarios and kamailio configuration for scripts/bench-sip.

The same UAC call scenario (INVITE, 200, ACK, a short pause, BYE, 200) and
the same REGISTER scenario are sent to p2psip and to kamailio; only the
remote address differs.  Python 3 standard library only.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import sip_util  # noqa: E402

# UAC: one call.  The Request-URI is sip:[callee]@[callee_domain]; the ACK
# and BYE follow the route set of the 200 (both proxies record-route, so the
# whole dialog crosses them).  rtd 1 = INVITE sent -> 200 received.  A proxy
# with several worker processes (kamailio) may forward the 180 after the 200,
# which is not a failed call: bench-sip runs sipp with
# -default_behaviors all,-abortunexp so that such a stray message is ignored
# (a call that never gets its 200 still fails, by -recv_timeout).
UAC_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench-uac">
  <send retrans="500" start_rtd="1">
    <![CDATA[
      INVITE sip:[callee]@[callee_domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:caller@public.test>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[callee]@[callee_domain]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
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
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true" rtd="1"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:caller@public.test>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[callee]@[callee_domain]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      [routes]
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="%(hold_ms)d"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:caller@public.test>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[callee]@[callee_domain]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      [routes]
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""

# UAS: answers every call (180, 200 with SDP), then the ACK and the BYE.
# The UAS is the integration tests' own (tests/integration/sip_util.py):
# 180, 200 with SDP, ACK, BYE/200.
UAS_XML = sip_util.UAS_XML

# REGISTER of one user from the injection file (field0 user, field1 domain);
# every user has its own contact.  With digest (401, then credentials) the
# injection file's third field is the whole [authentication username=...
# password=...] keyword (sipp 3.6 takes no field inside the keyword).
REG_SEND = """  <send retrans="500"%(rtd)s>
    <![CDATA[
      REGISTER sip:[field1] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:[field0]@[field1]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[field1]>
      Call-ID: [call_id]
      CSeq: %(cseq)d REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>%(auth)s
      Expires: %%(expires)d
      Content-Length: 0

    ]]>
  </send>
"""
REG_HEAD = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench-register">
"""
REG_XML = (REG_HEAD + REG_SEND % {"rtd": ' start_rtd="1"', "cseq": 1, "auth": ""} +
           """  <recv response="200" rtd="1"/>\n</scenario>\n""")
REG_AUTH_XML = (REG_HEAD + REG_SEND % {"rtd": ' start_rtd="1"', "cseq": 1, "auth": ""} +
                """  <recv response="401" auth="true"/>\n""" +
                REG_SEND % {"rtd": "", "cseq": 2, "auth": "\n      [field2]"} +
                """  <recv response="200" rtd="1"/>\n</scenario>\n""")

# One REGISTER of one user with a given contact port (the UAS's).
REG_ONE_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register-one">
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[user]@[domain]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[user]@[local_ip]:[contact_port];transport=[transport]>
      Expires: 3600
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""

# kamailio: plain stateful forwarding (tm t_relay) of every dialog-creating
# request to the UAS, record-routing INVITEs so that ACK and BYE cross it as
# they cross the overlay nodes; REGISTER saved in usrloc, in memory only.
KAMAILIO_CFG = """#!KAMAILIO
debug=1
log_stderror=yes
children=%(children)d
tcp_children=1
disable_tcp=yes
listen=udp:127.0.0.1:%(port)d
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
%(auth_modules)s
modparam("usrloc", "db_mode", 0)
modparam("registrar", "max_contacts", 1)

request_route {
  if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
  if (has_totag()) {
    if (loose_route()) { route(RELAY); }
    if (is_method("ACK")) { if (t_check_trans()) { t_relay(); } exit; }
    sl_send_reply("404", "Not here");
    exit;
  }
  if (is_method("CANCEL")) { if (t_check_trans()) { route(RELAY); } exit; }
  t_check_trans();
  if (is_method("REGISTER")) {
%(auth_check)s
    if (!save("location")) { sl_reply_error(); }
    exit;
  }
  if (is_method("INVITE")) { record_route(); }
  $du = "sip:127.0.0.1:%(uas_port)d";
  route(RELAY);
}

route[RELAY] {
  if (!t_relay()) { sl_reply_error(); }
  exit;
}
"""


def uac_xml(hold_ms):
    return UAC_XML % {"hold_ms": hold_ms}


# A REGISTER answered 503 fails the registration at once, as a phone
# honouring Retry-After would stop (RFC 3261 21.5.4) rather than send it
# again: the call waits for a 599 that never comes (recv timeout: failed).
REG_503_RECV = """  <recv response="503" optional="true" next="shed"/>\n"""
REG_503_TAIL = """  <label id="shed"/>
  <recv response="599" timeout="1"/>
  <label id="done"/>
</scenario>
"""
REG_AUTH_503_XML = (REG_HEAD + REG_SEND % {"rtd": ' start_rtd="1"', "cseq": 1, "auth": ""} +
                    REG_503_RECV + """  <recv response="401" auth="true"/>\n""" +
                    REG_SEND % {"rtd": "", "cseq": 2, "auth": "\n      [field2]"} +
                    REG_503_RECV + """  <recv response="200" rtd="1" next="done"/>\n""" +
                    REG_503_TAIL)


def reg_xml(expires, auth=False, fail_503=False):
    """fail_503: the client stops at a 503 (REG_AUTH_503_XML; with auth only)."""
    xml = (REG_AUTH_503_XML if fail_503 else REG_AUTH_XML) if auth else REG_XML
    return xml % {"expires": expires}


# Digest for kamailio's registrar as its stock configuration does it
# (www_authorize against the subscriber table), with the table in memory:
# htable loads it from db_text at start (db_text itself looks rows up by a
# linear scan; kamailio's own deployments put an indexed database there).
KAM_AUTH_MODULES = """loadmodule "htable.so"
loadmodule "auth.so"
modparam("db_text", "max_result_rows", 10000000)
modparam("htable", "db_url", "text://%(db)s")
modparam("htable", "htable", "users=>size=18;dbtable=htable;")"""
KAM_AUTH_CHECK = """    if (!pv_auth_check("$td", "$sht(users=>$tU)", "0", "1")) {
      auth_challenge("$td", "0");
      exit;
    }"""


def kamailio_users(db, users):
    """The db_text table htable loads: users [(name, password)]."""
    os.makedirs(db, exist_ok=True)
    with open(os.path.join(db, "version"), "w") as f:
        f.write("table_name(string) table_version(int)\nhtable:2\n")
    with open(os.path.join(db, "htable"), "w") as f:
        f.write("id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) "
                "expires(int)\n")
        for i, (name, pw) in enumerate(users):
            f.write("%d:%s:0:0:%s:0\n" % (i + 1, name, pw))


def kamailio_cfg(port, uas_port, children, auth_db=None):
    """auth_db: the db_text directory of kamailio_users(), or None: no auth."""
    mods = ('loadmodule "db_text.so"\n' + KAM_AUTH_MODULES % {"db": auth_db}) if auth_db else ""
    return KAMAILIO_CFG % {"port": port, "uas_port": uas_port, "children": children,
                           "auth_modules": mods, "auth_check": KAM_AUTH_CHECK if auth_db else ""}


def digest_users(directory, realm, users):
    """USER.digest files as p2psip-ca user writes them (node/ca.c: one line
    per algorithm, USER:REALM:ALG:HA1, mode 0600), without certificates:
    the open mode needs none, and making 100,000 with the CA takes long."""
    import hashlib
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for name, pw in users:
        lines = "".join("%s:%s:%s:%s\n" % (name, realm, alg, h(("%s:%s:%s" % (name, realm, pw)).encode()).hexdigest())
                        for alg, h in (("MD5", hashlib.md5), ("SHA-256", hashlib.sha256)))
        fd = os.open(os.path.join(directory, name + ".digest"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o600)
        with os.fdopen(fd, "w") as f:
            f.write(lines)
