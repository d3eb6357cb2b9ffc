/*
 * Lookups, puts and gets, and the replication that keeps stored values
 * alive across joins, leaves and crashes.
 *
 * Lookups are iterative: the originator asks one node at a time and keeps
 * the candidates itself, so it sees every hop (the admin "path"), applies
 * its own timeout to each, and routes around a dead node by asking the
 * next candidate instead of waiting for someone else's retry.  In the
 * secured mode puts and gets are routed instead (route.c), since each hop
 * to a stranger costs a TLS handshake; they fall back to the iterative
 * path when a routed request fails.
 *
 * A value lives on the key's successor (the primary) and on the primary's
 * next replicas-1 successors.  Three mechanisms keep it there:
 *   - a STORE to the primary fans out to its replicas before it answers;
 *   - repair: when a node's successors or predecessor change, it pushes the
 *     keys it is primary for to its (new) replicas, and hands a joining
 *     predecessor the range it now owns;
 *   - owners re-store what they put every refresh interval.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dht/cert.h"
#include "dht/internal.h"
#include "dht/log.h"

#define LOOKUP_CAND 24
#define STORE_TRIES 3
#define NOT_MINE_RELOOKS 6  /* a STORE's lookups again after NOT_MINE answers... */
#define NOT_MINE_WAIT_MS 50 /* ...the first this long after it, each next one twice as long */
#define GET_TRIES 5 /* a lookup answer may still list a few dead nodes */
#define REPAIR_DELAY_MS 300
#define OWNED_REFRESH_DELAY_MS 2000 /* lets a burst of deaths settle first */
#define OWNED_PACE_MS 10                /* between batches of an owner refresh */
#define OWNED_PACE_MIN 64               /* values stored per batch at least */

static bool is_self(const dht_t *d, const dht_node_t *n) { return dht__node_eq(n, &d->self); }

/* Deferred calls: callbacks never run inside the call that started an
 * operation, so results known at once are delivered from a 0 ms timer.
 * Listed on the node, so that closing it runs those still waiting (a
 * lookup waiting to restart) instead of leaking them with their timer. */
typedef struct dht__defer {
  uv_timer_t timer;
  void (*fn)(void *arg);
  void *arg;
  struct dht__defer *next, **prevp;
} defer_t;

static void defer_closed(uv_handle_t *h) { free(h->data); }

static void defer_run(defer_t *x) {
  if ((*x->prevp = x->next)) x->next->prevp = x->prevp;
  uv_timer_stop(&x->timer);
  x->fn(x->arg);
  uv_close((uv_handle_t *)&x->timer, defer_closed);
}

static void defer_fire(uv_timer_t *t) { defer_run(t->data); }

static int defer_ms(dht_t *d, uint64_t ms, void (*fn)(void *), void *arg) {
  defer_t *x = malloc(sizeof(*x));
  if (!x) return -ENOMEM;
  uv_timer_init(d->loop, &x->timer);
  x->timer.data = x;
  x->fn = fn;
  x->arg = arg;
  if ((x->next = d->defers)) x->next->prevp = &x->next;
  x->prevp = &d->defers;
  d->defers = x;
  uv_timer_start(&x->timer, defer_fire, ms, 0);
  return 0;
}

/* At close (d->closed set): what each was waiting for ends now. */
void dht__defers_run(dht_t *d) {
  for (int i = 0; d->defers && i < 1000000; i++) defer_run(d->defers);
}

static int defer(dht_t *d, void (*fn)(void *), void *arg) { return defer_ms(d, 0, fn, arg); }

/* Local routing decision ---------------------------------------------------- */

/* If this node knows the successor of key, fill out (successor first, then
 * its successors) and return the count; else 0. */
static int local_owner(const dht_t *d, const dht_id_t *key, dht_node_t *out, int max) {
  int n = 0;
  if (d->n_succ == 0) {
    out[n++] = d->self;
    return n;
  }
  if (d->has_pred && dht__between_incl(key, &d->pred.id, &d->self.id)) out[n++] = d->self;
  else if (!dht__between_incl(key, &d->self.id, &d->succ[0].id)) return 0;
  for (int i = 0; i < d->n_succ && n < max; i++) out[n++] = d->succ[i];
  return n;
}

static int answer_find(dht_t *d, const dht__reply_t *to, const proto_frame_t *f) {
  proto_find_t q;
  int err = proto_find_decode(f->body, f->body_len, &q);
  if (err) return err;
  dht_id_t key;
  memcpy(key.b, q.key, DHT_ID_LEN);
  dht_node_t nodes[PROTO_MAX_NODES];
  proto_find_r_t r = {.flags = PROTO_FIND_DONE};
  int n = local_owner(d, &key, nodes, PROTO_MAX_NODES);
  if (n == 0) {
    r.flags = 0;
    n = dht__closest_preceding(d, &key, nodes, 4);
  }
  if (n == 0) { /* nothing better known: our successor is the safe answer */
    r.flags = PROTO_FIND_DONE;
    nodes[n++] = d->n_succ ? d->succ[0] : d->self;
  }
  for (int i = 0; i < n; i++) dht__node_to_proto(&nodes[i], &r.nodes[i]);
  r.n = (uint8_t)n;
  uint8_t buf[8 + PROTO_MAX_NODES * 40];
  long len = proto_find_r_encode(buf, sizeof(buf), &r);
  if (len < 0) fatalx("cannot encode FIND_R: %s", proto_strerror((int)len));
  dht__answer(d, to, PROTO_FIND_R, buf, (size_t)len);
  return 0;
}

/* Where lookups ended lately -------------------------------------------------
 *
 * A lookup walks ~log2(N)/2 hops from our fingers to the node before the
 * key's primary, whose answer names the primary and its replicas.  The
 * next lookup of a key nearby most often ends at the same node (a
 * registrar's gets and puts of many users: ~2.7 FINDs each on 64 nodes),
 * so that node is asked first: when it still precedes the primary it
 * answers at once.  Its answer is as authoritative as any (only where the
 * walk starts changes); a node that does not answer is forgotten here as
 * in the walk.  Direct-mapped by the key's top 8 bits, ENDS_MS at most.
 * A slot holds the address as a sockaddr_in6 at most, not a whole
 * sockaddr_storage: 14 KB for the table instead of 40. */
#define ENDS_SLOTS 256
#define ENDS_MS 30000

/* A node's address as a sockaddr_in6 at most, as the tables below keep
 * it: a whole sockaddr_storage would be most of each entry. */
typedef union {
  struct sockaddr_in v4;
  struct sockaddr_in6 v6;
} addr_small_t;

static bool addr_pack(addr_small_t *a, const struct sockaddr_storage *ss) {
  if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6) return false;
  memcpy(a, ss, sizeof(*a));
  return true;
}

static void node_unpack(dht_node_t *out, const dht_id_t *id, const addr_small_t *a) {
  memset(out, 0, sizeof(*out));
  out->id = *id;
  memcpy(&out->addr, a, sizeof(*a));
}

typedef struct {
  dht_id_t id;
  addr_small_t addr;
  uint64_t at; /* 0: empty */
} end_t;

struct dht__ends {
  end_t e[ENDS_SLOTS];
};

static void ends_note(dht_t *d, const dht_id_t *key, const dht_node_t *node) {
  end_t e = {.id = node->id, .at = uv_now(d->loop)};
  if (!addr_pack(&e.addr, &node->addr)) return;
  if (!d->ends && !(d->ends = calloc(1, sizeof(*d->ends)))) return;
  d->ends->e[key->b[0]] = e;
}

/* The node a lookup of a key near key ended at lately, into *out. */
static bool ends_find(const dht_t *d, const dht_id_t *key, dht_node_t *out) {
  const end_t *e = d->ends ? &d->ends->e[key->b[0]] : NULL;
  if (!e || !e->at || uv_now(d->loop) - e->at > ENDS_MS) return false;
  node_unpack(out, &e->id, &e->addr);
  return true;
}

static void ends_forget(dht_t *d, const dht_node_t *node) {
  for (size_t i = 0; d->ends && i < ENDS_SLOTS; i++)
    if (d->ends->e[i].at && dht__id_eq(&d->ends->e[i].id, &node->id)) d->ends->e[i].at = 0;
}

/* Iterative lookup ---------------------------------------------------------- */

typedef struct {
  dht_t *d;
  dht_id_t key;
  dht_node_t cand[LOOKUP_CAND]; /* closest to key first */
  int n_cand;
  dht_node_t asked;
  dht_id_t path[DHT_MAX_PATH];
  int path_len, hops, status;
  dht_node_t result[PROTO_MAX_NODES];
  int n_result;
  int dead, restarts; /* candidates found dead; fresh starts made */
  dht__lookup_cb cb;
  void *arg;
} lookup_t;

/* A lookup that runs out of candidates after finding some dead started a
 * moment after a node died: everyone still points at it, and the nodes
 * that know its successor are not yet asked for.  Its neighbours repair
 * the ring within moments (their links to it closed), so the lookup starts
 * over from our routing table, at most twice, after a short pause. */
#define LOOKUP_RESTARTS 2
#define LOOKUP_RESTART_MS 150

static void lookup_step(lookup_t *l);
static void lookup_restart(void *arg);

static void lookup_finish(void *arg) {
  lookup_t *l = arg;
  dht_t *d = l->d;
  if (l->status == 0) {
    d->stats.hops_hist[l->hops < DHT_MAX_PATH ? l->hops : DHT_MAX_PATH]++;
  } else {
    d->stats.lookups_failed++;
  }
  l->cb(d, l->status, l->result, l->n_result, l->hops, l->path, l->path_len, l->arg);
  free(l);
}

static void cand_add(lookup_t *l, const dht_node_t *x) {
  if (is_self(l->d, x)) return;
  for (int i = 0; i < l->n_cand; i++)
    if (dht__node_eq(&l->cand[i], x)) return;
  for (int i = 0; i < l->path_len; i++)
    if (dht__id_eq(&l->path[i], &x->id)) return;
  int pos = l->n_cand;
  while (pos > 0 && dht__between(&x->id, &l->cand[pos - 1].id, &l->key)) pos--;
  if (pos >= LOOKUP_CAND) return;
  if (l->n_cand < LOOKUP_CAND) l->n_cand++;
  memmove(&l->cand[pos + 1], &l->cand[pos], (size_t)(l->n_cand - 1 - pos) * sizeof(*l->cand));
  l->cand[pos] = *x;
}

static void on_find(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer, void *arg) {
  lookup_t *l = arg;
  proto_find_r_t r;
  if (status || proto_find_r_decode(f->body, f->body_len, &r)) {
    /* Dead or broken: forget it and ask the next candidate. */
    if (status) dht__ring_forget(d, &l->asked), ends_forget(d, &l->asked), l->dead++;
    lookup_step(l);
    return;
  }
  l->hops++;
  if (l->path_len < DHT_MAX_PATH) l->path[l->path_len++] = l->asked.id;
  dht_node_t nodes[PROTO_MAX_NODES];
  for (int i = 0; i < r.n; i++) {
    dht__node_from_proto(&r.nodes[i], &nodes[i]);
    dht__ring_saw(d, &nodes[i]);
  }
  if (r.flags & PROTO_FIND_DONE) {
    ends_note(d, &l->key, &l->asked);
    memcpy(l->result, nodes, (size_t)r.n * sizeof(*nodes));
    l->n_result = r.n;
    lookup_finish(l);
    return;
  }
  /* Only nodes strictly between the one we asked and the key count as
   * progress; anything else could send us round in circles. */
  for (int i = 0; i < r.n; i++)
    if (dht__between(&nodes[i].id, &l->asked.id, &l->key)) cand_add(l, &nodes[i]);
  lookup_step(l);
}

/* Which candidate to ask next: the closest to the key, except that in the
 * secured mode one of the next few that we already have a link to is
 * worth a little less progress (a hop to a stranger costs a TLS handshake,
 * milliseconds of CPU, where a plain link costs a connect). */
#define LOOKUP_LINKED_WITHIN 3

static int next_cand(const lookup_t *l) {
  if (!l->d->tls) return 0;
  for (int i = 0; i < l->n_cand && i < LOOKUP_LINKED_WITHIN; i++)
    if (dht__rpc_linked(l->d, &l->cand[i])) return i;
  return 0;
}

static void lookup_step(lookup_t *l) {
  dht_t *d = l->d;
  while (l->n_cand > 0 && l->path_len < DHT_MAX_PATH && !d->closed) {
    int i = next_cand(l);
    l->asked = l->cand[i];
    memmove(&l->cand[i], &l->cand[i + 1], (size_t)(--l->n_cand - i) * sizeof(*l->cand));
    proto_find_t q;
    memcpy(q.key, l->key.b, DHT_ID_LEN);
    uint8_t buf[PROTO_ID_LEN];
    long n = proto_find_encode(buf, sizeof(buf), &q);
    if (dht__rpc_call(d, &l->asked, PROTO_FIND, buf, (size_t)n, on_find, l) == 0) return;
  }
  if (l->dead && l->restarts < LOOKUP_RESTARTS && !d->closed &&
      defer_ms(d, LOOKUP_RESTART_MS * (uint64_t)++l->restarts, lookup_restart, l) == 0)
    return;
  l->status = DHT_ETIMEDOUT;
  lookup_finish(l);
}

/* Candidates from our own routing table; true when we know the answer
 * ourselves (it is then in l->result). */
static bool lookup_seed(lookup_t *l) {
  dht_t *d = l->d;
  if ((l->n_result = local_owner(d, &l->key, l->result, PROTO_MAX_NODES)) > 0) return true;
  dht_node_t c[8];
  int n = dht__closest_preceding(d, &l->key, c, 8);
  for (int i = 0; i < n; i++) cand_add(l, &c[i]);
  dht_node_t end;
  if (ends_find(d, &l->key, &end) && dht__between(&end.id, &d->self.id, &l->key)) cand_add(l, &end);
  /* Our successor is always a correct, if slow, place to start. */
  if (d->n_succ) cand_add(l, &d->succ[0]);
  return false;
}

static void lookup_restart(void *arg) {
  lookup_t *l = arg;
  l->path_len = 0, l->n_cand = 0;
  if (!l->d->closed && lookup_seed(l)) lookup_finish(l);
  else lookup_step(l);
}

