/*
 * Routed requests: the secured mode's puts, gets and upkeep lookups (a
 * FIND: fingers, the loop check) travel hop by hop over
 * links the nodes already have (RFC 6940's symmetric recursive routing)
 * instead of an iterative lookup and a direct request to the key's owner.
 *
 * Why: with TLS every link to a stranger costs a handshake (milliseconds
 * of CPU at both ends) and ~20 KB of OpenSSL state while it lasts, and an
 * iterative lookup plus the STORE or FETCH meets mostly strangers.  A
 * routed request goes to the closest preceding node we know (preferring
 * one we are linked to among the nearest few, as lookups do) and each
 * node does the same, so the path is the ring's own links and fingers.
 *
 * What a routed request may do is no more than what the same request sent
 * directly may do: the owner answers the inner STORE or FETCH with the
 * same code (ops.c), the access rules check the values' signatures, a
 * primary STORE is taken only by the node responsible for the key, and
 * the origin named in the request serves for logs only.  Each hop holds
 * the request for one rpc timeout at most; the hop count is bounded
 * (DHT_MAX_PATH) and every honest hop makes progress towards the key.
 * The originator falls back to the iterative path when a routed request
 * fails (ops.c), so routing never makes a put or get less reliable.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dht/internal.h"
#include "dht/log.h"

/* ROUTE and ROUTE_R bytes besides the inner body: key, flags, skip, hops,
 * a node (at most 39 bytes), inner type and length. */
#define ROUTE_OVERHEAD 72
/* As lookups do (ops.c): of the nearest few candidates, one we are linked
 * to is worth a little less progress. */
#define ROUTE_LINKED_WITHIN 3

bool dht__route_on(const dht_t *d) { return d->tls && d->joined && d->n_succ > 0 && !d->leaving; }

static void route_reply(dht_t *d, dht__conn_t *c, uint32_t txid, const proto_route_r_t *r) {
  size_t cap = ROUTE_OVERHEAD + r->body_len;
  uint8_t *buf = cap <= PROTO_MAX_BODY ? malloc(cap) : NULL;
  long n = buf ? proto_route_r_encode(buf, cap, r) : -1;
  if (n > 0) {
    dht__rpc_reply(d, c, PROTO_ROUTE_R, txid, buf, (size_t)n);
  } else if (r->status == 0) {
    /* The answer does not fit in a ROUTE_R: the originator asks directly. */
    proto_route_r_t fail = {.status = PROTO_ROUTE_FAILED, .hops = r->hops, .responder = r->responder};
    route_reply(d, c, txid, &fail);
  }
  free(buf);
}

static void route_fail(dht_t *d, dht__conn_t *c, uint32_t txid, uint8_t hops) {
  proto_route_r_t r = {.status = PROTO_ROUTE_FAILED, .hops = hops, .responder = d->self_wire};
  route_reply(d, c, txid, &r);
}

void dht__answer(dht_t *d, const dht__reply_t *to, uint8_t type, const uint8_t *body, size_t len) {
  if (!to->routed) {
    dht__rpc_reply(d, to->conn, type, to->txid, body, len);
    return;
  }
  proto_route_r_t r = {.hops = to->hops, .responder = d->self_wire, .type = type, .body = body,
                       .body_len = (uint32_t)len};
  route_reply(d, to->conn, to->txid, &r);
}

/* The farthest successor we are linked to that precedes key, or NULL. */
static const dht_node_t *linked_succ_before(dht_t *d, const dht_id_t *key) {
  for (int i = d->n_succ - 1; i >= 0; i--)
    if (dht__between(&d->succ[i].id, &d->self.id, key) && dht__rpc_linked(d, &d->succ[i]))
      return &d->succ[i];
  return NULL;
}

static bool is_succ(const dht_t *d, const dht_node_t *x) {
  for (int i = 0; i < d->n_succ; i++)
    if (dht__node_eq(&d->succ[i], x)) return true;
  return false;
}

