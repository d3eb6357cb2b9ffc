/*
 * The user record: one DHT value per contact of an AOR, under the name
 * "sip:USER@OVERLAY", kind DHT_KIND_USER, body JSON:
 *
 *   {"aor": "sip:alice@overlay.test",
 *    "contact": "<sip:alice@10.0.0.5:5070>;+sip.instance=\"...\"",  (header value, no expires/q)
 *    "uri": "sip:alice@10.0.0.5:5070",
 *    "expires": 3600, "q": 1000, "call_id": "...", "cseq": 7,
 *    "path": "sip:192.0.2.1:5060",   (the node it came through, RFC 3327-like)
 *    "node": "<node id hex>",
 *    "received": "198.51.100.7:40000", "transport": "udp",
 *    "edge": "sip:192.0.2.9:5060"}   (optional: see below)
 *
 * A node behind a NAT is reached through the proxy peer that holds its
 * flow (flow.c): "edge" names that proxy peer and "path" the node's
 * reflexive address, so callers route <edge;lr>,<path;lr>.  Records
 * without "edge" (older nodes, public nodes) decode with edge "".
 *
 * The value lives SIP_GRACE_S seconds longer than the contact, so that the
 * remaining contact lifetime is the DHT's expires_in minus the grace; that
 * needs no synchronised clocks.  Bodies come from other nodes: decode
 * treats them as untrusted and checks every field.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sip/sip_int.h"

/* RFC 3629 UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF): what jansson takes as a string, so that what is encoded here
 * decodes there. */
static int utf8_ok(const unsigned char *p)
{
  while (*p) {
    unsigned c = *p++, n = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2
                                       : (c & 0xf8) == 0xf0 ? 3 : 4;
    if (n == 4 || (n == 1 && c < 0xc2))
      return 0;
    unsigned v = c & (0x3f >> n);
    for (unsigned i = 0; i < n; i++, p++) {
      if ((*p & 0xc0) != 0x80)
        return 0;
      v = v << 6 | (*p & 0x3f);
    }
    if ((n == 2 && (v < 0x800 || (v >= 0xd800 && v <= 0xdfff))) ||
        (n == 3 && (v < 0x10000 || v > 0x10ffff)))
      return 0;
  }
  return 1;
}

/* The two-character escape of c in a JSON string, as jansson writes it;
 * NULL for c written as itself or, below 0x20, as \u00XX. */
static const char *short_escape(unsigned char c)
{
  return c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n" : c == '\r' ? "\\r"
         : c == '\t' ? "\\t" : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
}

/* The bytes s takes in a body, escaped as put_str() writes it. */
static size_t escaped_len(const unsigned char *s)
{
  size_t n = 0;
  for (; *s; s++)
    n += short_escape(*s) ? 2 : *s < 0x20 ? 6 : 1;
  return n;
}

/* Appends "key":"value" (value as a JSON string, RFC 8259 7, escaped as
 * jansson escapes it) at *o; *o becomes NULL when it does not fit in end. */
static void put_str(char **o, const char *end, const char *key, const char *v)
{
  static const char hex[] = "0123456789ABCDEF"; /* upper case, as jansson prints */
  size_t kl = strlen(key);
  if (!*o || (size_t)(end - *o) < kl + 5) {
    *o = NULL;
    return;
  }
  char *w = *o;
  *w++ = ',', *w++ = '"';
  memcpy(w, key, kl), w += kl;
  *w++ = '"', *w++ = ':', *w++ = '"';
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    if (end - w < 7) { /* the longest escape, and the closing quote */
      *o = NULL;
      return;
    }
    const char *esc = short_escape(*p);
    if (esc) {
      memcpy(w, esc, 2), w += 2;
    } else if (*p < 0x20) {
      memcpy(w, "\\u00", 4), w[4] = hex[*p >> 4], w[5] = hex[*p & 15], w += 6;
    } else {
      *w++ = (char)*p;
    }
  }
  *w++ = '"';
  *o = w;
}

static void put_int(char **o, const char *end, const char *key, long long v)
{
  int n = *o ? snprintf(*o, (size_t)(end - *o), ",\"%s\":%lld", key, v) : -1;
  *o = n < 0 || n >= end - *o ? NULL : *o + n;
}

/* The body as jansson's json_dumps(JSON_COMPACT) printed it, written
 * directly: the object, its eleven strings and the dump were 5% of a busy
 * registrar's CPU.  Fixed keys, so only the strings need care: each is
 * checked to be UTF-8 and escaped. */
