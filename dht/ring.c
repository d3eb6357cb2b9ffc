/*
 * Chord upkeep: join, stabilize/notify, successor list, predecessor,
 * fingers, and the neighbour side of a graceful leave.
 *
 * Upkeep runs on one timer whose interval adapts: stab_min while the ring
 * around us changes, growing fourfold up to stab_max while it is quiet.  A quiet
 * overlay thus costs a message exchange per node every stab_max, and a
 * change (join, leave, a connection to a neighbour dropping) brings the
 * nodes next to it back to stab_min at once: the node that sees a change
 * pokes the neighbour it affects.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dht/internal.h"
#include "dht/log.h"

static void stab_schedule(dht_t *d, unsigned ms);
static void poke(dht_t *d, const dht_node_t *to, const dht_node_t *news);
static void fix_finger(dht_t *d, bool refresh);
static void stabilize(dht_t *d);

static bool is_self(const dht_t *d, const dht_node_t *n) { return dht__node_eq(n, &d->self); }

static void node_log(const char *what, const dht_node_t *n) {
  if (log_verbosity < LOG_DEBUG) return;
  char id[DHT_ID_HEX], a[64];
  dht_id_hex(&n->id, id);
  dht_addr_str(&n->addr, a, sizeof(a));
  log_debug("%s %.8s %s", what, id, a);
}

static void notify_watch(dht_t *d) {
  if (d->watch_cb) d->watch_cb(d, d->watch_arg);
}

/* Nodes we found dead ------------------------------------------------------ */

/* Other nodes keep naming a dead node in their answers until they notice
 * too; without a memory of recent deaths we would adopt it again at once
 * and spin on connection refused.  A node that talks to us (notify) is
 * alive again and leaves the list. */
#define DEAD_MEMORY_MS 30000

static void dead_add(dht_t *d, const dht_node_t *x) {
  int slot = 0;
  for (int i = 0; i < DHT_DEAD_SLOTS; i++) {
    if (d->dead[i].at && dht__id_eq(&d->dead[i].id, &x->id)) {
      slot = i;
      break;
    }
    if (d->dead[i].at < d->dead[slot].at) slot = i; /* the oldest goes */
  }
  d->dead[slot].id = x->id;
  d->dead[slot].at = uv_now(d->loop) ? uv_now(d->loop) : 1;
}

static bool dead_recently(const dht_t *d, const dht_node_t *x) {
  uint64_t now = uv_now(d->loop);
  for (int i = 0; i < DHT_DEAD_SLOTS; i++)
    if (d->dead[i].at && now - d->dead[i].at < DEAD_MEMORY_MS && dht__id_eq(&d->dead[i].id, &x->id))
      return true;
  return false;
}

static void dead_clear(dht_t *d, const dht_node_t *x) {
  for (int i = 0; i < DHT_DEAD_SLOTS; i++)
    if (d->dead[i].at && dht__id_eq(&d->dead[i].id, &x->id)) d->dead[i].at = 0;
}

static void on_revive_ping(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                           void *arg) {
  dht_node_t *x = arg;
  if (status == 0 && !d->leaving) {
    dead_clear(d, x);
    dht__ring_saw(d, x);
  }
  free(x);
}

/* A node we found dead is named again by a live one (it may have come
 * back with the same id): believe it only once it answers a ping. */
static void revive_check(dht_t *d, const dht_node_t *x) {
  dht_node_t *copy = malloc(sizeof(*copy));
  if (!copy) return;
  *copy = *x;
  if (dht__rpc_call(d, x, PROTO_PING, NULL, 0, on_revive_ping, copy)) free(copy);
}

/* Successor list ----------------------------------------------------------- */

/* Build a successor list from first followed by rest, dropping ourselves,
 * duplicates and anything past the configured length. */
static int succ_build(const dht_t *d, const dht_node_t *first, const dht_node_t *rest, int n_rest,
                      dht_node_t *out) {
  int n = 0;
  if (first && !is_self(d, first)) out[n++] = *first;
  for (int i = 0; i < n_rest && n < d->nsucc; i++) {
    if (is_self(d, &rest[i])) break; /* the list wrapped round to us */
    bool dup = false;
    for (int j = 0; j < n && !dup; j++) dup = dht__node_eq(&out[j], &rest[i]);
    if (!dup) out[n++] = rest[i];
  }
  return n;
}

static void succ_set(dht_t *d, const dht_node_t *list, int n) {
  bool same = n == d->n_succ;
  for (int i = 0; same && i < n; i++) same = dht__node_eq(&list[i], &d->succ[i]);
  if (same) return;
  dht_node_t old[DHT_MAX_SUCC];
  int n_old = d->n_succ;
  memcpy(old, d->succ, sizeof(old));
  memcpy(d->succ, list, (size_t)n * sizeof(*list));
  d->n_succ = n;
  if (n && (n_old == 0 || !dht__node_eq(&old[0], &d->succ[0]))) {
    node_log("successor", &d->succ[0]);
    d->check_ok = false; /* a new successor is confirmed by a self check */
  }
  dht__ring_changed(d);
  dht__repl_succ_changed(d, old, n_old);
  notify_watch(d);
  /* Our predecessor copies its list from ours: tell it to look now rather
   * than at its next quiet round, up to 30 s away. */
  if (d->has_pred && d->joined) poke(d, &d->pred, &d->self);
}

static void pred_set(dht_t *d, const dht_node_t *p) {
  dht_node_t old = d->pred;
  bool had = d->has_pred;
  if (had && p && dht__node_eq(&old, p)) return;
  /* A predecessor we dropped as dead still tells which range we inherit. */
  had = had || d->pred_valid;
  d->has_pred = p != NULL;
  if (p) {
    d->pred_valid = true;
    d->pred = *p;
    d->pred_seen = uv_now(d->loop);
    node_log("predecessor", p);
  }
  dht__ring_changed(d);
  if (p) dht__repl_pred_changed(d, &old, had);
  notify_watch(d);
}

