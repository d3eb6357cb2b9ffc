/* Peer protocol frames and bodies.  See proto.h for the layout. */
#include "proto/proto.h"

#include <stdbool.h>
#include <string.h>

const char *proto_strerror(int err) {
  switch (err) {
  case PROTO_NEED_MORE: return "incomplete";
  case PROTO_ETRUNC: return "truncated field";
  case PROTO_EMAGIC: return "bad magic";
  case PROTO_EVERSION: return "unsupported version";
  case PROTO_ETOOBIG: return "length above bound";
  case PROTO_EINVAL: return "invalid field";
  case PROTO_ETRAIL: return "trailing bytes";
  case PROTO_ENOSPC: return "no space";
  }
  return "unknown error";
}

/* Cursor primitives ------------------------------------------------------- */

static int need(const proto_cur_t *c, size_t len) {
  return (size_t)(c->end - c->p) >= len ? 0 : PROTO_ETRUNC;
}

int proto_get_u8(proto_cur_t *c, uint8_t *v) {
  if (need(c, 1)) return PROTO_ETRUNC;
  *v = *c->p++;
  return 0;
}

int proto_get_u16(proto_cur_t *c, uint16_t *v) {
  if (need(c, 2)) return PROTO_ETRUNC;
  *v = (uint16_t)(c->p[0] << 8 | c->p[1]);
  c->p += 2;
  return 0;
}

int proto_get_u32(proto_cur_t *c, uint32_t *v) {
  if (need(c, 4)) return PROTO_ETRUNC;
  *v = (uint32_t)c->p[0] << 24 | (uint32_t)c->p[1] << 16 | (uint32_t)c->p[2] << 8 | c->p[3];
  c->p += 4;
  return 0;
}

int proto_get_u64(proto_cur_t *c, uint64_t *v) {
  uint32_t hi = 0, lo = 0;
  if (need(c, 8)) return PROTO_ETRUNC;
  proto_get_u32(c, &hi);
  proto_get_u32(c, &lo);
  *v = (uint64_t)hi << 32 | lo;
  return 0;
}

int proto_get_bytes(proto_cur_t *c, void *dst, size_t len) {
  if (need(c, len)) return PROTO_ETRUNC;
  memcpy(dst, c->p, len);
  c->p += len;
  return 0;
}

int proto_get_sub(proto_cur_t *c, size_t len, proto_cur_t *sub) {
  if (need(c, len)) return PROTO_ETRUNC;
  sub->p = c->p;
  sub->end = c->p + len;
  c->p += len;
  return 0;
}

static int wneed(proto_wcur_t *w, size_t len) {
  if (w->err || (size_t)(w->end - w->p) < len) {
    w->err = PROTO_ENOSPC;
    return -1;
  }
  return 0;
}

void proto_put_u8(proto_wcur_t *w, uint8_t v) {
  if (wneed(w, 1) == 0) *w->p++ = v;
}

void proto_put_u16(proto_wcur_t *w, uint16_t v) {
  if (wneed(w, 2)) return;
  w->p[0] = (uint8_t)(v >> 8);
  w->p[1] = (uint8_t)v;
  w->p += 2;
}

void proto_put_u32(proto_wcur_t *w, uint32_t v) {
  if (wneed(w, 4)) return;
  w->p[0] = (uint8_t)(v >> 24);
  w->p[1] = (uint8_t)(v >> 16);
  w->p[2] = (uint8_t)(v >> 8);
  w->p[3] = (uint8_t)v;
  w->p += 4;
}

void proto_put_u64(proto_wcur_t *w, uint64_t v) {
  proto_put_u32(w, (uint32_t)(v >> 32));
  proto_put_u32(w, (uint32_t)v);
}

void proto_put_bytes(proto_wcur_t *w, const void *src, size_t len) {
  if (wneed(w, len) == 0) {
    if (len) memcpy(w->p, src, len);
    w->p += len;
  }
}

static long wdone(proto_wcur_t *w, const uint8_t *start) {
  return w->err ? w->err : (long)(w->p - start);
}

static int cdone(const proto_cur_t *c, int err) {
  if (err) return PROTO_ETRUNC;
  return c->p == c->end ? 0 : PROTO_ETRAIL;
}

/* Frames ------------------------------------------------------------------ */