static int defer_or_free(lookup_t *l, void (*fn)(void *)) {
  if (defer(l->d, fn, l) == 0) return 0;
  free(l);
  return -ENOMEM;
}

static int lookup_start(dht_t *d, const dht_id_t *key, const dht_node_t *via, dht__lookup_cb cb,
                        void *arg) {
  if (d->closed) return DHT_ECLOSING;
  lookup_t *l = calloc(1, sizeof(*l));
  if (!l) return -ENOMEM;
  l->d = d;
  l->key = *key;
  l->cb = cb;
  l->arg = arg;
  d->stats.lookups++;
  if (via) l->cand[l->n_cand++] = *via;
  else if (lookup_seed(l)) return defer_or_free(l, lookup_finish);
  return defer_or_free(l, (void (*)(void *))lookup_step);
}

int dht__lookup(dht_t *d, const dht_id_t *key, dht__lookup_cb cb, void *arg) {
  return lookup_start(d, key, NULL, cb, arg);
}

int dht__lookup_via(dht_t *d, const dht_id_t *key, const dht_node_t *start, dht__lookup_cb cb,
                    void *arg) {
  return lookup_start(d, key, start, cb, arg);
}

/* Routed lookups (ring upkeep in the secured mode) ------------------------ */

/* Fingers and the loop check look up keys far away, and iteratively that
 * means asking strangers: a TLS handshake each, and a link that holds
 * OpenSSL state until it idles out.  Routed, the FIND goes over the links
 * we have and the key's owner answers with itself and its successors. */
typedef struct {
  dht_id_t key;
  dht_node_t start;
  bool has_start;
  dht__lookup_cb cb;
  void *arg;
} upkeep_t;

/* The owner's answer as a lookup result: n nodes, or 0 for none. */
static int routed_find_nodes(dht_t *d, const proto_route_r_t *r, dht_node_t *nodes) {
  proto_find_r_t a;
  if (r->type != PROTO_FIND_R || proto_find_r_decode(r->body, r->body_len, &a) ||
      !(a.flags & PROTO_FIND_DONE))
    return 0;
  for (int i = 0; i < a.n; i++) {
    dht__node_from_proto(&a.nodes[i], &nodes[i]);
    dht__ring_saw(d, &nodes[i]);
  }
  return a.n;
}

static void on_find_routed(dht_t *d, int status, const proto_route_r_t *r, void *arg) {
  upkeep_t *u = arg;
  dht_node_t nodes[PROTO_MAX_NODES];
  int n = status ? 0 : routed_find_nodes(d, r, nodes);
  if (n > 0) {
    d->stats.hops_hist[r->hops < DHT_MAX_PATH ? r->hops : DHT_MAX_PATH]++;
    u->cb(d, 0, nodes, n, r->hops, NULL, 0, u->arg);
  } else {
    d->stats.routed_fallbacks++;
    int err = lookup_start(d, &u->key, u->has_start ? &u->start : NULL, u->cb, u->arg);
    if (err) u->cb(d, err, NULL, 0, 0, NULL, 0, u->arg);
  }
  free(u);
}

int dht__lookup_upkeep(dht_t *d, const dht_id_t *key, const dht_node_t *start,
                       dht__lookup_cb cb, void *arg) {
  dht_node_t known[PROTO_MAX_NODES];
  if (d->closed || !dht__route_on(d) ||
      (!start && local_owner(d, key, known, PROTO_MAX_NODES) > 0))
    return lookup_start(d, key, start, cb, arg);
  upkeep_t *u = malloc(sizeof(*u));
  if (!u) return -ENOMEM;
  *u = (upkeep_t){.key = *key, .has_start = start != NULL, .cb = cb, .arg = arg};
  if (start) u->start = *start;
  d->stats.lookups++;
  proto_find_t q;
  memcpy(q.key, key->b, DHT_ID_LEN);
  uint8_t buf[PROTO_ID_LEN];
  long len = proto_find_encode(buf, sizeof(buf), &q);
  int err = start ? dht__route_via(d, start, key, PROTO_FIND, buf, (size_t)len, on_find_routed, u)
                  : dht__route_send(d, key, 0, PROTO_FIND, buf, (size_t)len, on_find_routed, u);
  if (err == 0) return 0;
  free(u);
  d->stats.lookups--;
  return lookup_start(d, key, start, cb, arg);
}

/* Storing on the primary and its replicas ----------------------------------- */

/* The store's limits (dht_limits_t): NULL, or which one v would exceed. */
static const char *over_limit(dht_t *d, const dht_id_t *key, const proto_value_t *v,
                              const dht_id_t *signer) {
  switch (dht__store_admit(&d->store, key, v, signer, &d->limits)) {
  case 0: return NULL;
  case DHT__FULL_KEY: d->stats.refused_key_full++; return "the key is full (values or one FETCH answer's size)";
  case DHT__FULL_OWNER_KEY: d->stats.refused_owner_key++; return "the owner's values under this key at the limit";
  default: d->stats.refused_owner++; return "the owner's values on this node at the limit";
  }
}

/* Apply every value of a decoded STORE that passes the access checks
 * (access.c), and the PROTO_VF_SAME refreshes of versions we hold; returns
 * how many were refused, and *missing (if not NULL) how many refreshes
 * named a version we do not hold.  from: who sent it (NULL: ourselves),
 * for the log. */
static int apply_store(dht_t *d, const proto_store_t *s, const dht_node_t *from, int *missing) {
  dht_id_t key;
  memcpy(key.b, s->key, DHT_ID_LEN);
  proto_cur_t it = s->values;
  proto_value_t v;
  int refused = 0, lacking = 0;
  uint64_t now = uv_now(d->loop);
  int64_t wall = (int64_t)time(NULL);
  while (proto_value_next(&it, &v) == 1) {
    if (v.flags & PROTO_VF_SAME) {
      if (v.ttl > dht__ttl_cap(v.kind)) v.ttl = dht__ttl_cap(v.kind);
      lacking += !dht__store_refresh(&d->store, &key, &v, now, wall);
      continue;
    }
    dht__key_t *k = dht__store_find(&d->store, &key);
    dht__value_t *old = k ? dht__store_value(k, v.vid, v.vid_len) : NULL;
    dht_id_t signer;
    const char *why = dht__value_check(d, &key, &v, old, &signer, &v.ttl);
    if (!why) why = over_limit(d, &key, &v, d->ca ? &signer : NULL);
    if (why) {
      if (refused++ == 0) dht__log_refused(d, from, &key, &v, why);
      continue;
    }
    dht__store_apply(&d->store, &key, &v, d->ca ? &signer : NULL, now);
  }
  d->stats.stores_in++;
  d->stats.values_refused += (uint64_t)refused;
  if (missing) *missing = lacking;
  return refused;
}

static void on_replica_stored_ignore(dht_t *d, int status, const proto_frame_t *f,
                                     const dht_node_t *peer, void *arg) {}

typedef void (*fanout_cb)(dht_t *d, int copies, void *arg);

typedef struct {
  int waiting, copies;
  dht_id_t key;
  fanout_cb cb;
  void *arg;
} fanout_t;

static void send_key(dht_t *d, const dht_id_t *key, const dht_node_t *to);

/* A replica's STORE_R (body NULL: none came). */
static void fanout_answered(dht_t *d, fanout_t *fo, const uint8_t *body, size_t len,
                            const dht_node_t *peer) {
  proto_store_r_t r;
  bool ok = body && proto_store_r_decode(body, len, &r) == 0;
  if (ok && r.status == PROTO_STORE_NEED_FULL) {
    /* A replica without the version a refresh names: it gets the key. */
    send_key(d, &fo->key, peer);
    r.status = 0;
  }
  if (ok && r.status == 0) fo->copies++;
  if (--fo->waiting == 0) {
    fo->cb(d, fo->copies, fo->arg);
    free(fo);
  }
}

static void on_replica_stored(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                              void *arg) {
  fanout_answered(d, arg, status ? NULL : f->body, status ? 0 : f->body_len, peer);
}

static void on_replica_routed(dht_t *d, int status, const proto_route_r_t *r, void *arg) {
  dht_node_t by = {0};
  if (status == 0) dht__node_from_proto(&r->responder, &by);
  bool ok = status == 0 && r->type == PROTO_STORE_R;
  fanout_answered(d, arg, ok ? r->body : NULL, ok ? r->body_len : 0, &by);
}

/* The copy for successor i goes straight to it when we have a link to it
 * (the first successor always, by ring upkeep); in the secured mode it
 * goes from successor to successor otherwise, which costs a hop where a
 * direct link would cost a TLS handshake. */
static int replica_send(dht_t *d, int i, const uint8_t *body, size_t len, fanout_t *fo) {
  if (i == 0 || !dht__route_on(d) || dht__rpc_linked(d, &d->succ[i]) ||
      dht__route_succ(d, &fo->key, (uint8_t)(i + 1), PROTO_STORE, body, len, on_replica_routed, fo))
    return dht__rpc_call(d, &d->succ[i], PROTO_STORE, body, len, on_replica_stored, fo);
  return 0;
}

/* A primary STORE's flags as its copies to the replicas carry them: what
 * asks the primary for something (an answer's `before`, one-way copies, a
 * handover's exception) is not for them. */
static uint8_t copy_flags(uint8_t flags) {
  return (uint8_t)((flags | PROTO_STORE_REPLICA) &
                   ~(PROTO_STORE_READ | PROTO_STORE_QUICK | PROTO_STORE_HANDOVER));
}

/* Send a STORE body (re-flagged as a replica copy) to our next replicas-1
 * successors; cb gets the number of copies made, counting ours. */
static void fan_out(dht_t *d, const uint8_t *body, size_t len, fanout_cb cb, void *arg) {
  fanout_t *fo = calloc(1, sizeof(*fo));
  uint8_t *copy = malloc(len);
  if (!fo || !copy) {
    free(fo);
    free(copy);
    cb(d, 1, arg);
    return;
  }
  memcpy(copy, body, len);
  copy[PROTO_ID_LEN] = copy_flags(copy[PROTO_ID_LEN]);
  memcpy(fo->key.b, body, DHT_ID_LEN);
  fo->cb = cb;
  fo->arg = arg;
  fo->copies = 1;
  fo->waiting = 1; /* held until every call is out, so cb fires once */
  for (int i = 0; i < d->replicas - 1 && i < d->n_succ; i++) {
    fo->waiting++;
    if (replica_send(d, i, copy, len, fo)) fo->waiting--;
  }
  free(copy);
  if (--fo->waiting == 0) {
    cb(d, fo->copies, arg);
    free(fo);
  }
}

/* Whether a primary STORE's copies may go one-way (PROTO_STORE_QUICK):
 * asked for, whole values only, and every replica one we have a link to
 * or need none for (the open mode). */
static bool quick_ok(dht_t *d, const proto_store_t *s) {
  if (!(s->flags & PROTO_STORE_QUICK)) return false;
  proto_cur_t it = s->values;
  proto_value_t v;
  while (proto_value_next(&it, &v) == 1)
    if (v.flags & PROTO_VF_SAME) return false;
  for (int i = 1; i < d->replicas - 1 && i < d->n_succ; i++)
    if (dht__route_on(d) && !dht__rpc_linked(d, &d->succ[i])) return false;
  return true;
}

/* STORES bodies being built ------------------------------------------------ */

#define BATCH_MAX 256
#define BATCH_BYTES (64 * 1024)

typedef struct {
  dht_node_t to;
  dht_id_t key; /* its first value's: where it is routed when to is not linked */
  uint8_t *buf; /* a STORES body being built; NULL: none */
  proto_wcur_t w;
  unsigned n;
} batch_t;

/* Whether a STORE body of len bytes for to can go into b as it is. */
static bool batch_fits(const batch_t *b, const dht_node_t *to, size_t len) {
  return b->buf && dht__node_eq(&b->to, to) && (size_t)(b->w.end - b->w.p) >= len + 4;
}

/* Adds a STORE body (of key, for to) to b, starting a body when b has
 * none (the caller sends a body that cannot take it first): false when
 * out of memory; b->n reaching BATCH_MAX says it is full. */
static bool batch_add(batch_t *b, const dht_node_t *to, const dht_id_t *key, const uint8_t *store,
                      size_t len) {
  if (!b->buf) {
    if (len + 6 > BATCH_BYTES || !(b->buf = malloc(BATCH_BYTES))) return false;
    b->to = *to;
    b->key = *key;
    b->w = (proto_wcur_t){b->buf, b->buf + BATCH_BYTES, 0};
    b->n = 0;
    proto_stores_begin(&b->w);
  }
  proto_stores_add(&b->w, store, len);
  b->n++;
  return true;
}

/* Whether every STORE of a STORES is a one-way copy (fan_out_quick()):
 * then nobody waits for an answer to it. */
static bool stores_one_way(const proto_stores_t *ss) {
  proto_cur_t it = ss->items;
  const uint8_t *b;
  size_t len;
  unsigned n = 0;
  while (proto_stores_next(&it, &b, &len) == 1) {
    uint8_t f = b[PROTO_ID_LEN]; /* checked by proto_stores_decode() */
    if ((f & (PROTO_STORE_REPLICA | PROTO_STORE_QUICK)) != (PROTO_STORE_REPLICA | PROTO_STORE_QUICK)) return false;
    n++;
  }
  return n > 0;
}

/* Quick copies, gathered -----------------------------------------------------
 *
 * The one-way copies of a registrar's writes go to each replica as one
 * STORES per COPY_WAIT_MS (or BATCH_MAX copies) instead of a STORE each:
 * every copy was a message and a wake-up of the replica's process, two of
 * the four messages a registration cost the overlay.  The replica takes
 * such a STORES as it takes a one-way STORE, without answering.  What it
 * costs: a replica may lack a value COPY_WAIT_MS longer, and copies a
 * primary dies holding are stored again by the owner's next refresh, as a
 * copy lost on the wire always was.  200 ms rather than 50: each batch
 * wakes a replica (~50 us of a loaded machine's CPU), and at 4,500
 * registrations/s on one machine the overlay's CPU per registration fell
 * by ~30%. */
