/*
 * Internal state of the dht module, shared by its files:
 *   id.c     identifier arithmetic, SHA-1, addresses
 *   addr.c   address ranges and the special-purpose set (public API only)
 *   store.c  the values this node holds, with expiry
 *   rpc.c    connections, framing, transaction ids, timeouts
 *   ring.c   Chord: join, stabilize, notify, fingers, leave
 *   ops.c    iterative lookup, put, get, owner refresh, replication
 *   route.c  routed puts and gets (secured mode)
 * Non-static functions shared between them carry the dht__ prefix.
 */
#ifndef P2PSIP_DHT_INTERNAL_H
#define P2PSIP_DHT_INTERNAL_H

#include <stdbool.h>

#include "dht/dht.h"
#include "proto/proto.h"

#define DHT_BITS 160

/* Identifier arithmetic ---------------------------------------------------- */

int dht__id_cmp(const dht_id_t *a, const dht_id_t *b);
bool dht__id_eq(const dht_id_t *a, const dht_id_t *b);
/* x in the ring interval (a, b); with a == b the interval is the whole ring
 * but a itself, as Chord needs for a ring of one. */
bool dht__between(const dht_id_t *x, const dht_id_t *a, const dht_id_t *b);
/* x in (a, b] */
bool dht__between_incl(const dht_id_t *x, const dht_id_t *a, const dht_id_t *b);
/* The index of the highest bit set in (x - base) mod 2^160, or -1 if x ==
 * base: x lies in [base + 2^i, base + 2^(i+1)). */
int dht__id_top_bit(const dht_id_t *x, const dht_id_t *base);
/* out = id + 2^bit mod 2^160 */
void dht__id_add_pow2(const dht_id_t *id, int bit, dht_id_t *out);
bool dht__node_eq(const dht_node_t *a, const dht_node_t *b);

void dht__node_to_proto(const dht_node_t *n, proto_node_t *p);
void dht__node_from_proto(const proto_node_t *p, dht_node_t *n);

/* Store -------------------------------------------------------------------- */

typedef struct dht__value {
  char *vid;
  uint8_t vid_len;
  uint8_t kind, flags;
  dht_id_t owner;
  uint64_t seq;
  uint64_t expires; /* loop time, ms */
  uint8_t *body;
  uint32_t body_len;
  /* PROTO_VF_SIGNED: as signed (the secured mode); cert holds the DER
   * certificate and the signature after it. */
  uint64_t expires_abs; /* unix seconds */
  uint8_t *cert;
  uint16_t cert_len;
  dht_id_t signer; /* who may replace it: the node id, or SHA-1 of the user's AOR */
} dht__value_t;

typedef struct dht__key {
  dht_id_t key;
  struct dht__key *next; /* hash chain */
  dht__value_t *values;
  int n, cap;
  uint64_t confirmed; /* loop time of the last STORE that named this key */
  size_t bytes;       /* the values' wire size (a FETCH answer less its header) */
  uint32_t *index;    /* by value id, once there are more than a few (store.c) */
  uint32_t index_cap;
  bool index_stale;
} dht__key_t;

typedef struct dht__owner dht__owner_t; /* what one owner holds here (store.c) */

typedef struct {
  dht__key_t **buckets;
  size_t nbuckets, nkeys, nvalues;
  dht__owner_t **owners;
  size_t owners_nb, owners_n;
} dht__store_t;

/* Why dht__store_admit() refuses a value. */
enum { DHT__FULL_KEY = 1, DHT__FULL_OWNER_KEY, DHT__FULL_OWNER };

void dht__store_init(dht__store_t *s);
void dht__store_free(dht__store_t *s);
dht__key_t *dht__store_find(dht__store_t *s, const dht_id_t *key);
/* Apply one value (newer sequence wins; same sequence keeps the later
 * expiry).  signer: who signed it (secured mode), or NULL.  Returns 1 if
 * it changed the store, 0 if it was older. */
int dht__store_apply(dht__store_t *s, const dht_id_t *key, const proto_value_t *v,
                     const dht_id_t *signer, uint64_t now);
/* Whether the store may take `in` under key from its signer (secured
 * mode) or owner (open mode) within the limits: 0, or DHT__FULL_*. */