/* Simple requests ---------------------------------------------------------- */

static void ignore_reply(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                         void *arg) {}

static void send_self(dht_t *d, const dht_node_t *to, uint8_t type, dht__rpc_cb cb, void *arg) {
  uint8_t body[64];
  long n = proto_node_encode(body, sizeof(body), &d->self_wire);
  if (dht__rpc_call(d, to, type, body, (size_t)n, cb ? cb : ignore_reply, arg) && cb)
    cb(d, -ECONNREFUSED, NULL, to, arg);
}

/* Tell a node the ring changed next to it, naming the node it should look
 * at (its likely new successor), so it can act without waiting a round. */
static void poke(dht_t *d, const dht_node_t *to, const dht_node_t *news) {
  uint8_t body[64];
  proto_node_t pn;
  dht__node_to_proto(news, &pn);
  long n = proto_node_encode(body, sizeof(body), &pn);
  if (!is_self(d, to)) dht__rpc_call(d, to, PROTO_POKE, body, (size_t)n, ignore_reply, NULL);
}

/* NOTIFY_R and POKE carry a node worth a look (or nothing). */
static void saw_in_body(dht_t *d, const uint8_t *body, size_t len) {
  proto_node_t pn;
  dht_node_t x;
  if (len == 0 || proto_node_decode(body, len, &pn)) return;
  dht__node_from_proto(&pn, &x);
  dht__ring_saw(d, &x);
}

/* Stabilize ---------------------------------------------------------------- */

static void on_self_check(dht_t *d, int status, const dht_node_t *nodes, int n, int hops,
                          const dht_id_t *path, int path_len, void *arg) {
  d->check_inflight = false;
  if (d->leaving) return;
  /* A failed check proves nothing either way; don't spin on it. */
  d->check_ok = true;
  for (int i = 0; status == 0 && i < n; i++) dht__ring_saw(d, &nodes[i]);
}

/* Stabilize repairs a ring locally but cannot undo a "loopy" state, where
 * every node agrees with its neighbours yet the ring winds round twice;
 * concurrent joins can leave one.  Asking a far-away node who follows us
 * crosses into the other loop, and ring_saw() adopts the answer. */
static void self_check(dht_t *d) {
  /* Pick one far node uniformly (reservoir sampling over the distinct
   * fingers and the bootstrap node) without an array on the stack. */
  const dht_node_t *pick = NULL, *prev = NULL;
  int n = 0;
  for (int i = 0; i <= DHT_BITS; i++) {
    /* With TLS the bootstrap node is a stranger once we have fingers:
     * asking it would cost a handshake every few rounds. */
    bool boot = d->has_boot && (!d->tls || n == 0 || dht__rpc_linked(d, &d->boot));
    const dht_node_t *x = i < DHT_BITS ? (d->finger_ok[i] ? &d->finger[i] : NULL)
                                       : (boot ? &d->boot : NULL);
    if (!x || is_self(d, x) || dht__node_eq(x, &d->succ[0]) || (prev && dht__node_eq(prev, x)))
      continue;
    prev = x;
    if (dht__rand(d) % (unsigned)++n == 0) pick = x;
  }
  if (!pick || d->check_inflight) {
    d->check_ok = pick ? d->check_ok : true;
    return;
  }
  /* Our own id: in a sound ring our predecessor answers, naming us and
   * our successors; in a loopy one a node of the other loop answers with
   * a node that lies between us and our successor. */
  if (dht__lookup_upkeep(d, &d->self.id, pick, on_self_check, NULL) == 0) d->check_inflight = true;
}

static int ping_check(dht_t *d, const dht_node_t *x);

/* With TLS the links to the nodes dht__ring_keeps() names are kept however
 * idle (rpc.c), and routed requests and lookups go over them: such a node
 * we have no link to (a successor we only heard of, a finger a routed
 * lookup found, a link its opener closed because we are not in its table)
 * is linked now, a few per round, rather than in the middle of a routed
 * request.  A PING that gets no answer drops it from the table. */
#define LINKS_PER_ROUND 4

/* The first successors, those that hold copies of our keys and one more
 * to fail over to.  The rest of the list is known from the first
 * successor's answers and linked once it moves up: each link is ~20 KB of
 * OpenSSL state at both ends, and keeping links to all 8 successors made
 * 27 links per node at N = 500 where this makes ~20 (docs/BENCHMARKS.md). */
static int succ_kept(const dht_t *d) { return d->n_succ < d->replicas ? d->n_succ : d->replicas; }

static void link_table(dht_t *d) {
  const dht_node_t *t[1 + DHT_MAX_SUCC + DHT_BITS];
  int n = 0, made = 0;
  if (d->has_pred) t[n++] = &d->pred;
  for (int i = 0; i < succ_kept(d); i++) t[n++] = &d->succ[i];
  for (int i = 0; i < DHT_BITS; i++)
    if (d->finger_ok[i] && (n == 0 || !dht__node_eq(&d->finger[i], t[n - 1])))
      t[n++] = &d->finger[i];
  for (int i = 0; i < n && made < LINKS_PER_ROUND; i++) {
    if (is_self(d, t[i]) || dht__rpc_linked(d, t[i])) continue;
    made++;
    dht_node_t x = *t[i];
    if (ping_check(d, &x) == -EHOSTUNREACH) {
      dht__ring_forget(d, &x); /* the table changed under t: stop here */
      return;
    }
  }
}