#define COPY_WAIT_MS 200

struct dht__copies {
  batch_t b[DHT_MAX_SUCC]; /* by successor index */
};

static void copies_flush_one(dht_t *d, batch_t *b) {
  long n = b->n ? proto_stores_end(&b->w, b->buf, b->n) : -1;
  if (n > 0 && dht__rpc_send(d, &b->to, PROTO_STORES, b->buf, (size_t)n) == 0) {
    d->stats.copies_quick += b->n;
    d->stats.copies_quick_batches++;
  }
  free(b->buf);
  memset(b, 0, sizeof(*b));
}

void dht__copies_flush(dht_t *d) {
  for (int i = 0; d->copies && i < DHT_MAX_SUCC; i++)
    if (d->copies->b[i].buf) copies_flush_one(d, &d->copies->b[i]);
}

static void on_copy_timer(uv_timer_t *t) { dht__copies_flush(t->data); }

/* One copy for successor i into its batch; false when it could not go
 * there (out of memory, too large): the caller sends it alone. */
static bool copy_queue(dht_t *d, int i, const uint8_t *copy, size_t len) {
  if (!d->copies && !(d->copies = calloc(1, sizeof(*d->copies)))) return false;
  batch_t *b = &d->copies->b[i];
  if (b->buf && !batch_fits(b, &d->succ[i], len)) copies_flush_one(d, b);
  dht_id_t key;
  memcpy(key.b, copy, DHT_ID_LEN);
  if (!batch_add(b, &d->succ[i], &key, copy, len)) return false;
  if (b->n >= BATCH_MAX) copies_flush_one(d, b);
  if (!uv_is_active((uv_handle_t *)&d->copy_timer)) uv_timer_start(&d->copy_timer, on_copy_timer, COPY_WAIT_MS, 0);
  return true;
}

/* fan_out() for quick_ok() STOREs: the copies asked for no answer; the
 * number sent or queued, counting ours. */
static int fan_out_quick(dht_t *d, const uint8_t *body, size_t len) {
  uint8_t *copy = malloc(len);
  int copies = 1;
  if (!copy) return copies;
  memcpy(copy, body, len);
  copy[PROTO_ID_LEN] = (uint8_t)(copy_flags(copy[PROTO_ID_LEN]) | PROTO_STORE_QUICK);
  for (int i = 0; i < d->replicas - 1 && i < d->n_succ; i++) {
    if (copy_queue(d, i, copy, len)) {
      copies++;
    } else if (dht__rpc_send(d, &d->succ[i], PROTO_STORE, copy, len) == 0) {
      copies++;
      d->stats.copies_quick++;
    }
  }
  free(copy);
  return copies;
}

/* What we hold under key as a FETCH_R body (flags: PROTO_FETCH_PRIMARY or
 * 0), malloc'ed, its length in *len; NULL when out of memory. */
static uint8_t *encode_key(dht_t *d, const dht_id_t *key, uint8_t flags, size_t *len) {
  dht__key_t *k = dht__store_find(&d->store, key);
  size_t cap = k ? dht__store_encoded_size(k) : PROTO_ID_LEN + 3;
  uint8_t *buf = malloc(cap);
  if (!buf) return NULL;
  long n;
  if (k) {
    n = dht__store_encode(k, flags, false, uv_now(d->loop), buf, cap);
  } else {
    proto_wcur_t w = {buf, buf + cap, 0};
    proto_store_begin(&w, key->b, flags);
    n = proto_store_end(&w, buf);
  }
  if (n < 0) {
    free(buf);
    return NULL;
  }
  *len = (size_t)n;
  return buf;
}

typedef struct {
  dht__reply_t to;
  uint16_t stored;
  uint8_t status;
  uint8_t waiting; /* the local check and the replicas' copies */
  int copies;
  uint8_t *before; /* PROTO_STORE_READ: the key's values before, a FETCH_R body */
  size_t before_len;
} store_reply_t;

/* Answers once both the local check and the fan-out are done. */
static void store_reply_step(dht_t *d, store_reply_t *sr) {
  if (--sr->waiting > 0) return;
  proto_store_r_t r = {.status = sr->status, .stored = sr->stored, .replicas = (uint8_t)sr->copies};
  if (sr->status == 0 && sr->before && sr->before_len <= PROTO_MAX_BODY - 4) {
    r.before = sr->before;
    r.before_len = sr->before_len;
  }
  uint8_t small[8], *buf = r.before ? malloc(4 + r.before_len) : small;
  long n = buf ? proto_store_r_encode(buf, r.before ? 4 + r.before_len : sizeof(small), &r) : -1;
  /* The connection may have closed meanwhile: our ref keeps it allocated,
   * and rpc.c sends nothing on a closing connection. */
  if (n >= 0) dht__answer(d, &sr->to, PROTO_STORE_R, buf, (size_t)n);
  if (buf != small) free(buf);
  dht__conn_unref(sr->to.conn);
  free(sr->before);
  free(sr);
}

static void reply_stored(dht_t *d, int copies, void *arg) {
  store_reply_t *sr = arg;
  sr->copies = copies;
  store_reply_step(d, sr);
}

/* A primary STORE belongs here when the key is in our range, when we do
 * not know our range yet (no predecessor: just joined, or it died), or
 * when our predecessor hands over what it holds as it leaves
 * (PROTO_STORE_HANDOVER).  A routed one reached us only because we are
 * responsible for the key; who it names as its origin proves nothing, so
 * the predecessor's exception is not for it. */
static bool primary_ok(const dht_t *d, const dht_id_t *key, uint8_t flags, const dht_node_t *from,
                       bool routed) {
  return !d->joined || !d->has_pred || dht__is_primary(d, key) ||
         ((flags & PROTO_STORE_HANDOVER) && !routed && dht__node_eq(from, &d->pred));
}

static void reply_status(dht_t *d, const dht__reply_t *to, uint8_t status) {
  proto_store_r_t r = {.status = status};
  uint8_t buf[8];
  long n = proto_store_r_encode(buf, sizeof(buf), &r);
  dht__answer(d, to, PROTO_STORE_R, buf, (size_t)n);
}

static int answer_store(dht_t *d, const dht__reply_t *to, const proto_frame_t *f,
                        const dht_node_t *peer) {
  proto_store_t s;
  int err = proto_store_decode(f->body, f->body_len, &s);
  if (err) return err;
  dht_id_t key;
  memcpy(key.b, s.key, DHT_ID_LEN);
  if (!(s.flags & PROTO_STORE_REPLICA) && !primary_ok(d, &key, s.flags, peer, to->routed)) {
    /* Told so, the sender tries the next node; a primary STORE fans out,
     * so taking keys of others' ranges would let one peer fill three. */
    d->stats.refused_not_mine++;
    reply_status(d, to, PROTO_STORE_NOT_MINE);
    return 0;
  }
  if ((s.flags & (PROTO_STORE_REPLICA | PROTO_STORE_QUICK)) == (PROTO_STORE_REPLICA | PROTO_STORE_QUICK)) {
    int missing;
    apply_store(d, &s, peer, &missing); /* a one-way copy: nobody waits for an answer */
    return 0;
  }
  store_reply_t *sr = malloc(sizeof(*sr));
  if (!sr) return 0;
  *sr = (store_reply_t){.to = *to, .waiting = 2, .copies = 1};
  dht__conn_ref(to->conn);
  /* Every primary STORE goes on to the replicas, refreshes included: a
   * replica that repair missed (it joined or restarted at the wrong
   * moment) is thus filled again within one refresh interval.  It goes
   * before our own check: each replica checks for itself, so its
   * certificate and signature checks run while ours do, instead of after
   * them (a put's latency is one check, not two, in the secured mode). */
  if (s.flags & PROTO_STORE_REPLICA) {
    sr->waiting--;
  } else if (quick_ok(d, &s)) {
    sr->copies = fan_out_quick(d, f->body, f->body_len);
    sr->waiting--;
  } else {
    fan_out(d, f->body, f->body_len, reply_stored, sr);
  }
  if ((s.flags & (PROTO_STORE_READ | PROTO_STORE_REPLICA)) == PROTO_STORE_READ)
    sr->before = encode_key(d, &key, PROTO_FETCH_PRIMARY, &sr->before_len);
  int missing, refused = apply_store(d, &s, peer, &missing);
  /* A refusal is told, so the sender logs it and does not try elsewhere;
   * refreshes of versions we lack, so the sender sends them whole. */
  sr->stored = (uint16_t)(s.count - refused - missing);
  sr->status = refused ? PROTO_STORE_REFUSED : missing ? PROTO_STORE_NEED_FULL : 0;
  store_reply_step(d, sr);
  return 0;
}

/* A STORES body kept for mapping its answer: malloc'ed, its length in the
 * first four bytes (big-endian), NULL when out of memory. */
static uint8_t *kept(const uint8_t *body, size_t len) {
  uint8_t *k = malloc(4 + len);
  if (!k) return NULL;
  k[0] = (uint8_t)(len >> 24), k[1] = (uint8_t)(len >> 16), k[2] = (uint8_t)(len >> 8), k[3] = (uint8_t)len;
  memcpy(k + 4, body, len);
  return k;
}

static size_t kept_len(const uint8_t *k) {
  return (size_t)k[0] << 24 | (size_t)k[1] << 16 | (size_t)k[2] << 8 | k[3];
}

/* A replica's STORES_R for the copies sent it (copies: what was sent, to
 * map the answers; NULL answer: none came).  Replicas that lack the
 * version a refresh names get the key, as fanout_answered() does. */
static void on_copies_stored(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                             void *arg) {
  uint8_t *copies = arg;
  proto_stores_r_t r;
  proto_stores_t ss;
  size_t len = kept_len(copies);
  if (status == 0 && proto_stores_r_decode(f->body, f->body_len, &r) == 0 &&
      proto_stores_decode(copies + 4, len, &ss) == 0 && r.count == ss.count) {
    const uint8_t *b;
    size_t n;
    for (unsigned i = 0; proto_stores_next(&ss.items, &b, &n) == 1; i++) {
      dht_id_t key;
      memcpy(key.b, b, DHT_ID_LEN);
      if (r.status[i] == PROTO_STORE_NEED_FULL) send_key(d, &key, peer);
    }
  }
  free(copies);
}

static void on_copies_routed(dht_t *d, int status, const proto_route_r_t *r, void *arg) {
  dht_node_t by = {0};
  proto_frame_t f = {0};
  bool ok = status == 0 && r->type == PROTO_STORES_R;
  if (ok) {
    dht__node_from_proto(&r->responder, &by);
    f = (proto_frame_t){.body = r->body, .body_len = r->body_len};
  }
  on_copies_stored(d, ok ? 0 : -1, &f, &by, arg);
}

/* Send the copies (a STORES body, its length first) to the replicas: as
 * replica_send() sends a STORE, routed in the secured mode to a successor
 * we have no link to (towards the first key, which is ours, as all are). */
static void copies_send(dht_t *d, const uint8_t *body, size_t len) {
  dht_id_t first;
  if (len < 2 + 4 + DHT_ID_LEN) return;
  memcpy(first.b, body + 2 + 4, DHT_ID_LEN);
  for (int i = 0; i < d->replicas - 1 && i < d->n_succ; i++) {
    uint8_t *keep = kept(body, len);
    if (!keep) return;
    if (i > 0 && dht__route_on(d) && !dht__rpc_linked(d, &d->succ[i]) &&
        dht__route_succ(d, &first, (uint8_t)(i + 1), PROTO_STORES, body, len, on_copies_routed, keep) == 0)
      continue;
    if (dht__rpc_call(d, &d->succ[i], PROTO_STORES, body, len, on_copies_stored, keep)) free(keep);
  }
}

static void on_fanout_ignore(dht_t *d, int copies, void *arg) {}

/* Takes a STORES body: several STOREs for us (an owner's refreshes of
 * values whose primary we are, ours included, or a primary's copies of
 * them for us), each as answer_store() would take it, its status into
 * status[]; the primary ones go on to the replicas as one STORES each
 * instead of a STORE each (a registrar refreshing 200,000 bindings every
 * 30 s sent 6,700 STOREs a second, and each became three).  Returns how
 * many it took. */
static unsigned take_stores(dht_t *d, const proto_stores_t *ss, size_t body_len,
                            const dht_node_t *from, bool routed, uint8_t *status) {
  uint8_t *copies = malloc(body_len);
  proto_wcur_t w = {copies, copies + (copies ? body_len : 0), 0};
  unsigned n = 0, ncopies = 0;
  proto_stores_begin(&w);
  proto_cur_t it = ss->items;
  const uint8_t *b;
  size_t len;
  while (proto_stores_next(&it, &b, &len) == 1) {
    proto_store_t s;
    proto_store_decode(b, len, &s); /* checked by proto_stores_decode() */
    dht_id_t key;
    memcpy(key.b, s.key, DHT_ID_LEN);
    bool replica = s.flags & PROTO_STORE_REPLICA;
    if (!replica && !primary_ok(d, &key, s.flags, from, routed)) {
      d->stats.refused_not_mine++;
      status[n++] = PROTO_STORE_NOT_MINE;
      continue;
    }
    int missing, refused = apply_store(d, &s, from, &missing);
    status[n++] = refused ? PROTO_STORE_REFUSED : missing ? PROTO_STORE_NEED_FULL : 0;
    if (replica) continue;
    if (!copies) { /* out of memory for the batch: a STORE each */
      fan_out(d, b, len, on_fanout_ignore, NULL);
      continue;
    }
    proto_stores_add(&w, b, len);
    if (!w.err)
      w.p[-(long)len + PROTO_ID_LEN] = copy_flags(b[PROTO_ID_LEN]);
    ncopies++;
  }
  long cn = ncopies ? proto_stores_end(&w, copies, ncopies) : -1;
  if (cn > 0) copies_send(d, copies, (size_t)cn);
  free(copies);
  return n;
}