long proto_frame_size(const uint8_t *buf, size_t len) {
  /* Check what we can as early as we can: a stranger talking HTTP or TLS to
   * the peer port is told off after its first two bytes. */
  if (len >= 1 && buf[0] != PROTO_MAGIC0) return PROTO_EMAGIC;
  if (len >= 2 && buf[1] != PROTO_MAGIC1) return PROTO_EMAGIC;
  if (len >= 3 && buf[2] != PROTO_VERSION) return PROTO_EVERSION;
  if (len >= 4 && (buf[3] == 0 || buf[3] > PROTO_TYPE_MAX)) return PROTO_EINVAL;
  if (len < PROTO_HDR_LEN) return PROTO_NEED_MORE;
  proto_cur_t c = {buf + 8, buf + PROTO_HDR_LEN};
  uint32_t blen;
  proto_get_u32(&c, &blen);
  if (blen > PROTO_MAX_BODY) return PROTO_ETOOBIG;
  return (long)(PROTO_HDR_LEN + blen);
}

long proto_frame_decode(const uint8_t *buf, size_t len, proto_frame_t *out) {
  long size = proto_frame_size(buf, len);
  if (size <= 0) return size;
  if (len < (size_t)size) return PROTO_NEED_MORE;
  proto_cur_t c = {buf + 4, buf + 8};
  proto_get_u32(&c, &out->txid);
  out->type = buf[3];
  out->body_len = (uint32_t)(size - PROTO_HDR_LEN);
  out->body = buf + PROTO_HDR_LEN;
  return size;
}

void proto_frame_header(uint8_t *hdr, uint8_t type, uint32_t txid, uint32_t body_len) {
  proto_wcur_t w = {hdr, hdr + PROTO_HDR_LEN, 0};
  proto_put_u8(&w, PROTO_MAGIC0);
  proto_put_u8(&w, PROTO_MAGIC1);
  proto_put_u8(&w, PROTO_VERSION);
  proto_put_u8(&w, type);
  proto_put_u32(&w, txid);
  proto_put_u32(&w, body_len);
}

/* Nodes: id(20) family(1) ip(4|16) port(2) --------------------------------- */

static int get_node(proto_cur_t *c, proto_node_t *n) {
  memset(n, 0, sizeof(*n));
  if (proto_get_bytes(c, n->id, PROTO_ID_LEN) || proto_get_u8(c, &n->family)) return PROTO_ETRUNC;
  if (n->family != 4 && n->family != 6) return PROTO_EINVAL;
  if (proto_get_bytes(c, n->ip, n->family == 4 ? 4 : 16)) return PROTO_ETRUNC;
  if (proto_get_u16(c, &n->port)) return PROTO_ETRUNC;
  return 0;
}

static void put_node(proto_wcur_t *w, const proto_node_t *n) {
  proto_put_bytes(w, n->id, PROTO_ID_LEN);
  proto_put_u8(w, n->family);
  proto_put_bytes(w, n->ip, n->family == 4 ? 4 : 16);
  proto_put_u16(w, n->port);
}

/* A count-prefixed node list; the count is checked before the loop, so a
 * declared count never sizes anything. */
static int get_nodes(proto_cur_t *c, uint8_t *n, proto_node_t *nodes) {
  if (proto_get_u8(c, n)) return PROTO_ETRUNC;
  if (*n > PROTO_MAX_NODES) return PROTO_ETOOBIG;
  for (int i = 0; i < *n; i++) {
    int err = get_node(c, &nodes[i]);
    if (err) return err;
  }
  return 0;
}

static void put_nodes(proto_wcur_t *w, uint8_t n, const proto_node_t *nodes) {
  if (n > PROTO_MAX_NODES) {
    w->err = PROTO_EINVAL;
    return;
  }
  proto_put_u8(w, n);
  for (int i = 0; i < n; i++) put_node(w, &nodes[i]);
}

int proto_node_decode(const uint8_t *b, size_t n, proto_node_t *out) {
  proto_cur_t c = {b, b + n};
  proto_node_t v;
  int err = get_node(&c, &v);
  if (err) return err;
  if ((err = cdone(&c, 0))) return err;
  *out = v;
  return 0;
}

long proto_node_encode(uint8_t *b, size_t n, const proto_node_t *in) {
  proto_wcur_t w = {b, b + n, 0};
  put_node(&w, in);
  return wdone(&w, b);
}

/* HELLO: node, overlay name (u8 length + bytes) ---------------------------- */