int dht__store_admit(dht__store_t *s, const dht_id_t *key, const proto_value_t *in,
                     const dht_id_t *signer, const dht_limits_t *lim);
/* The value with id vid under k, or NULL. */
dht__value_t *dht__store_value(dht__key_t *k, const uint8_t *vid, size_t len);
/* Drop values whose expiry passed; returns how many. */
size_t dht__store_sweep(dht__store_t *s, uint64_t now);
/* Drop every key for which drop(k, arg) is true; returns how many. */
size_t dht__store_drop_keys(dht__store_t *s, bool (*drop)(const dht__key_t *k, void *arg), void *arg);
/* Call fn for every key. fn must not change the store. */
void dht__store_each(dht__store_t *s, void (*fn)(dht__key_t *k, void *arg), void *arg);
size_t dht__store_live(const dht__store_t *s, uint64_t now);
/* Live values (not expired, not tombstones) of one key. */
int dht__store_live_in(const dht__key_t *k, uint64_t now);
/* Encode the values of k with a second or more to live (tombstones
 * included) into a STORE body; same: as PROTO_VF_SAME refreshes. */
long dht__store_encode(const dht__key_t *k, uint8_t flags, bool same, uint64_t now, uint8_t *buf,
                       size_t len);
/* A PROTO_VF_SAME refresh: extend the version held (a signed one no
 * further than its signed expiry; wall: unix seconds).  1 if held, else 0. */
int dht__store_refresh(dht__store_t *s, const dht_id_t *key, const proto_value_t *in, uint64_t now,
                       int64_t wall);
/* Bytes a STORE of k needs at most. */
size_t dht__store_encoded_size(const dht__key_t *k);

/* Access (access.c) --------------------------------------------------------- */

/* Longest life a value of kind may have, in seconds. */
uint32_t dht__ttl_cap(uint8_t kind);
/* May v be stored under key here?  old: the version held now, or NULL.
 * NULL with *signer (secured mode) and *ttl (the life to keep it for) set,
 * or the reason for refusing it. */
const char *dht__value_check(dht_t *d, const dht_id_t *key, const proto_value_t *v,
                             const dht__value_t *old, dht_id_t *signer, uint32_t *ttl);
/* Log a refused value: who sent it (NULL: ourselves), under which key, why. */
void dht__log_refused(dht_t *d, const dht_node_t *from, const dht_id_t *key,
                      const proto_value_t *v, const char *why);

/* RPC ---------------------------------------------------------------------- */

typedef struct dht__conn dht__conn_t;

/* Response callback: status 0 with the frame, or a negative code (timeout,
 * connection lost) with frame NULL. */
typedef void (*dht__rpc_cb)(dht_t *d, int status, const proto_frame_t *frame,
                            const dht_node_t *peer, void *arg);

int dht__rpc_listen(dht_t *d);
/* Bind t, before it connects to `to`, to our listen address when that is a
 * specific one, so that the peer sees us at the address we publish (a host
 * with several addresses would otherwise pick the route's source). */
int dht__bind_source(dht_t *d, uv_tcp_t *t, const struct sockaddr_storage *to);
/* Send a request to node `to` and call cb with its response.  It goes on
 * our own connection to to->addr, or on one to->id opened to us (its id
 * certified in the secured mode; in the open mode nothing is): a node
 * behind a NAT can be reached only that way.  Returns 0 or a negative code
 * (then cb is never called).  Returns before sending. */
int dht__rpc_call(dht_t *d, const dht_node_t *to, uint8_t type, const uint8_t *body, size_t len,
                  dht__rpc_cb cb, void *arg);
/* Send a request that asks for no answer (dht__rpc_call without a pending
 * call: an answer that comes anyway is dropped as one after its timeout). */
int dht__rpc_send(dht_t *d, const dht_node_t *to, uint8_t type, const uint8_t *body, size_t len);
/* Is there a link up to node to already (no connect, no handshake)? */
bool dht__rpc_linked(dht_t *d, const dht_node_t *to);
void dht__rpc_reply(dht_t *d, dht__conn_t *c, uint8_t type, uint32_t txid,
                    const uint8_t *body, size_t len);
/* Fail pending calls to addr and close its connections (a node we found
 * dead, or we are leaving). */