static void stab_done(dht_t *d, bool settled) {
  d->stab_inflight = 0;
  if (d->leaving) return;
  /* While the ring settles every round repairs fingers and checks for a
   * loop; once quiet, every fourth and eighth round do, which keeps an
   * idle overlay's traffic to a few bytes per second per node. */
  bool quiet = d->stab_interval >= d->stab_max / 2;
  unsigned round = d->stab_rounds++;
  fix_finger(d, !quiet || round % 4 == 0);
  if (d->tls) link_table(d);
  if (d->n_succ && (!d->check_ok || !quiet || round % 8 == 0)) self_check(d);
  settled = settled && d->check_ok;
  /* Predecessors notify us every round of theirs; one silent for three of
   * the longest rounds is gone. */
  if (d->has_pred && uv_now(d->loop) - d->pred_seen > 3ull * d->stab_max) {
    node_log("predecessor silent, dropping", &d->pred);
    d->has_pred = false;
    dht__ring_changed(d);
  }
  stab_schedule(d, d->stab_interval);
  /* Back off only once our successor names us as its predecessor: until
   * then the ring next to us is still settling. */
  if (!settled) {
    d->stab_interval = d->stab_min;
  } else if (d->stab_interval < d->stab_max) {
    d->stab_interval *= 4; /* 250 ms to 30 s in four quiet rounds */
    if (d->stab_interval > d->stab_max) d->stab_interval = d->stab_max;
  }
}

/* The first successor that takes us as its predecessor hands us our range
 * when it gets our JOIN (or already had us).  The JOIN went to the
 * successor the join lookup named, which can be one too far: the node
 * that belongs in between restarted a moment ago, and the node that
 * answered the lookup has not adopted it again.  The one named has the
 * restarted node as its predecessor, so it neither takes us nor hands
 * anything over; and the true successor, when stabilizing brings us to
 * it, sees a predecessor with the id it had before (we restarted with our
 * old id), not a new node in between, so it hands nothing over either.
 * Ask it now. */
static void join_done(dht_t *d) {
  if (!d->join_pending) return;
  d->join_pending = false;
  if (dht__node_eq(&d->join_to, &d->stab_target)) return;
  node_log("join: our JOIN went elsewhere; asking for our range", &d->stab_target);
  send_self(d, &d->stab_target, PROTO_JOIN, NULL, NULL);
}

static void on_neigh(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                     void *arg) {
  if (d->leaving) return;
  proto_neigh_r_t r;
  if (status || proto_neigh_r_decode(f->body, f->body_len, &r)) {
    /* peer has no id when the connection never got a HELLO (refused):
     * forget the node we asked, whoever answered. */
    dht__ring_forget(d, &d->stab_target);
    stab_done(d, false);
    return;
  }
  dht_node_t rest[PROTO_MAX_NODES], list[DHT_MAX_SUCC], succ = d->succ[0];
  /* A node we found dead moments ago and the successor still lists (it
   * has not noticed yet, or lies) comes back only once it answers a
   * ping: taken on its word, it returned after every forget. */
  int nr = 0;
  for (int i = 0; i < r.n; i++) {
    dht__node_from_proto(&r.succ[i], &rest[nr]);
    if (!is_self(d, &rest[nr]) && dead_recently(d, &rest[nr])) revive_check(d, &rest[nr]);
    else nr++;
  }
  if (r.has_pred) {
    dht_node_t p;
    dht__node_from_proto(&r.pred, &p);
    if (!is_self(d, &p) && dead_recently(d, &p) && dht__between(&p.id, &d->self.id, &succ.id))
      revive_check(d, &p);
    else if (!is_self(d, &p) && dht__between(&p.id, &d->self.id, &succ.id)) {
      /* Someone joined between us and our successor. */
      dht_node_t two[PROTO_MAX_NODES + 1];
      two[0] = succ;
      memcpy(two + 1, rest, (size_t)nr * sizeof(*rest));
      succ_set(d, list, succ_build(d, &p, two, nr + 1, list));
      /* Ask the new successor at once: after a burst of joins the right
       * successor may be several steps away, and each step only moves
       * closer to us, so this ends. */
      d->stab_inflight = 0;
      stabilize(d);
      return;
    }
  }
  /* A successor that knows fewer successors than we do (it just started,
   * or lost some) must not shorten our list: keep our entries that lie
   * beyond the end of its list. */
  int n_rest = nr;
  const dht_id_t *last = n_rest ? &rest[n_rest - 1].id : &succ.id;
  for (int i = 1; i < d->n_succ && n_rest < PROTO_MAX_NODES && n_rest + 1 < d->nsucc; i++)
    if (dht__between(&d->succ[i].id, last, &d->self.id)) {
      rest[n_rest++] = d->succ[i];
      last = &d->succ[i].id;
    }
  succ_set(d, list, succ_build(d, &succ, rest, n_rest, list));
  bool settled = r.has_pred && memcmp(r.pred.id, d->self.id.b, DHT_ID_LEN) == 0;
  if (settled) join_done(d);
  stab_done(d, settled);
}

static void on_join_lookup(dht_t *d, int status, const dht_node_t *nodes, int n, int hops,
                           const dht_id_t *path, int path_len, void *arg);
static void join_retry(dht_t *d);

/* Everyone we knew is gone: found dead, perhaps wrongly (on a starved
 * machine timeouts look like deaths, and the nodes we knew may have dropped
 * us alike).  A node alone is no ring and nobody would come back to it, so
 * it joins again as at start: through a finger it still knows, else its
 * bootstrap addresses, retrying until it has a successor.  The ring's
 * founder (no bootstrap address, no finger) waits for the others. */