int proto_hello_decode(const uint8_t *b, size_t n, proto_hello_t *out) {
  proto_cur_t c = {b, b + n}, name;
  proto_hello_t v;
  int err = get_node(&c, &v.self);
  if (err) return err;
  if (proto_get_u8(&c, &v.overlay_len) || proto_get_sub(&c, v.overlay_len, &name))
    return PROTO_ETRUNC;
  if (v.overlay_len == 0) return PROTO_EINVAL;
  v.overlay = (const char *)name.p;
  if ((err = cdone(&c, 0))) return err;
  *out = v;
  return 0;
}

long proto_hello_encode(uint8_t *b, size_t n, const proto_hello_t *in) {
  proto_wcur_t w = {b, b + n, 0};
  put_node(&w, &in->self);
  proto_put_u8(&w, in->overlay_len);
  proto_put_bytes(&w, in->overlay, in->overlay_len);
  return wdone(&w, b);
}

/* FIND and FETCH: a key --------------------------------------------------- */

int proto_find_decode(const uint8_t *b, size_t n, proto_find_t *out) {
  proto_cur_t c = {b, b + n};
  proto_find_t v;
  int err = proto_get_bytes(&c, v.key, PROTO_ID_LEN);
  if ((err = cdone(&c, err))) return err;
  *out = v;
  return 0;
}

long proto_find_encode(uint8_t *b, size_t n, const proto_find_t *in) {
  proto_wcur_t w = {b, b + n, 0};
  proto_put_bytes(&w, in->key, PROTO_ID_LEN);
  return wdone(&w, b);
}

/* FIND_R: flags, node list ------------------------------------------------- */

int proto_find_r_decode(const uint8_t *b, size_t n, proto_find_r_t *out) {
  proto_cur_t c = {b, b + n};
  int err = proto_get_u8(&c, &out->flags);
  if (err) return err;
  if ((err = get_nodes(&c, &out->n, out->nodes))) return err;
  if (out->n == 0) return PROTO_EINVAL; /* an answer must name someone */
  return cdone(&c, 0);
}

long proto_find_r_encode(uint8_t *b, size_t n, const proto_find_r_t *in) {
  proto_wcur_t w = {b, b + n, 0};
  proto_put_u8(&w, in->flags);
  put_nodes(&w, in->n, in->nodes);
  return wdone(&w, b);
}

/* NEIGH_R and LEAVE: has_pred, [pred], successor list ---------------------- */

int proto_neigh_r_decode(const uint8_t *b, size_t n, proto_neigh_r_t *out) {
  proto_cur_t c = {b, b + n};
  int err = proto_get_u8(&c, &out->has_pred);
  if (err) return err;
  if (out->has_pred > 1) return PROTO_EINVAL;
  if (out->has_pred && (err = get_node(&c, &out->pred))) return err;
  if ((err = get_nodes(&c, &out->n, out->succ))) return err;
  return cdone(&c, 0);
}

long proto_neigh_r_encode(uint8_t *b, size_t n, const proto_neigh_r_t *in) {
  proto_wcur_t w = {b, b + n, 0};
  proto_put_u8(&w, in->has_pred ? 1 : 0);
  if (in->has_pred) put_node(&w, &in->pred);
  put_nodes(&w, in->n, in->succ);
  return wdone(&w, b);
}

/* REACH and REACH_R ------------------------------------------------------- */

int proto_reach_decode(const uint8_t *b, size_t n, proto_reach_t *out) {
  proto_cur_t c = {b, b + n};
  proto_reach_t v;
  int err = proto_get_u16(&c, &v.port);
  if ((err = cdone(&c, err))) return err;
  if (v.port == 0) return PROTO_EINVAL;
  *out = v;
  return 0;
}

long proto_reach_encode(uint8_t *b, size_t n, const proto_reach_t *in) {
  proto_wcur_t w = {b, b + n, 0};
  proto_put_u16(&w, in->port);
  return wdone(&w, b);
}

int proto_reach_r_decode(const uint8_t *b, size_t n, proto_reach_r_t *out) {
  proto_cur_t c = {b, b + n};
  proto_reach_r_t v;
  int err = proto_get_u8(&c, &v.reachable);
  if (err) return err;
  if (v.reachable > 1) return PROTO_EINVAL;
  if ((err = get_node(&c, &v.seen))) return err;
  if ((err = cdone(&c, 0))) return err;
  *out = v;
  return 0;
}