void dht__rpc_drop(dht_t *d, const struct sockaddr_storage *addr);
void dht__rpc_close_all(dht_t *d);
/* Close connections idle for a couple of minutes. */
void dht__rpc_reap(dht_t *d);
/* Dispatch an incoming request (ring.c / ops.c). */
/* Returns 0, or a negative PROTO_E* code when the request body is
 * malformed: the caller then drops the connection. */
int dht__handle_request(dht_t *d, dht__conn_t *c, const proto_frame_t *f,
                        const dht_node_t *peer);
/* Keep c from being freed while an answer to it is pending (a STORE that
 * waits for its replicas); every ref needs an unref. */
void dht__conn_ref(dht__conn_t *c);
void dht__conn_unref(dht__conn_t *c);
/* The address of the other end of a connection. */
const struct sockaddr_storage *dht__conn_remote(const dht__conn_t *c);
/* True for the first JOIN a link carries, false after: the range we hand
 * a JOIN goes once per link (a node that restarted comes on a new one),
 * so a peer cannot make us send everything we hold again and again. */
bool dht__conn_first_join(dht__conn_t *c);
/* REACH requests (reach.c). */
int dht__reach_answer(dht_t *d, dht__conn_t *c, const proto_frame_t *f);
/* Ends every probe in flight (dht_close). */
void dht__reach_close(dht_t *d);
/* A connection to a peer went away (ring.c uses this to notice deaths). */
void dht__peer_lost(dht_t *d, const dht_node_t *peer);

/* Answers and routed requests (route.c) ------------------------------------ */

/* Where the answer to a request goes: back on the link it came on, or
 * (routed) inside a ROUTE_R back along the path the request took. */
typedef struct {
  dht__conn_t *conn;
  uint32_t txid;
  bool routed;
  uint8_t hops; /* routed: hops the request took */
} dht__reply_t;

void dht__answer(dht_t *d, const dht__reply_t *to, uint8_t type, const uint8_t *body, size_t len);
/* Are puts and gets routed?  In the secured mode, once joined. */
bool dht__route_on(const dht_t *d);
/* The answer to a routed request: status 0 with r (valid during the call
 * only; r->type and r->body hold the inner response, r->responder who
 * gave it), or a negative code (timeout, no route) with r NULL. */
typedef void (*dht__route_cb)(dht_t *d, int status, const proto_route_r_t *r, void *arg);
#define DHT__ROUTE_HERE 1 /* dht__route_send(): this node answers it itself */
/* Send an inner request (type, body) towards the node responsible for key,
 * or skip successors after it.  Returns 0 (cb will be called),
 * DHT__ROUTE_HERE, or a negative code (cb is never called). */
int dht__route_send(dht_t *d, const dht_id_t *key, uint8_t skip, uint8_t type, const uint8_t *body,
                    size_t len, dht__route_cb cb, void *arg);
/* The same with via as the first hop instead of our own choice. */
int dht__route_via(dht_t *d, const dht_node_t *via, const dht_id_t *key, uint8_t type,
                   const uint8_t *body, size_t len, dht__route_cb cb, void *arg);
/* The same to our n-th successor (n >= 1), from successor to successor:
 * the links of ring upkeep, where a direct link to it may be down. */
int dht__route_succ(dht_t *d, const dht_id_t *key, uint8_t n, uint8_t type, const uint8_t *body,
                    size_t len, dht__route_cb cb, void *arg);
/* An incoming ROUTE: pass it on, or answer it here through ops.c. */
int dht__route_answer(dht_t *d, dht__conn_t *c, const proto_frame_t *f);
/* Answer a FIND, STORE or FETCH (ops.c); from: who sent it (routed: the origin
 * the request names, for logs only).  0, or a negative PROTO_E* code for
 * a malformed body. */
int dht__ops_answer(dht_t *d, const dht__reply_t *to, const proto_frame_t *f,
                    const dht_node_t *from);

/* Ring --------------------------------------------------------------------- */

void dht__ring_start(dht_t *d);
void dht__ring_changed(dht_t *d); /* speed up upkeep after a change */
/* Closest nodes we know that precede key, best first; returns count. */
int dht__closest_preceding(const dht_t *d, const dht_id_t *key, dht_node_t *out, int max);
/* Is x our predecessor, a successor or a finger? */
bool dht__ring_knows(const dht_t *d, const dht_node_t *x);
/* Is x a node whose link the secured mode keeps however idle and links
 * ahead of need: our predecessor, a finger, or one of the first `replicas`
 * successors (those holding our keys' copies, and one more)? */
