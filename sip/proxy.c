/*
 * The stateful proxy (RFC 3261 section 16).
 *
 * One sip_ptx_t per request we forward: it owns the server transaction and
 * the request as received, and one branch per target (a client
 * transaction).  Responses are chosen as 16.7 says: provisional and 2xx
 * responses go upstream at once, a final non-2xx only once every branch is
 * final, the best one.  A CANCEL from upstream cancels every live branch.
 * A branch sent to a proxy peer carries the other peers as alternatives and
 * moves to the next on a timeout, a 408 or a 5xx (issue: "fails over").
 *
 * ACK for a 2xx is not a transaction: it is routed the same way and sent
 * statelessly, as are 2xx retransmissions nta matches to no transaction.
 *
 * Lifetime: a ptx is freed when it is finished and nothing holds it; DHT
 * lookups and our own stack frames around nta calls (which may call back
 * synchronously) hold references.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sofia-sip/sip_tag.h>
#include <sofia-sip/su_uniqueid.h>

#include "sip/sip_int.h"

typedef struct {
  sip_ptx_t *t;
  nta_outgoing_t *orq;
  char *ruri;  /* new Request-URI, or NULL: keep */
  char *route; /* Route to push on top ("<sip:..;lr>"), or NULL */
  char *next;  /* where to send (nta's route_url), or NULL: nta decides */
  sip_peer_t *peers; /* alternatives when sent through a proxy peer */
  int n_peers, peer_i;
  su_timer_t *failover;
  int status;
  unsigned live : 1, answered : 1, provisional : 1;
} sip_branch_t;

struct sip_ptx {
  sip_svc_t *s;
  sip_ptx_t *next, **prevp;
  int refs;
  int src;             /* the source's slot (limit.c), or -1 */
  nta_incoming_t *irq; /* NULL for ACK: nothing to answer */
  msg_t *msg;
  sip_t *sip;
  sip_method_t method;
  char hash[17];
  const char *rr; /* Record-Route to add, or NULL */
  char *aor;      /* the user record located, or NULL */
  uint32_t targets; /* signature of the bindings the branches went to */
  unsigned cancelled : 1, replied : 1, finished : 1;
  unsigned cached : 1, relocated : 1; /* targets from the cache; looked up again */
  sip_branch_t br[SIP_MAX_BRANCHES];
  int n_br, n_live;
  int best_status;
  msg_t *best; /* best final non-2xx so far (our Via removed), or NULL */
  sip_binding_t *held; /* targets waiting for the proxy peer list, or NULL */
  size_t n_held;
};

static void branch_send(sip_branch_t *b);

/* ---- lifetime ---------------------------------------------------------- */

static void drop_branches(sip_ptx_t *t)
{
  for (int i = 0; i < t->n_br; i++) {
    sip_branch_t *b = &t->br[i];
    su_timer_destroy(b->failover);
    if (b->orq)
      nta_outgoing_destroy(b->orq);
    free(b->ruri), free(b->route), free(b->next), free(b->peers);
  }
  t->n_br = t->n_live = 0;
}

static void drop_held(sip_ptx_t *t)
{
  for (size_t i = 0; i < t->n_held; i++)
    sip__binding_clear(&t->held[i]);
  free(t->held);
  t->held = NULL, t->n_held = 0;
}

static void ptx_free(sip_ptx_t *t)
{
  drop_branches(t);
  drop_held(t);
  if (t->irq)
    nta_incoming_destroy(t->irq);
  msg_destroy(t->msg);
  msg_destroy(t->best);
  free(t->aor);
  sip__limit_release(t->s, t->src);
  *t->prevp = t->next;
  if (t->next)
    t->next->prevp = t->prevp;
  t->s->n_ptx--;
  free(t);
}

static void ptx_hold(sip_ptx_t *t)
{
  t->refs++;
}

static void ptx_release(sip_ptx_t *t)
{
  if (--t->refs == 0 && t->finished)
    ptx_free(t);
}

static void ptx_finish(sip_ptx_t *t)
{
  t->finished = 1;
  ptx_hold(t);
  ptx_release(t);
}