long proto_reach_r_encode(uint8_t *b, size_t n, const proto_reach_r_t *in) {
  proto_wcur_t w = {b, b + n, 0};
  proto_put_u8(&w, in->reachable);
  put_node(&w, &in->seen);
  return wdone(&w, b);
}

/* STORE_R ----------------------------------------------------------------- */

int proto_store_r_decode(const uint8_t *b, size_t n, proto_store_r_t *out) {
  proto_cur_t c = {b, b + n};
  proto_store_r_t v = {0};
  int err = proto_get_u8(&c, &v.status) | proto_get_u16(&c, &v.stored) |
            proto_get_u8(&c, &v.replicas);
  if (!err && c.p != c.end) {
    proto_store_t s;
    if ((err = proto_store_decode(c.p, (size_t)(c.end - c.p), &s))) return err;
    v.before = c.p;
    v.before_len = (size_t)(c.end - c.p);
    c.p = c.end;
  }
  if ((err = cdone(&c, err))) return err;
  *out = v;
  return 0;
}

long proto_store_r_encode(uint8_t *b, size_t n, const proto_store_r_t *in) {
  proto_wcur_t w = {b, b + n, 0};
  proto_put_u8(&w, in->status);
  proto_put_u16(&w, in->stored);
  proto_put_u8(&w, in->replicas);
  if (in->before) proto_put_bytes(&w, in->before, in->before_len);
  return wdone(&w, b);
}

/* ROUTE: key(20) flags(1) skip(1) hops(1) origin type(1) body_len(4) body
 * ROUTE_R: status(1) hops(1) responder type(1) body_len(4) body
 * The inner body takes the rest of the frame; its length is still given
 * so that the end of the frame is checked like everywhere else. */

static int get_inner(proto_cur_t *c, uint8_t *type, const uint8_t **body, uint32_t *len) {
  proto_cur_t sub;
  if (proto_get_u8(c, type) || proto_get_u32(c, len)) return PROTO_ETRUNC;
  if (*len > PROTO_MAX_BODY) return PROTO_ETOOBIG;
  if (proto_get_sub(c, *len, &sub)) return PROTO_ETRUNC;
  *body = sub.p;
  return cdone(c, 0);
}

static void put_inner(proto_wcur_t *w, uint8_t type, const uint8_t *body, uint32_t len) {
  proto_put_u8(w, type);
  proto_put_u32(w, len);
  proto_put_bytes(w, body, len);
}

int proto_route_decode(const uint8_t *b, size_t n, proto_route_t *out) {
  proto_cur_t c = {b, b + n};
  proto_route_t v;
  int err = proto_get_bytes(&c, v.key, PROTO_ID_LEN) | proto_get_u8(&c, &v.flags) |
            proto_get_u8(&c, &v.skip) | proto_get_u8(&c, &v.hops);
  if (err) return PROTO_ETRUNC;
  if (v.flags & ~PROTO_ROUTE_FLAGS) return PROTO_EINVAL;
  if ((err = get_node(&c, &v.origin)) || (err = get_inner(&c, &v.type, &v.body, &v.body_len)))
    return err;
  /* No nesting, and only requests travel this way. */
  if (!(v.type & 1) || v.type == PROTO_ROUTE || v.type > PROTO_TYPE_MAX) return PROTO_EINVAL;
  *out = v;
  return 0;
}

long proto_route_encode(uint8_t *b, size_t n, const proto_route_t *in) {
  proto_wcur_t w = {b, b + n, 0};
  proto_put_bytes(&w, in->key, PROTO_ID_LEN);
  proto_put_u8(&w, in->flags);
  proto_put_u8(&w, in->skip);
  proto_put_u8(&w, in->hops);
  put_node(&w, &in->origin);
  put_inner(&w, in->type, in->body, in->body_len);
  return wdone(&w, b);
}

int proto_route_r_decode(const uint8_t *b, size_t n, proto_route_r_t *out) {
  proto_cur_t c = {b, b + n};
  proto_route_r_t v;
  int err = proto_get_u8(&c, &v.status) | proto_get_u8(&c, &v.hops);
  if (err) return PROTO_ETRUNC;
  if ((err = get_node(&c, &v.responder)) || (err = get_inner(&c, &v.type, &v.body, &v.body_len)))
    return err;
  /* Answered: a response other than ROUTE_R; failed: nothing inside. */
  if (v.status == 0 ? (v.type & 1) || v.type == 0 || v.type == PROTO_ROUTE_R || v.type > PROTO_TYPE_MAX
                    : v.status != PROTO_ROUTE_FAILED || v.type != 0 || v.body_len != 0)
    return PROTO_EINVAL;
  *out = v;
  return 0;
}