static int answer_stores(dht_t *d, const dht__reply_t *to, const proto_frame_t *f,
                         const dht_node_t *peer) {
  proto_stores_t ss;
  int err = proto_stores_decode(f->body, f->body_len, &ss);
  if (err) return err;
  uint8_t status[PROTO_STORES_MAX], out[2 + PROTO_STORES_MAX];
  proto_stores_r_t r = {.status = status};
  bool one_way = stores_one_way(&ss);
  r.count = (uint16_t)take_stores(d, &ss, f->body_len, peer, to->routed, status);
  if (one_way) return 0;
  long on = proto_stores_r_encode(out, sizeof(out), &r);
  if (on > 0) dht__answer(d, to, PROTO_STORES_R, out, (size_t)on);
  return 0;
}

static int answer_fetch(dht_t *d, const dht__reply_t *to, const proto_frame_t *f) {
  proto_find_t q;
  int err = proto_find_decode(f->body, f->body_len, &q);
  if (err) return err;
  dht_id_t key;
  memcpy(key.b, q.key, DHT_ID_LEN);
  /* Said so, a reader that sent its FETCH here without a lookup (a range
   * it found lately, dht_get_primary) takes the answer as the primary's. */
  uint8_t flags = d->joined && dht__is_primary(d, &key) ? PROTO_FETCH_PRIMARY : 0;
  size_t n;
  uint8_t *buf = encode_key(d, &key, flags, &n);
  if (buf && n <= PROTO_MAX_BODY) dht__answer(d, to, PROTO_FETCH_R, buf, n);
  free(buf);
  return 0;
}

int dht__ops_answer(dht_t *d, const dht__reply_t *to, const proto_frame_t *f,
                    const dht_node_t *from) {
  switch (f->type) {
  case PROTO_FIND: return answer_find(d, to, f);
  case PROTO_STORE: return answer_store(d, to, f, from);
  case PROTO_STORES: return answer_stores(d, to, f, from);
  default: return answer_fetch(d, to, f);
  }
}

int dht__handle_request(dht_t *d, dht__conn_t *c, const proto_frame_t *f, const dht_node_t *peer) {
  dht__reply_t to = {.conn = c, .txid = f->txid};
  switch (f->type) {
  case PROTO_FIND:
  case PROTO_STORE:
  case PROTO_STORES:
  case PROTO_FETCH: return dht__ops_answer(d, &to, f, peer);
  case PROTO_ROUTE: return dht__route_answer(d, c, f);
  case PROTO_REACH: return dht__reach_answer(d, c, f);
  default: return dht__ring_on_request(d, c, f, peer);
  }
}

/* Store operation: lookup, then STORE to the first live node of the answer */

typedef struct {
  dht_t *d;
  dht_id_t key;
  uint8_t *body; /* what is sent: the value, or a PROTO_VF_SAME refresh of it */
  size_t len;
  uint8_t *full; /* the value itself when body is a refresh, else NULL */
  size_t full_len;
  dht_node_t targets[STORE_TRIES];
  int n_targets, next, hops;
  bool lookup_if_fails; /* targets came from a cache: look up if they fail */
  uint8_t relooks;      /* lookups made again after a NOT_MINE */
  dht_put_cb cb;
  dht_get_cb read_cb; /* dht_put_read(): cb is NULL; the values before go here */
  void *arg;
  uint8_t *before; /* read_cb: the primary's values before the STORE (FETCH_R body) */
  size_t before_len;
} store_op_t;

static void read_done(store_op_t *op, int status);
static void prims_note(dht_t *d, const dht_id_t *lo, const dht_node_t *node);
static void prims_forget(dht_t *d, const dht_id_t *key);

static void owned_note_primary(dht_t *d, const dht_id_t *key, const dht_node_t *primary);
static void on_store_lookup(dht_t *d, int status, const dht_node_t *nodes, int n, int hops,
                            const dht_id_t *path, int path_len, void *arg);

static void store_op_done(store_op_t *op, int status, int copies) {
  if (status == DHT_OK && op->next > 0) owned_note_primary(op->d, &op->key, &op->targets[op->next - 1]);
  if (op->read_cb) read_done(op, status);
  else if (op->cb) op->cb(op->d, status, copies, op->arg);
  free(op->before);
  free(op->body);
  free(op->full);
  free(op);
}

static void store_op_next(store_op_t *op);

/* The target lacks the version a refresh names: send it the value. */
static bool store_op_full(store_op_t *op) {
  if (!op->full) return false;
  free(op->body);
  op->body = op->full;
  op->len = op->full_len;
  op->full = NULL;
  return true;
}

static void store_refused(store_op_t *op, const dht_node_t *by, const proto_store_r_t *r) {
  char a[64];
  dht_addr_str(&by->addr, a, sizeof(a));
  log_warn("store: %s refused %u of our values (access rules; its log says why)", a,
           (unsigned)(r->stored < 1 ? 1 : r->stored));
  store_op_done(op, DHT_EREFUSED, 0);
}

/* The primary's values before the STORE, when it sent them. */
static void store_op_keep(store_op_t *op, const proto_store_r_t *r) {
  if (!op->read_cb || !r->before || op->before) return;
  if ((op->before = malloc(r->before_len))) {
    memcpy(op->before, r->before, r->before_len);
    op->before_len = r->before_len;
  }
}

static void store_op_lookup(store_op_t *op);

static void store_op_relook(void *arg) {
  store_op_t *op = arg;
  op->d->stats.puts_relooked++;
  store_op_lookup(op);
}

/* The target's range starts after the key: a node joined in front of it.
 * The targets after it, its successors, would say the same.  A target
 * from a cache was just old: look up now.  One that a lookup has just
 * given comes from a view the ring has not corrected yet (a join some
 * milliseconds old): look up again once it had time to, a few times
 * (a relay that published as it joined failed here and waited 20 s). */
static void store_op_not_mine(store_op_t *op) {
  if (op->lookup_if_fails) {
    store_op_lookup(op);
    return;
  }
  if (op->relooks >= NOT_MINE_RELOOKS ||
      defer_ms(op->d, (uint64_t)NOT_MINE_WAIT_MS << op->relooks, store_op_relook, op)) {
    char key[DHT_ID_HEX];
    dht_id_hex(&op->key, key);
    log_warn("store: %.8s: every primary found said the key is not its own (%d lookups); giving up", key,
             op->relooks + 1);
    store_op_done(op, DHT_ETIMEDOUT, 0);
    return;
  }
  op->relooks++;
}

static void on_store_r(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer, void *arg) {
  store_op_t *op = arg;
  proto_store_r_t r;
  if (status || proto_store_r_decode(f->body, f->body_len, &r)) {
    store_op_next(op);
    return;
  }
  if (r.status == PROTO_STORE_REFUSED) {
    store_refused(op, peer, &r);
    return;
  }
  if (r.status == PROTO_STORE_NEED_FULL && store_op_full(op)) op->next--; /* same target again */
  if (r.status == PROTO_STORE_NOT_MINE) {
    prims_forget(d, &op->key);
    store_op_not_mine(op);
    return;
  }
  if (r.status) {
    store_op_next(op);
    return;
  }
  store_op_keep(op, &r);
  store_op_done(op, DHT_OK, r.replicas);
}

static void on_local_fanout(dht_t *d, int copies, void *arg) { store_op_done(arg, DHT_OK, copies); }

static void store_op_next(store_op_t *op) {
  dht_t *d = op->d;
  while (op->next < op->n_targets && !d->closed) {
    const dht_node_t *t = &op->targets[op->next++];
    if (is_self(d, t)) {
      proto_store_t s;
      int missing = 0;
      if (op->read_cb && !op->before)
        op->before = encode_key(d, &op->key, PROTO_FETCH_PRIMARY, &op->before_len);
      if (proto_store_decode(op->body, op->len, &s) == 0 && apply_store(d, &s, NULL, &missing)) {
        store_op_done(op, DHT_EREFUSED, 0);
        return;
      }
      if (missing && store_op_full(op)) {
        op->next--;
        continue;
      }
      fan_out(d, op->body, op->len, on_local_fanout, op);
      return;
    }
    if (dht__rpc_call(d, t, PROTO_STORE, op->body, op->len, on_store_r, op) == 0) return;
  }
  if (op->lookup_if_fails && !d->closed) {
    op->lookup_if_fails = false;
    op->next = op->n_targets = 0;
    if (dht__lookup(d, &op->key, on_store_lookup, op) == 0) return;
  }
  store_op_done(op, DHT_ETIMEDOUT, 0);
}

static void on_store_lookup(dht_t *d, int status, const dht_node_t *nodes, int n, int hops,
                            const dht_id_t *path, int path_len, void *arg) {
  store_op_t *op = arg;
  if (status) {
    store_op_done(op, status, 0);
    return;
  }
  op->n_targets = n < STORE_TRIES ? n : STORE_TRIES;
  memcpy(op->targets, nodes, (size_t)op->n_targets * sizeof(*nodes));
  if (n > 0 && path_len > 0) prims_note(d, &path[path_len - 1], &nodes[0]);
  store_op_next(op);
}

/* The iterative path: look the key up, then STORE to what it found. */
static void store_op_lookup(store_op_t *op) {
  op->lookup_if_fails = false;
  op->next = op->n_targets = 0;
  int err = op->d->closed ? DHT_ECLOSING : dht__lookup(op->d, &op->key, on_store_lookup, op);
  if (err) store_op_done(op, err, 0);
}

static void store_op_route(void *arg);

static void on_store_routed(dht_t *d, int status, const proto_route_r_t *r, void *arg) {
  store_op_t *op = arg;
  proto_store_r_t sr;
  if (status || r->type != PROTO_STORE_R || proto_store_r_decode(r->body, r->body_len, &sr) ||
      (sr.status && sr.status != PROTO_STORE_REFUSED && sr.status != PROTO_STORE_NEED_FULL)) {
    d->stats.routed_fallbacks++;
    store_op_lookup(op);
    return;
  }
  dht_node_t by;
  dht__node_from_proto(&r->responder, &by);
  if (sr.status == PROTO_STORE_REFUSED) {
    store_refused(op, &by, &sr);
    return;
  }
  if (sr.status == PROTO_STORE_NEED_FULL) {
    if (store_op_full(op)) store_op_route(op);
    else store_op_lookup(op);
    return;
  }
  op->targets[0] = by; /* where refreshes may go directly while linked */
  op->n_targets = op->next = 1;
  store_op_keep(op, &sr);
  store_op_done(op, DHT_OK, sr.replicas);
}

/* The routed path (the secured mode): the STORE travels over existing
 * links to the key's owner; the iterative path is the fallback. */
static void store_op_route(void *arg) {
  store_op_t *op = arg;
  int err = op->d->closed ? DHT_ECLOSING
                          : dht__route_send(op->d, &op->key, 0, PROTO_STORE, op->body, op->len,
                                            on_store_routed, op);
  if (err) store_op_lookup(op); /* also when we are the owner: the lookup ends here at once */
}

/* Takes ownership of body (a complete STORE body) and of full (the same
 * values whole when body holds PROTO_VF_SAME refreshes; else NULL).  With a
 * known primary (a refresh), store there first and look up only if it
 * fails. */
static int store_op(dht_t *d, const dht_id_t *key, uint8_t *body, size_t len, uint8_t *full,
                    size_t full_len, const dht_node_t *primary, dht_put_cb cb, dht_get_cb read_cb,
                    void *arg) {
  store_op_t *op = calloc(1, sizeof(*op));
  if (!op) {
    free(body);
    free(full);
    return -ENOMEM;
  }
  *op = (store_op_t){.d = d, .key = *key, .body = body, .len = len, .full = full,
                     .full_len = full_len, .cb = cb, .read_cb = read_cb, .arg = arg};
  /* Routed unless the primary known is one we are linked to already. */
  if (dht__route_on(d) && !(primary && dht__rpc_linked(d, primary))) {
    if (defer(d, store_op_route, op) == 0) return 0;
    primary = NULL;
  }
  if (primary) {
    op->targets[0] = *primary;
    op->n_targets = 1;
    op->lookup_if_fails = true;
    if (defer(d, (void (*)(void *))store_op_next, op) == 0) return 0;
  }
  int err = dht__lookup(d, key, on_store_lookup, op);
  if (err) {
    free(body);
    free(full);
    free(op);
  }
  return err;
}

/* Primaries found lately --------------------------------------------------------
 *
 * A registrar gets a user's bindings, then stores the new one under the
 * same key: the store's lookup (a few hops) would find what the get's just
 * found.  Gets note the primary here; a first store of a value takes it if
 * it is fresh, and looks up only if that node fails it (as refreshes do
 * with the primary of their last store).  Direct-mapped by key. */
#define RECENT_SLOTS 1024
#define RECENT_MS 2000

struct dht__recent {
  struct {
    dht_id_t key;
    dht_node_t node;
    uint64_t at; /* 0: empty */
  } e[RECENT_SLOTS];
};

static size_t recent_slot(const dht_id_t *key) {
  uint32_t h;
  memcpy(&h, key->b + 8, sizeof(h));
  return h % RECENT_SLOTS;
}

static void recent_note(dht_t *d, const dht_id_t *key, const dht_node_t *node) {
  if (!d->recent && !(d->recent = calloc(1, sizeof(*d->recent)))) return;
  size_t i = recent_slot(key);
  d->recent->e[i].key = *key;
  d->recent->e[i].node = *node;
  d->recent->e[i].at = uv_now(d->loop);
}

static const dht_node_t *recent_find(dht_t *d, const dht_id_t *key) {
  if (!d->recent) return NULL;
  size_t i = recent_slot(key);
  uint64_t at = d->recent->e[i].at, now = uv_now(d->loop);
  if (!at || now - at > RECENT_MS || !dht__id_eq(&d->recent->e[i].key, key)) return NULL;
  return &d->recent->e[i].node;
}

/* Ranges of primaries found lately ------------------------------------------
 *
 * dht_get_primary() reads a key from its primary alone, after a lookup
 * (a FIND to the node before the primary, the `ends` above).  That node
 * and the primary its answer named bound a range, (lo, primary]: a
 * later primary-only get of a key in it sends its FETCH straight to that
 * primary, whose answer says whether it still is (PROTO_FETCH_PRIMARY,
 * from its own predecessor); if not, or with no answer, the get looks the
 * key up as any.  A registrar so sends one message per read, not two.
 * A range is noted in every slot (by the key's top PRIMS_BITS) it
 * touches, PRIMS_WAYS ranges a slot, for ENDS_MS at most: with one range
 * a slot and only the key's slot noted, keys on either side of a
 * boundary inside a slot took each other's place, and 11.6 % of a
 * registrar's writes on 64 nodes looked their key up (docs/BENCHMARKS.md,
 * session 14). */
