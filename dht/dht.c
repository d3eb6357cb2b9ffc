/* The node's lifecycle and introspection: dht_new, start, leave, close. */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "dht/cert.h"
#include "dht/internal.h"
#include "dht/log.h"

#define SWEEP_MS 5000
#define LEAVE_WAIT_MS 1500

/* Every refresh interval owners re-store what they put; every second one,
 * primaries also push their keys to their replicas.  Repair on ring
 * changes misses a node that restarted too quickly for its neighbours to
 * notice, and a value whose owner is gone has no one else to restore its
 * copies. */
static void on_refresh(uv_timer_t *t) {
  dht_t *d = t->data;
  dht__owned_refresh_all(d);
  if (d->refresh_rounds++ % 2 == 1) dht__repl_repair_now(d);
}

/* Stack pages below what the loop uses between callbacks: a TLS handshake
 * or a certificate check runs ~30 KB deeper than an idle node does, and
 * its pages stay resident after it returns (~16 KB of a forked secured
 * node's 52).  Only pages well below the current frame go, and they come
 * back as zero pages when touched again. */
#define STACK_KEEP 16384

static void stack_trim(void) {
  static uintptr_t lowest; /* the main thread's stack can grow down to here */
  if (!lowest) {
    pthread_attr_t a;
    void *addr;
    size_t size;
    if (pthread_getattr_np(pthread_self(), &a)) return;
    int err = pthread_attr_getstack(&a, &addr, &size);
    pthread_attr_destroy(&a);
    if (err) return;
    lowest = (uintptr_t)addr;
  }
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t below = ((uintptr_t)__builtin_frame_address(0) - STACK_KEEP) & ~(page - 1);
  /* The range starts where the stack may grow to, not where it is mapped
   * now: madvise() skips the hole (and says ENOMEM, which is no error here). */
  if (below > lowest) madvise((void *)lowest, below - lowest, MADV_DONTNEED);
}

static void on_sweep(uv_timer_t *t) {
  dht_t *d = t->data;
  size_t n = dht__store_sweep(&d->store, uv_now(d->loop));
  if (n) log_debug("swept %zu expired values", n);
  dht__repl_drop_stale(d);
  dht__rpc_reap(d);
  /* Hand memory freed since (closed connections, swept values) back to the
   * kernel: with hundreds of nodes per machine, a node's high-water mark
   * from a burst of joins would otherwise stay resident for good. */
  malloc_trim(0);
  stack_trim();
}

/* Jitter and random picks need no secrecy, only that processes started
 * together do not draw the same numbers: splitmix64 seeded from the OS. */
