/*
 * sip/record.c: the user record round-trips through its JSON body, the
 * remaining lifetime comes from the DHT's expires_in minus the grace, and
 * bodies from other nodes that are not well-formed records are refused.
 */
#include <errno.h>

#include "sip/sip_int.h"
#include "tests/unit/test.h"

static dht_value_t value(const char *body, uint32_t expires_in)
{
  dht_value_t v = {.vid = "0123abcd", .kind = DHT_KIND_USER, .expires_in = expires_in,
                   .body = (const uint8_t *)body, .body_len = strlen(body)};
  return v;
}

static void roundtrip(void)
{
  sip_binding_t b = {.aor = "sip:alice@overlay.test",
                     .contact = "\"Alice\" <sip:alice@10.0.0.5:5070>;+sip.instance=\"<urn:x>\"",
                     .uri = "sip:alice@10.0.0.5:5070", .call_id = "abc@host",
                     .path = "sip:192.0.2.1:5060", .node = "ff00", .received = "198.51.100.7:4000",
                     .transport = "tcp", .cseq = 4294967295u, .q1000 = 500};
  char *body = sip__binding_encode(&b, 3600);
  ASSERT(body != NULL);
  dht_value_t v = value(body, 3600 + SIP_GRACE_S - 10);
  sip_binding_t d;
  ASSERT_OK(sip__binding_decode(&v, &d));
  ASSERT_STR_EQ(d.aor, b.aor);
  ASSERT_STR_EQ(d.contact, b.contact);
  ASSERT_STR_EQ(d.uri, b.uri);
  ASSERT_STR_EQ(d.call_id, b.call_id);
  ASSERT_STR_EQ(d.path, b.path);
  ASSERT_STR_EQ(d.received, b.received);
  ASSERT_STR_EQ(d.transport, b.transport);
  ASSERT_STR_EQ(d.vid, "0123abcd");
  ASSERT_UINT_EQ(d.cseq, 4294967295u);
  ASSERT_EQ(d.q1000, 500);
  ASSERT_EQ(d.remaining, 3590);
  ASSERT_STR_EQ(d.edge, ""); /* a public node's record names no edge */
  ASSERT(strstr(body, "\"edge\"") == NULL);
  sip__binding_clear(&d);
  /* Within the grace period the contact has expired but the record is there. */
  v = value(body, SIP_GRACE_S - 1);
  ASSERT_OK(sip__binding_decode(&v, &d));
  ASSERT_LE(d.remaining, 0);
  sip__binding_clear(&d);
  free(body);
}

/* A node behind a NAT: the route in is the proxy peer (edge), then its
 * reflexive address (path). */
static void edge(void)
{
  sip_binding_t b = {.aor = "sip:bob@overlay.test", .contact = "<sip:bob@198.51.100.2:5070>",
                     .uri = "sip:bob@198.51.100.2:5070", .call_id = "c@h",
                     .path = "sip:192.0.2.1:5060", .node = "ab", .received = "198.51.100.2:5071",
                     .transport = "udp", .edge = "sip:192.0.2.2:5061", .cseq = 1, .q1000 = 1000};
  char *body = sip__binding_encode(&b, 60);
  ASSERT(body != NULL);
  dht_value_t v = value(body, 60 + SIP_GRACE_S);
  sip_binding_t d;
  ASSERT_OK(sip__binding_decode(&v, &d));
  ASSERT_STR_EQ(d.edge, "sip:192.0.2.2:5061");
  ASSERT_STR_EQ(d.path, "sip:192.0.2.1:5060");
  sip__binding_clear(&d);
  free(body);
  /* A record from an older node, without the field, still decodes. */
  v = value("{\"aor\":\"a\",\"contact\":\"c\",\"uri\":\"u\",\"call_id\":\"i\",\"path\":\"p\","
            "\"node\":\"n\",\"received\":\"\",\"transport\":\"\",\"q\":1000,\"cseq\":1}", 400);
  ASSERT_OK(sip__binding_decode(&v, &d));
  ASSERT_STR_EQ(d.edge, "");
  sip__binding_clear(&d);
  /* An edge that is not a string, or longer than any address, is refused. */
  static const char *bad[] = {
      "{\"aor\":\"a\",\"contact\":\"c\",\"uri\":\"u\",\"call_id\":\"i\",\"path\":\"p\",\"node\":\"n\","
      "\"received\":\"\",\"transport\":\"\",\"q\":1000,\"cseq\":1,\"edge\":5}",
      "{\"aor\":\"a\",\"contact\":\"c\",\"uri\":\"u\",\"call_id\":\"i\",\"path\":\"p\",\"node\":\"n\","
      "\"received\":\"\",\"transport\":\"\",\"q\":1000,\"cseq\":1,\"edge\":null}",
      NULL};
  for (int i = 0; bad[i]; i++) {
    v = value(bad[i], 400);
    ASSERT_EQ(sip__binding_decode(&v, &d), -EINVAL);
    ASSERT(d.edge == NULL && d.aor == NULL);
  }
  char big[2048];
  snprintf(big, sizeof big,
           "{\"aor\":\"a\",\"contact\":\"c\",\"uri\":\"u\",\"call_id\":\"i\",\"path\":\"p\","
           "\"node\":\"n\",\"received\":\"\",\"transport\":\"\",\"q\":1000,\"cseq\":1,"
           "\"edge\":\"sip:%0300d\"}", 0);
  v = value(big, 400);
  ASSERT_EQ(sip__binding_decode(&v, &d), -EINVAL);
}