#define PRIMS_BITS 9
#define PRIMS_SLOTS (1u << PRIMS_BITS)
#define PRIMS_WAYS 2

typedef struct {
  dht_id_t lo, id; /* the range is (lo, id], id the primary's */
  addr_small_t addr;
  uint64_t at; /* 0: empty */
} prim_t;

struct dht__prims {
  prim_t e[PRIMS_SLOTS][PRIMS_WAYS];
};

static unsigned prims_slot(const dht_id_t *k) {
  return ((unsigned)k->b[0] << 8 | k->b[1]) >> (16 - PRIMS_BITS);
}

/* Into a slot: over the same primary's range, else an empty, stale or
 * the oldest way (p->at is now). */
static void prims_put(prim_t *ways, const prim_t *p) {
  prim_t *w = &ways[0];
  for (int i = 0; i < PRIMS_WAYS; i++) {
    if (ways[i].at && dht__id_eq(&ways[i].id, &p->id)) {
      w = &ways[i];
      break;
    }
    if (!ways[i].at || p->at - ways[i].at > ENDS_MS || ways[i].at < w->at) w = &ways[i];
  }
  *w = *p;
}

static void prims_note(dht_t *d, const dht_id_t *lo, const dht_node_t *node) {
  prim_t p = {.lo = *lo, .id = node->id, .at = uv_now(d->loop)};
  if (!addr_pack(&p.addr, &node->addr)) return;
  if (!d->prims && !(d->prims = calloc(1, sizeof(*d->prims)))) return;
  unsigned first = prims_slot(lo), n = (prims_slot(&node->id) - first) & (PRIMS_SLOTS - 1);
  /* Within one slot but wrapping past zero: (nearly) the whole ring. */
  if (n == 0 && dht__id_cmp(&node->id, lo) <= 0) n = PRIMS_SLOTS - 1;
  for (unsigned i = 0; i <= n; i++) prims_put(d->prims->e[(first + i) & (PRIMS_SLOTS - 1)], &p);
}

static const prim_t *prims_at(const dht_t *d, const dht_id_t *key) {
  const prim_t *ways = d->prims ? d->prims->e[prims_slot(key)] : NULL;
  for (int i = 0; ways && i < PRIMS_WAYS; i++)
    if (ways[i].at && uv_now(d->loop) - ways[i].at <= ENDS_MS && dht__between_incl(key, &ways[i].lo, &ways[i].id))
      return &ways[i];
  return NULL;
}

static bool prims_find(const dht_t *d, const dht_id_t *key, dht_node_t *out) {
  const prim_t *p = prims_at(d, key);
  if (p) node_unpack(out, &p->id, &p->addr);
  return p != NULL;
}

/* key's primary is not what we noted: that node's range goes everywhere. */
static void prims_forget(dht_t *d, const dht_id_t *key) {
  const prim_t *p = prims_at(d, key);
  if (!p) return;
  dht_id_t id = p->id;
  for (unsigned i = 0; i < PRIMS_SLOTS; i++)
    for (int j = 0; j < PRIMS_WAYS; j++)
      if (dht__id_eq(&d->prims->e[i][j].id, &id)) d->prims->e[i][j].at = 0;
}

/* Values this node owns ----------------------------------------------------- */

struct dht__owned {
  dht__owned_t *next;
  char *name, *vid;
  dht_id_t key;
  uint8_t kind, flags;
  uint64_t seq;
  uint64_t expires; /* loop time, ms */
  uint8_t *body;
  size_t len;
  dht_node_t primary; /* where the last store landed */
  bool has_primary;
  unsigned stores;
  /* Secured mode: who signs it, and the signature over this version. */
  const dht_cert_creds_t *signer;
  uint64_t expires_abs; /* unix seconds */
  uint8_t sig[PROTO_SIG_LEN];
};

/* Refreshes go straight to the node that took the last store, skipping
 * the lookup (a few hops, often over new connections): most of an idle
 * overlay's traffic is owners keeping their values alive.  Every fourth
 * refresh that goes alone looks the key up again, in case the ring moved
 * under it; batched ones (owned_refresh()) learn of a move from the
 * primary's NOT_MINE. */
#define OWNED_LOOKUP_EVERY 4

/* Owned values live in a hash table by key: a registrar node owns one
 * value per binding it holds, tens of thousands under load. */
static dht__owned_t **owned_bucket(const dht_t *d, const dht_id_t *key) {
  uint32_t h;
  memcpy(&h, key->b + 12, sizeof(h));
  return &d->owned[h & (d->owned_nb - 1)];
}

static void owned_grow(dht_t *d) {
  size_t nb = d->owned_nb ? d->owned_nb * 2 : 64;
  dht__owned_t **b = calloc(nb, sizeof(*b));
  if (!b) return; /* longer chains are slower, not wrong */
  dht__owned_t **old = d->owned;
  size_t oldnb = d->owned_nb;
  d->owned = b;
  d->owned_nb = nb;
  for (size_t i = 0; i < oldnb; i++) {
    for (dht__owned_t *o = old[i], *next; o; o = next) {
      next = o->next;
      dht__owned_t **pp = owned_bucket(d, &o->key);
      o->next = *pp;
      *pp = o;
    }
  }
  free(old);
}

static void owned_note_primary(dht_t *d, const dht_id_t *key, const dht_node_t *primary) {
  if (!d->owned_nb) return;
  for (dht__owned_t *o = *owned_bucket(d, key); o; o = o->next) {
    if (!dht__id_eq(&o->key, key)) continue;
    o->primary = *primary;
    o->has_primary = true;
  }
}

static void owned_free(dht__owned_t *o) {
  free(o->name);
  free(o->vid);
  free(o->body);
  free(o);
}

static dht__owned_t *owned_find(dht_t *d, const dht_id_t *key, const char *name, const char *vid) {
  if (!d->owned_nb) return NULL;
  for (dht__owned_t *o = *owned_bucket(d, key); o; o = o->next)
    if (dht__id_eq(&o->key, key) && strcmp(o->vid, vid) == 0 && strcmp(o->name, name) == 0) return o;
  return NULL;
}

/* Sequence numbers come from the wall clock, so a value put again after
 * its owner restarted still beats the copy stored before the restart. */
static uint64_t next_seq(const dht__owned_t *o) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
  return o && o->seq >= now ? o->seq + 1 : now;
}

/* o as a STORE body: the value whole, or (same) a PROTO_VF_SAME refresh. */
static long owned_encode(dht_t *d, const dht__owned_t *o, bool same, uint8_t **out) {
  uint64_t now = uv_now(d->loop);
  proto_value_t v = {
      .vid = (const uint8_t *)o->vid, .vid_len = (uint8_t)strlen(o->vid), .kind = o->kind,
      .flags = o->flags, .seq = o->seq, .ttl = (uint32_t)((o->expires - now + 999) / 1000),
      .body = o->body, .body_len = (uint32_t)o->len,
  };
  memcpy(v.owner, d->self.id.b, DHT_ID_LEN);
  if (same) {
    v.flags |= PROTO_VF_SAME;
    v.body_len = 0;
  } else if (o->signer) {
    size_t len;
    dht_cert_der(dht_cert_creds_cert(o->signer), &v.cert, &len);
    v.cert_len = (uint16_t)len;
    v.flags |= PROTO_VF_SIGNED;
    v.expires = o->expires_abs;
    v.sig = o->sig;
  }
  size_t cap = PROTO_ID_LEN + 3 + 64 + strlen(o->vid) + v.body_len + 10 + v.cert_len + PROTO_SIG_LEN;
  uint8_t *buf = malloc(cap);
  if (!buf) return -ENOMEM;
  proto_wcur_t w = {buf, buf + cap, 0};
  proto_store_begin(&w, o->key.b, 0);
  proto_store_add(&w, &v);
  long n = proto_store_end(&w, buf);
  if (n < 0) {
    free(buf);
    return -EINVAL;
  }
  *out = buf;
  return n;
}

/* Store o: whole the first time a version goes out, then as refreshes that
 * carry no body or certificate (a node that lacks the version asks for
 * it whole). */
static int owned_store(dht_t *d, dht__owned_t *o, dht_put_cb cb, dht_get_cb read_cb, void *arg) {
  if (o->expires <= uv_now(d->loop)) return -ETIMEDOUT;
  uint8_t *full, *same = NULL;
  long n = owned_encode(d, o, false, &full), m = 0;
  if (n < 0) return (int)n;
  if (o->stores > 0 && (m = owned_encode(d, o, true, &same)) < 0) {
    free(full);
    return (int)m;
  }
  /* Counted whether or not a primary is known: the first store (before
   * one is) counted none, so every value's first refresh went out whole
   * and looked its key up again (a registrar holding 150,000 bindings: a
   * lookup more per registration).  A store that looks up takes the
   * primary a get just found, if any: a new version of a value (a phone's
   * re-registration) follows the registrar's get of the same key. */
  unsigned nth = o->stores++;
  bool cached = o->has_primary && nth % OWNED_LOOKUP_EVERY != 0;
  const dht_node_t *primary = cached ? &o->primary : recent_find(d, &o->key);
  /* A put that reads goes where dht_get_primary() would have read. */
  dht_node_t range;
  if (read_cb && !primary && prims_find(d, &o->key, &range) && !is_self(d, &range)) {
    primary = &range;
    d->stats.puts_read_direct++;
  }
  if (read_cb) { /* a registrar's write: see PROTO_STORE_QUICK */
    full[PROTO_ID_LEN] |= PROTO_STORE_READ | PROTO_STORE_QUICK;
    if (same) same[PROTO_ID_LEN] |= PROTO_STORE_READ | PROTO_STORE_QUICK;
  }
  if (same) return store_op(d, &o->key, same, (size_t)m, full, (size_t)n, primary, cb, read_cb, arg);
  return store_op(d, &o->key, full, (size_t)n, NULL, 0, primary, cb, read_cb, arg);
}

/* Sign o's current version (secured mode). */
static int owned_sign(dht__owned_t *o) {
  dht_cert_value_t cv = {.vid = (const uint8_t *)o->vid, .vid_len = strlen(o->vid), .kind = o->kind,
                         .flags = (uint8_t)(o->flags | PROTO_VF_SIGNED), .seq = o->seq,
                         .expires = o->expires_abs, .body = o->body, .body_len = o->len};
  cv.key = o->key;
  return dht_cert_sign(o->signer, &cv, o->sig);
}

/* Make (name, vid) an owned value with this body (a tombstone with flags
 * PROTO_VF_TOMBSTONE), a sequence number above `above` and ours so far,
 * signed by signer (secured mode). */
static int owned_set(dht_t *d, const dht_cert_creds_t *signer, const char *name, const char *vid,
                     uint8_t kind, uint8_t flags, const void *body, size_t len, uint32_t ttl_s,
                     uint64_t above, dht__owned_t **out) {
  char hex[DHT_ID_HEX];
  if (!vid) {
    dht_id_hex(&d->self.id, hex);
    vid = hex;
  }
  if (!*vid || strlen(vid) > PROTO_MAX_VALUE_ID || len > PROTO_MAX_VALUE_BODY || ttl_s == 0 ||
      ttl_s > dht__ttl_cap(kind))
    return -EINVAL;
  dht_id_t key;
  dht_id_of(name, &key);
  dht__owned_t *o = owned_find(d, &key, name, vid);
  uint8_t *copy = len ? malloc(len) : NULL;
  if (len && !copy) return -ENOMEM;
  if (len) memcpy(copy, body, len);
  if (!o) {
    o = calloc(1, sizeof(*o));
    if (!o || !(o->name = strdup(name)) || !(o->vid = strdup(vid))) {
      if (o) owned_free(o);
      free(copy);
      return -ENOMEM;
    }
    o->key = key;
    if (d->owned_n >= d->owned_nb) owned_grow(d);
    if (!d->owned_nb) {
      owned_free(o);
      free(copy);
      return -ENOMEM;
    }
    dht__owned_t **pp = owned_bucket(d, &o->key);
    o->next = *pp;
    *pp = o;
    d->owned_n++;
  }
  free(o->body);
  o->body = copy;
  o->len = len;
  o->kind = kind;
  o->flags = flags;
  o->seq = next_seq(o);
  if (o->seq <= above && above < UINT64_MAX) o->seq = above + 1;
  o->stores = 0; /* a new put looks its key up */
  o->expires = uv_now(d->loop) + (uint64_t)ttl_s * 1000;
  o->expires_abs = (uint64_t)time(NULL) + ttl_s;
  o->signer = signer;
  if (signer && owned_sign(o)) return -EINVAL;
  *out = o;
  return 0;
}

/* A put or remove made before the node has joined the ring has nowhere to
 * go yet (its lookup would end at this node alone): it waits here and is
 * sent the moment the join completes, so that the value is visible at once
 * and not only after the next refresh. */
typedef struct join_wait {
  struct join_wait *next;
  dht__owned_t *o;
  dht_put_cb cb;
  void *arg;
} join_wait_t;

static int owned_store_or_wait(dht_t *d, dht__owned_t *o, dht_put_cb cb, void *arg) {
  if (d->joined) return owned_store(d, o, cb, NULL, arg);
  join_wait_t *w = malloc(sizeof(*w));
  if (!w) return -ENOMEM;
  *w = (join_wait_t){.next = d->join_waits, .o = o, .cb = cb, .arg = arg};
  d->join_waits = w;
  return 0;
}

void dht__owned_joined(dht_t *d) {
  join_wait_t *w = d->join_waits;
  d->join_waits = NULL;
  for (join_wait_t *next; w; w = next) {
    next = w->next;
    w->o->has_primary = false;
    int err = owned_store(d, w->o, w->cb, NULL, w->arg);
    if (err && w->cb) w->cb(d, err, 0, w->arg);
    free(w);
  }
}