static sip_ptx_t *ptx_new(sip_svc_t *s, nta_incoming_t *irq, msg_t *msg, sip_t *sip,
                          const char *hash, int src)
{
  sip_ptx_t *t = calloc(1, sizeof *t);
  if (!t)
    return NULL;
  t->s = s, t->irq = irq, t->msg = msg, t->sip = sip, t->src = src;
  sip__limit_hold(s, src);
  t->method = sip->sip_request->rq_method;
  memcpy(t->hash, hash, sizeof t->hash);
  t->next = s->ptx;
  if (s->ptx)
    s->ptx->prevp = &t->next;
  t->prevp = &s->ptx;
  s->ptx = t;
  s->n_ptx++;
  return t;
}

void sip__proxy_free_all(sip_svc_t *s)
{
  while (s->ptx)
    ptx_free(s->ptx);
}

/* ---- answering upstream ------------------------------------------------ */

static void reply_status(sip_ptx_t *t, int status)
{
  if (t->replied || !t->irq)
    return;
  t->replied = 1;
  if (status == 503) /* RFC 3261 16.7 step 6 */
    status = 500;
  nta_incoming_treply(t->irq, status, sip_status_phrase(status), TAG_END());
}

/* Fails the request before any branch exists. */
static void fail(sip_ptx_t *t, int status)
{
  reply_status(t, status);
  ptx_finish(t);
}

/* Sends the response nta received on orq upstream, minus our Via. */
static void forward_response(sip_ptx_t *t, nta_outgoing_t *orq)
{
  msg_t *msg = nta_outgoing_getresponse(orq);
  if (!msg)
    return;
  if (!t->irq || nta_msg_is_internal(msg)) {
    msg_destroy(msg);
    return;
  }
  sip_via_remove(msg, sip_object(msg));
  if (nta_incoming_mreply(t->irq, msg) == 0)
    t->s->c.responses_fwd++;
}

/* RFC 3261 16.7 step 6, simplified: a 6xx wins, then the lowest class;
 * within 4xx the challenges; our own timeouts come last. */
static int rank(int status, int internal)
{
  if (internal)
    return 900;
  if (status >= 600)
    return 0;
  if (status == 401 || status == 407)
    return 350;
  return status;
}

static void keep_best(sip_ptx_t *t, nta_outgoing_t *orq, int status)
{
  msg_t *msg = nta_outgoing_getresponse(orq);
  int internal = !msg || nta_msg_is_internal(msg);
  int best_internal = !t->best;
  if (t->best_status && rank(status, internal) >= rank(t->best_status, best_internal)) {
    msg_destroy(msg);
    return;
  }
  msg_destroy(t->best);
  t->best = NULL;
  t->best_status = status;
  if (!internal) {
    sip_via_remove(msg, sip_object(msg));
    t->best = msg;
  } else {
    msg_destroy(msg);
  }
}

static void send_best(sip_ptx_t *t)
{
  if (t->replied || !t->irq)
    return;
  if (t->best && t->best_status != 503) {
    t->replied = 1;
    msg_t *m = t->best;
    t->best = NULL;
    if (nta_incoming_mreply(t->irq, m) == 0)
      t->s->c.responses_fwd++;
    return;
  }
  reply_status(t, t->best_status ? t->best_status : 408);
}

/* ---- branches ---------------------------------------------------------- */

static void cancel_branches(sip_ptx_t *t, const sip_branch_t *except)
{
  if (t->method != sip_method_invite)
    return;
  ptx_hold(t); /* nta may answer a CANCEL synchronously */
  for (int i = 0; i < t->n_br; i++) {
    sip_branch_t *b = &t->br[i];
    if (b != except && b->live && b->orq && b->status < 200)
      nta_outgoing_tcancel(b->orq, NULL, NULL, TAG_END());
  }
  ptx_release(t);
}

static void locate(sip_ptx_t *t, unsigned max_ms);

/* Final answers that may mean the user record we used is stale: the
 * contact or its node is gone, or the record says so. */
static int may_be_stale(int status)
{
  return status == 404 || status == 408 || status == 410 || status == 480 || status >= 500;
}

/* Every branch to targets from the cache failed as a stale record would
 * make them fail: forget the record and look the user up again in the DHT
 * (once), so that a phone that moved meets no failed call.  1: doing so. */
static int relocate(sip_ptx_t *t)
{
  if (!t->aor || !t->cached || t->relocated || t->cancelled || t->replied || !t->irq ||
      !may_be_stale(t->best_status ? t->best_status : 408))
    return 0;
  t->relocated = 1;
  t->s->c.stale++;
  sip__dht_forget(t->s, t->aor);
  drop_branches(t);
  locate(t, 0);
  return 1;
}

