/*
 * Is this node public?  Decided at run time (--public auto): peers tell us
 * the address our requests come from and whether they can open a
 * connection back to it.  Only a node reachable at the address it would
 * publish takes the public roles (proxy peer, relay); one that stops being
 * reachable gives them up.  --public yes|no overrides the check.
 *
 * No single peer decides: a peer may lie ("you are public", "I cannot
 * connect back") or sit on a path that breaks.  A round asks up to
 * ASK_FIRST peers at once, then more (ASK_MAX in all) while no side has
 * the agreement it needs: AGREE independent peers whose answers agree, and
 * more of them than disagree.  Independent means different node ids, and
 * different addresses when the peers asked have more than one (a party
 * with many ids on one address counts once); peers are chosen to differ in
 * address from each other and from us, so they do whenever the node knows
 * such peers.  Answers that disagree with no such majority make the node
 * not public, and say so: one liar among two peers can deny the public
 * roles, never grant them.
 * Rounds that decide nothing (too few answers, or a split) come again
 * every CHECK_RETRY_MS, FAST_ROUNDS times, then every CHECK_SLOW_MS.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dht/log.h"
#include "node/node.h"

#define CHECK_FIRST_MS 1000
#define CHECK_RETRY_MS 5000   /* after a round that decided nothing */
#define FAST_ROUNDS 12        /* such rounds in a row before slowing down */
#define CHECK_SLOW_MS 60000
#define CHECK_EVERY_MS 300000 /* once decided: reachability rarely changes */
#define ASK_FIRST 3
#define AGREE 2
#define CANDIDATES 48 /* successors, predecessor and distinct fingers looked at */

typedef struct {
  node_t *n;
  unsigned round;
  int slot;
} ask_t;

enum { ANS_WAIT, ANS_NONE, ANS_YES, ANS_NAT, ANS_CLOSED };

static bool same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return false;
  if (a->ss_family == AF_INET)
    return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
           ((const struct sockaddr_in *)b)->sin_addr.s_addr;
  return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
}

static void decide(node_t *n, bool pub, const char *why) {
  bool changed = !n->pub.decided || n->pub.is_public != pub;
  n->pub.decided = true;
  n->pub.is_public = pub;
  snprintf(n->pub.why, sizeof(n->pub.why), "%s", why);
  if (!changed) return;
  log_info("%s: %s", pub ? "public" : "not public", why);
  node_roles_apply(n);
  /* A SIP node that is not public keeps a flow to a proxy peer so that
   * calls can reach it through its NAT (sip/flow.c). */
  if (n->sip && !n->leaving) n->sipapi->set_public(n->sip, pub);
}

static void on_timer(uv_timer_t *t);

static void schedule(node_t *n, unsigned ms) {
  if (!n->leaving) uv_timer_start(&n->pub.timer, on_timer, ms, 0);
}

/* Choosing whom to ask -------------------------------------------------------- */

/* Our ring contacts, successor first, then fingers far to near (other
 * parts of the ring), the predecessor and the other successors; distinct
 * ids, not ourselves.  Returns the count. */
static int candidates(const node_t *n, dht_node_t *out, int max) {
  const dht_node_t *succ, *self = dht_self(n->dht), *pred = dht_predecessor(n->dht);
  dht_id_t starts[160];
  dht_node_t fingers[160];
  int ns = dht_successors(n->dht, &succ), nf = dht_fingers(n->dht, starts, fingers, 160), k = 0;
  const dht_node_t *all[DHT_MAX_SUCC + 161];
  int na = 0;
  if (ns > 0) all[na++] = &succ[0];
  for (int i = nf - 1; i >= 0; i--) all[na++] = &fingers[i];
  if (pred) all[na++] = pred;
  for (int i = 1; i < ns; i++) all[na++] = &succ[i];
  for (int i = 0; i < na && k < max; i++) {
    bool dup = memcmp(&all[i]->id, &self->id, sizeof(self->id)) == 0;
    for (int j = 0; j < k && !dup; j++) dup = memcmp(&out[j].id, &all[i]->id, sizeof(out[j].id)) == 0;
    if (!dup) out[k++] = *all[i];
  }
  return k;
}

static bool asked(const node_t *n, const dht_node_t *x) {
  for (int i = 0; i < n->pub.n_asked; i++)
    if (memcmp(&n->pub.asked[i].peer.id, &x->id, sizeof(x->id)) == 0) return true;
  return false;
}

/* How much asking x would repeat: an address already asked this round
 * counts most, our own address next. */
static int overlap(const node_t *n, const dht_node_t *x) {
  int o = same_ip(&x->addr, &dht_self(n->dht)->addr);
  for (int i = 0; i < n->pub.n_asked; i++)
    if (same_ip(&n->pub.asked[i].peer.addr, &x->addr)) return o + 2;
  return o;
}

static void on_answer(dht_t *d, int status, const struct sockaddr_storage *seen, int reachable,
                      void *arg);