char *sip__binding_encode(const sip_binding_t *b, uint32_t expires)
{
  const char *const strs[][2] = {{"aor", b->aor}, {"contact", b->contact}, {"uri", b->uri},
                                 {"call_id", b->call_id}, {"path", b->path}, {"node", b->node},
                                 {"received", b->received ? b->received : ""},
                                 {"transport", b->transport ? b->transport : ""},
                                 {"edge", b->edge ? b->edge : ""}};
  size_t len = 128;
  for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
    if (!strs[i][1] || !utf8_ok((const unsigned char *)strs[i][1]))
      return NULL;
    len += strlen(strs[i][0]) + 6 * strlen(strs[i][1]) + 6;
  }
  char *text = malloc(len), *o = text, *end = text + len;
  if (!text)
    return NULL;
  /* Keys in the order jansson kept them; "edge" only when there is one. */
  for (size_t i = 0; i < 3; i++)
    put_str(&o, end, strs[i][0], strs[i][1]);
  put_int(&o, end, "expires", (int)expires);
  put_int(&o, end, "q", b->q1000);
  put_str(&o, end, strs[3][0], strs[3][1]);
  put_int(&o, end, "cseq", b->cseq);
  for (size_t i = 4; i < 9 && (i < 8 || strs[8][1][0]); i++)
    put_str(&o, end, strs[i][0], strs[i][1]);
  if (!o || end - o < 2) {
    free(text);
    return NULL;
  }
  text[0] = '{'; /* over the first key's comma */
  memcpy(o, "}", 2);
  return text;
}

void sip__binding_clear(sip_binding_t *b)
{
  free(b->aor), free(b->contact), free(b->uri), free(b->call_id);
  free(b->path), free(b->node), free(b->received), free(b->transport), free(b->edge);
  memset(b, 0, sizeof *b);
}

/* A path or edge goes into a Route header of requests: only a plain
 * "sip:HOST[:PORT]" can, whatever another node wrote. */
int sip__binding_hop_ok(const char *u)
{
  return u && strncmp(u, "sip:", 4) == 0 && u[4] && strlen(u) < 200 &&
         !strpbrk(u, " \t\r\n<>;,\"@?");
}

/* The four texts from the phone at their limits, escaped, and this
 * node's path, node id, source, transport and edge at decode's (ours:
 * nothing to escape), the keys and numbers: within the body decode takes. */
_Static_assert(3 * SIP_REC_MAX_TEXT + SIP_REC_MAX_CONTACT + 256 + 64 + 80 + 16 + 256 + 256 <=
                   SIP_REC_MAX_BODY,
               "a record of fields within their limits must decode");

int sip__record_text_ok(const char *s, size_t max)
{
  /* Escaped: control characters take six bytes each, and a record of
   * fields each within its own limit still overran the body decode takes
   * (the sip_register fuzzer's crash-e7ae58d3). */
  return s && utf8_ok((const unsigned char *)s) && escaped_len((const unsigned char *)s) <= max;
}

static int dup_field(json_t *o, const char *key, size_t max, char **out)
{
  const char *v = json_string_value(json_object_get(o, key));
  if (!v || strlen(v) > max)
    return -EINVAL;
  *out = strdup(v);
  return *out ? 0 : -ENOMEM;
}

int sip__binding_decode(const dht_value_t *v, sip_binding_t *out)
{
  memset(out, 0, sizeof *out);
  /* Only user records: in the secured mode the DHT takes those from the
   * user's certificate alone, while any node may store other kinds under
   * the same name. */
  if (v->kind != DHT_KIND_USER || v->body_len == 0 || v->body_len > SIP_REC_MAX_BODY ||
      strlen(v->vid) >= sizeof out->vid)
    return -EINVAL;
  json_t *o = json_loadb((const char *)v->body, v->body_len, 0, NULL);
  if (!json_is_object(o)) {
    json_decref(o);
    return -EINVAL;
  }
  int err = 0;
  err |= dup_field(o, "aor", SIP_REC_MAX_TEXT, &out->aor);
  err |= dup_field(o, "contact", SIP_REC_MAX_CONTACT, &out->contact);
  err |= dup_field(o, "uri", SIP_REC_MAX_TEXT, &out->uri);
  err |= dup_field(o, "call_id", SIP_REC_MAX_TEXT, &out->call_id);
  err |= dup_field(o, "path", 256, &out->path);
  err |= dup_field(o, "node", 64, &out->node);
  err |= dup_field(o, "received", 80, &out->received);
  err |= dup_field(o, "transport", 16, &out->transport);
  if (json_object_get(o, "edge"))
    err |= dup_field(o, "edge", 256, &out->edge);
  else if (!(out->edge = strdup("")))
    err = -ENOMEM;
  json_t *q = json_object_get(o, "q"), *cseq = json_object_get(o, "cseq");
  if (!json_is_integer(q) || !json_is_integer(cseq))
    err = -EINVAL;
  else {
    json_int_t qv = json_integer_value(q), cv = json_integer_value(cseq);
    if (qv < 0 || qv > 1000 || cv < 0 || cv > UINT32_MAX)
      err = -EINVAL;
    out->q1000 = (int)qv, out->cseq = (uint32_t)cv;
  }
  json_decref(o);
  if (err) {
    sip__binding_clear(out);
    return -EINVAL;
  }
  strcpy(out->vid, v->vid);
  out->seq = v->seq, out->ttl = v->expires_in;
  out->remaining = (int32_t)(v->expires_in > INT32_MAX ? INT32_MAX : v->expires_in) - SIP_GRACE_S;
  return 0;
}