static void branch_done(sip_branch_t *b)
{
  sip_ptx_t *t = b->t;
  if (!b->live)
    return;
  b->live = 0;
  su_timer_reset(b->failover);
  if (--t->n_live > 0 || relocate(t))
    return;
  if (t->aor && !t->replied && may_be_stale(t->best_status ? t->best_status : 408))
    sip__dht_forget(t->s, t->aor);
  send_best(t);
  ptx_finish(t);
}

/* The branch went to a proxy peer that did not answer well: try the next
 * one, unless something already went upstream. */
static int try_next_peer(sip_branch_t *b, int status)
{
  sip_ptx_t *t = b->t;
  if (!b->peers || b->peer_i + 1 >= b->n_peers || b->provisional || t->cancelled ||
      (status != 408 && (status < 500 || status >= 600)))
    return 0;
  t->s->c.peer_failover++;
  sip__peer_failed(t->s, b->peers[b->peer_i].uri);
  log_info("proxy peer %s failed (%d), trying %s", b->peers[b->peer_i].uri,
           status, b->peers[b->peer_i + 1].uri);
  if (b->orq)
    nta_outgoing_destroy(b->orq);
  b->orq = NULL;
  b->answered = 0, b->status = 0;
  b->peer_i++;
  free(b->next);
  b->next = strdup(sip__peer_next(t->s, &b->peers[b->peer_i]));
  branch_send(b);
  return 1;
}

static int on_response(nta_outgoing_magic_t *magic, nta_outgoing_t *orq, sip_t const *sip)
{
  sip_branch_t *b = (sip_branch_t *)magic;
  sip_ptx_t *t = b->t;
  if (orq != b->orq && b->orq)
    return 0; /* an old transaction of a branch that moved on */
  b->orq = orq;
  int status = sip && sip->sip_status ? sip->sip_status->st_status : nta_outgoing_status(orq);
  b->answered = 1;
  su_timer_reset(b->failover);
  ptx_hold(t);
  if (status < 200) {
    if (status > 100 && !t->replied) {
      b->provisional = 1;
      forward_response(t, orq);
    }
  } else if (status < 300) {
    b->status = status;
    forward_response(t, orq); /* every 2xx goes up (16.7 step 5) */
    t->replied = 1;
    cancel_branches(t, b);
    branch_done(b);
  } else if (!try_next_peer(b, status)) {
    b->status = status;
    keep_best(t, orq, status);
    if (status >= 600)
      cancel_branches(t, b);
    branch_done(b);
  }
  ptx_release(t);
  return 0;
}

static void on_failover(su_root_magic_t *m, su_timer_t *timer, su_timer_arg_t *arg)
{
  sip_branch_t *b = (sip_branch_t *)arg;
  sip_ptx_t *t = b->t;
  if (b->answered || !b->live)
    return;
  ptx_hold(t);
  try_next_peer(b, 408); /* on the last peer, nta's own timeout decides */
  ptx_release(t);
}

/* Builds this branch's copy of the request and sends it. */
static msg_t *branch_request(sip_branch_t *b)
{
  sip_ptx_t *t = b->t;
  msg_t *msg = msg_dup(t->msg);
  if (!msg)
    return NULL;
  sip_t *sip = sip_object(msg);
  su_home_t *home = msg_home(msg);
  int err = 0;
  if (b->ruri) {
    sip_request_t *rq = sip_request_create(home, t->method, sip->sip_request->rq_method_name,
                                           URL_STRING_MAKE(b->ruri), NULL);
    err |= !rq || msg_header_insert(msg, (msg_pub_t *)sip, (msg_header_t *)rq) < 0;
  }
  if (b->route) {
    sip_route_t *r = sip_route_make(home, b->route);
    err |= !r || msg_header_prepend(msg, (msg_pub_t *)sip, (msg_header_t **)&sip->sip_route,
                                    (msg_header_t *)r) < 0;
  }
  if (t->rr) {
    sip_record_route_t *rr = sip_record_route_make(home, t->rr);
    err |= !rr || msg_header_insert(msg, (msg_pub_t *)sip, (msg_header_t *)rr) < 0;
  }
  if (err) {
    msg_destroy(msg);
    return NULL;
  }
  return msg;
}