/* The next node towards key among those we know, strictly between us and
 * the key: the closest, or a linked one among the nearest few.  A key in
 * the range of our later successors, whose links are not kept
 * (dht__ring_keeps), goes to the farthest successor we are linked to: it
 * knows the next few, and a hop costs less than a TLS handshake. */
static dht_node_t route_towards(dht_t *d, const dht_id_t *key) {
  if (dht__between_incl(key, &d->self.id, &d->succ[0].id)) return d->succ[0];
  dht_node_t c[ROUTE_LINKED_WITHIN];
  int n = dht__closest_preceding(d, key, c, ROUTE_LINKED_WITHIN);
  for (int i = 0; i < n; i++)
    if (dht__rpc_linked(d, &c[i])) return c[i];
  const dht_node_t *s = n && is_succ(d, &c[0]) ? linked_succ_before(d, key) : NULL;
  return s ? *s : n ? c[0] : d->succ[0];
}

/* Where q goes from here: DHT__ROUTE_HERE when this node answers it, 0
 * with *next set (q's flags and skip updated for the next hop), or a
 * negative code. */
static int route_next(dht_t *d, proto_route_t *q, dht_node_t *next) {
  dht_id_t key;
  memcpy(key.b, q->key, DHT_ID_LEN);
  if (!(q->flags & PROTO_ROUTE_PASSED) && dht__is_primary(d, &key)) {
    if (q->skip == 0) return DHT__ROUTE_HERE;
    q->flags |= PROTO_ROUTE_PASSED;
  }
  if (q->flags & PROTO_ROUTE_PASSED && q->skip == 0) return DHT__ROUTE_HERE;
  if (d->n_succ == 0) return -EHOSTUNREACH;
  if (q->flags & PROTO_ROUTE_PASSED) {
    q->skip--;
    *next = d->succ[0];
    return 0;
  }
  *next = route_towards(d, &key);
  return 0;
}

/* Encode q and send it to `to`; 0 or a negative code (cb not called). */
static int route_call(dht_t *d, const dht_node_t *to, const proto_route_t *q, dht__rpc_cb cb,
                      void *arg) {
  size_t cap = ROUTE_OVERHEAD + q->body_len;
  if (cap > PROTO_MAX_BODY) return -EMSGSIZE;
  uint8_t *buf = malloc(cap);
  if (!buf) return -ENOMEM;
  long n = proto_route_encode(buf, cap, q);
  int err = n > 0 ? dht__rpc_call(d, to, PROTO_ROUTE, buf, (size_t)n, cb, arg) : -EINVAL;
  free(buf);
  return err;
}

/* Relaying --------------------------------------------------------------- */

typedef struct {
  dht__conn_t *conn; /* the link the request came on (referenced) */
  uint32_t txid;
  uint8_t hops;
} relay_t;

static void on_relayed(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                       void *arg) {
  relay_t *r = arg;
  proto_route_r_t a;
  /* The answer goes back as it came; a closed link drops it (rpc.c sends
   * nothing on a closing connection) and the originator times out. */
  if (status == 0 && proto_route_r_decode(f->body, f->body_len, &a) == 0)
    dht__rpc_reply(d, r->conn, PROTO_ROUTE_R, r->txid, f->body, f->body_len);
  else
    route_fail(d, r->conn, r->txid, r->hops);
  dht__conn_unref(r->conn);
  free(r);
}

static void route_forward(dht_t *d, dht__conn_t *c, uint32_t txid, proto_route_t *q,
                          const dht_node_t *next) {
  relay_t *r = malloc(sizeof(*r));
  if (!r) {
    route_fail(d, c, txid, q->hops);
    return;
  }
  *r = (relay_t){.conn = c, .txid = txid, .hops = q->hops};
  q->hops++;
  dht__conn_ref(c);
  if (route_call(d, next, q, on_relayed, r)) {
    route_fail(d, c, txid, r->hops);
    dht__conn_unref(c);
    free(r);
    return;
  }
  d->stats.routed_forwarded++;
}

