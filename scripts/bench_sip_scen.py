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
# every user has its own contact.
REG_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench-register">
  <send retrans="500" start_rtd="1">
    <![CDATA[
      REGISTER sip:[field1] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:[field0]@[field1]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[field1]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      Expires: %(expires)d
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" rtd="1"/>
</scenario>
"""

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


def reg_xml(expires):
    return REG_XML % {"expires": expires}


def kamailio_cfg(port, uas_port, children):
    return KAMAILIO_CFG % {"port": port, "uas_port": uas_port, "children": children}