static void branch_send(sip_branch_t *b)
{
  sip_ptx_t *t = b->t;
  sip_svc_t *s = t->s;
  msg_t *msg = branch_request(b);
  char key[64];
  snprintf(key, sizeof key, "z9hG4bK.p2p%s.%08x", t->hash, (unsigned)su_randint(0, 0x7fffffff));
  url_string_t *next = b->next ? URL_STRING_MAKE(b->next) : NULL;
  if (!msg) {
    b->status = 500;
    branch_done(b);
    return;
  }
  if (!t->irq) { /* ACK: stateless, nothing comes back */
    nta_outgoing_t *o = nta_outgoing_mcreate(s->agent, NULL, NULL, next, msg,
                                             NTATAG_STATELESS(1), TAG_END());
    if (!o)
      msg_destroy(msg);
    else
      s->c.acks_fwd++;
    b->status = 200;
    branch_done(b);
    return;
  }
  ptx_hold(t);
  nta_outgoing_t *orq = nta_outgoing_mcreate(s->agent, on_response, (nta_outgoing_magic_t *)b,
                                             next, msg, NTATAG_BRANCH_KEY(key),
                                             NTATAG_PASS_100(1), TAG_END());
  if (!orq) {
    msg_destroy(msg);
    if (!try_next_peer(b, 503)) {
      b->status = 503;
      if (!t->best_status)
        t->best_status = 503;
      branch_done(b);
    }
  } else {
    if (!b->orq)
      b->orq = orq;
    if (b->peers && b->live && !b->answered)
      su_timer_set_interval(b->failover, on_failover, (su_timer_arg_t *)b, SIP_FAILOVER_MS);
  }
  ptx_release(t);
}

/* Adds a branch; it is sent by start_branches(). */
static sip_branch_t *add_branch(sip_ptx_t *t, const char *ruri, const char *route,
                                const char *next)
{
  if (t->n_br >= SIP_MAX_BRANCHES)
    return NULL;
  sip_branch_t *b = &t->br[t->n_br];
  memset(b, 0, sizeof *b);
  b->t = t;
  b->ruri = ruri ? strdup(ruri) : NULL;
  b->route = route ? strdup(route) : NULL;
  b->next = next ? strdup(next) : NULL;
  if ((ruri && !b->ruri) || (route && !b->route) || (next && !b->next)) {
    free(b->ruri), free(b->route), free(b->next);
    return NULL;
  }
  t->n_br++;
  return b;
}

static void start_branches(sip_ptx_t *t)
{
  if (t->n_br == 0) {
    fail(t, 500);
    return;
  }
  ptx_hold(t);
  for (int i = 0; i < t->n_br; i++)
    t->br[i].live = 1;
  t->n_live = t->n_br;
  t->s->c.proxied++;
  for (int i = 0; i < t->n_br; i++) {
    t->br[i].failover = t->br[i].peers ? su_timer_create(su_root_task(sip__loop_root(t->s->loop)),
                                                         SIP_FAILOVER_MS)
                                       : NULL;
    branch_send(&t->br[i]);
  }
  ptx_release(t);
}

/* ---- targets ----------------------------------------------------------- */

/* Where to send a request for a contact registered through this node: to
 * the address the REGISTER came from, so that it crosses the phone's NAT
 * (and reuses its TCP connection), as RFC 3327 Path and RFC 5626 intend. */
static const char *local_flow(const sip_svc_t *s, const url_t *contact, char *buf, size_t len)
{
  const sip_reg_t *r = sip__reg_by_contact(s, contact);
  return r ? sip__reg_flow(r, buf, len) : NULL;
}

static void target_direct(sip_ptx_t *t)
{
  char flow[128];
  const char *next = NULL;
  if (!t->sip->sip_route)
    next = local_flow(t->s, t->sip->sip_request->rq_url, flow, sizeof flow);
  if (!add_branch(t, NULL, NULL, next)) {
    fail(t, 500);
    return;
  }
  start_branches(t);
}

static int by_q(const void *a, const void *b)
{
  return ((const sip_binding_t *)b)->q1000 - ((const sip_binding_t *)a)->q1000;
}

/* The proxy peer of the list at uri ("sip:IP:PORT"), or NULL. */
static const sip_peer_t *known_peer(const sip_svc_t *s, const char *uri)
{
  for (int i = 0; i < s->n_peers; i++)
    if (strcmp(s->peers[i].uri, uri) == 0)
      return &s->peers[i];
  return NULL;
}