static bool rejoin(dht_t *d) {
  const dht_node_t *via = NULL;
  for (int i = 0; i < DHT_BITS && !via; i++)
    if (d->finger_ok[i]) via = &d->finger[i];
  if (!via && d->n_bootstrap == 0) return false;
  d->joined = false;
  d->split_all = true; /* once joined, look for another ring (split_check()) */
  d->stats.rejoins++;
  log_warn("lost every neighbour; joining again through %s", via ? "a finger" : "the bootstrap nodes");
  if (!via || dht__lookup_via(d, &d->self.id, via, on_join_lookup, NULL)) join_retry(d);
  return true;
}

static void stabilize(dht_t *d) {
  if (d->stab_inflight || d->leaving || !d->joined) return;
  if (d->n_succ == 0) {
    /* Alone (or everyone we knew is gone): a predecessor, if any, is the
     * only other node we know. */
    if (d->has_pred) {
      succ_set(d, &d->pred, 1);
    } else {
      if (!rejoin(d)) stab_done(d, true);
      return;
    }
  }
  d->stab_inflight = 1;
  d->stab_target = d->succ[0];
  uint8_t body[64];
  long n = proto_node_encode(body, sizeof(body), &d->self_wire);
  if (dht__rpc_call(d, &d->succ[0], PROTO_NEIGH, body, (size_t)n, on_neigh, NULL)) {
    dht__ring_forget(d, &d->succ[0]);
    stab_done(d, false);
  }
}

static void on_stab_timer(uv_timer_t *t) { stabilize(t->data); }

static void stab_schedule(dht_t *d, unsigned ms) {
  /* Jitter of up to a quarter keeps hundreds of nodes started together
   * from stabilizing in lockstep. */
  unsigned jitter = ms / 4 ? dht__rand(d) % (ms / 4) : 0;
  uv_timer_start(&d->stab_timer, on_stab_timer, ms - ms / 8 + jitter, 0);
}

void dht__ring_changed(dht_t *d) {
  if (d->leaving || d->closed) return;
  d->stab_interval = d->stab_min;
  if (!d->joined || d->stab_inflight) return; /* stab_done() will schedule */
  if (!uv_is_active((uv_handle_t *)&d->stab_timer) ||
      uv_timer_get_due_in(&d->stab_timer) > d->stab_min)
    stab_schedule(d, d->stab_min);
}

/* Fingers ------------------------------------------------------------------ */

/* At most ids_per_net distinct fingers in one /24 or /48: someone who
 * holds many certificates (or, in the open mode, many ids) on one network
 * cannot fill our routing table.  Successors are exempt: they must be the
 * true ones. */
static bool finger_room(const dht_t *d, const dht_node_t *x) {
  if (!d->limits.ids_per_net) return true;
  unsigned same = 0;
  const dht_node_t *prev = NULL;
  for (int i = 0; i < DHT_BITS; i++) {
    if (!d->finger_ok[i] || (prev && dht__node_eq(prev, &d->finger[i]))) continue;
    prev = &d->finger[i];
    if (dht__node_eq(prev, x)) return true;
    same += dht_addr_same_net(&prev->addr, &x->addr, 24, 48);
  }
  return same < d->limits.ids_per_net;
}


static void on_finger(dht_t *d, int status, const dht_node_t *nodes, int n, int hops,
                      const dht_id_t *path, int path_len, void *arg) {
  int i = (int)(intptr_t)arg;
  if (status || n == 0 || d->leaving) return;
  if (!finger_room(d, &nodes[0])) {
    d->stats.refused_net++;
    return;
  }
  d->finger[i] = nodes[0];
  d->finger_ok[i] = true;
}

/* Fingers are filled with one lookup each.  Entries whose start falls
 * before the previous finger share it, so a ring of N nodes needs about
 * log2(N) lookups for all 160.  Missing entries are looked up at once (a
 * few per round); known ones are refreshed one per call when refresh is
 * set, so that a quiet ring does not keep asking what it knows. */
static void fix_finger(dht_t *d, bool refresh) {
  if (d->n_succ == 0) return;
  int lookups = 0;
  for (int tries = 0; tries < DHT_BITS && lookups < 3; tries++) {
    int i = d->next_finger;
    dht_id_t start;
    dht__id_add_pow2(&d->self.id, i, &start);
    const dht_node_t *same = NULL;
    if (dht__between_incl(&start, &d->self.id, &d->succ[0].id))
      same = &d->succ[0];
    else if (i > 0 && d->finger_ok[i - 1] &&
             dht__between_incl(&start, &d->self.id, &d->finger[i - 1].id))
      same = &d->finger[i - 1];
    if (same) {
      d->finger[i] = *same;
      d->finger_ok[i] = true;
    } else if (!d->finger_ok[i] || refresh) {
      refresh = false;
      lookups++;
      dht__lookup_upkeep(d, &start, NULL, on_finger, (void *)(intptr_t)i);
    } else {
      break; /* known and not due: resume here next time */
    }
    d->next_finger = (i + 1) % DHT_BITS;
  }
}

/* Second-hand nodes ---------------------------------------------------------
 *
 * In the secured mode a node named by someone else (a lookup answer, a
 * POKE, a NOTIFY answer) becomes a successor or finger only once it has
 * answered a PING on a connection whose certificate carries its id: a peer
 * cannot slip a node id of its choosing, or another node's address, into
 * our tables.  Nodes that passed are remembered in a small direct-mapped
 * cache, so a node is pinged once, not once per answer that names it.
 */
#define VOUCH_INFLIGHT 8

static dht_id_t *vouch_slot(dht_t *d, const dht_id_t *id) {
  return &d->vouched[id->b[DHT_ID_LEN - 1] % DHT_VOUCHED];
}