long proto_route_r_encode(uint8_t *b, size_t n, const proto_route_r_t *in) {
  proto_wcur_t w = {b, b + n, 0};
  proto_put_u8(&w, in->status);
  proto_put_u8(&w, in->hops);
  put_node(&w, &in->responder);
  put_inner(&w, in->type, in->body, in->body_len);
  return wdone(&w, b);
}

/* STORE and FETCH_R: key, flags, count, values.
 * A value: vid_len(1) vid kind(1) flags(1) owner(20) seq(8) ttl(4)
 *          body_len(4) body */

static int get_value(proto_cur_t *c, proto_value_t *v) {
  proto_cur_t sub;
  if (proto_get_u8(c, &v->vid_len)) return PROTO_ETRUNC;
  if (v->vid_len == 0) return PROTO_EINVAL;
  if (proto_get_sub(c, v->vid_len, &sub)) return PROTO_ETRUNC;
  v->vid = sub.p;
  if (proto_get_u8(c, &v->kind) || proto_get_u8(c, &v->flags) ||
      proto_get_bytes(c, v->owner, PROTO_ID_LEN) || proto_get_u64(c, &v->seq) ||
      proto_get_u32(c, &v->ttl) || proto_get_u32(c, &v->body_len))
    return PROTO_ETRUNC;
  if (v->body_len > PROTO_MAX_VALUE_BODY) return PROTO_ETOOBIG;
  if (v->flags & ~PROTO_VF_ALL) return PROTO_EINVAL;
  if ((v->flags & PROTO_VF_SAME) && ((v->flags & PROTO_VF_SIGNED) || v->body_len)) return PROTO_EINVAL;
  if (proto_get_sub(c, v->body_len, &sub)) return PROTO_ETRUNC;
  v->body = sub.p;
  if (!(v->flags & PROTO_VF_SIGNED)) {
    v->expires = 0;
    v->cert = v->sig = NULL;
    v->cert_len = 0;
    return 0;
  }
  if (proto_get_u64(c, &v->expires) || proto_get_u16(c, &v->cert_len)) return PROTO_ETRUNC;
  if (v->cert_len == 0) return PROTO_EINVAL;
  if (v->cert_len > PROTO_MAX_CERT) return PROTO_ETOOBIG;
  if (proto_get_sub(c, v->cert_len, &sub)) return PROTO_ETRUNC;
  v->cert = sub.p;
  if (proto_get_sub(c, PROTO_SIG_LEN, &sub)) return PROTO_ETRUNC;
  v->sig = sub.p;
  return 0;
}

int proto_store_decode(const uint8_t *b, size_t n, proto_store_t *out) {
  proto_cur_t c = {b, b + n};
  proto_store_t v;
  if (proto_get_bytes(&c, v.key, PROTO_ID_LEN) || proto_get_u8(&c, &v.flags) ||
      proto_get_u16(&c, &v.count))
    return PROTO_ETRUNC;
  v.values = c;
  /* Validate every value now so that iteration later cannot fail halfway
   * through, after some values were already applied. */
  for (unsigned i = 0; i < v.count; i++) {
    proto_value_t val;
    int err = get_value(&c, &val);
    if (err) return err;
  }
  if (c.p != c.end) return PROTO_ETRAIL;
  *out = v;
  return 0;
}

void proto_store_begin(proto_wcur_t *w, const uint8_t key[PROTO_ID_LEN], uint8_t flags) {
  proto_put_bytes(w, key, PROTO_ID_LEN);
  proto_put_u8(w, flags);
  proto_put_u16(w, 0); /* count, patched by proto_store_end() */
}