/* The hop to the proxy peer a record names as a node's edge: its TLS
 * address when we know it (the secured mode), where it tells us from a
 * stranger (edge.c), which it must: the next hop, the node's reflexive
 * address, is a target it forwards to for nodes only. */
static const char *edge_hop(const sip_svc_t *s, const char *edge)
{
  const sip_peer_t *p = known_peer(s, edge);
  return p ? sip__peer_next(s, p) : edge;
}

/* The secured mode: whether a binding names an edge (not us) whose TLS
 * address the proxy peer list does not give.  Sent to its plain address,
 * the edge takes the request for a stranger's and refuses to carry it
 * into the NAT (403, or 407 on a node with users); the list may just be
 * older than the edge (a proxy peer reads it again every
 * SIP_PEER_REPUBLISH_MS, another node when it needs a proxy peer, and a
 * read can come back without a value the DHT holds). */
static int edge_unknown(const sip_svc_t *s, const sip_binding_t *bs, size_t n)
{
  if (!s->tls_hostport[0])
    return 0;
  int unknown = 0;
  su_home_t home[1];
  su_home_init(home);
  for (size_t i = 0; i < n && !unknown; i++) {
    if (!sip__binding_hop_ok(bs[i].path) || !sip__binding_hop_ok(bs[i].edge))
      continue;
    const sip_peer_t *p = known_peer(s, bs[i].edge);
    url_t *path = url_make(home, bs[i].path), *edge = url_make(home, bs[i].edge);
    unknown = path && edge && !sip__uri_is_self(s, path) && !sip__uri_is_self(s, edge) &&
              (!p || !p->tls[0]);
  }
  su_home_deinit(home);
  return unknown;
}

/* One branch per live binding, best q first (parallel forking).  A binding
 * registered through this node goes to its phone's flow; one registered
 * elsewhere gets Route <path;lr> pushed (RFC 3327-like), and a node behind
 * a NAT is reached through the proxy peer holding its flow: <edge;lr>
 * first (flow.c; left out when that peer is this node). */
static void fork_to(sip_ptx_t *t, sip_binding_t *bs, size_t n)
{
  sip_svc_t *s = t->s;
  char flow[128];
  qsort(bs, n, sizeof *bs, by_q);
  su_home_t home[1];
  su_home_init(home);
  int local = 0;
  for (size_t i = 0; i < n; i++) {
    url_t *path = sip__binding_hop_ok(bs[i].path) ? url_make(home, bs[i].path) : NULL;
    url_t *edge = sip__binding_hop_ok(bs[i].edge) ? url_make(home, bs[i].edge) : NULL;
    if (!path)
      continue;
    if (sip__uri_is_self(s, path)) {
      url_t *u = url_make(home, bs[i].uri);
      add_branch(t, bs[i].uri, NULL, u ? local_flow(s, u, flow, sizeof flow) : NULL);
      local++;
      continue;
    }
    char route[450];
    if (edge && !sip__uri_is_self(s, edge))
      snprintf(route, sizeof route, "<%s;lr>, <%s;lr>", edge_hop(s, bs[i].edge), bs[i].path);
    else
      snprintf(route, sizeof route, "<%s;lr>", bs[i].path);
    add_branch(t, bs[i].uri, route, NULL);
  }
  su_home_deinit(home);
  /* The Record-Route was chosen before the lookup (prepare): correct it
   * now that the targets are known.  A proxy peer stays on the path of its
   * own phones; a node behind a NAT calling its own phones needs no way in
   * from outside. */
  if (t->rr && local && s->gateway)
    t->rr = s->gw_rr_in;
  else if (t->rr && local == (int)n && sip__flow_rr(s, 1))
    t->rr = s->self_lr;
  start_branches(t);
}

/* Order-independent: the DHT returns values in any order. */
static uint32_t targets_sig(const sip_binding_t *bs, size_t n)
{
  uint32_t sig = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t h = SIP_FNV_INIT;
    const char *parts[] = {bs[i].uri, "|", bs[i].path, "|", bs[i].edge ? bs[i].edge : ""};
    for (size_t k = 0; k < sizeof parts / sizeof *parts; k++)
      h = sip__fnv(h, parts[k], 0);
    sig ^= h;
  }
  return sig;
}