static void adopt(dht_t *d, const dht_node_t *x);

static void on_vouch_ping(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                          void *arg) {
  dht_node_t *x = arg;
  d->vouch_inflight--;
  if (status == 0 && !d->leaving && dht__node_eq(peer, x)) {
    *vouch_slot(d, &x->id) = x->id;
    adopt(d, x);
  }
  free(x);
}

/* Would adopt() take x as a successor or a finger?  Only then is a
 * second-hand node worth a ping (a TLS handshake, most of the time): a
 * joining node hears of dozens, and checking each made a join storm of
 * hundreds of nodes feed itself. */
static bool would_adopt(const dht_t *d, const dht_node_t *x) {
  if (d->joined && d->n_succ > 0 && dht__between(&x->id, &d->self.id, &d->succ[0].id)) return true;
  for (int i = dht__id_top_bit(&x->id, &d->self.id); i >= 0; i--) {
    if (!d->finger_ok[i]) continue;
    return dht__between(&x->id, &d->self.id, &d->finger[i].id) && !dht__node_eq(x, &d->finger[i]);
  }
  return false;
}

void dht__ring_saw(dht_t *d, const dht_node_t *x) {
  if (is_self(d, x) || d->leaving || dead_recently(d, x)) return;
  if (!d->tls || dht__id_eq(vouch_slot(d, &x->id), &x->id)) {
    adopt(d, x);
    return;
  }
  if (!would_adopt(d, x)) return;
  if (d->vouch_inflight >= VOUCH_INFLIGHT) return; /* it will be named again */
  dht_node_t *copy = malloc(sizeof(*copy));
  if (!copy) return;
  *copy = *x;
  if (dht__rpc_call(d, x, PROTO_PING, NULL, 0, on_vouch_ping, copy)) free(copy);
  else d->vouch_inflight++;
}

static void adopt(dht_t *d, const dht_node_t *x) {
  /* A live node we just heard from may be a closer finger than what we
   * have: taking it costs nothing and shortens lookups early on. */
  if (is_self(d, x) || d->leaving || dead_recently(d, x)) return;
  if (d->joined && d->n_succ > 0 && dht__between(&x->id, &d->self.id, &d->succ[0].id)) {
    /* A live node between us and our successor: it is a better successor.
     * After a burst of joins this finds the right one far sooner than
     * walking predecessor pointers one stabilize round at a time. */
    dht_node_t list[DHT_MAX_SUCC];
    succ_set(d, list, succ_build(d, x, d->succ, d->n_succ, list));
    if (!d->stab_inflight) stabilize(d);
  }
  /* x lies in [start_j, start_j+1) for j = the top bit of x - self, so it
   * can only improve fingers 0..j; going down from j, once a finger is
   * not beyond x none below is (fingers grow with their index).  This runs
   * for every node of every lookup answer: keep it short. */
  int j = dht__id_top_bit(&x->id, &d->self.id);
  if (d->limits.ids_per_net && !finger_room(d, x)) {
    d->stats.refused_net++;
    return;
  }
  for (int i = j; i >= 0; i--) {
    if (!d->finger_ok[i]) continue;
    if (!dht__between(&x->id, &d->self.id, &d->finger[i].id)) break;
    d->finger[i] = *x;
  }
}

int dht__closest_preceding(const dht_t *d, const dht_id_t *key, dht_node_t *out, int max) {
  int n = 0;
  const dht_node_t *cand[DHT_BITS + DHT_MAX_SUCC + 1];
  int nc = 0;
  for (int i = DHT_BITS - 1; i >= 0; i--)
    if (d->finger_ok[i] && (i == DHT_BITS - 1 || !d->finger_ok[i + 1] ||
                            !dht__node_eq(&d->finger[i], &d->finger[i + 1])))
      cand[nc++] = &d->finger[i];
  for (int i = 0; i < d->n_succ; i++) cand[nc++] = &d->succ[i];
  if (d->has_pred) cand[nc++] = &d->pred;
  /* Insertion into out, ordered by closeness to key (closest first). */
  for (int i = 0; i < nc; i++) {
    const dht_node_t *c = cand[i];
    if (!dht__between(&c->id, &d->self.id, key)) continue;
    bool dup = false;
    for (int j = 0; j < n && !dup; j++) dup = dht__node_eq(&out[j], c);
    if (dup) continue;
    int pos = n;
    while (pos > 0 && dht__between(&c->id, &out[pos - 1].id, key)) pos--;
    if (pos >= max) continue;
    if (n < max) n++;
    memmove(&out[pos + 1], &out[pos], (size_t)(n - 1 - pos) * sizeof(*out));
    out[pos] = *c;
  }
  return n;
}

static bool table_has(const dht_t *d, const dht_node_t *x, int n_succ) {
  if (d->has_pred && dht__node_eq(&d->pred, x)) return true;
  for (int i = 0; i < n_succ; i++)
    if (dht__node_eq(&d->succ[i], x)) return true;
  for (int i = 0; i < DHT_BITS; i++)
    if (d->finger_ok[i] && dht__node_eq(&d->finger[i], x)) return true;
  return false;
}

bool dht__ring_knows(const dht_t *d, const dht_node_t *x) { return table_has(d, x, d->n_succ); }

bool dht__ring_keeps(const dht_t *d, const dht_node_t *x) { return table_has(d, x, succ_kept(d)); }

/* died: found dead (not a graceful leave), which the dht_on_dead()
 * callback hears of the first time. */