void proto_store_add(proto_wcur_t *w, const proto_value_t *v) {
  bool signed_ = v->flags & PROTO_VF_SIGNED;
  if (v->vid_len == 0 || v->body_len > PROTO_MAX_VALUE_BODY || (v->flags & ~PROTO_VF_ALL) ||
      ((v->flags & PROTO_VF_SAME) && (signed_ || v->body_len)) ||
      (signed_ && (v->cert_len == 0 || v->cert_len > PROTO_MAX_CERT || !v->cert || !v->sig))) {
    w->err = PROTO_EINVAL;
    return;
  }
  proto_put_u8(w, v->vid_len);
  proto_put_bytes(w, v->vid, v->vid_len);
  proto_put_u8(w, v->kind);
  proto_put_u8(w, v->flags);
  proto_put_bytes(w, v->owner, PROTO_ID_LEN);
  proto_put_u64(w, v->seq);
  proto_put_u32(w, v->ttl);
  proto_put_u32(w, v->body_len);
  proto_put_bytes(w, v->body, v->body_len);
  if (signed_) {
    proto_put_u64(w, v->expires);
    proto_put_u16(w, v->cert_len);
    proto_put_bytes(w, v->cert, v->cert_len);
    proto_put_bytes(w, v->sig, PROTO_SIG_LEN);
  }
}

long proto_store_end(proto_wcur_t *w, uint8_t *start) {
  if (w->err) return w->err;
  /* Count the values by walking what we wrote: cheaper to keep correct than
   * a counter threaded through the caller. */
  proto_cur_t c = {start + PROTO_ID_LEN + 3, w->p};
  unsigned count = 0;
  proto_value_t v;
  while (c.p < c.end && get_value(&c, &v) == 0) count++;
  if (count > UINT16_MAX) return PROTO_ETOOBIG;
  start[PROTO_ID_LEN + 1] = (uint8_t)(count >> 8);
  start[PROTO_ID_LEN + 2] = (uint8_t)count;
  return (long)(w->p - start);
}

int proto_value_next(proto_cur_t *values, proto_value_t *out) {
  if (values->p >= values->end) return 0;
  int err = get_value(values, out);
  return err ? err : 1;
}

int proto_stores_decode(const uint8_t *b, size_t n, proto_stores_t *out) {
  proto_cur_t c = {b, b + n};
  proto_stores_t v;
  if (proto_get_u16(&c, &v.count)) return PROTO_ETRUNC;
  if (v.count > PROTO_STORES_MAX) return PROTO_ETOOBIG;
  v.items = c;
  for (unsigned i = 0; i < v.count; i++) {
    uint32_t len;
    proto_cur_t sub;
    proto_store_t s;
    if (proto_get_u32(&c, &len) || proto_get_sub(&c, len, &sub)) return PROTO_ETRUNC;
    int err = proto_store_decode(sub.p, len, &s);
    if (err) return err;
  }
  if (c.p != c.end) return PROTO_ETRAIL;
  *out = v;
  return 0;
}

int proto_stores_next(proto_cur_t *items, const uint8_t **body, size_t *len) {
  uint32_t l;
  proto_cur_t sub;
  if (items->p >= items->end) return 0;
  if (proto_get_u32(items, &l) || proto_get_sub(items, l, &sub)) return PROTO_ETRUNC;
  *body = sub.p;
  *len = l;
  return 1;
}

void proto_stores_begin(proto_wcur_t *w) { proto_put_u16(w, 0); /* count, patched by proto_stores_end() */ }

void proto_stores_add(proto_wcur_t *w, const uint8_t *store, size_t len) {
  proto_put_u32(w, (uint32_t)len);
  proto_put_bytes(w, store, len);
}

long proto_stores_end(proto_wcur_t *w, uint8_t *start, unsigned count) {
  if (w->err) return w->err;
  if (count > PROTO_STORES_MAX) return PROTO_ETOOBIG;
  start[0] = (uint8_t)(count >> 8);
  start[1] = (uint8_t)count;
  return (long)(w->p - start);
}

int proto_stores_r_decode(const uint8_t *b, size_t n, proto_stores_r_t *out) {
  proto_cur_t c = {b, b + n};
  proto_stores_r_t v;
  proto_cur_t sub;
  if (proto_get_u16(&c, &v.count) || proto_get_sub(&c, v.count, &sub)) return PROTO_ETRUNC;
  if (v.count > PROTO_STORES_MAX) return PROTO_ETOOBIG;
  v.status = sub.p;
  int err = cdone(&c, 0);
  if (err) return err;
  *out = v;
  return 0;
}

long proto_stores_r_encode(uint8_t *b, size_t n, const proto_stores_r_t *in) {
  proto_wcur_t w = {b, b + n, 0};
  proto_put_u16(&w, in->count);
  proto_put_bytes(&w, in->status, in->count);
  return wdone(&w, b);
}