static void join_waits_fail(dht_t *d) {
  join_wait_t *w = d->join_waits;
  d->join_waits = NULL;
  for (join_wait_t *next; w; w = next) {
    next = w->next;
    if (w->cb) w->cb(d, DHT_ECLOSING, 0, w->arg);
    free(w);
  }
}

int dht_put_as(dht_t *d, const dht_cert_creds_t *signer, const char *name, const char *vid,
               uint8_t kind, const void *body, size_t len, uint32_t ttl_s, dht_put_cb cb, void *arg) {
  if (d->closed || d->leaving) return DHT_ECLOSING;
  dht__owned_t *o;
  int err = owned_set(d, signer ? signer : d->creds, name, vid, kind, 0, body, len, ttl_s, 0, &o);
  if (err) return err;
  d->stats.puts++;
  return owned_store_or_wait(d, o, cb, arg);
}

int dht_put(dht_t *d, const char *name, const char *vid, uint8_t kind, const void *body,
            size_t len, uint32_t ttl_s, dht_put_cb cb, void *arg) {
  return dht_put_as(d, NULL, name, vid, kind, body, len, ttl_s, cb, arg);
}

/* A read-put made before the join: stored when the join completes, as
 * any put, without the values before. */
typedef struct {
  dht_get_cb cb;
  void *arg;
} unread_t;

static void on_unread_put(dht_t *d, int status, int replicas, void *arg) {
  unread_t u = *(unread_t *)arg;
  free(arg);
  d->stats.puts_unread += status >= 0;
  u.cb(d, status < 0 ? status : DHT_UNREAD, NULL, 0, 0, u.arg);
}

int dht_put_read(dht_t *d, const dht_cert_creds_t *signer, const char *name, const char *vid,
                 uint8_t kind, const void *body, size_t len, uint32_t ttl_s, dht_get_cb cb,
                 void *arg) {
  if (d->closed || d->leaving) return DHT_ECLOSING;
  if (!cb) return -EINVAL;
  dht__owned_t *o;
  int err = owned_set(d, signer ? signer : d->creds, name, vid, kind, 0, body, len, ttl_s, 0, &o);
  if (err) return err;
  d->stats.puts++;
  d->stats.puts_read++;
  if (d->joined) return owned_store(d, o, NULL, cb, arg);
  unread_t *u = malloc(sizeof(*u));
  if (!u) return -ENOMEM;
  *u = (unread_t){cb, arg};
  if ((err = owned_store_or_wait(d, o, on_unread_put, u))) free(u);
  return err;
}

/* A tombstone for (name, vid) that beats sequence number `above`, kept
 * (owned) for ttl_s seconds or as long as our own value would have lived,
 * whichever is longer: no stale replica can bring the value back. */
static int tombstone(dht_t *d, const dht_cert_creds_t *signer, const char *name, const char *vid,
                     uint8_t kind, uint64_t above, uint32_t ttl_s, dht_put_cb cb, void *arg) {
  dht_id_t key;
  dht_id_of(name, &key);
  dht__owned_t *o = owned_find(d, &key, name, vid);
  uint64_t now = uv_now(d->loop);
  if (o && o->expires > now + (uint64_t)ttl_s * 1000)
    ttl_s = (uint32_t)((o->expires - now + 999) / 1000);
  int err = owned_set(d, signer, name, vid, kind, PROTO_VF_TOMBSTONE, NULL, 0, ttl_s ? ttl_s : 1,
                      above, &o);
  return err ? err : owned_store_or_wait(d, o, cb, arg);
}

int dht_remove(dht_t *d, const char *name, const char *vid, dht_put_cb cb, void *arg) {
  if (d->closed || d->leaving) return DHT_ECLOSING;
  char hex[DHT_ID_HEX];
  if (!vid) {
    dht_id_hex(&d->self.id, hex);
    vid = hex;
  }
  dht_id_t key;
  dht_id_of(name, &key);
  dht__owned_t *o = owned_find(d, &key, name, vid);
  if (!o) return -ENOENT;
  return tombstone(d, o->signer, name, vid, o->kind, 0, 1, cb, arg);
}

int dht_remove_value(dht_t *d, const dht_cert_creds_t *signer, const char *name,
                     const dht_value_t *v, dht_put_cb cb, void *arg) {
  if (d->closed || d->leaving) return DHT_ECLOSING;
  if (!v || !v->vid) return -EINVAL;
  /* One second more than the copy said: expires_in is rounded, and the
   * owner's copy may outlive the one we read by that much. */
  uint32_t ttl = v->expires_in < UINT32_MAX ? v->expires_in + 1 : v->expires_in;
  return tombstone(d, signer ? signer : d->creds, name, v->vid, v->kind, v->seq, ttl, cb, arg);
}

/* An owner refresh is paced: a node holding 100,000 values (a registrar's
 * bindings) sent a STORE for each in one callback, which held the loop
 * (and its SIP, admin socket and DHT peers) for seconds and queued tens of
 * megabytes of frames.  Each batch walks whole buckets (the cursor is a
 * bucket index, so values freed between batches leave it valid) until it
 * has stored enough to finish the pass within OWNED_PACE_SHARE of the
 * interval.  (A third doubled a registrar's DHT load for that third: one
 * holding 1.5 million bindings shed a million REGISTERs in the pass,
 * docs/BENCHMARKS.md session 12; the last third is slack for a busy loop
 * whose pace timer fires late.) */
#define OWNED_PACE_SHARE (2.0 / 3)
/* An owner refresh, batched ------------------------------------------------
 *
 * A refresh of a value whose primary we know and are linked to goes with
 * the others for that primary as one STORES (answer_stores()), sent when
 * BATCH_MAX have gathered or the pass is over (so no later than the
 * paced pass would have sent it alone).  What comes
 * back other than stored (not the primary any more, a version it lacks,
 * no answer) is stored again alone, as before.  Direct-mapped by the
 * primary's top id byte: a primary that finds its slot taken sends the
 * other's batch first. */
#define BATCH_SLOTS 64

struct dht__batches {
  batch_t b[BATCH_SLOTS];
};

static dht__owned_t *owned_by_vid(dht_t *d, const dht_id_t *key, const uint8_t *vid, size_t len) {
  if (!d->owned_nb) return NULL;
  for (dht__owned_t *o = *owned_bucket(d, key); o; o = o->next)
    if (dht__id_eq(&o->key, key) && strlen(o->vid) == len && memcmp(o->vid, vid, len) == 0) return o;
  return NULL;
}

/* What the primary did with a batch (status[i] for its i-th STORE; ok
 * false: no answer): what it did not store is stored again alone. */
static void batch_misses(dht_t *d, const proto_stores_t *ss, const uint8_t *status, unsigned count, bool ok) {
  proto_cur_t it = ss->items;
  const uint8_t *b;
  size_t n;
  for (unsigned i = 0; !d->closed && proto_stores_next(&it, &b, &n) == 1; i++) {
    if (ok && i < count && (status[i] == 0 || status[i] == PROTO_STORE_REFUSED)) continue;
    proto_store_t s;
    proto_value_t v;
    dht_id_t key;
    dht__owned_t *o;
    if (proto_store_decode(b, n, &s) || proto_value_next(&s.values, &v) != 1) continue;
    memcpy(key.b, s.key, DHT_ID_LEN);
    if (!(o = owned_by_vid(d, &key, v.vid, v.vid_len))) continue;
    d->stats.refresh_batch_misses++;
    /* Sent whole, after a lookup: the primary is not (or no longer) it,
     * or it lacks the version. */
    o->has_primary = false;
    o->stores = 0;
    owned_store(d, o, NULL, NULL, NULL);
  }
}

/* The primary's answer to a batch (sent: the STORES body, its length first). */
static void on_batch_r(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer, void *arg) {
  uint8_t *sent = arg;
  size_t len = kept_len(sent);
  proto_stores_r_t r = {0};
  proto_stores_t ss;
  bool ok = status == 0 && proto_stores_r_decode(f->body, f->body_len, &r) == 0;
  if (proto_stores_decode(sent + 4, len, &ss) == 0) batch_misses(d, &ss, r.status, r.count, ok);
  free(sent);
}

static void on_batch_routed(dht_t *d, int status, const proto_route_r_t *r, void *arg) {
  proto_frame_t f = {0};
  if (status == 0 && r->type == PROTO_STORES_R) f = (proto_frame_t){.body = r->body, .body_len = r->body_len};
  on_batch_r(d, status == 0 && r->type == PROTO_STORES_R ? 0 : -1, &f, NULL, arg);
}

/* A batch of values whose primary we are: taken here, copies sent on. */
static void batch_local(dht_t *d, const uint8_t *body, size_t len) {
  proto_stores_t ss;
  uint8_t status[PROTO_STORES_MAX];
  if (proto_stores_decode(body, len, &ss)) return;
  unsigned n = take_stores(d, &ss, len, &d->self, false, status);
  batch_misses(d, &ss, status, n, true);
}

static void batch_send(dht_t *d, batch_t *b) {
  long n = b->n ? proto_stores_end(&b->w, b->buf, b->n) : -1;
  uint8_t *keep = NULL;
  if (n > 0) d->stats.refresh_batches++;
  if (n > 0 && is_self(d, &b->to)) {
    batch_local(d, b->buf, (size_t)n);
  } else if (n > 0 && (keep = kept(b->buf, (size_t)n))) {
    /* The secured mode's stores are routed: so is a batch for a primary
     * we have no link to, towards its first key.  No way to send it:
     * as if nothing came back. */
    int err = !dht__rpc_linked(d, &b->to) && dht__route_on(d)
                  ? dht__route_send(d, &b->key, 0, PROTO_STORES, b->buf, (size_t)n, on_batch_routed, keep)
                  : dht__rpc_call(d, &b->to, PROTO_STORES, b->buf, (size_t)n, on_batch_r, keep);
    if (err) on_batch_routed(d, -1, NULL, keep);
  }
  free(b->buf);
  memset(b, 0, sizeof(*b));
}

static void batches_flush(dht_t *d) {
  for (int i = 0; d->batches && i < BATCH_SLOTS; i++)
    if (d->batches->b[i].buf) batch_send(d, &d->batches->b[i]);
}

static void batches_free(dht_t *d) {
  for (int i = 0; d->batches && i < BATCH_SLOTS; i++) free(d->batches->b[i].buf);
  free(d->batches);
  d->batches = NULL;
}

/* Refresh o: into its primary's batch when it can go in one, else alone. */
static void owned_refresh(dht_t *d, dht__owned_t *o) {
  uint8_t *same;
  long m;
  if (o->stores == 0 || !o->has_primary ||
      (!is_self(d, &o->primary) && !dht__rpc_linked(d, &o->primary) && !dht__route_on(d)) ||
      o->expires <= uv_now(d->loop) || (!d->batches && !(d->batches = calloc(1, sizeof(*d->batches)))) ||
      (m = owned_encode(d, o, true, &same)) < 0) {
    owned_store(d, o, NULL, NULL, NULL);
    return;
  }
  batch_t *b = &d->batches->b[o->primary.id.b[0] % BATCH_SLOTS];
  if (b->buf && !batch_fits(b, &o->primary, (size_t)m)) batch_send(d, b);
  bool added = batch_add(b, &o->primary, &o->key, same, (size_t)m);
  free(same);
  if (!added) {
    owned_store(d, o, NULL, NULL, NULL);
    return;
  }
  o->stores++;
  if (b->n >= BATCH_MAX) batch_send(d, b);
}

static void pace_step(uv_timer_t *t) {
  dht_t *d = t->data;
  if (d->leaving || d->closed || !d->joined) {
    d->pacing = d->pace_again = false;
    return;
  }
  uint64_t now = uv_now(d->loop);
  size_t steps = (size_t)(d->refresh_ms * OWNED_PACE_SHARE) / OWNED_PACE_MS;
  size_t budget = steps ? d->owned_n / steps + 1 : d->owned_n + 1;
  if (budget < OWNED_PACE_MIN) budget = OWNED_PACE_MIN;
  size_t done = 0;
  for (; d->pace_bucket < d->owned_nb && done < budget; d->pace_bucket++) {
    for (dht__owned_t **pp = &d->owned[d->pace_bucket]; *pp;) {
      dht__owned_t *o = *pp;
      if (o->expires <= now) {
        *pp = o->next;
        owned_free(o);
        d->owned_n--;
        continue;
      }
      owned_refresh(d, o);
      done++;
      pp = &o->next;
    }
  }
  if (d->pace_bucket < d->owned_nb) {
    uv_timer_start(&d->pace_timer, pace_step, OWNED_PACE_MS, 0);
    return;
  }
  batches_flush(d);
  d->pacing = false;
  if (d->pace_again) {
    d->pace_again = false;
    dht__owned_refresh_all(d);
  }
}

void dht__owned_refresh_all(dht_t *d) {
  if (!d->joined) return; /* dht__owned_joined() sends them */
  if (d->pacing) {
    d->pace_again = true;
    return;
  }
  d->pacing = true;
  d->pace_bucket = 0;
  pace_step(&d->pace_timer);
}

/* Get ------------------------------------------------------------------------ */

/* A get asks the key's primary and its first replica at once and merges
 * their answers by value id, the higher sequence number winning, so that a
 * tombstone on one beats a stale live copy on the other (a node that has
 * just left the replica set, or missed the removal).  An answer holding
 * anything for the key, tombstones included, is authoritative: only while
 * every answer is empty (a node that joined a moment ago) are the next
 * replicas asked, one at a time, until every copy's holder (--replicas of
 * them) has answered: the primary and its first replica can both be back
 * from a restart, empty, while the second replica still holds the key
 * (test_churn's quick successive restarts).  A registrar's get of a new
 * user's AOR so costs three fetches, not the five it once asked in turn.
 * A node whose answer lacked the winning
 * version of some value gets the merged set back (read repair), so the
 * newer value or tombstone goes where the stale one was served.
 *
 * dht_get_primary() asks the primary alone and takes its answer, empty or
 * not; the next holders only when the primary gives none (see dht.h). */
#define GET_PARALLEL 2

typedef struct get_op get_op_t;