static void forget(dht_t *d, const dht_node_t *node, bool died) {
  if (is_self(d, node)) return;
  /* node may point into d->succ, which succ_set() rewrites. */
  const dht_node_t copy = *node, *x = &copy;
  bool fresh = died && !dead_recently(d, x);
  node_log("forgetting", x);
  dead_add(d, x);
  dht_node_t list[DHT_MAX_SUCC];
  int n = 0;
  for (int i = 0; i < d->n_succ; i++)
    if (!dht__node_eq(&d->succ[i], x)) list[n++] = d->succ[i];
  if (n != d->n_succ) succ_set(d, list, n);
  if (d->has_pred && dht__node_eq(&d->pred, x)) {
    /* Keep the old value in d->pred: the next notify compares against it
     * to learn which key range we inherited. */
    d->has_pred = false;
    dht__ring_changed(d);
  }
  for (int i = 0; i < DHT_BITS; i++)
    if (d->finger_ok[i] && dht__node_eq(&d->finger[i], x)) d->finger_ok[i] = false;
  if (d->has_boot && dht__node_eq(&d->boot, x)) d->has_boot = false;
  dht__rpc_drop(d, &x->addr);
  if (fresh && d->dead_cb && !d->leaving) d->dead_cb(d, x, d->dead_arg);
}

void dht__ring_forget(dht_t *d, const dht_node_t *x) { forget(d, x, true); }

bool dht__is_primary(const dht_t *d, const dht_id_t *key) {
  if (d->n_succ == 0) return true;
  if (!d->has_pred) return false;
  return dht__between_incl(key, &d->pred.id, &d->self.id);
}

/* A connection to a neighbour closed: that is how a crash shows up on a
 * LAN, long before any timeout.  Check at once. */
static void on_ping_check(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                          void *arg) {
  dht_node_t *x = arg;
  if (status) dht__ring_forget(d, x);
  free(x);
}

/* PING x and forget it if it does not answer: 0, -ENOMEM, or
 * -EHOSTUNREACH when the PING could not even be sent. */
static int ping_check(dht_t *d, const dht_node_t *x) {
  dht_node_t *copy = malloc(sizeof(*copy));
  if (!copy) return -ENOMEM;
  *copy = *x;
  if (dht__rpc_call(d, x, PROTO_PING, NULL, 0, on_ping_check, copy) == 0) return 0;
  free(copy);
  return -EHOSTUNREACH;
}

void dht__peer_lost(dht_t *d, const dht_node_t *peer) {
  if (d->leaving) return;
  /* The predecessor and the successors that hold our replicas are checked
   * at once: a dead replica left in the list would leave our keys with one
   * copy fewer until it reached the head of the list. */
  bool neighbour = d->has_pred && dht__node_eq(&d->pred, peer);
  for (int i = 0; i < d->n_succ && i < d->replicas - 1 && !neighbour; i++)
    neighbour = dht__node_eq(&d->succ[i], peer);
  if (d->n_succ && dht__node_eq(&d->succ[0], peer)) neighbour = true;
  if (!neighbour) return;
  if (ping_check(d, peer) == -EHOSTUNREACH) dht__ring_forget(d, peer);
}

/* Requests ----------------------------------------------------------------- */

/* NEIGH, NOTIFY and JOIN name the node that sends them (a LEAVE is about
 * its sender by construction): a node may speak only for itself, as its
 * HELLO (certified in the secured mode) says who it is.  Otherwise anyone
 * could make us adopt a predecessor of its choosing or hand a range of
 * keys to it. */
static int claim_is_peer(dht_t *d, const dht_node_t *x, const dht_node_t *peer, int type) {
  if (dht__node_eq(x, peer) && dht_addr_eq(&x->addr, &peer->addr)) return 0;
  char a[64], who[DHT_ID_HEX], named[DHT_ID_HEX];
  dht_addr_str(&peer->addr, a, sizeof(a));
  dht_id_hex(&peer->id, who);
  dht_id_hex(&x->id, named);
  d->stats.auth_refused++;
  log_warn("%s from %.8s (%s) names another node, %.8s: refused", dht_frame_name(type), who, a, named);
  return PROTO_EINVAL;
}

static void on_notify(dht_t *d, const dht_node_t *x) {
  if (is_self(d, x)) return;
  dead_clear(d, x);
  if (d->has_pred && dht__node_eq(&d->pred, x)) {
    d->pred_seen = uv_now(d->loop);
    return;
  }
  if (d->has_pred && !dht__between(&x->id, &d->pred.id, &d->self.id)) return;
  dht_node_t old = d->pred;
  bool had = d->has_pred;
  pred_set(d, x);
  /* Tell the old predecessor that its successor is now x. */
  if (had && !dht__node_eq(&old, x)) poke(d, &old, x);
  if (d->n_succ == 0 && d->joined) succ_set(d, x, 1); /* a ring of one grows to two */
}

static void on_leave(dht_t *d, const dht_node_t *x, const proto_neigh_r_t *r) {
  node_log("neighbour leaving", x);
  if (d->n_succ && dht__node_eq(&d->succ[0], x)) {
    dht_node_t rest[PROTO_MAX_NODES], list[DHT_MAX_SUCC];
    for (int i = 0; i < r->n; i++) dht__node_from_proto(&r->succ[i], &rest[i]);
    int n = succ_build(d, NULL, rest, r->n, list);
    succ_set(d, list, n);
  }
  if (d->has_pred && dht__node_eq(&d->pred, x)) {
    if (r->has_pred) {
      dht_node_t p;
      dht__node_from_proto(&r->pred, &p);
      if (!is_self(d, &p)) {
        pred_set(d, &p);
      } else {
        d->has_pred = false;
      }
    } else {
      d->has_pred = false;
    }
  }
  forget(d, x, false);
}