/* The proxy peer list is as fresh as it gets: fork to the targets held. */
static void on_edge_peers(sip_svc_t *s, void *ctx, int status)
{
  sip_ptx_t *t = ctx;
  if (!t->finished && !t->cancelled)
    fork_to(t, t->held, t->n_held);
  drop_held(t);
  ptx_release(t);
}

/* A target's edge is unknown (edge_unknown): the targets wait in t for
 * the list to be read again (sip__peers_refresh: at most once a
 * SIP_PEER_MISS_MS however many calls ask), then go to fork_to whatever
 * it says.  1: they wait (bs emptied; fork_to may have run already);
 * 0: fork now. */
static int await_edge(sip_ptx_t *t, sip_binding_t *bs, size_t n)
{
  if (t->held || !edge_unknown(t->s, bs, n) || !(t->held = malloc(sizeof *bs * n)))
    return 0;
  memcpy(t->held, bs, sizeof *bs * n);
  memset(bs, 0, sizeof *bs * n);
  t->n_held = n;
  t->s->c.edge_unknown++;
  ptx_hold(t);
  if (sip__peers_refresh(t->s, on_edge_peers, t) < 0)
    on_edge_peers(t->s, t, -1);
  return 1;
}

static void on_located(sip_svc_t *s, void *ctx, int status, const dht_value_t *v, size_t n)
{
  sip_ptx_t *t = ctx;
  s->c.lookups++;
  if (t->finished || t->cancelled) {
    ptx_release(t);
    return;
  }
  sip_binding_t bs[SIP_MAX_BRANCHES];
  size_t live = 0, known = 0;
  for (size_t i = 0; i < n && live < SIP_MAX_BRANCHES; i++) {
    sip_binding_t b;
    if (sip__binding_decode(&v[i], &b) < 0)
      continue;
    known++;
    if (b.remaining > 0 && b.path[0] && b.uri[0])
      bs[live++] = b;
    else
      sip__binding_clear(&b);
  }
  uint32_t sig = targets_sig(bs, live);
  if (status < 0 && status != DHT_ENOTFOUND && known == 0) {
    s->c.lookup_failed++;
    fail(t, 504);
  } else if (live == 0) {
    s->c.not_found += known == 0;
    s->c.expired += known > 0;
    fail(t, known ? 480 : 404);
  } else if (t->relocated && sig == t->targets) {
    send_best(t); /* the DHT says what the cache said: that failure stands */
    ptx_finish(t);
  } else {
    t->cached = status == SIP_GET_CACHED, t->targets = sig;
    if (!await_edge(t, bs, live))
      fork_to(t, bs, live);
  }
  for (size_t i = 0; i < live; i++)
    sip__binding_clear(&bs[i]);
  ptx_release(t);
}

/* Looks the Request-URI's user up; max_ms: how old a cached answer may be. */
static void locate(sip_ptx_t *t, unsigned max_ms)
{
  if (!t->aor) {
    const url_t *u = t->sip->sip_request->rq_url;
    char aor[600];
    snprintf(aor, sizeof aor, "sip:%s@%s", u->url_user, t->s->overlay);
    t->aor = strdup(aor);
  }
  ptx_hold(t);
  if (!t->aor || sip__dht_get_cached(t->s, t->aor, max_ms, on_located, t) < 0) {
    ptx_release(t);
    fail(t, 500);
  }
}

/* Proxy peers are known now (or the lookup failed): send the request to
 * one of them as its outbound proxy, the others kept for failover. */
static void on_peers(sip_svc_t *s, void *ctx, int status)
{
  sip_ptx_t *t = ctx;
  if (t->finished || t->cancelled) {
    ptx_release(t);
    return;
  }
  int n = s->n_peers;
  sip_branch_t *b = n > 0 ? add_branch(t, NULL, NULL, NULL) : NULL;
  if (b)
    b->peers = malloc(sizeof *b->peers * (size_t)n);
  if (!b || !b->peers) {
    s->c.no_peer += n == 0;
    fail(t, n == 0 ? 503 : 500);
    ptx_release(t);
    return;
  }
  unsigned start = s->peer_rr++;
  for (int i = 0; i < n; i++)
    b->peers[i] = s->peers[(start + (unsigned)i) % (unsigned)n];
  b->n_peers = n;
  b->next = strdup(sip__peer_next(s, &b->peers[0]));
  s->c.via_peer++;
  start_branches(t);
  ptx_release(t);
}