typedef struct {
  get_op_t *g;
  uint8_t *body; /* a copy of the answer, a STORE-encoded body; NULL: none */
  size_t len;
} get_answer_t;

struct get_op {
  dht_t *d;
  dht_id_t key;
  dht_node_t targets[GET_TRIES]; /* routed: who answered (the key's owner, then its successors) */
  get_answer_t ans[GET_TRIES];
  int n_targets, next, waiting, hops;
  bool routed; /* the secured mode: questions go routed; ask i is the owner's i-th successor */
  bool failed; /* routed: a question got no answer */
  bool primary_only; /* dht_get_primary(): any answer is the answer */
  bool direct;       /* primary_only, sent to a range's primary without a lookup */
  dht_get_cb cb;
  void *arg;
};

typedef struct {
  proto_value_t v;
  unsigned holders; /* answers that hold exactly this version (bit per target) */
} merged_t;

static int merged_cmp(const void *a, const void *b) {
  const proto_value_t *x = &((const merged_t *)a)->v, *y = &((const merged_t *)b)->v;
  size_t n = x->vid_len < y->vid_len ? x->vid_len : y->vid_len;
  int c = memcmp(x->vid, y->vid, n);
  if (c || x->vid_len != y->vid_len) return c ? c : (x->vid_len < y->vid_len ? -1 : 1);
  if (x->seq != y->seq) return x->seq > y->seq ? -1 : 1;
  return x->ttl > y->ttl ? -1 : x->ttl < y->ttl;
}

/* The reader checks what it is given as the primary and the replicas
 * did (secured mode): a node that answers with a forged value cannot hide
 * the real one behind a higher sequence number. */
static bool readable(dht_t *d, const dht_id_t *key, const proto_value_t *v) {
  if (!d->ca) return true;
  dht__key_t *k = dht__store_find(&d->store, key);
  dht_id_t signer;
  uint32_t ttl;
  const char *why = dht__value_check(d, key, v, k ? dht__store_value(k, v->vid, v->vid_len) : NULL,
                                     &signer, &ttl);
  if (why) {
    d->stats.values_refused++;
    log_info("get: dropped value %.*s from an answer: %s", (int)v->vid_len, (const char *)v->vid, why);
  }
  return !why;
}

static bool same_version(const proto_value_t *a, const proto_value_t *b) {
  return a->seq == b->seq && a->flags == b->flags && a->body_len == b->body_len &&
         memcmp(a->body, b->body, a->body_len) == 0 &&
         (!(a->flags & PROTO_VF_SIGNED) || memcmp(a->sig, b->sig, PROTO_SIG_LEN) == 0);
}

/* The newest version of every value id in the answers; returns the count
 * (0 with *out NULL when there is nothing, -ENOMEM). */
static int get_merge(get_op_t *g, merged_t **out) {
  size_t total = 0;
  proto_store_t s[GET_TRIES];
  for (int i = 0; i < g->next; i++)
    if (g->ans[i].body && proto_store_decode(g->ans[i].body, g->ans[i].len, &s[i]) == 0) total += s[i].count;
    else s[i].count = 0;
  *out = NULL;
  if (total == 0) return 0;
  merged_t *m = malloc(total * sizeof(*m));
  if (!m) return -ENOMEM;
  size_t n = 0;
  for (int i = 0; i < g->next; i++) {
    proto_cur_t it = s[i].values;
    while (s[i].count && n < total && proto_value_next(&it, &m[n].v) == 1) m[n++].holders = 1u << i;
  }
  qsort(m, n, sizeof(*m), merged_cmp);
  /* Per value id, newest first: the winner is the newest version that
   * passes the checks (one check per value in the common case); answers
   * holding the very same version count as its holders. */
  size_t w = 0;
  bool have = false;
  for (size_t r = 0; r < n; r++) {
    const proto_value_t *x = &m[r].v;
    bool same_vid = r > 0 && x->vid_len == m[r - 1].v.vid_len && memcmp(x->vid, m[r - 1].v.vid, x->vid_len) == 0;
    if (!same_vid) have = false;
    if (have) {
      if (same_version(x, &m[w - 1].v)) m[w - 1].holders |= m[r].holders;
      continue;
    }
    if (!readable(g->d, &g->key, x)) continue;
    m[w++] = m[r];
    have = true;
  }
  *out = m;
  return (int)w;
}

static void on_routed_ignore(dht_t *d, int status, const proto_route_r_t *r, void *arg) {}

/* Give the merged set to every node that answered without the newest
 * version of some value (routed gets: along the same route). */
static void get_repair(get_op_t *g, const merged_t *m, int n) {
  dht_t *d = g->d;
  unsigned all = ~0u;
  for (int i = 0; i < n; i++) all &= m[i].holders;
  size_t cap = PROTO_ID_LEN + 3;
  for (int i = 0; i < n; i++) cap += 64 + m[i].v.vid_len + m[i].v.body_len;
  uint8_t *buf = NULL;
  long len = -1;
  for (int i = 0; i < g->next; i++) {
    if (!g->ans[i].body || (all & (1u << i))) continue;
    if (!buf) {
      if (!(buf = malloc(cap))) return;
      proto_wcur_t w = {buf, buf + cap, 0};
      proto_store_begin(&w, g->key.b, PROTO_STORE_REPLICA);
      for (int j = 0; j < n; j++) proto_store_add(&w, &m[j].v);
      len = proto_store_end(&w, buf);
    }
    if (len <= 0 || len > PROTO_MAX_BODY) break;
    /* Back where the answer came from: ourselves, the same route, or the node. */
    int sent = is_self(d, &g->targets[i]) ? DHT__ROUTE_HERE
               : g->routed ? dht__route_send(d, &g->key, (uint8_t)i, PROTO_STORE, buf, (size_t)len,
                                             on_routed_ignore, NULL)
                           : dht__rpc_call(d, &g->targets[i], PROTO_STORE, buf, (size_t)len,
                                           on_replica_stored_ignore, NULL);
    proto_store_t s;
    if (sent == DHT__ROUTE_HERE && proto_store_decode(buf, (size_t)len, &s) == 0)
      apply_store(d, &s, NULL, NULL);
  }
  free(buf);
}

static void get_free(get_op_t *g) {
  for (int i = 0; i < g->next; i++) free(g->ans[i].body);
  free(g);
}

/* Hand the live values of the merged answers to the caller. */
static void get_deliver(get_op_t *g) {
  merged_t *m;
  int n = get_merge(g, &m);
  dht_value_t *vals = n > 0 ? calloc((size_t)n, sizeof(*vals)) : NULL;
  char *vids = n > 0 ? malloc((size_t)n * (PROTO_MAX_VALUE_ID + 1)) : NULL;
  if (n < 0 || (n > 0 && (!vals || !vids))) {
    free(vals);
    free(vids);
    free(m);
    g->cb(g->d, -ENOMEM, NULL, 0, g->hops, g->arg);
    get_free(g);
    return;
  }
  get_repair(g, m, n);
  size_t k = 0;
  for (int i = 0; i < n; i++) {
    const proto_value_t *v = &m[i].v;
    if (v->flags & PROTO_VF_TOMBSTONE) continue;
    char *vid = vids + k * (PROTO_MAX_VALUE_ID + 1);
    memcpy(vid, v->vid, v->vid_len);
    vid[v->vid_len] = '\0';
    vals[k] = (dht_value_t){.vid = vid, .kind = v->kind, .seq = v->seq, .expires_in = v->ttl,
                            .body = v->body, .body_len = v->body_len};
    memcpy(vals[k].owner.b, v->owner, DHT_ID_LEN);
    k++;
  }
  g->cb(g->d, DHT_OK, vals, k, g->hops, g->arg);
  free(vals);
  free(vids);
  free(m);
  get_free(g);
}

/* A read-put is done: its values before, as a one-answer primary get
 * hands them over (checked as any read: readable()); DHT_UNREAD when none
 * came (an older primary, or a path that carries none). */
static void read_done(store_op_t *op, int status) {
  get_op_t *g = NULL;
  proto_store_t s;
  if (status == DHT_OK && op->before && proto_store_decode(op->before, op->before_len, &s) == 0 &&
      memcmp(s.key, op->key.b, DHT_ID_LEN) == 0)
    g = calloc(1, sizeof(*g));
  if (!g) {
    op->d->stats.puts_unread += status >= 0;
    op->read_cb(op->d, status < 0 ? status : DHT_UNREAD, NULL, 0, 0, op->arg);
    return;
  }
  *g = (get_op_t){.d = op->d, .key = op->key, .next = 1, .primary_only = true,
                  .cb = op->read_cb, .arg = op->arg};
  g->ans[0] = (get_answer_t){.g = g, .body = op->before, .len = op->before_len};
  g->targets[0] = op->targets[op->next > 0 ? op->next - 1 : 0];
  op->before = NULL; /* g's now */
  get_deliver(g);
}

static bool answer_has_values(const get_answer_t *a) {
  proto_store_t s;
  return a->body && proto_store_decode(a->body, a->len, &s) == 0 && s.count > 0;
}

static bool from_primary(const get_answer_t *a) {
  return a->body && a->len > PROTO_ID_LEN && (a->body[PROTO_ID_LEN] & PROTO_FETCH_PRIMARY);
}

static void get_ask(get_op_t *g, int i);
static void on_get_lookup(dht_t *d, int status, const dht_node_t *nodes, int n, int hops,
                          const dht_id_t *path, int path_len, void *arg);

/* A routed get that found nothing and lost a question, and a direct one
 * that found no primary, start over on the iterative path, as if they had
 * been neither. */
static void get_fall_back(get_op_t *g) {
  dht_t *d = g->d;
  for (int i = 0; i < g->next; i++) free(g->ans[i].body);
  memset(g->ans, 0, sizeof(g->ans));
  g->next = g->n_targets = g->waiting = 0;
  if (g->routed) d->stats.routed_fallbacks++;
  if (g->direct) prims_forget(d, &g->key);
  g->routed = g->failed = g->direct = false;
  int err = d->closed ? DHT_ECLOSING : dht__lookup(d, &g->key, on_get_lookup, g);
  if (err) {
    g->cb(d, err, NULL, 0, g->hops, g->arg);
    free(g);
  }
}

/* Every question out so far is answered (or failed). */
static void get_settle(get_op_t *g) {
  bool values = false;
  int answers = 0;
  for (int i = 0; i < g->next; i++) {
    answers += g->ans[i].body != NULL;
    values |= answer_has_values(&g->ans[i]);
  }
  bool any = answers > 0;
  if ((!values && g->routed && g->failed) || (g->direct && !from_primary(&g->ans[0]))) {
    get_fall_back(g);
    return;
  }
  if (g->direct) {
    g->d->stats.gets_direct++;
    recent_note(g->d, &g->key, &g->targets[0]); /* for the put that follows */
  }
  /* Empty answers: ask on until every copy's holder has (see above). */
  bool more = g->primary_only ? !any : !values && answers < g->d->replicas;
  if (more && g->next < g->n_targets && !g->d->closed) {
    g->waiting = 1;
    get_ask(g, g->next++);
    return;
  }
  if (any) {
    get_deliver(g);
    return;
  }
  g->cb(g->d, DHT_ETIMEDOUT, NULL, 0, g->hops, g->arg);
  get_free(g);
}

static void get_answered(get_answer_t *a, const uint8_t *body, size_t len) {
  get_op_t *g = a->g;
  if (body && (a->body = malloc(len ? len : 1))) {
    memcpy(a->body, body, len);
    a->len = len;
  }
  if (--g->waiting == 0) get_settle(g);
}

static void on_fetch_r(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer, void *arg) {
  proto_store_t s;
  bool ok = status == 0 && proto_store_decode(f->body, f->body_len, &s) == 0 &&
            memcmp(s.key, ((get_answer_t *)arg)->g->key.b, PROTO_ID_LEN) == 0;
  get_answered(arg, ok ? f->body : NULL, ok ? f->body_len : 0);
}

/* Our own answer, encoded as a peer's would be. */
static void get_local(get_answer_t *a) {
  size_t n;
  uint8_t *buf = encode_key(a->g->d, &a->g->key, 0, &n);
  get_answered(a, buf, buf ? n : 0);
  free(buf);
}

static void on_fetch_routed(dht_t *d, int status, const proto_route_r_t *r, void *arg) {
  get_answer_t *a = arg;
  get_op_t *g = a->g;
  proto_store_t s;
  bool ok = status == 0 && r->type == PROTO_FETCH_R && proto_store_decode(r->body, r->body_len, &s) == 0 &&
            memcmp(s.key, g->key.b, PROTO_ID_LEN) == 0;
  if (ok) {
    dht__node_from_proto(&r->responder, &g->targets[a - g->ans]);
    if (r->hops > g->hops) g->hops = r->hops;
  }
  g->failed |= !ok;
  get_answered(a, ok ? r->body : NULL, ok ? r->body_len : 0);
}

/* Ask target i; the answer arrives through get_answered(), which may run
 * before this returns (our own store, or a call that fails at once). */
static void get_ask(get_op_t *g, int i) {
  get_answer_t *a = &g->ans[i];
  a->g = g;
  if (g->routed) {
    int r = dht__route_send(g->d, &g->key, (uint8_t)i, PROTO_FETCH, g->key.b, PROTO_ID_LEN,
                            on_fetch_routed, a);
    if (r == DHT__ROUTE_HERE) {
      g->targets[i] = g->d->self;
      get_local(a);
    } else if (r) {
      g->failed = true;
      get_answered(a, NULL, 0);
    }
    return;
  }
  if (is_self(g->d, &g->targets[i])) {
    get_local(a);
    return;
  }
  if (dht__rpc_call(g->d, &g->targets[i], PROTO_FETCH, g->key.b, PROTO_ID_LEN, on_fetch_r, a))
    get_answered(a, NULL, 0);
}

/* Ask the first GET_PARALLEL targets at once (the rest one by one, while
 * the answers are empty: get_settle). */
static void get_start(get_op_t *g) {
  int parallel = g->primary_only ? 1 : GET_PARALLEL;
  int first = g->n_targets < parallel ? g->n_targets : parallel;
  g->waiting = first + 1; /* held until every question is out */
  while (g->next < first) get_ask(g, g->next++);
  if (--g->waiting == 0) get_settle(g);
}