static long encode_neigh(const dht_t *d, uint8_t *buf, size_t len) {
  proto_neigh_r_t r = {.has_pred = d->has_pred, .n = 0};
  if (d->has_pred) dht__node_to_proto(&d->pred, &r.pred);
  for (int i = 0; i < d->n_succ && i < PROTO_MAX_NODES; i++)
    dht__node_to_proto(&d->succ[i], &r.succ[r.n++]);
  return proto_neigh_r_encode(buf, len, &r);
}

int dht__ring_on_request(dht_t *d, dht__conn_t *c, const proto_frame_t *f, const dht_node_t *peer) {
  uint8_t buf[64 + (PROTO_MAX_NODES + 1) * 40];
  long n = 0;
  proto_node_t pn;
  proto_neigh_r_t r;
  dht_node_t x;
  int err;
  switch (f->type) {
  case PROTO_PING:
    n = proto_node_encode(buf, sizeof(buf), &d->self_wire);
    break;
  case PROTO_NEIGH:
    /* A NEIGH that names its sender is also a notify: one round trip per
     * stabilize round instead of two, and the answer already tells the
     * sender whether we took it as predecessor. */
    if (f->body_len) {
      if ((err = proto_node_decode(f->body, f->body_len, &pn))) return err;
      dht__node_from_proto(&pn, &x);
      if ((err = claim_is_peer(d, &x, peer, f->type))) return err;
      on_notify(d, &x);
    }
    n = encode_neigh(d, buf, sizeof(buf));
    break;
  case PROTO_NOTIFY:
    if ((err = proto_node_decode(f->body, f->body_len, &pn))) return err;
    dht__node_from_proto(&pn, &x);
    if ((err = claim_is_peer(d, &x, peer, f->type))) return err;
    on_notify(d, &x);
    /* Answer with our predecessor: if it lies between the notifier and
     * us, the notifier has the wrong successor and learns the right one. */
    if (d->has_pred && !dht__node_eq(&d->pred, &x)) {
      dht__node_to_proto(&d->pred, &pn);
      n = proto_node_encode(buf, sizeof(buf), &pn);
    }
    break;
  case PROTO_LEAVE:
    if ((err = proto_neigh_r_decode(f->body, f->body_len, &r))) return err;
    on_leave(d, peer, &r);
    break;
  case PROTO_JOIN:
    if ((err = proto_node_decode(f->body, f->body_len, &pn))) return err;
    dht__node_from_proto(&pn, &x);
    if ((err = claim_is_peer(d, &x, peer, f->type))) return err;
    on_notify(d, &x);
    if (d->has_pred && dht__node_eq(&d->pred, &x)) {
      if (dht__conn_first_join(c)) dht__repl_give_range(d, &x);
      else d->stats.joins_repeated++;
    }
    break;
  case PROTO_POKE:
    dht__ring_changed(d);
    saw_in_body(d, f->body, f->body_len);
    break;
  default:
    return 0;
  }
  if (n < 0) fatalx("cannot encode a reply: %s", proto_strerror((int)n));
  dht__rpc_reply(d, c, f->type + 1, f->txid, buf, (size_t)n);
  return 0;
}

/* A split ring ---------------------------------------------------------------
 *
 * An outage can leave two rings, each sound, whose nodes know only each
 * other: after every node found itself alone, some rejoined through one
 * bootstrap address or finger and some through another (test_outage: a
 * ring of the first two nodes and one of the other four, for good).
 * Stabilize and the self check only ask nodes of one's own ring.  So a
 * node looks its own id up through each of its bootstrap addresses
 * SPLIT_SOON_MS after it rejoined (or at once when the admin command
 * check-split asks: dht_split_check()), and through the next one every
 * SPLIT_CHECK_MS: in its own ring the answer is itself; in another, the
 * node its id falls before there, which it tells about itself (NOTIFY).
 * That node takes it as predecessor, whose predecessor then finds it by
 * stabilizing, and the two rings become one.  A check is a PING and a
 * lookup: a handshake every ten minutes per node in the secured mode. */
#define SPLIT_SOON_MS 2000
#define SPLIT_CHECK_MS (10 * 60 * 1000)
#define SPLIT_ADDRS_MAX 8 /* bootstrap addresses asked at once after a rejoin or check-split */

/* SPLIT_CHECK_MS +-12.5 %: nodes started together do not ask together. */
static unsigned split_wait(dht_t *d) {
  return SPLIT_CHECK_MS - SPLIT_CHECK_MS / 8 + dht__rand(d) % (SPLIT_CHECK_MS / 4);
}

static void on_split_notify_r(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                              void *arg) {
  if (status == 0 && !d->leaving) saw_in_body(d, f->body, f->body_len);
}

static void on_split_lookup(dht_t *d, int status, const dht_node_t *nodes, int n, int hops,
                            const dht_id_t *path, int path_len, void *arg) {
  if (status || n == 0 || d->leaving || !d->joined) return;
  for (int i = 0; i < n; i++) dht__ring_saw(d, &nodes[i]);
  if (is_self(d, &nodes[0]) || (d->n_succ && dht__node_eq(&nodes[0], &d->succ[0]))) return;
  char id[DHT_ID_HEX], a[64];
  dht_id_hex(&nodes[0].id, id);
  dht_addr_str(&nodes[0].addr, a, sizeof(a));
  d->stats.ring_splits++;
  log_warn("split check: another ring holds our id at %.8s %s; telling it we exist", id, a);
  send_self(d, &nodes[0], PROTO_NOTIFY, on_split_notify_r, NULL);
}