bool dht__ring_keeps(const dht_t *d, const dht_node_t *x);
/* Node x looks dead: remove it from every table. */
void dht__ring_forget(dht_t *d, const dht_node_t *x);
/* Learn of a live node (fills fingers opportunistically). */
void dht__ring_saw(dht_t *d, const dht_node_t *x);
bool dht__is_primary(const dht_t *d, const dht_id_t *key);
int dht__ring_on_request(dht_t *d, dht__conn_t *c, const proto_frame_t *f, const dht_node_t *peer);

/* Ops ---------------------------------------------------------------------- */

typedef void (*dht__lookup_cb)(dht_t *d, int status, const dht_node_t *nodes, int n,
                               int hops, const dht_id_t *path, int path_len, void *arg);
/* Iterative lookup; nodes[0] is the successor of key, then its successors. */
int dht__lookup(dht_t *d, const dht_id_t *key, dht__lookup_cb cb, void *arg);
/* Same, starting from the given node instead of our own tables (join). */
int dht__lookup_via(dht_t *d, const dht_id_t *key, const dht_node_t *start,
                    dht__lookup_cb cb, void *arg);
/* A lookup of ring upkeep (fingers, the loop check; start: the first node
 * to ask, or NULL): in the secured mode a FIND routed over existing links
 * to the key's owner, whose answer is the result (hops: the route's;
 * path: none), else or on failure the iterative lookup. */
int dht__lookup_upkeep(dht_t *d, const dht_id_t *key, const dht_node_t *start,
                       dht__lookup_cb cb, void *arg);
/* Replication upkeep after ring changes. */
/* Push every key we are primary for to our replicas, as refreshes (the
 * periodic round: replicas ask for what they lack). */
void dht__repl_repair_now(dht_t *d);
void dht__repl_succ_changed(dht_t *d, const dht_node_t *old, int n_old);
void dht__repl_pred_changed(dht_t *d, const dht_node_t *old, bool had_old);
/* Push to x, our new predecessor, every key we hold outside (x, self]. */
void dht__repl_give_range(dht_t *d, const dht_node_t *x);
void dht__repl_handover(dht_t *d, const dht_node_t *to, int n_to, dht__rpc_cb cb, void *arg);
void dht__owned_refresh_all(dht_t *d);
/* The node has just joined: send the puts made before (ops.c). */
void dht__owned_joined(dht_t *d);
/* Drop keys this node no longer replicates (see ops.c). */
void dht__repl_drop_stale(dht_t *d);
void dht__ops_close(dht_t *d);
/* Closing: run the deferred calls still waiting (ops.c). */
void dht__defers_run(dht_t *d);
void dht__copies_flush(dht_t *d); /* sends the one-way copies gathered so far (ops.c) */

/* The node ----------------------------------------------------------------- */

/* A random number from the node's own generator, seeded per process. */
uint32_t dht__rand(dht_t *d);

typedef struct dht__owned dht__owned_t;

struct dht {
  uv_loop_t *loop;
  char overlay[PROTO_MAX_OVERLAY + 1];
  dht_node_t self;
  proto_node_t self_wire;
  int replicas, nsucc;
  unsigned stab_min, stab_max, refresh_ms, rpc_timeout;
  struct sockaddr_storage *bootstrap;
  int n_bootstrap;