static void via_peer(sip_ptx_t *t)
{
  ptx_hold(t);
  if (sip__peers_get(t->s, on_peers, t) < 0) {
    ptx_release(t);
    fail(t, 503);
  }
}

/* ---- entry ------------------------------------------------------------- */

static int ack_cancel(nta_incoming_magic_t *magic, nta_incoming_t *irq, sip_t const *sip)
{
  sip_ptx_t *t = (sip_ptx_t *)magic;
  if (!sip || sip->sip_request->rq_method != sip_method_cancel)
    return 0;
  t->s->c.cancels++;
  t->cancelled = 1;
  ptx_hold(t);
  if (t->n_br == 0) { /* still looking for targets: the lookup's end frees t */
    reply_status(t, 487);
    t->finished = 1;
  } else {
    for (int i = 0; i < t->n_br; i++)
      t->br[i].provisional = 1; /* no failover after a CANCEL */
    cancel_branches(t, NULL);
  }
  ptx_release(t);
  return 200;
}

static int is_dialog_creating(const sip_t *sip)
{
  sip_method_t m = sip->sip_request->rq_method;
  return !sip->sip_to->a_tag &&
         (m == sip_method_invite || m == sip_method_subscribe || m == sip_method_refer);
}

/* RFC 3261 16.6 steps 3-4: Max-Forwards and Record-Route. */
static const char *hop_prepare(sip_svc_t *s, msg_t *msg, sip_t *sip)
{
  sip_max_forwards_t *mf = sip->sip_max_forwards;
  if (mf) {
    mf->mf_count--;
    msg_fragment_clear(mf->mf_common);
  } else {
    char str[16];
    snprintf(str, sizeof str, "%d", SIP_MAX_FORWARDS);
    sip_add_tl(msg, sip, SIPTAG_MAX_FORWARDS_STR(str), TAG_END());
  }
  /* A proxy peer names the overlay, not itself (spec 3.1), so in-dialog
   * requests reach whichever proxy peer is alive; other nodes stay on the
   * path of their own phones' dialogs.  A proxy peer also stays on the
   * path of dialogs of phones registered through it (only it has their
   * flows), and a node behind a NAT puts its private address on its
   * phones' side and its way in (edge, reflexive address) on the other:
   * RFC 5658-style double Record-Route, the entry nearest each side
   * reachable from it. */
  if (!is_dialog_creating(sip))
    return NULL;
  if (s->gateway) {
    int dir = sip__reg_direction(s, msg, sip);
    return dir > 0 ? s->gw_rr_in : dir < 0 ? s->gw_rr_out : s->overlay_lr;
  }
  if (sip__flow_rr(s, 1))
    return sip__flow_rr(s, sip__reg_direction(s, msg, sip) > 0);
  return s->self_lr;
}

static void prepare(sip_ptx_t *t)
{
  t->rr = hop_prepare(t->s, t->msg, t->sip);
}

/* ---- the last hop, statelessly ------------------------------------------ */

int sip__edge_hop(const sip_svc_t *s, const sip_t *sip)
{
  int n = 0;
  for (const sip_route_t *r = sip->sip_route; r; r = r->r_next)
    if (n++ >= SIP_MAX_ROUTES || !sip__route_is_ours(s, r->r_url))
      return 0;
  const url_t *u = sip->sip_request->rq_url;
  return u->url_type == url_sip && !sip__host_is_overlay(s, u->url_host) &&
         !sip__uri_is_self(s, u) && sip__reg_by_hostport(s, u) != NULL;
}

/* RFC 3261 16.11.  A request for a phone registered through this node has
 * nowhere else to go: the upstream proxy (or the phone at the other end)
 * keeps the transaction, so this hop needs none.  Without one it costs a
 * parse and a send, and holds no memory: with a transaction sofia kept
 * each INVITE for 32 s (bench-sip, docs/BENCHMARKS.md).  The branch is a
 * function of the incoming one, so a retransmission, the CANCEL and the
 * ACK of a failure get the same branch as the INVITE they belong to, and
 * responses come back matching no transaction: sip__stray_response() sends
 * them on along the Via. */