static void on_split_ping(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                          void *arg) {
  proto_node_t pn;
  if (status || d->leaving || proto_node_decode(f->body, f->body_len, &pn)) return;
  dht_node_t b;
  dht__node_from_proto(&pn, &b);
  if (!is_self(d, &b)) dht__lookup_via(d, &d->self.id, &b, on_split_lookup, NULL);
}

/* Bootstrap addresses the next check asks: all (up to SPLIT_ADDRS_MAX)
 * after a rejoin or check-split, else the next one. */
static int split_count(const dht_t *d) {
  int n = d->split_all ? d->n_bootstrap : 1;
  return n < SPLIT_ADDRS_MAX ? n : SPLIT_ADDRS_MAX;
}

static void on_split_timer(uv_timer_t *t) {
  dht_t *d = t->data;
  if (d->leaving) return;
  int count = split_count(d);
  d->split_all = false;
  for (int i = 0; d->joined && i < count; i++) {
    dht_node_t b = {.addr = d->bootstrap[d->split_next++ % (unsigned)d->n_bootstrap]}; /* id unknown yet */
    dht__rpc_call(d, &b, PROTO_PING, NULL, 0, on_split_ping, NULL);
  }
  uv_timer_start(&d->split_timer, on_split_timer, split_wait(d), 0);
}

int dht_split_check(dht_t *d) {
  if (d->n_bootstrap == 0) return -ENOENT;
  if (!d->joined || d->leaving) return -EAGAIN;
  d->split_all = true;
  uv_timer_start(&d->split_timer, on_split_timer, 0, 0);
  return split_count(d);
}

/* Join --------------------------------------------------------------------- */

static void set_joined(dht_t *d) {
  d->joined = true;
  d->join_wait_ms = 0;
  dht__owned_joined(d);
}

static void on_join_lookup(dht_t *d, int status, const dht_node_t *nodes, int n, int hops,
                           const dht_id_t *path, int path_len, void *arg) {
  if (d->leaving) return;
  dht_node_t list[DHT_MAX_SUCC];
  /* Others may know us already (a notify can arrive before our join
   * lookup returns, or we rejoin with the same id): then the answer starts
   * with us, and our successors follow. */
  int skip = 0;
  while (status == 0 && skip < n && is_self(d, &nodes[skip])) skip++;
  int k = status ? 0 : succ_build(d, NULL, nodes + skip, n - skip, list);
  if (status == 0 && k == 0 && d->has_boot && !is_self(d, &d->boot)) {
    /* Only we are known where we belong (a successor whose list still
     * ends at our old self): start from the bootstrap node and let
     * stabilization walk us into place. */
    list[k++] = d->boot;
  }
  if (k == 0) {
    log_warn("join: no successor found (%s); retrying", status ? "lookup failed" : "empty answer");
    join_retry(d);
    return;
  }
  d->joined = true;
  d->join_wait_ms = 0;
  succ_set(d, list, k);
  log_info("joined the overlay after %d hops", hops);
  if (d->n_bootstrap > 0)
    uv_timer_start(&d->split_timer, on_split_timer, d->split_all ? SPLIT_SOON_MS : split_wait(d), 0);
  /* Ask for our key range explicitly: if we rejoin with the id we had, our
   * successor sees no new predecessor and would not hand anything over. */
  send_self(d, &d->succ[0], PROTO_JOIN, NULL, NULL);
  d->join_to = d->succ[0];
  d->join_pending = true;
  dht__ring_changed(d);
  stabilize(d);
  dht__owned_joined(d);
}

static void on_bootstrap_ping(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                              void *arg) {
  proto_node_t pn;
  if (d->leaving) return;
  if (status || proto_node_decode(f->body, f->body_len, &pn)) {
    char a[64];
    dht_addr_str(&peer->addr, a, sizeof(a));
    log_warn("bootstrap %s: %s; retrying", a, status ? "no answer" : "bad answer");
    join_retry(d);
    return;
  }
  dht_node_t b;
  dht__node_from_proto(&pn, &b);
  if (is_self(d, &b)) { /* we are our own bootstrap: a new ring */
    set_joined(d);
    dht__ring_changed(d);
    return;
  }
  d->boot = b;
  d->has_boot = true;
  if (dht__lookup_via(d, &d->self.id, &b, on_join_lookup, NULL)) join_retry(d);
}

static void join_try(uv_timer_t *t) {
  dht_t *d = t->data;
  if (d->n_bootstrap == 0) { /* a founder whose rejoin through a finger failed */
    set_joined(d);
    dht__ring_changed(d);
    return;
  }
  dht_node_t b = {.addr = d->bootstrap[d->join_attempt++ % (unsigned)d->n_bootstrap]}; /* id unknown yet */
  if (dht__rpc_call(d, &b, PROTO_PING, NULL, 0, on_bootstrap_ping, NULL)) join_retry(d);
}

/* 1 s, doubling to 16 s, each +-25 %: hundreds of nodes that failed at once
 * (a bootstrap node starved of CPU by their handshakes) must not all come
 * back in the same second, or each round of retries starves it again. */
static void join_retry(dht_t *d) {
  if (d->leaving) return;
  unsigned ms = d->join_wait_ms ? d->join_wait_ms : 1000;
  d->join_wait_ms = ms >= 8000 ? 16000 : 2 * ms;
  uv_timer_start(&d->join_timer, join_try, ms - ms / 4 + dht__rand(d) % (ms / 2), 0);
}

void dht__ring_start(dht_t *d) {
  d->stab_interval = d->stab_min;
  if (d->n_bootstrap == 0) {
    set_joined(d);
    log_info("started a new ring");
    stab_schedule(d, d->stab_min);
    return;
  }
  uv_timer_start(&d->join_timer, join_try, 0, 0);
}