  /* Ring state. */
  dht_node_t pred;
  bool has_pred;
  bool pred_valid; /* pred holds a former predecessor even when !has_pred */
  uint64_t pred_seen; /* loop time of its last notify */
  dht_node_t succ[DHT_MAX_SUCC];
  int n_succ;
  dht_node_t finger[DHT_BITS];
  bool finger_ok[DHT_BITS];
  int next_finger;
  bool joined;
  bool leaving, closed;
  unsigned stab_interval;
  uv_timer_t stab_timer;
  uv_timer_t join_timer;
  unsigned join_attempt;  /* bootstrap addresses are tried in turn */
  unsigned join_wait_ms;  /* the next retry's wait: grows while joins fail */
  int stab_inflight;
  dht_node_t stab_target; /* the successor a NEIGH in flight went to */
  dht_node_t boot; /* the bootstrap node we joined through */
  dht_node_t join_to; /* the successor our JOIN went to (ring.c) */
  bool join_pending;  /* no successor has taken us as predecessor since we joined */
#define DHT_DEAD_SLOTS 16
  struct {
    dht_id_t id;
    uint64_t at; /* loop time it was found dead; 0: free */
  } dead[DHT_DEAD_SLOTS]; /* ring.c */
  bool has_boot;
  uv_timer_t split_timer; /* looks for another ring through the bootstrap addresses (ring.c) */
  unsigned split_next;    /* the bootstrap address it asks next */
  bool split_all;         /* rejoined, or asked: ask them all, soon */
  bool check_ok, check_inflight; /* self_check() in ring.c */
#define DHT_VOUCHED 64
  dht_id_t vouched[DHT_VOUCHED]; /* secured mode: second-hand nodes that answered (ring.c) */
  int vouch_inflight;
  unsigned stab_rounds;

  /* Transport. */
  struct ssl_ctx_st *tls; /* secured mode: the TLS context (SSL_CTX); NULL: open */
  dht_cert_ca_t *ca;          /* secured mode: checks certificates and values */
  const dht_cert_creds_t *creds; /* secured mode: signs our values */
  uv_tcp_t listener;
  dht__conn_t *conns;
  dht__conn_t *dirty;    /* links with frames to write this iteration (rpc.c) */
  uv_idle_t flush_idle;  /* writes them when sent outside the poll phase */
  uv_check_t flush_check; /* writes them after the poll phase */
  uv_timer_t hold_timer;  /* writes what busy links held back (rpc_flush_all) */
  unsigned link_hold_ms;  /* dht_config_t link_hold_ms */
  size_t frame_bytes; /* unfinished frames held, all connections (rpc.c) */
  uint32_t next_txid;
  unsigned srtt8; /* answered requests' round trip, ms x 8, smoothed (rpc.c) */
#define DHT_PENDING_SLOTS 1024 /* txids are consecutive: a power of two spreads them evenly */
  struct dht__pending *pending; /* calls in flight, newest first (rpc.c) */
  struct dht__pending *pending_tab[DHT_PENDING_SLOTS]; /* the same, by txid */

  /* Data. */
  dht__store_t store;
  dht__owned_t **owned; /* hash table by key (ops.c) */
  struct join_wait *join_waits; /* puts made before the join (ops.c) */
  size_t owned_nb, owned_n;
  uv_timer_t refresh_timer;
  uv_timer_t sweep_timer;
  uv_timer_t repair_timer;
  uv_timer_t owned_timer; /* owner refresh after ring changes (ops.c) */
  uv_timer_t pace_timer;  /* the next batch of an owner refresh (ops.c) */
  uv_timer_t copy_timer;  /* sends the gathered one-way copies (ops.c) */
  struct dht__recent *recent; /* primaries lookups found lately (ops.c), or NULL */
  struct dht__ends *ends;     /* nodes lookups ended at lately (ops.c), or NULL */
  struct dht__prims *prims;   /* ranges of primaries dht_get_primary() found (ops.c), or NULL */
  struct dht__defer *defers;    /* deferred calls not yet run (ops.c) */
  struct dht__probe *probes;    /* REACH probes in flight (reach.c) */
  struct dht__batches *batches; /* an owner refresh's STOREs by primary (ops.c), or NULL */
  struct dht__copies *copies;   /* one-way copies gathered by replica (ops.c), or NULL */
  size_t pace_bucket;     /* where the refresh under way resumes */
  bool pacing, pace_again; /* a refresh is under way; another was asked for meanwhile */
  uv_timer_t leave_timer;
  int handover_sent; /* STOREs of a leave still unanswered */
  unsigned refresh_rounds;
  int leave_waiting;

  dht_succ_cb watch_cb;
  void *watch_arg;
  dht_dead_cb dead_cb;
  void *dead_arg;
  dht_left_cb left_cb;
  void *left_arg;
  dht_stats_t stats;
  dht_limits_t limits;
  uint64_t rng; /* dht__rand() state */
};

#endif