void sip__proxy_edge(sip_svc_t *s, msg_t *msg, sip_t *sip, const char *hash)
{
  const sip_reg_t *r = sip->sip_route ? NULL : sip__reg_by_hostport(s, sip->sip_request->rq_url);
  char flow[128], key[64];
  const char *next = r ? sip__reg_flow(r, flow, sizeof flow) : NULL;
  const char *rr = hop_prepare(s, msg, sip);
  if (rr) {
    sip_record_route_t *h = sip_record_route_make(msg_home(msg), rr);
    if (!h || msg_header_insert(msg, (msg_pub_t *)sip, (msg_header_t *)h) < 0) {
      msg_destroy(msg);
      return;
    }
  }
  const char *in = sip->sip_via && sip->sip_via->v_branch ? sip->sip_via->v_branch : "";
  uint32_t h = sip__fnv(SIP_FNV_INIT, in, 0);
  snprintf(key, sizeof key, "z9hG4bK.p2p%s.%08x", hash, h);
  if (sip->sip_request->rq_method == sip_method_ack)
    s->c.acks_fwd++;
  s->c.proxied++, s->c.stateless++;
  nta_msg_tsend(s->agent, msg, next ? URL_STRING_MAKE(next) : NULL, NTATAG_BRANCH_KEY(key),
                TAG_END()); /* takes msg, even when it fails */
}

int sip__proxy_full(const sip_svc_t *s)
{
  return s->n_ptx >= SIP_MAX_TRANSACTIONS;
}

int sip__proxy(sip_svc_t *s, nta_incoming_t *irq, msg_t *msg, sip_t *sip, const char *hash,
               int src)
{
  int is_ack = sip->sip_request->rq_method == sip_method_ack;
  if (sip__proxy_full(s)) {
    msg_destroy(msg);
    return is_ack ? 200 : 503;
  }
  enum sip_hop hop = sip__next_hop(s, sip);
  if (is_ack && hop == SIP_HOP_SELF) {
    msg_destroy(msg);
    return 200;
  }
  sip_ptx_t *t = ptx_new(s, is_ack ? NULL : irq, msg, sip, hash, is_ack ? -1 : src);
  if (!t) {
    msg_destroy(msg);
    return is_ack ? 200 : 500;
  }
  ptx_hold(t);
  prepare(t);
  if (t->irq) {
    nta_incoming_bind(irq, ack_cancel, (nta_incoming_magic_t *)t);
    if (t->method == sip_method_invite)
      nta_incoming_treply(irq, SIP_100_TRYING, TAG_END());
  }
  if (hop == SIP_HOP_LOCATE)
    locate(t, s->locate_cache_ms);
  else if (hop == SIP_HOP_PEER)
    via_peer(t);
  else
    target_direct(t);
  s->c.to_public += s->gateway && hop == SIP_HOP_DIRECT && !sip->sip_route;
  s->c.from_public += s->gateway && hop == SIP_HOP_LOCATE;
  if (t->finished && t->refs == 1) {
    /* Finished inside nta's callback: let nta destroy the transaction. */
    int status = t->replied ? 200 : 500;
    t->irq = NULL;
    ptx_release(t);
    return is_ack ? 200 : status;
  }
  ptx_release(t);
  return is_ack ? 200 : 0;
}

/* A response nta matched to no transaction: a retransmitted 2xx of an
 * INVITE whose client transaction is over (or a 2xx from another fork).
 * It goes on statelessly along its Via (RFC 3261 16.7 with RFC 6026). */
int sip__stray_response(sip_svc_t *s, nta_outgoing_t *orq, const sip_t *sip)
{
  if (!sip || !sip->sip_via || !sip->sip_via->v_next || !sip->sip_status)
    return 0;
  url_t u[1];
  url_init(u, url_sip);
  u->url_host = sip->sip_via->v_host, u->url_port = sip->sip_via->v_port;
  if (!sip__uri_is_self(s, u))
    return 0;
  msg_t *msg = nta_outgoing_getresponse(orq);
  if (!msg)
    return 0;
  /* nta_msg_tsend removes our Via and picks the transport the next one
   * names (TLS from another node, UDP or TCP from a phone); nta's default
   * server transaction would keep using the first transport it sent on. */
  if (nta_msg_tsend(s->agent, msg, NULL, TAG_END()) == 0)
    s->c.stray_fwd++;
  return 0;
}