uint32_t dht__rand(dht_t *d) {
  uint64_t z = (d->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return (uint32_t)((z ^ (z >> 31)) >> 32);
}

static void rng_seed(dht_t *d) {
  if (getrandom(&d->rng, sizeof(d->rng), GRND_NONBLOCK) != sizeof(d->rng))
    d->rng = (uint64_t)uv_hrtime() ^ ((uint64_t)getpid() << 32);
}

static void timers_init(dht_t *d) {
  uv_timer_t *timers[] = {&d->stab_timer, &d->join_timer, &d->refresh_timer, &d->sweep_timer,
                          &d->repair_timer, &d->leave_timer, &d->owned_timer, &d->pace_timer,
                          &d->copy_timer, &d->split_timer};
  for (size_t i = 0; i < sizeof(timers) / sizeof(*timers); i++) {
    uv_timer_init(d->loop, timers[i]);
    timers[i]->data = d;
  }
}

static void limits_init(dht_limits_t *l, const dht_limits_t *want) {
  *l = *want;
  if (!l->conns) l->conns = 4096;
  if (!l->conns_per_ip) l->conns_per_ip = 512;
  if (!l->frame_kb) l->frame_kb = 65536;
  if (!l->key_values) l->key_values = 1024;
  if (!l->owner_key_values) l->owner_key_values = 32;
  if (!l->owner_values) l->owner_values = 200000;
  if (!l->owner_kb) l->owner_kb = 131072;
  if (!l->hello_ms) l->hello_ms = 10000;
  if (!l->frame_ms) l->frame_ms = 30000;
  /* ids_per_net 0 stays 0 (off) on loopback; dht_new sets it otherwise. */
}

static int config_check(const dht_config_t *cfg) {
  size_t olen = cfg->overlay ? strlen(cfg->overlay) : 0;
  if (olen == 0 || olen > PROTO_MAX_OVERLAY) return -EINVAL;
  if (cfg->replicas < 1 || cfg->replicas > DHT_MAX_SUCC) return -EINVAL;
  if (cfg->succ_list && (cfg->succ_list < 3 || cfg->succ_list > DHT_MAX_SUCC)) return -EINVAL;
  if (cfg->n_bootstrap < 0) return -EINVAL;
  if (!cfg->ca != !cfg->creds || (cfg->ca && cfg->node_id)) return -EINVAL;
  return 0;
}

int dht_new(uv_loop_t *loop, const dht_config_t *cfg, dht_t **out) {
  int err = config_check(cfg);
  if (err) return err;
  dht_t *d = calloc(1, sizeof(*d));
  if (!d) return -ENOMEM;
  d->loop = loop;
  rng_seed(d);
  snprintf(d->overlay, sizeof(d->overlay), "%s", cfg->overlay);
  d->replicas = cfg->replicas;
  d->nsucc = cfg->succ_list ? cfg->succ_list : 8;
  if (d->nsucc < d->replicas) d->nsucc = d->replicas;
  d->stab_min = cfg->stabilize_min_ms ? cfg->stabilize_min_ms : 250;
  d->stab_max = cfg->stabilize_max_ms ? cfg->stabilize_max_ms : 30000;
  d->refresh_ms = cfg->refresh_ms ? cfg->refresh_ms : 30000;
  d->rpc_timeout = cfg->rpc_timeout_ms ? cfg->rpc_timeout_ms : 1000;
  d->link_hold_ms = cfg->link_hold_ms;
  limits_init(&d->limits, &cfg->limits);
  d->self.addr = cfg->listen;
  if (cfg->n_bootstrap) {
    d->bootstrap = malloc((size_t)cfg->n_bootstrap * sizeof(*d->bootstrap));
    if (!d->bootstrap) {
      free(d);
      return -ENOMEM;
    }
    memcpy(d->bootstrap, cfg->bootstrap, (size_t)cfg->n_bootstrap * sizeof(*d->bootstrap));
    d->n_bootstrap = cfg->n_bootstrap;
  }
  dht__store_init(&d->store);
  timers_init(d);
  if ((err = dht__rpc_listen(d))) {
    dht_close(d);
    *out = d; /* the caller runs the loop to finish closing, then frees */
    return err;
  }
  if (cfg->ca) {
    char why[256];
    if (dht_cert_tls_ctx(cfg->ca, cfg->creds, &d->tls, why, sizeof(why))) {
      log_warn("TLS: %s", why);
      dht_close(d);
      *out = d;
      return -EINVAL;
    }
  }
  d->ca = cfg->ca;
  d->creds = cfg->creds;
  if (!d->limits.ids_per_net && !dht_addr_loopback(&d->self.addr)) d->limits.ids_per_net = 8;
  if (cfg->creds) {
    d->self.id = dht_cert_info(dht_cert_creds_cert(cfg->creds))->node;
  } else if (cfg->node_id) {
    d->self.id = *cfg->node_id;
  } else {
    char a[64];
    dht_addr_str(&d->self.addr, a, sizeof(a));
    dht_id_of(a, &d->self.id);
  }
  dht__node_to_proto(&d->self, &d->self_wire);
  *out = d;
  return 0;
}

int dht_start(dht_t *d) {
  if (d->closed) return DHT_ECLOSING;
  dht__ring_start(d);
  uv_timer_start(&d->refresh_timer, on_refresh, d->refresh_ms, d->refresh_ms);
  uv_timer_start(&d->sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS);
  return 0;
}

/* Leave ---------------------------------------------------------------------- */

static void leave_finish(dht_t *d) {
  if (!d->left_cb) return;
  dht_left_cb cb = d->left_cb;
  d->left_cb = NULL;
  uv_timer_stop(&d->leave_timer);
  cb(d, d->left_arg);
}

static void on_leave_timeout(uv_timer_t *t) {
  dht_t *d = t->data;
  if (d->leave_waiting) log_warn("leave: %d neighbours did not answer in time", d->leave_waiting);
  leave_finish(d);
}

static void on_leave_ack(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                         void *arg) {
  if (--d->leave_waiting == 0) leave_finish(d);
}

static void send_leave(dht_t *d, const dht_node_t *to) {
  proto_neigh_r_t r = {.has_pred = d->has_pred, .n = 0};
  if (d->has_pred) dht__node_to_proto(&d->pred, &r.pred);
  for (int i = 0; i < d->n_succ && i < PROTO_MAX_NODES; i++)
    dht__node_to_proto(&d->succ[i], &r.succ[r.n++]);
  uint8_t buf[64 + (PROTO_MAX_NODES + 1) * 40];
  long n = proto_neigh_r_encode(buf, sizeof(buf), &r);
  if (n > 0 && dht__rpc_call(d, to, PROTO_LEAVE, buf, (size_t)n, on_leave_ack, NULL) == 0)
    d->leave_waiting++;
}

int dht_leave(dht_t *d, dht_left_cb cb, void *arg) {
  if (d->leaving || d->closed) return -EALREADY;
  d->leaving = true;
  d->left_cb = cb;
  d->left_arg = arg;
  uv_timer_stop(&d->stab_timer);
  uv_timer_stop(&d->join_timer);
  uv_timer_stop(&d->refresh_timer);
  uv_timer_stop(&d->repair_timer);
  uv_timer_stop(&d->owned_timer);
  uv_timer_stop(&d->pace_timer);
  uv_timer_stop(&d->copy_timer);
  uv_timer_stop(&d->split_timer);
  dht__copies_flush(d); /* before the handover: the replicas' copies come first */
  d->leave_waiting = 1; /* held while we send, so leave_finish runs once */
  if (d->n_succ > 0) {
    dht__repl_handover(d, d->succ, d->n_succ < 2 ? d->n_succ : 2, on_leave_ack, NULL);
    d->leave_waiting += d->handover_sent;
    send_leave(d, &d->succ[0]);
    if (d->has_pred && !dht__node_eq(&d->pred, &d->succ[0])) send_leave(d, &d->pred);
  }
  log_info("leaving: handed %d key copies to the next successors", d->handover_sent);
  uv_timer_start(&d->leave_timer, on_leave_timeout, LEAVE_WAIT_MS, 0);
  if (--d->leave_waiting == 0) uv_timer_start(&d->leave_timer, on_leave_timeout, 0, 0);
  return 0;
}

void dht_close(dht_t *d) {
  if (d->closed) return;
  d->closed = true;
  d->leaving = true;
  dht__rpc_close_all(d);
  dht__defers_run(d);
  dht__reach_close(d);
  uv_timer_t *timers[] = {&d->stab_timer, &d->join_timer, &d->refresh_timer, &d->sweep_timer,
                          &d->repair_timer, &d->leave_timer, &d->owned_timer, &d->pace_timer,
                          &d->copy_timer, &d->split_timer};
  for (size_t i = 0; i < sizeof(timers) / sizeof(*timers); i++)
    if (!uv_is_closing((uv_handle_t *)timers[i])) uv_close((uv_handle_t *)timers[i], NULL);
}

void dht_free(dht_t *d) {
  if (!d) return;
  dht__store_free(&d->store);
  dht__ops_close(d);
  SSL_CTX_free(d->tls);
  free(d->bootstrap);
  free(d);
}

/* Introspection ---------------------------------------------------------------- */

void dht_watch(dht_t *d, dht_succ_cb cb, void *arg) {
  d->watch_cb = cb;
  d->watch_arg = arg;
}

void dht_on_dead(dht_t *d, dht_dead_cb cb, void *arg) {
  d->dead_cb = cb;
  d->dead_arg = arg;
}

const dht_node_t *dht_self(const dht_t *d) { return &d->self; }

const dht_node_t *dht_predecessor(const dht_t *d) { return d->has_pred ? &d->pred : NULL; }

int dht_successors(const dht_t *d, const dht_node_t **out) {
  *out = d->succ;
  return d->n_succ;
}

int dht_fingers(const dht_t *d, dht_id_t *starts, dht_node_t *nodes, int max) {
  int n = 0;
  for (int i = 0; i < DHT_BITS && n < max; i++) {
    if (!d->finger_ok[i]) continue;
    if (n > 0 && dht__node_eq(&nodes[n - 1], &d->finger[i])) continue;
    dht__id_add_pow2(&d->self.id, i, &starts[n]);
    nodes[n++] = d->finger[i];
  }
  return n;
}

size_t dht_records(const dht_t *d) { return dht__store_live(&d->store, uv_now(d->loop)); }

void dht_stats(const dht_t *d, dht_stats_t *out) {
  *out = d->stats;
  out->values_stored = d->store.nvalues;
  if (d->ca) {
    dht_cert_stats_t c;
    dht_cert_ca_stats(d->ca, &c);
    out->cert_checks = c.verified;
    out->cert_cache_hits = c.cached;
    out->cert_cache = c.entries;
    out->cert_cache_keys = c.live_keys;
    out->cert_key_builds = c.key_builds;
    out->cert_full_checks = c.full_checks;
  }
}