/* What may go into a Route header from a record. */
static void hops(void)
{
  ASSERT(sip__binding_hop_ok("sip:192.0.2.1:5060"));
  ASSERT(sip__binding_hop_ok("sip:[2001:db8::1]:5060"));
  ASSERT(!sip__binding_hop_ok(NULL));
  ASSERT(!sip__binding_hop_ok(""));
  ASSERT(!sip__binding_hop_ok("sip:"));
  ASSERT(!sip__binding_hop_ok("tel:+15550100"));
  ASSERT(!sip__binding_hop_ok("sip:192.0.2.1>, <sip:203.0.113.9"));
  ASSERT(!sip__binding_hop_ok("sip:192.0.2.1;maddr=203.0.113.9"));
  ASSERT(!sip__binding_hop_ok("sip:evil@192.0.2.1"));
}

static void refused(void)
{
  static const char *bad[] = {
      "",
      "not json",
      "[1,2,3]",
      "{}",
      /* q out of range */
      "{\"aor\":\"a\",\"contact\":\"c\",\"uri\":\"u\",\"call_id\":\"i\",\"path\":\"p\",\"node\":\"n\","
      "\"received\":\"\",\"transport\":\"\",\"q\":1001,\"cseq\":1}",
      /* cseq negative */
      "{\"aor\":\"a\",\"contact\":\"c\",\"uri\":\"u\",\"call_id\":\"i\",\"path\":\"p\",\"node\":\"n\","
      "\"received\":\"\",\"transport\":\"\",\"q\":1000,\"cseq\":-1}",
      /* a field of the wrong type */
      "{\"aor\":1,\"contact\":\"c\",\"uri\":\"u\",\"call_id\":\"i\",\"path\":\"p\",\"node\":\"n\","
      "\"received\":\"\",\"transport\":\"\",\"q\":1000,\"cseq\":1}",
      /* a field missing */
      "{\"aor\":\"a\",\"contact\":\"c\",\"uri\":\"u\",\"path\":\"p\",\"node\":\"n\","
      "\"received\":\"\",\"transport\":\"\",\"q\":1000,\"cseq\":1}",
      NULL};
  for (int i = 0; bad[i]; i++) {
    dht_value_t v = value(bad[i], 100);
    sip_binding_t d;
    ASSERT_EQ(sip__binding_decode(&v, &d), -EINVAL);
    ASSERT(d.aor == NULL && d.contact == NULL);
  }
  /* A path longer than any SIP address we would write. */
  char big[2048];
  snprintf(big, sizeof big,
           "{\"aor\":\"a\",\"contact\":\"c\",\"uri\":\"u\",\"call_id\":\"i\",\"path\":\"%0300d\","
           "\"node\":\"n\",\"received\":\"\",\"transport\":\"\",\"q\":1000,\"cseq\":1}", 0);
  dht_value_t v = value(big, 100);
  sip_binding_t d;
  ASSERT_EQ(sip__binding_decode(&v, &d), -EINVAL);
  /* A well-formed record of another kind: any node may store those under
   * a user's name, only the user's certificate a DHT_KIND_USER value. */
  sip_binding_t b = {.aor = "a", .contact = "c", .uri = "u", .call_id = "i", .path = "p",
                     .node = "n", .received = "", .transport = "", .cseq = 1, .q1000 = 1000};
  char *body = sip__binding_encode(&b, 60);
  v = value(body, 100);
  ASSERT_OK(sip__binding_decode(&v, &d));
  sip__binding_clear(&d);
  v.kind = DHT_KIND_JSON;
  ASSERT_EQ(sip__binding_decode(&v, &d), -EINVAL);
  free(body);
}

/* The body as jansson printed it before encode wrote it itself: same
 * bytes for plain, escaped and non-ASCII text, so records written by older
 * nodes and by this one are alike. */
