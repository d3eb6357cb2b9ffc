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
  char *keep; /* a cached get: the name its answer is kept under */
};

/* ---- the get cache ------------------------------------------------------
 *
 * A proxy peer locates the callee of every INVITE; the same user record
 * fetched a moment ago answers the next call as well as the DHT would (a
 * registration changes it at most every few seconds, and a stale answer
 * costs one failed branch, after which the entry is forgotten: proxy.c).
 * Direct-mapped: a name evicts whatever shared its slot, so memory stays
 * bounded by SIP_GCACHE_SLOTS * SIP_GCACHE_BYTES. */
typedef struct {
  char *name;
  uint64_t at;         /* uv_now() of the fetch */
  size_t n;
  dht_value_t *v;      /* vid and body point into blob */
  char *blob;
} sip_gentry_t;

struct sip_gcache {
  sip_gentry_t e[SIP_GCACHE_SLOTS];
};

static uint32_t name_slot(const char *name)
{
  return sip__fnv(SIP_FNV_INIT, name, 0) % SIP_GCACHE_SLOTS;
}

static void gentry_clear(sip_gentry_t *e)
{
  free(e->name), free(e->v), free(e->blob);
  memset(e, 0, sizeof *e);
}

static void gcache_keep(sip_svc_t *s, const char *name, const dht_value_t *v, size_t n)
{
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++)
    bytes += strlen(v[i].vid) + 1 + v[i].body_len;
  if (n == 0 || n > SIP_MAX_CONTACTS || bytes > SIP_GCACHE_BYTES)
    return;
  if (!s->gcache && !(s->gcache = calloc(1, sizeof *s->gcache)))
    return;
  sip_gentry_t *e = &s->gcache->e[name_slot(name)];
  gentry_clear(e);
  e->name = strdup(name);
  e->v = calloc(n, sizeof *e->v);
  e->blob = malloc(bytes);
  if (!e->name || !e->v || !e->blob) {
    gentry_clear(e);
    return;
  }
  char *p = e->blob;
  for (size_t i = 0; i < n; i++) {
    e->v[i] = v[i];
    size_t vl = strlen(v[i].vid) + 1;
    e->v[i].vid = memcpy(p, v[i].vid, vl);
    p += vl;
    e->v[i].body = memcpy(p, v[i].body, v[i].body_len);
    p += v[i].body_len;
  }
  e->n = n, e->at = sip__now_ms(s);
}

/* The entry for name if it is younger than max_ms, its values aged. */
static sip_gentry_t *gcache_find(sip_svc_t *s, const char *name, unsigned max_ms)
{
  if (!s->gcache)
    return NULL;
  sip_gentry_t *e = &s->gcache->e[name_slot(name)];
  if (!e->name || strcmp(e->name, name) != 0)
    return NULL;
  uint64_t age = sip__now_ms(s) - e->at;
  if (age >= max_ms) {
    gentry_clear(e);
    return NULL;
  }
  return e;
}

void sip__dht_forget(sip_svc_t *s, const char *name)
{
  sip_gentry_t *e = s->gcache ? &s->gcache->e[name_slot(name)] : NULL;
  if (e && e->name && strcmp(e->name, name) == 0)
    gentry_clear(e);
}

void sip__dht_cache_free(sip_svc_t *s)
{
  if (!s->gcache)
    return;
  for (size_t i = 0; i < SIP_GCACHE_SLOTS; i++)
    gentry_clear(&s->gcache->e[i]);
  free(s->gcache);
  s->gcache = NULL;
}

/* ---- operations -------------------------------------------------------- */

/* A record from the spares, else the heap.  A registrar makes one per
 * REGISTER and frees it a few ms later, a thousand at a time: from the
 * heap each one missed glibc's per-thread cache and cost 3 % of the
 * registrar's thread at 21,000 REGISTERs/s. */
