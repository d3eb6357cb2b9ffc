/*
 * relay/records: the relay agent peer's value under "turn:OVERLAY"
 * (draft-marocco-p2psip-interwork 3.3.2), and the list every node reads.
 *
 * Value id: the node id in hex (dht_put's default), kind DHT_KIND_RELAY,
 * body {"addr":"IP:PORT","transports":["udp","tcp"]}: the transports
 * between client and relay (relayed addresses are UDP).  The value lives
 * record_ttl seconds (60 by default) and the relay puts it again every
 * record_ttl / 3, so a relay that dies without withdrawing drops out of
 * the list within record_ttl; one that stops withdraws it (dht_remove).
 *
 * The DHT cannot cancel an operation, so each call carries a small record
 * that relay_free() detaches; a late callback then frees only the record.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dht/log.h"
#include "relay/relay_int.h"

struct relay_op {
  relay_t *r; /* NULL once the relay is gone */
  relay_op_t *next, **prevp;
};

static relay_op_t *op_new(relay_t *r) {
  relay_op_t *op = calloc(1, sizeof(*op));
  if (!op) return NULL;
  op->r = r;
  op->next = r->ops, op->prevp = &r->ops;
  if (r->ops) r->ops->prevp = &op->next;
  r->ops = op;
  return op;
}

static void op_unlink(relay_op_t *op) {
  if (!op->r) return;
  *op->prevp = op->next;
  if (op->next) op->next->prevp = op->prevp;
  op->r = NULL;
}

static void on_put(dht_t *d, int status, int replicas, void *arg) {
  relay_op_t *op = arg;
  if (op->r && status != DHT_OK)
    log_warn("relay: publishing turn:%s failed (%d); retrying in %u s", op->r->overlay, status,
             op->r->record_ttl / 3);
  op_unlink(op);
  free(op);
}

/* A call that fails at once never calls back (dht.h). */
static void op_started(relay_op_t *op, int rc) {
  if (rc < 0) {
    op_unlink(op);
    free(op);
  }
}

static void record_name(const relay_t *r, char *out, size_t len) {
  snprintf(out, len, "turn:%s", r->overlay);
}

char *relay__record_encode(const char *addr) {
  json_t *body = json_pack("{ss s[ss]}", "addr", addr, "transports", "udp", "tcp");
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  return text;
}

static void publish(relay_t *r) {
  char name[300], addr[64];
  record_name(r, name, sizeof(name));
  relay_addr(r, addr, sizeof(addr));
  char *text = relay__record_encode(addr);
  relay_op_t *op = text ? op_new(r) : NULL;
  if (op)
    op_started(op, dht_put(r->dht, name, NULL, DHT_KIND_RELAY, text, strlen(text), r->record_ttl,
                           on_put, op));
  free(text);
}

static void on_rec_timer(uv_timer_t *t) { publish(t->data); }

int relay__records_start(relay_t *r) {
  publish(r);
  unsigned every = r->record_ttl * 1000u / 3;
  if (every < 1000) every = 1000;
  return uv_timer_start(&r->rec_timer, on_rec_timer, every, every);
}

/* The removal is waited for (at most RELAY_REMOVE_WAIT_MS, with rec_timer
 * as the guard) so that a leaving node withdraws its value before the DHT
 * below hands its keys over and stops answering. */
static void removal_done(relay_t *r) {
  if (!r->removing) return;
  r->removing = 0;
  relay__records_stopped(r);
}

static void on_removed(dht_t *d, int status, int replicas, void *arg) {
  relay_op_t *op = arg;
  relay_t *r = op->r;
  op_unlink(op);
  free(op);
  if (r) removal_done(r);
}

static void on_remove_guard(uv_timer_t *t) { removal_done(t->data); }

/* Returns 1 if a removal is in flight (relay__records_stopped follows). */
int relay__records_stop(relay_t *r) {
  char name[300];
  record_name(r, name, sizeof(name));
  uv_timer_stop(&r->rec_timer);
  relay_op_t *op = op_new(r);
  if (!op) return 0;
  int rc = dht_remove(r->dht, name, NULL, on_removed, op);
  op_started(op, rc);
  if (rc < 0) return 0;
  r->removing = 1;
  uv_timer_start(&r->rec_timer, on_remove_guard, RELAY_REMOVE_WAIT_MS, 0);
  return 1;
}

void relay__records_detach(relay_t *r) {
  while (r->ops) op_unlink(r->ops);
}

/* The list any node answers ------------------------------------------- */

typedef struct {
  void (*cb)(json_t *, void *);
  void *arg;
} list_ctx_t;

/* One value's body as a list entry, or NULL if it is not a relay's. */
json_t *relay__record_entry(const dht_value_t *v) {
  json_t *body = json_loadb((const char *)v->body, v->body_len, 0, NULL);
  json_t *addr = json_object_get(body, "addr"), *tr = json_object_get(body, "transports");
  json_t *e = NULL;
  if (json_is_string(addr) && json_is_array(tr)) {
    char owner[DHT_ID_HEX];
    dht_id_hex(&v->owner, owner);
    e = json_pack("{sO sO ss}", "addr", addr, "transports", tr, "owner", owner);
  }
  json_decref(body);
  return e;
}

static void on_list(dht_t *d, int status, const dht_value_t *v, size_t n, int hops, void *arg) {
  list_ctx_t *ctx = arg;
  json_t *out = NULL;
  if (status == DHT_OK || status == DHT_ENOTFOUND) {
    out = json_array();
    for (size_t i = 0; status == DHT_OK && i < n; i++) {
      json_t *e = relay__record_entry(&v[i]);
      if (e) json_array_append_new(out, e);
    }
  } else {
    log_warn("relay: reading the relay records failed after %d hops (status %d)", hops, status);
  }
  ctx->cb(out, ctx->arg);
  free(ctx);
}

int relay_list(dht_t *d, const char *overlay, void (*cb)(json_t *, void *), void *arg) {
  char name[300];
  if (!overlay || snprintf(name, sizeof(name), "turn:%s", overlay) >= (int)sizeof(name))
    return -EINVAL;
  list_ctx_t *ctx = malloc(sizeof(*ctx));
  if (!ctx) return -ENOMEM;
  ctx->cb = cb, ctx->arg = arg;
  int rc = dht_get(d, name, on_list, ctx);
  if (rc < 0) free(ctx);
  return rc;
}