/* Ask up to k more peers; returns how many were asked. */
static int ask_more(node_t *n, int k) {
  dht_node_t cand[CANDIDATES];
  int nc = candidates(n, cand, CANDIDATES), sent = 0;
  while (sent < k && n->pub.n_asked < NODE_PUB_ASK_MAX) {
    int best = -1;
    for (int i = 0; i < nc; i++)
      if (!asked(n, &cand[i]) && (best < 0 || overlap(n, &cand[i]) < overlap(n, &cand[best]))) best = i;
    if (best < 0) break;
    node_pub_answer_t *a = &n->pub.asked[n->pub.n_asked];
    *a = (node_pub_answer_t){.peer = cand[best], .state = ANS_WAIT};
    ask_t *ctx = malloc(sizeof(*ctx));
    if (!ctx) break;
    *ctx = (ask_t){n, n->pub.round, n->pub.n_asked};
    n->pub.n_asked++;
    if (dht_ask_reachable(n->dht, &a->peer, 0, on_answer, ctx)) {
      a->state = ANS_NONE;
      free(ctx);
      continue;
    }
    n->pub.pending++;
    sent++;
  }
  return sent;
}

/* Weighing the answers ---------------------------------------------------------- */

/* The weight of the answers in state s: distinct addresses among them, or
 * distinct peers when every peer asked shares one address (a lab on one
 * host, or loopback). */
static int weight(const node_t *n, int s) {
  bool many = false;
  for (int i = 1; i < n->pub.n_asked && !many; i++)
    many = !same_ip(&n->pub.asked[i].peer.addr, &n->pub.asked[0].peer.addr);
  int w = 0;
  for (int i = 0; i < n->pub.n_asked; i++) {
    const node_pub_answer_t *a = &n->pub.asked[i];
    bool counted = false;
    for (int j = 0; j < i && many && !counted; j++)
      counted = n->pub.asked[j].state == s && same_ip(&n->pub.asked[j].peer.addr, &a->peer.addr);
    w += a->state == s && !counted;
  }
  return w;
}

static int count(const node_t *n, int s) {
  int c = 0;
  for (int i = 0; i < n->pub.n_asked; i++) c += n->pub.asked[i].state == s;
  return c;
}

/* The first answer in state s, for the reason given. */
static const node_pub_answer_t *first(const node_t *n, int s) {
  for (int i = 0; i < n->pub.n_asked; i++)
    if (n->pub.asked[i].state == s) return &n->pub.asked[i];
  return NULL;
}

enum outcome { PUBLIC, PRIVATE, SPLIT, UNKNOWN };

/* What the answers so far say: a side needs AGREE independent answers and
 * more than the other side has. */
static enum outcome weigh(const node_t *n) {
  int yes = weight(n, ANS_YES), no = weight(n, ANS_NAT) + weight(n, ANS_CLOSED);
  if (yes >= AGREE && yes > no) return PUBLIC;
  if (no >= AGREE && no > yes) return PRIVATE;
  return yes && no ? SPLIT : UNKNOWN;
}

static void explain(const node_t *n, enum outcome o, char *why, size_t len) {
  int yes = count(n, ANS_YES), nat = count(n, ANS_NAT), closed = count(n, ANS_CLOSED);
  int all = yes + nat + closed;
  char me[64], seen[64] = "another address";
  dht_addr_str(&dht_self(n->dht)->addr, me, sizeof(me));
  const node_pub_answer_t *elsewhere = first(n, ANS_NAT);
  if (elsewhere) dht_addr_str(&elsewhere->seen, seen, sizeof(seen));
  if (o == PUBLIC)
    snprintf(why, len, "%d of %d peers agree: each sees us at %s and connected back", yes, all, me);
  else if (o == PRIVATE)
    snprintf(why, len, "%d of %d peers agree we cannot be reached at %s: seen at %s by %d%s, "
             "no connection back for %d", nat + closed, all, me, seen, nat, nat ? " (NAT)" : "",
             closed);
  else if (o == SPLIT)
    snprintf(why, len, "peers disagree (%d independent ones must agree): reachable at %s for %d of "
             "%d; seen at %s by %d; no connection back for %d", AGREE, me, yes, all, seen, nat,
             closed);
  else
    snprintf(why, len, "waiting: %d of %d peers asked answered; %d independent ones must agree",
             all, n->pub.n_asked, AGREE);
}

/* End of a round: the decision, if the answers make one, and the next.
 * A split makes the node not public; too few answers say nothing about
 * us, so the decision we had stands. */
