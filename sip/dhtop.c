/*
 * DHT calls on behalf of sip/.  The DHT has no way to cancel an operation,
 * so each call gets a small record that outlives the service if it must:
 * sip_free() detaches the records still in flight, and their callbacks then
 * only free the record (STYLE 16: never free what a pending callback uses).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sip/sip_int.h"

struct sip_op {
  sip_svc_t *s; /* NULL once the service is gone */
  sip_op_t *next, **prevp;
  sip_op_cb cb;
  void *ctx;
};

static sip_op_t *op_new(sip_svc_t *s, sip_op_cb cb, void *ctx)
{
  sip_op_t *op = calloc(1, sizeof *op);
  if (!op)
    return NULL;
  op->s = s, op->cb = cb, op->ctx = ctx;
  op->next = s->ops;
  if (s->ops)
    s->ops->prevp = &op->next;
  op->prevp = &s->ops;
  s->ops = op;
  return op;
}

static void op_unlink(sip_op_t *op)
{
  if (!op->s)
    return;
  *op->prevp = op->next;
  if (op->next)
    op->next->prevp = op->prevp;
  op->s = NULL;
}

static void op_done(sip_op_t *op, int status, const dht_value_t *v, size_t n)
{
  sip_svc_t *s = op->s;
  op_unlink(op);
  if (s && op->cb)
    op->cb(s, op->ctx, status, v, n);
  free(op);
}

static void on_get(dht_t *d, int status, const dht_value_t *v, size_t n, int hops, void *arg)
{
  op_done(arg, status, v, n);
}

static void on_put(dht_t *d, int status, int replicas, void *arg)
{
  op_done(arg, status, NULL, 0);
}

/* A call that fails at once never calls back (dht.h), so drop the record. */
static int op_started(sip_op_t *op, int rc)
{
  if (rc < 0) {
    op_unlink(op);
    free(op);
  }
  return rc;
}

int sip__dht_get(sip_svc_t *s, const char *name, sip_op_cb cb, void *ctx)
{
  sip_op_t *op = op_new(s, cb, ctx);
  if (!op)
    return -ENOMEM;
  return op_started(op, dht_get(s->dht, name, on_get, op));
}

int sip__dht_put(sip_svc_t *s, const char *name, const char *vid, uint8_t kind,
                 const char *body, uint32_t ttl, sip_op_cb cb, void *ctx)
{
  sip_op_t *op = op_new(s, cb, ctx);
  if (!op)
    return -ENOMEM;
  return op_started(op, dht_put(s->dht, name, vid, kind, body, strlen(body), ttl, on_put, op));
}

int sip__dht_remove(sip_svc_t *s, const char *name, const char *vid, sip_op_cb cb, void *ctx)
{
  sip_op_t *op = op_new(s, cb, ctx);
  if (!op)
    return -ENOMEM;
  return op_started(op, dht_remove(s->dht, name, vid, on_put, op));
}

void sip__dht_detach_all(sip_svc_t *s)
{
  while (s->ops)
    op_unlink(s->ops);
}