static sip_op_t *op_new(sip_svc_t *s, sip_op_cb cb, void *ctx)
{
  sip_op_t *op = s->op_spare;
  if (op)
    s->op_spare = op->next, s->n_op_spare--;
  else if (!(op = malloc(sizeof *op)))
    return NULL;
  *op = (sip_op_t){.s = s, .cb = cb, .ctx = ctx, .next = s->ops, .prevp = &s->ops};
  if (s->ops)
    s->ops->prevp = &op->next;
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

/* An unlinked record back to s's spares (s: its service, or NULL when
 * gone), or to the heap. */
static void op_free(sip_svc_t *s, sip_op_t *op)
{
  free(op->keep);
  if (s && s->n_op_spare < SIP_OP_SPARES) {
    op->next = s->op_spare, s->op_spare = op, s->n_op_spare++;
    return;
  }
  free(op);
}

static void op_done(sip_op_t *op, int status, const dht_value_t *v, size_t n)
{
  sip_svc_t *s = op->s;
  sip_op_cb cb = op->cb;
  void *ctx = op->ctx;
  op_unlink(op);
  if (s && op->keep && status >= 0)
    gcache_keep(s, op->keep, v, n);
  /* Freed first: the callback may end the service, or start another call. */
  op_free(s, op);
  if (s && cb)
    cb(s, ctx, status, v, n);
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
    sip_svc_t *s = op->s;
    op_unlink(op);
    op_free(s, op);
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

int sip__dht_get_primary(sip_svc_t *s, const char *name, sip_op_cb cb, void *ctx)
{
  sip_op_t *op = op_new(s, cb, ctx);
  if (!op)
    return -ENOMEM;
  return op_started(op, dht_get_primary(s->dht, name, on_get, op));
}

int sip__dht_get_cached(sip_svc_t *s, const char *name, unsigned max_ms, sip_op_cb cb, void *ctx)
{
  sip_gentry_t *e = max_ms ? gcache_find(s, name, max_ms) : NULL;
  if (e) {
    /* Aged copies: the caller sees the lifetimes the DHT would give now. */
    dht_value_t v[SIP_MAX_CONTACTS];
    uint32_t age_s = (uint32_t)((sip__now_ms(s) - e->at) / 1000);
    for (size_t i = 0; i < e->n; i++) {
      v[i] = e->v[i];
      v[i].expires_in = v[i].expires_in > age_s ? v[i].expires_in - age_s : 0;
    }
    s->c.cache_hits++;
    cb(s, ctx, SIP_GET_CACHED, v, e->n);
    return 0;
  }
  sip_op_t *op = op_new(s, cb, ctx);
  if (!op)
    return -ENOMEM;
  if (max_ms && !(op->keep = strdup(name))) {
    op_unlink(op);
    op_free(s, op);
    return -ENOMEM;
  }
  return op_started(op, dht_get(s->dht, name, on_get, op));
}

int sip__dht_put(sip_svc_t *s, const dht_cert_creds_t *signer, const char *name, const char *vid,
                 uint8_t kind, const char *body, uint32_t ttl, sip_op_cb cb, void *ctx)
{
  sip_op_t *op = op_new(s, cb, ctx);
  if (!op)
    return -ENOMEM;
  return op_started(op, dht_put_as(s->dht, signer, name, vid, kind, body, strlen(body), ttl,
                                   on_put, op));
}

int sip__dht_put_read(sip_svc_t *s, const dht_cert_creds_t *signer, const char *name,
                      const char *vid, uint8_t kind, const char *body, uint32_t ttl, sip_op_cb cb,
                      void *ctx)
{
  sip_op_t *op = op_new(s, cb, ctx);
  if (!op)
    return -ENOMEM;
  return op_started(op, dht_put_read(s->dht, signer, name, vid, kind, body, strlen(body), ttl,
                                     on_get, op));
}

int sip__dht_remove(sip_svc_t *s, const dht_cert_creds_t *signer, const char *name,
                    const char *vid, const dht_value_t *seen, sip_op_cb cb, void *ctx)
{
  sip_op_t *op = op_new(s, cb, ctx);
  if (!op)
    return -ENOMEM;
  return op_started(op, seen ? dht_remove_value(s->dht, signer, name, seen, on_put, op)
                             : dht_remove(s->dht, name, vid, on_put, op));
}

void sip__dht_detach_all(sip_svc_t *s)
{
  while (s->ops)
    op_unlink(s->ops);
  while (s->op_spare) {
    sip_op_t *op = s->op_spare;
    s->op_spare = op->next;
    free(op);
  }
  s->n_op_spare = 0;
}