static void on_get_lookup(dht_t *d, int status, const dht_node_t *nodes, int n, int hops,
                          const dht_id_t *path, int path_len, void *arg) {
  get_op_t *g = arg;
  g->hops = hops;
  if (status) {
    g->cb(d, status, NULL, 0, hops, g->arg);
    free(g);
    return;
  }
  g->n_targets = n < GET_TRIES ? n : GET_TRIES;
  memcpy(g->targets, nodes, (size_t)g->n_targets * sizeof(*nodes));
  if (n > 0) recent_note(d, &g->key, &nodes[0]);
  if (n > 0 && g->primary_only && path_len > 0) prims_note(d, &path[path_len - 1], &nodes[0]);
  get_start(g);
}

/* The routed path (the secured mode): FETCHes travel over existing links
 * to the key's owner and its successors; the iterative path is the
 * fallback. */
static void get_route(void *arg) {
  get_op_t *g = arg;
  g->routed = true;
  g->n_targets = GET_TRIES < g->d->nsucc + 1 ? GET_TRIES : g->d->nsucc + 1;
  get_start(g);
}

/* get_start() from the loop: a get never calls back before it returns. */
static void get_start_deferred(void *arg) { get_start(arg); }

static int get_begin(dht_t *d, const char *name, bool primary_only, dht_get_cb cb, void *arg) {
  if (d->closed) return DHT_ECLOSING;
  get_op_t *g = calloc(1, sizeof(*g));
  if (!g) return -ENOMEM;
  g->d = d;
  g->cb = cb;
  g->arg = arg;
  g->primary_only = primary_only;
  dht_id_of(name, &g->key);
  d->stats.gets++;
  d->stats.gets_primary += primary_only;
  int err;
  if (dht__route_on(d)) {
    err = defer(d, get_route, g);
  } else if (primary_only && prims_find(d, &g->key, &g->targets[0]) && !is_self(d, &g->targets[0])) {
    g->direct = true;
    g->n_targets = 1;
    err = defer(d, get_start_deferred, g);
  } else {
    err = dht__lookup(d, &g->key, on_get_lookup, g);
  }
  if (err) free(g);
  return err;
}

int dht_get(dht_t *d, const char *name, dht_get_cb cb, void *arg) {
  return get_begin(d, name, false, cb, arg);
}

int dht_get_primary(dht_t *d, const char *name, dht_get_cb cb, void *arg) {
  return get_begin(d, name, true, cb, arg);
}

int dht_get_local(dht_t *d, const char *name, dht_get_cb cb, void *arg) {
  if (d->closed) return DHT_ECLOSING;
  get_op_t *g = calloc(1, sizeof(*g));
  if (!g) return -ENOMEM;
  *g = (get_op_t){.d = d, .n_targets = 1, .cb = cb, .arg = arg};
  g->targets[0] = d->self;
  dht_id_of(name, &g->key);
  int err = defer(d, get_start_deferred, g);
  if (err) free(g);
  return err;
}

/* Public lookup ---------------------------------------------------------------- */

typedef struct {
  dht_lookup_cb cb;
  void *arg;
} pub_lookup_t;

static void on_pub_lookup(dht_t *d, int status, const dht_node_t *nodes, int n, int hops,
                          const dht_id_t *path, int path_len, void *arg) {
  pub_lookup_t *p = arg;
  p->cb(d, status, status ? NULL : &nodes[0], hops, path, path_len, p->arg);
  free(p);
}

int dht_lookup(dht_t *d, const dht_id_t *key, dht_lookup_cb cb, void *arg) {
  pub_lookup_t *p = malloc(sizeof(*p));
  if (!p) return -ENOMEM;
  p->cb = cb;
  p->arg = arg;
  int err = dht__lookup(d, key, on_pub_lookup, p);
  if (err) free(p);
  return err;
}

/* Replication upkeep ------------------------------------------------------------ */

typedef struct {
  dht_t *d;
  const dht_node_t *to;
  int n_to;
  const dht_id_t *lo, *hi; /* push keys in (lo, hi]; NULL lo: keys we are primary for */
  uint8_t flags;
  bool same; /* as PROTO_VF_SAME refreshes: replicas that lack a key ask for it */
  dht__rpc_cb cb;
  void *arg;
  int sent;
} push_t;

/* Send key k as we hold it, whole, to a node as a replica copy. */
static void send_key(dht_t *d, const dht_id_t *key, const dht_node_t *to) {
  dht__key_t *k = dht__store_find(&d->store, key);
  if (!k) return;
  size_t cap = dht__store_encoded_size(k);
  uint8_t *buf = malloc(cap);
  long n = buf ? dht__store_encode(k, PROTO_STORE_REPLICA, false, uv_now(d->loop), buf, cap) : -1;
  if (n > 0 && n <= PROTO_MAX_BODY) dht__rpc_call(d, to, PROTO_STORE, buf, (size_t)n, on_replica_stored_ignore, NULL);
  free(buf);
}

static void on_push_r(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer, void *arg) {
  proto_store_r_t r;
  if (status == 0 && proto_store_r_decode(f->body, f->body_len, &r) == 0 && r.status == PROTO_STORE_NEED_FULL)
    send_key(d, arg, peer);
  free(arg);
}

static void push_key(dht__key_t *k, void *arg) {
  push_t *p = arg;
  dht_t *d = p->d;
  if (p->lo ? !dht__between_incl(&k->key, p->lo, p->hi) : !dht__is_primary(d, &k->key)) return;
  size_t cap = dht__store_encoded_size(k);
  uint8_t *buf = malloc(cap);
  if (!buf) return;
  long n = dht__store_encode(k, p->flags, p->same, uv_now(d->loop), buf, cap);
  if (n > 0 && n <= PROTO_MAX_BODY) {
    for (int i = 0; i < p->n_to; i++) {
      if (is_self(d, &p->to[i])) continue;
      dht_id_t *key;
      if (p->cb) {
        if (dht__rpc_call(d, &p->to[i], PROTO_STORE, buf, (size_t)n, p->cb, p->arg) == 0)
          p->sent++;
      } else if (p->same && (key = malloc(sizeof(*key)))) {
        *key = k->key;
        if (dht__rpc_call(d, &p->to[i], PROTO_STORE, buf, (size_t)n, on_push_r, key)) free(key);
      } else {
        dht__rpc_call(d, &p->to[i], PROTO_STORE, buf, (size_t)n, on_replica_stored_ignore, NULL);
      }
    }
  }
  free(buf);
}

/* The periodic round's refreshes of our primary keys, as STORES bodies of
 * up to PUSH_MAX keys for each replica (a primary of 100,000 keys sent
 * 100,000 STOREs a round to each). */
#define PUSH_MAX 256
#define PUSH_BYTES (64 * 1024)

typedef struct {
  dht_t *d;
  uint8_t buf[PUSH_BYTES];
  uint8_t one[PUSH_BYTES / 4]; /* a key, encoded */
  proto_wcur_t w;
  unsigned n;
  push_t *alone; /* for a key too big to go with others */
} pushes_t;

static void pushes_send(pushes_t *ps) {
  long n = ps->n ? proto_stores_end(&ps->w, ps->buf, ps->n) : -1;
  if (n > 0) copies_send(ps->d, ps->buf, (size_t)n);
  ps->w = (proto_wcur_t){ps->buf, ps->buf + sizeof(ps->buf), 0};
  ps->n = 0;
  proto_stores_begin(&ps->w);
}

static void push_batched(dht__key_t *k, void *arg) {
  pushes_t *ps = arg;
  dht_t *d = ps->d;
  if (!dht__is_primary(d, &k->key)) return;
  size_t cap = dht__store_encoded_size(k);
  if (cap > sizeof(ps->one)) {
    push_key(k, ps->alone);
    return;
  }
  long n = dht__store_encode(k, PROTO_STORE_REPLICA, true, uv_now(d->loop), ps->one, cap);
  if (n <= 0) return;
  if ((size_t)(ps->w.end - ps->w.p) < (size_t)n + 4) pushes_send(ps);
  proto_stores_add(&ps->w, ps->one, (size_t)n);
  if (++ps->n >= PUSH_MAX) pushes_send(ps);
}

/* Push every key we are primary for to our replicas: whole after ring
 * changes (new replicas), as refreshes on the periodic round (the replicas
 * hold them already, and ask for what they lack), batched as a
 * primary's copies are (copies_send()). */
static void push_replicas(dht_t *d, bool same) {
  if (d->leaving || d->store.nkeys == 0) return;
  int n = d->replicas - 1 < d->n_succ ? d->replicas - 1 : d->n_succ;
  push_t p = {.d = d, .to = d->succ, .n_to = n, .flags = PROTO_STORE_REPLICA, .same = same};
  pushes_t *ps;
  if (n <= 0) return;
  if (!same || !(ps = malloc(sizeof(*ps)))) {
    dht__store_each(&d->store, push_key, &p);
    return;
  }
  ps->d = d;
  ps->n = 0;
  ps->alone = &p;
  ps->w = (proto_wcur_t){ps->buf, ps->buf + sizeof(ps->buf), 0};
  proto_stores_begin(&ps->w);
  dht__store_each(&d->store, push_batched, ps);
  pushes_send(ps);
  free(ps);
}

static void repair_now(uv_timer_t *t) { push_replicas(t->data, false); }

void dht__repl_repair_now(dht_t *d) { push_replicas(d, true); }

/* Repairs are batched: during a burst of joins the ring around a node
 * changes many times a second, and one push after it settles is enough. */
static void repair_soon(dht_t *d) {
  if (!uv_is_active((uv_handle_t *)&d->repair_timer))
    uv_timer_start(&d->repair_timer, repair_now, REPAIR_DELAY_MS, 0);
}

static void on_owned_soon(uv_timer_t *t) { dht__owned_refresh_all(t->data); }

/* Owners re-store their values after ring changes too, not only every
 * refresh interval: when nodes die, our successor list changes, and the
 * same event has likely taken copies of our values with it. */
static void owned_refresh_soon(dht_t *d) {
  if (d->owned_n && !uv_is_active((uv_handle_t *)&d->owned_timer))
    uv_timer_start(&d->owned_timer, on_owned_soon, OWNED_REFRESH_DELAY_MS, 0);
}

void dht__repl_succ_changed(dht_t *d, const dht_node_t *old, int n_old) {
  if (n_old > d->n_succ) owned_refresh_soon(d); /* someone left or died */
  /* Only a change among the first replicas-1 successors moves replicas. */
  int n = d->replicas - 1;
  bool same = (n_old < n ? n_old : n) == (d->n_succ < n ? d->n_succ : n);
  for (int i = 0; same && i < n && i < n_old; i++) same = dht__node_eq(&old[i], &d->succ[i]);
  if (!same) repair_soon(d);
}

void dht__repl_pred_changed(dht_t *d, const dht_node_t *old, bool had_old) {
  if (had_old && dht__between(&d->pred.id, &old->id, &d->self.id)) {
    /* A node joined between our old predecessor and us: it is now primary
     * for (old, new]; hand that range over. */
    push_t p = {.d = d, .to = &d->pred, .n_to = 1, .lo = &old->id, .hi = &d->pred.id,
                .flags = PROTO_STORE_REPLICA};
    dht__store_each(&d->store, push_key, &p);
    return;
  }
  /* Our range grew (the predecessor died or left) or we cannot tell: make
   * sure our replicas hold everything we are now primary for. */
  repair_soon(d);
}

void dht__repl_give_range(dht_t *d, const dht_node_t *x) {
  push_t p = {.d = d, .to = x, .n_to = 1, .lo = &d->self.id, .hi = &x->id,
              .flags = PROTO_STORE_REPLICA};
  dht__store_each(&d->store, push_key, &p);
}

void dht__repl_handover(dht_t *d, const dht_node_t *to, int n_to, dht__rpc_cb cb, void *arg) {
  /* Everything we hold goes to the successor as a primary STORE, so that
   * it fans the values out to what will be their replica set without us;
   * and to the next one too, which takes over should the first be dead
   * without our knowing. */
  dht_id_t lo = d->self.id, hi = d->self.id; /* (x, x] is the whole ring */
  push_t p = {.d = d, .to = to, .n_to = n_to, .lo = &lo, .hi = &hi, .flags = PROTO_STORE_HANDOVER,
              .cb = cb, .arg = arg};
  dht__store_each(&d->store, push_key, &p);
  d->handover_sent = p.sent;
}

/* A node that leaves a key's replica set (a node joined in front of it)
 * is told nothing, and its copy would otherwise stay until the values
 * expire, ready to be served stale.  Every replica hears of each key it
 * holds at least every second refresh interval (the primary's push), so a
 * key nobody has stored here for five intervals is not ours to keep.  With
 * no predecessor known we cannot tell, and keep everything. */
#define REPLICA_LEASE_REFRESHES 5

static bool key_stale(const dht__key_t *k, void *arg) {
  dht_t *d = arg;
  uint64_t now = uv_now(d->loop), lease = (uint64_t)d->refresh_ms * REPLICA_LEASE_REFRESHES;
  return now - k->confirmed > lease && !dht__is_primary(d, &k->key);
}

void dht__repl_drop_stale(dht_t *d) {
  if (!d->has_pred || d->leaving) return;
  size_t n = dht__store_drop_keys(&d->store, key_stale, d);
  if (n) log_info("dropped %zu keys this node no longer replicates", n);
}

void dht__ops_close(dht_t *d) {
  join_waits_fail(d);
  for (size_t b = 0; b < d->owned_nb; b++) {
    for (dht__owned_t *o = d->owned[b], *next; o; o = next) {
      next = o->next;
      owned_free(o);
    }
  }
  free(d->owned);
  d->owned = NULL;
  d->owned_nb = d->owned_n = 0;
  free(d->recent);
  d->recent = NULL;
  free(d->ends);
  d->ends = NULL;
  free(d->prims);
  d->prims = NULL;
  batches_free(d);
  for (int i = 0; d->copies && i < DHT_MAX_SUCC; i++) free(d->copies->b[i].buf); /* closed: too late to send */
  free(d->copies);
  d->copies = NULL;
}