static void conclude(node_t *n) {
  enum outcome o = weigh(n);
  int yes = count(n, ANS_YES), no = count(n, ANS_NAT) + count(n, ANS_CLOSED);
  char why[sizeof(n->pub.why)];
  explain(n, o, why, sizeof(why));
  n->pub.rounds++;
  n->pub.answers += (uint64_t)(yes + no);
  n->pub.dissents += (uint64_t)(o == PUBLIC ? no : o == UNKNOWN ? 0 : yes);
  if (o != UNKNOWN)
    decide(n, o == PUBLIC, why);
  else if (!n->pub.decided)
    snprintf(n->pub.why, sizeof(n->pub.why), "%s", why);
  n->pub.fast_rounds = o == PUBLIC || o == PRIVATE ? 0 : n->pub.fast_rounds + 1;
  schedule(n, o == PUBLIC || o == PRIVATE        ? CHECK_EVERY_MS
              : n->pub.fast_rounds <= FAST_ROUNDS ? CHECK_RETRY_MS
                                                  : CHECK_SLOW_MS);
}

/* After each answer: done, or more peers to ask while no side has its
 * majority (one more can settle a split or a lone answer). */
static void progress(node_t *n) {
  if (n->pub.pending > 0) return;
  enum outcome o = weigh(n);
  int need = o == UNKNOWN && !count(n, ANS_YES) && !count(n, ANS_NAT) && !count(n, ANS_CLOSED)
                 ? AGREE
                 : 1;
  if (o == PUBLIC || o == PRIVATE || n->leaving || ask_more(n, need) == 0) {
    n->pub.running = false;
    if (!n->leaving) conclude(n);
  }
}

static void on_answer(dht_t *d, int status, const struct sockaddr_storage *seen, int reachable,
                      void *arg) {
  ask_t *ctx = arg;
  node_t *n = ctx->n;
  bool current = ctx->round == n->pub.round && n->pub.running;
  node_pub_answer_t *a = current ? &n->pub.asked[ctx->slot] : NULL;
  free(ctx);
  if (!a) return;
  if (status) {
    a->state = ANS_NONE;
  } else {
    a->seen = *seen;
    a->state = !same_ip(seen, &dht_self(d)->addr) ? ANS_NAT : reachable ? ANS_YES : ANS_CLOSED;
  }
  n->pub.pending--;
  progress(n);
}

static int start_round(node_t *n) {
  n->pub.round++;
  n->pub.n_asked = n->pub.pending = 0;
  n->pub.running = true;
  if (ask_more(n, ASK_FIRST) == 0) {
    n->pub.running = false;
    return -1;
  }
  return 0;
}

static void on_timer(uv_timer_t *t) {
  node_t *n = t->data;
  if (n->leaving || n->pub.running) return;
  if (start_round(n)) {
    /* Not joined yet, or alone. */
    if (!n->pub.decided)
      snprintf(n->pub.why, sizeof(n->pub.why), "waiting: no peer to ask yet");
    schedule(n, CHECK_RETRY_MS);
  }
}

int node_public_check_now(node_t *n) {
  if (strcmp(n->opts->public_mode, "auto") != 0) return -1;
  if (n->pub.running || n->leaving) return -2;
  uv_timer_stop(&n->pub.timer);
  on_timer(&n->pub.timer);
  return 0;
}

int node_public_start(node_t *n) {
  const char *mode = n->opts->public_mode;
  uv_timer_init(n->loop, &n->pub.timer);
  n->pub.timer.data = n;
  if (strcmp(mode, "auto") != 0) {
    decide(n, strcmp(mode, "yes") == 0, "set by --public");
    return 0;
  }
  snprintf(n->pub.why, sizeof(n->pub.why), "not checked yet");
  schedule(n, CHECK_FIRST_MS);
  return 0;
}

static json_t *answer_json(const node_pub_answer_t *a) {
  static const char *const states[] = {"waiting", "no answer", "reachable", "seen elsewhere",
                                       "not reachable"};
  char id[DHT_ID_HEX], addr[64], seen[64];
  dht_id_hex(&a->peer.id, id);
  dht_addr_str(&a->peer.addr, addr, sizeof(addr));
  json_t *o = json_pack("{s:s, s:s, s:s}", "peer", id, "addr", addr, "answer", states[a->state]);
  if (o && (a->state == ANS_YES || a->state == ANS_NAT || a->state == ANS_CLOSED)) {
    dht_addr_str(&a->seen, seen, sizeof(seen));
    json_object_set_new(o, "seen", json_string(seen));
  }
  return o;
}

json_t *node_public_json(const node_t *n) {
  json_t *last = json_array();
  for (int i = 0; last && i < n->pub.n_asked; i++) json_array_append_new(last, answer_json(&n->pub.asked[i]));
  return json_pack("{s:s, s:o, s:s, s:I, s:I, s:I, s:o}", "mode", n->opts->public_mode, "public",
                   n->pub.decided ? json_boolean(n->pub.is_public) : json_null(), "why", n->pub.why,
                   "rounds", (json_int_t)n->pub.rounds, "answers", (json_int_t)n->pub.answers,
                   "dissents", (json_int_t)n->pub.dissents, "last", last ? last : json_array());
}
