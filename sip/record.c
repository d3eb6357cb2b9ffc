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
#include <stdlib.h>
#include <string.h>

#include "sip/sip_int.h"

char *sip__binding_encode(const sip_binding_t *b, uint32_t expires)
{
  json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:i, s:s, s:I, s:s, s:s, s:s, s:s}",
                        "aor", b->aor, "contact", b->contact, "uri", b->uri,
                        "expires", (int)expires, "q", b->q1000, "call_id", b->call_id,
                        "cseq", (json_int_t)b->cseq, "path", b->path, "node", b->node,
                        "received", b->received ? b->received : "",
                        "transport", b->transport ? b->transport : "");
  if (o && b->edge && b->edge[0] && json_object_set_new(o, "edge", json_string(b->edge)) < 0) {
    json_decref(o);
    return NULL;
  }
  if (!o)
    return NULL;
  char *text = json_dumps(o, JSON_COMPACT);
  json_decref(o);
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

int sip__record_text_ok(const char *s, size_t max)
{
  if (!s || strlen(s) > max)
    return 0;
  json_t *j = json_string(s); /* NULL when s is not UTF-8 */
  json_decref(j);
  return j != NULL;
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
  if (v->kind != DHT_KIND_USER || v->body_len == 0 || v->body_len > 4096 ||
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