int dht__route_answer(dht_t *d, dht__conn_t *c, const proto_frame_t *f) {
  proto_route_t q;
  int err = proto_route_decode(f->body, f->body_len, &q);
  if (err) return err;
  /* Only data requests and the lookups of ring upkeep are routed; more
   * hops than a lookup may take means a loop or a sender that lies about
   * the count. */
  dht_node_t next;
  int r = -EINVAL;
  if ((q.type == PROTO_STORE || q.type == PROTO_STORES || q.type == PROTO_FETCH || q.type == PROTO_FIND) &&
      q.skip <= DHT_MAX_SUCC &&
      q.hops < DHT_MAX_PATH)
    r = route_next(d, &q, &next);
  if (r < 0) {
    d->stats.routed_failed++;
    route_fail(d, c, f->txid, q.hops);
    return 0;
  }
  if (r == 0) {
    route_forward(d, c, f->txid, &q, &next);
    return 0;
  }
  d->stats.routed_answered++;
  dht__reply_t to = {.conn = c, .txid = f->txid, .routed = true, .hops = q.hops};
  proto_frame_t inner = {.type = q.type, .txid = f->txid, .body = q.body, .body_len = q.body_len};
  dht_node_t origin;
  dht__node_from_proto(&q.origin, &origin);
  /* A malformed inner request is the origin's doing, not the link's (an
   * honest hop relays what it was given): refuse it, keep the link. */
  if (dht__ops_answer(d, &to, &inner, &origin)) {
    d->stats.bad_frames++;
    route_fail(d, c, f->txid, q.hops);
  }
  return 0;
}

/* Originating ------------------------------------------------------------- */

typedef struct {
  dht__route_cb cb;
  void *arg;
} origin_t;

static void on_routed(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                      void *arg) {
  origin_t *o = arg;
  proto_route_r_t r;
  if (status == 0 && (proto_route_r_decode(f->body, f->body_len, &r) || r.status))
    status = -EHOSTUNREACH;
  if (status) d->stats.routed_failed++;
  o->cb(d, status, status ? NULL : &r, o->arg);
  free(o);
}

/* via: the first hop, or NULL for our own routing choice. */
static int route_start(dht_t *d, const dht_node_t *via, proto_route_t *q, dht__route_cb cb,
                       void *arg) {
  if (!dht__route_on(d)) return -ENOTSUP;
  q->origin = d->self_wire;
  dht_node_t next;
  int r = via ? 0 : route_next(d, q, &next);
  if (r) return r;
  if (via) next = *via;
  origin_t *o = malloc(sizeof(*o));
  if (!o) return -ENOMEM;
  *o = (origin_t){.cb = cb, .arg = arg};
  int err = route_call(d, &next, q, on_routed, o);
  if (err) free(o);
  else d->stats.routed_sent++;
  return err;
}

int dht__route_send(dht_t *d, const dht_id_t *key, uint8_t skip, uint8_t type, const uint8_t *body,
                    size_t len, dht__route_cb cb, void *arg) {
  proto_route_t q = {.skip = skip, .type = type, .body = body, .body_len = (uint32_t)len};
  memcpy(q.key, key->b, DHT_ID_LEN);
  return route_start(d, NULL, &q, cb, arg);
}

int dht__route_via(dht_t *d, const dht_node_t *via, const dht_id_t *key, uint8_t type,
                   const uint8_t *body, size_t len, dht__route_cb cb, void *arg) {
  proto_route_t q = {.type = type, .body = body, .body_len = (uint32_t)len};
  memcpy(q.key, key->b, DHT_ID_LEN);
  return route_start(d, via, &q, cb, arg);
}

int dht__route_succ(dht_t *d, const dht_id_t *key, uint8_t n, uint8_t type, const uint8_t *body,
                    size_t len, dht__route_cb cb, void *arg) {
  proto_route_t q = {.flags = PROTO_ROUTE_PASSED, .skip = n, .type = type, .body = body,
                     .body_len = (uint32_t)len};
  memcpy(q.key, key->b, DHT_ID_LEN);
  return route_start(d, NULL, &q, cb, arg);
}