static char *jansson_body(const sip_binding_t *b, uint32_t expires)
{
  json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:i, s:s, s:I, s:s, s:s, s:s, s:s}", "aor", b->aor,
                        "contact", b->contact, "uri", b->uri, "expires", (int)expires, "q",
                        b->q1000, "call_id", b->call_id, "cseq", (json_int_t)b->cseq, "path",
                        b->path, "node", b->node, "received", b->received, "transport",
                        b->transport);
  ASSERT(o != NULL);
  if (b->edge && b->edge[0])
    json_object_set_new(o, "edge", json_string(b->edge));
  char *text = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return text;
}

static void as_jansson(void)
{
  sip_binding_t b = {.aor = "sip:alice@overlay.test",
                     .contact = "\"A \\\"l\\\\ice\" <sip:alice@10.0.0.5:5070>;x=\"\x01\x1f\t\n\r\b\f/\x7f\"",
                     .uri = "sip:al%C3%A9@10.0.0.5", .call_id = "caf\xc3\xa9-\xe2\x82\xac-\xf0\x9f\x98\x80",
                     .path = "sip:192.0.2.1:5060", .node = "ff00", .received = "198.51.100.7:4000",
                     .transport = "udp", .cseq = 4294967295u, .q1000 = 0};
  for (int e = 0; e < 2; e++) {
    b.edge = e ? "sip:192.0.2.2:5061" : "";
    char *ours = sip__binding_encode(&b, e ? 0 : 3600), *theirs = jansson_body(&b, e ? 0 : 3600);
    ASSERT(ours != NULL && theirs != NULL);
    ASSERT_STR_EQ(ours, theirs);
    free(ours), free(theirs);
  }
  /* Not UTF-8 (a lone continuation byte, an overlong '/', a surrogate, past
   * U+10FFFF, a truncated sequence): not encoded, as jansson refused it. */
  static const char *bad[] = {"\x80", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "a\xe2\x82",
                              NULL};
  for (int i = 0; bad[i]; i++) {
    b.call_id = (char *)bad[i];
    ASSERT(sip__binding_encode(&b, 60) == NULL);
    ASSERT(!sip__record_text_ok(bad[i], 100));
    json_t *j = json_string(bad[i]);
    ASSERT(j == NULL);
  }
  ASSERT(sip__record_text_ok("caf\xc3\xa9 \xf0\x9f\x98\x80", 100));
  ASSERT(!sip__record_text_ok("abcd", 3));
}

/* The limits count a text as the body holds it: a control character takes
 * six bytes, a quote two.  Every field at its limit, escaped or not, still
 * makes a body that decodes (the sip_register fuzzer found a contact of
 * 0x1c bytes, within 1,024 as typed, that made one decode refused). */
static void escaped_limits(void)
{
  char ctl[SIP_REC_MAX_CONTACT + 1], quotes[SIP_REC_MAX_TEXT + 1], plain[SIP_REC_MAX_CONTACT + 1];
  memset(ctl, 0x1c, 200), ctl[200] = '\0';
  ASSERT(!sip__record_text_ok(ctl, SIP_REC_MAX_CONTACT)); /* 1,200 escaped */
  memset(ctl, 0x1c, 170), ctl[170] = '\0';
  ASSERT(sip__record_text_ok(ctl, SIP_REC_MAX_CONTACT)); /* 1,020 */
  memset(quotes, '"', 257), quotes[257] = '\0';
  ASSERT(!sip__record_text_ok(quotes, SIP_REC_MAX_TEXT));
  quotes[256] = '\0';
  ASSERT(sip__record_text_ok(quotes, SIP_REC_MAX_TEXT));
  memset(plain, 'a', SIP_REC_MAX_CONTACT), plain[SIP_REC_MAX_CONTACT] = '\0';
  ASSERT(sip__record_text_ok(plain, SIP_REC_MAX_CONTACT));
  char path[257], edge[257];
  memset(path, 'p', 256), path[256] = '\0';
  memset(edge, 'e', 256), edge[256] = '\0';
  sip_binding_t b = {.aor = quotes, .contact = ctl, .uri = quotes, .call_id = quotes, .path = path,
                     .node = "0123456789012345678901234567890123456789", .edge = edge,
                     .received = "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535", .transport = "tcp",
                     .cseq = 4294967295u, .q1000 = 1000};
  char *body = sip__binding_encode(&b, 4294967295u);
  ASSERT(body != NULL);
  ASSERT(strlen(body) <= SIP_REC_MAX_BODY);
  dht_value_t v = value(body, 3600);
  sip_binding_t d;
  ASSERT_OK(sip__binding_decode(&v, &d));
  ASSERT_STR_EQ(d.contact, ctl);
  ASSERT_STR_EQ(d.call_id, quotes);
  sip__binding_clear(&d);
  free(body);
}

int main(void)
{
  as_jansson();
  roundtrip();
  edge();
  hops();
  refused();
  escaped_limits();
  return 0;
}
