/*
 * The flow from a node that is not public to one proxy peer, so that
 * requests can reach the node (and its phones) through a NAT.
 *
 * RFC 5626 in spirit, with what every node already has: the node sends an
 * OPTIONS from its SIP UDP socket to one proxy peer (from the sip:OVERLAY
 * list) every SIP_FLOW_KEEPALIVE_MS.  That keeps the NAT binding of the
 * socket open toward that peer, and the answer's top Via, which the peer
 * marked with received/rport (RFC 3581), tells the node its reflexive
 * address.  While that address is not the node's own, the user records
 * the node puts carry the route in: "edge" = the proxy peer, "path" = the
 * reflexive address.  A caller's node routes <edge;lr>,<path;lr>; the
 * peer forwards to the reflexive address from the socket the keep-alives
 * talk to, which the NAT lets in; this node takes its reflexive address
 * for itself (Route popping, loop detection: core.c, route.c).
 *
 * A peer that does not answer within SIP_FLOW_TIMEOUT_MS, or answers 408
 * or 5xx (nta reports an ICMP port unreachable as 503), is marked failed
 * and another one is picked; the records are put again once the new flow
 * answers.  Losing the public decision, gaining the gateway role or
 * stopping ends the flow (and puts the records back with the direct path).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sofia-sip/hostdomain.h>
#include <sofia-sip/sip_tag.h>

#include "sip/sip_int.h"

enum flow_state { FLOW_OFF, FLOW_PICKING, FLOW_PROBING, FLOW_UP };

struct sip_flow {
  enum flow_state state;
  int natted;         /* the reflexive address is not ours: records use the edge */
  int peers_pending;  /* a sip__peers_get() callback is due */
  char peer[96];      /* "sip:IP:PORT" of the proxy peer, "" while none */
  char refl_host[64]; /* reflexive address ("[v6]" bracketed), "" until known */
  unsigned refl_port;
  char route_peer[96];     /* the edge and reflexive address the records carry */
  char route_refl[80];
  nta_outgoing_t *orq;     /* the keep-alive in flight */
  su_timer_t *tick;        /* next keep-alive, or the next try to pick a peer */
  su_timer_t *deadline;    /* the answer to the keep-alive is due */
  su_timer_t *reput;       /* re-puts user records in batches */
  char rr_in[400], rr_out[400];
  uint64_t keepalives, answers, failures, moves;
};

static void flow_pick(sip_svc_t *s);
static void flow_probe(sip_svc_t *s);

static su_root_t *root_of(sip_svc_t *s)
{
  return sip__loop_root(s->loop);
}

int sip__flow_new(sip_svc_t *s)
{
  sip_flow_t *f = calloc(1, sizeof *f);
  if (!f)
    return -ENOMEM;
  s->flow = f;
  f->tick = su_timer_create(su_root_task(root_of(s)), SIP_FLOW_KEEPALIVE_MS);
  f->deadline = su_timer_create(su_root_task(root_of(s)), SIP_FLOW_TIMEOUT_MS);
  f->reput = su_timer_create(su_root_task(root_of(s)), SIP_FLOW_REPUT_MS);
  return f->tick && f->deadline && f->reput ? 0 : -ENOMEM;
}

static void drop_orq(sip_flow_t *f)
{
  if (f->orq)
    nta_outgoing_destroy(f->orq);
  f->orq = NULL;
}

void sip__flow_free(sip_svc_t *s)
{
  sip_flow_t *f = s->flow;
  if (!f)
    return;
  drop_orq(f);
  su_timer_destroy(f->tick);
  su_timer_destroy(f->deadline);
  su_timer_destroy(f->reput);
  free(f);
  s->flow = NULL;
}

/* ---- what the rest of sip/ asks --------------------------------------- */

void sip__flow_route(const sip_svc_t *s, char *path, size_t plen, char *edge, size_t elen)
{
  const sip_flow_t *f = s->flow;
  if (f && f->natted && f->route_peer[0]) {
    snprintf(path, plen, "sip:%s", f->route_refl);
    snprintf(edge, elen, "%s", f->route_peer);
  } else {
    snprintf(path, plen, "sip:%s", s->hostport);
    snprintf(edge, elen, "%s", "");
  }
}

int sip__flow_is_reflexive(const sip_svc_t *s, const url_t *u)
{
  const sip_flow_t *f = s->flow;
  if (!f || !f->natted || !f->refl_host[0] || !u || !u->url_host)
    return 0;
  unsigned port = u->url_port && u->url_port[0] ? (unsigned)atoi(u->url_port) : 5060;
  return port == f->refl_port && host_cmp(u->url_host, f->refl_host) == 0;
}

const char *sip__flow_rr(const sip_svc_t *s, int toward_phone)
{
  const sip_flow_t *f = s->flow;
  if (!f || !f->natted || !f->route_peer[0])
    return NULL;
  return toward_phone ? f->rr_in : f->rr_out;
}

json_t *sip__flow_json(const sip_svc_t *s)
{
  static const char *names[] = {"off", "picking", "probing", "up"};
  const sip_flow_t *f = s->flow;
  if (!f)
    return json_object();
  char refl[80] = "";
  if (f->refl_host[0])
    snprintf(refl, sizeof refl, "%s:%u", f->refl_host, f->refl_port);
  return json_pack("{s:s, s:s, s:s, s:b, s:s, s:I, s:I, s:I, s:I}", "state", names[f->state],
                   "peer", f->peer, "reflexive", refl, "natted", f->natted, "edge",
                   f->natted ? f->route_peer : "", "keepalives", (json_int_t)f->keepalives,
                   "answers", (json_int_t)f->answers, "failures", (json_int_t)f->failures,
                   "moves", (json_int_t)f->moves);
}

/* ---- re-putting the records -------------------------------------------- */

static void on_reput(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  sip_svc_t *s = (sip_svc_t *)arg;
  if (s->stopping)
    return;
  if (sip__reg_reput(s, SIP_FLOW_REPUT_BATCH) > 0)
    su_timer_set(s->flow->reput, on_reput, arg);
}

/* The route into the node is what the flow says now: when that differs
 * from what the records carry, note it and put them all again.  The two
 * Record-Route lists (RFC 5658 style) follow it: the private address on
 * the phone's side, the reflexive address and the edge on the other. */
static void route_changed(sip_svc_t *s)
{
  sip_flow_t *f = s->flow;
  char refl[80] = "";
  int natted = f->state == FLOW_UP && f->natted;
  if (natted)
    snprintf(refl, sizeof refl, "%s:%u", f->refl_host, f->refl_port);
  const char *peer = natted ? f->peer : "";
  if (strcmp(peer, f->route_peer) == 0 && strcmp(refl, f->route_refl) == 0)
    return;
  snprintf(f->route_peer, sizeof f->route_peer, "%s", peer);
  snprintf(f->route_refl, sizeof f->route_refl, "%s", refl);
  if (natted) {
    snprintf(f->rr_in, sizeof f->rr_in, "<sip:%s;lr>, <sip:%s;lr>, <%s;lr>", s->hostport, refl,
             peer);
    snprintf(f->rr_out, sizeof f->rr_out, "<%s;lr>, <sip:%s;lr>, <sip:%s;lr>", peer, refl,
             s->hostport);
    log_info("behind a NAT at %s: reachable through proxy peer %s", refl, peer);
  } else {
    log_info("records name this node's own address again");
  }
  s->route_gen++;
  su_timer_reset(f->reput);
  on_reput(NULL, NULL, (su_timer_arg_t *)s);
}

/* ---- keep-alives -------------------------------------------------------- */

static void on_tick(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  sip_svc_t *s = (sip_svc_t *)arg;
  if (s->flow->state == FLOW_PICKING)
    flow_pick(s);
  else if (s->flow->state != FLOW_OFF)
    flow_probe(s);
}

static void schedule(sip_svc_t *s, unsigned ms)
{
  su_timer_set_interval(s->flow->tick, on_tick, (su_timer_arg_t *)s, ms);
}

/* The peer did not answer well: forget it for a while (gateway.c orders
 * it last) and pick another.  The records keep the old route until a new
 * flow answers: there is nothing better to publish meanwhile. */
static void flow_failed(sip_svc_t *s, const char *why)
{
  sip_flow_t *f = s->flow;
  f->failures++;
  log_info("flow to proxy peer %s: %s; picking another", f->peer, why);
  su_timer_reset(f->deadline);
  drop_orq(f);
  if (f->peer[0])
    sip__peer_failed(s, f->peer);
  f->peer[0] = '\0';
  f->state = FLOW_PICKING;
  schedule(s, SIP_FLOW_RETRY_MS);
}

/* The top Via of the answer is ours, as the peer saw it: received is the
 * address the packet came from (absent when it is the sent-by host), rport
 * its port (RFC 3581). */
static int learn_reflexive(sip_svc_t *s, const sip_t *sip)
{
  sip_flow_t *f = s->flow;
  const sip_via_t *v = sip ? sip->sip_via : NULL;
  if (!v || !v->v_host)
    return -EINVAL;
  const char *host = v->v_received && v->v_received[0] ? v->v_received : v->v_host;
  const char *port = v->v_rport && v->v_rport[0] ? v->v_rport : v->v_port;
  unsigned p = port && port[0] ? (unsigned)atoi(port) : 5060;
  /* From the peer: an IP literal or nothing, as it goes into records and
   * Record-Routes. */
  if (strlen(host) > 60 || strspn(host, "0123456789abcdefABCDEF.:[]") != strlen(host) ||
      !host_is_ip_address(host) || p == 0 || p > 65535)
    return -EINVAL;
  if (strchr(host, ':') && host[0] != '[')
    snprintf(f->refl_host, sizeof f->refl_host, "[%s]", host);
  else
    snprintf(f->refl_host, sizeof f->refl_host, "%s", host);
  f->refl_port = p;
  url_t u[1];
  url_init(u, url_sip);
  char pstr[8];
  snprintf(pstr, sizeof pstr, "%u", p);
  u->url_host = f->refl_host, u->url_port = pstr;
  /* Our own address seen from outside: no NAT, no edge needed.  (natted
   * is cleared first, or sip__uri_is_self would take the old reflexive
   * address for ours.) */
  f->natted = 0;
  f->natted = !sip__uri_is_self(s, u);
  return 0;
}

static int on_answer(nta_outgoing_magic_t *magic, nta_outgoing_t *orq, sip_t const *sip)
{
  sip_svc_t *s = (sip_svc_t *)magic;
  sip_flow_t *f = s->flow;
  int status = sip && sip->sip_status ? sip->sip_status->st_status : nta_outgoing_status(orq);
  if (orq != f->orq || status < 200)
    return 0;
  su_timer_reset(f->deadline);
  /* Any final answer but a timeout or a server error shows the path both
   * ways works, whatever the peer thinks of OPTIONS. */
  if (status == 408 || status >= 500 || learn_reflexive(s, sip) < 0) {
    char why[32];
    snprintf(why, sizeof why, "answered %d", status);
    flow_failed(s, why);
    return 0;
  }
  f->orq = NULL;
  nta_outgoing_destroy(orq);
  f->answers++;
  f->state = FLOW_UP;
  route_changed(s);
  schedule(s, SIP_FLOW_KEEPALIVE_MS);
  return 0;
}

static void on_deadline(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  sip_svc_t *s = (sip_svc_t *)arg;
  if (s->flow->orq)
    flow_failed(s, "no answer");
}

static void flow_probe(sip_svc_t *s)
{
  sip_flow_t *f = s->flow;
  drop_orq(f);
  if (f->state != FLOW_UP)
    f->state = FLOW_PROBING;
  char from[160];
  snprintf(from, sizeof from, "<sip:%s>", s->hostport);
  f->keepalives++;
  f->orq = nta_outgoing_tcreate(s->leg, on_answer, (nta_outgoing_magic_t *)s,
                                (url_string_t const *)f->peer, SIP_METHOD_OPTIONS,
                                (url_string_t const *)f->peer, SIPTAG_FROM_STR(from),
                                SIPTAG_TO_STR(f->peer), TAG_END());
  if (!f->orq) {
    flow_failed(s, "cannot send");
    return;
  }
  su_timer_set(f->deadline, on_deadline, (su_timer_arg_t *)s);
}

static void on_peers(sip_svc_t *s, void *ctx, int status)
{
  sip_flow_t *f = s->flow;
  f->peers_pending = 0;
  if (f->state != FLOW_PICKING)
    return;
  /* gateway.c lists the peers that failed lately last. */
  if (s->n_peers == 0) {
    schedule(s, SIP_FLOW_RETRY_MS);
    return;
  }
  if (f->answers || f->failures)
    f->moves++;
  snprintf(f->peer, sizeof f->peer, "%s", s->peers[0].uri);
  flow_probe(s);
}

static void flow_pick(sip_svc_t *s)
{
  sip_flow_t *f = s->flow;
  f->state = FLOW_PICKING;
  if (f->peers_pending)
    return;
  f->peers_pending = 1;
  if (sip__peers_get(s, on_peers, NULL) < 0) {
    f->peers_pending = 0;
    schedule(s, SIP_FLOW_RETRY_MS);
  }
}

void sip__flow_update(sip_svc_t *s)
{
  sip_flow_t *f = s->flow;
  if (!f)
    return;
  int want = s->started && !s->stopping && !s->gateway && s->public_known && !s->is_public;
  if (want && f->state == FLOW_OFF) {
    log_info("not public: keeping a flow to a proxy peer");
    flow_pick(s);
  } else if (!want && f->state != FLOW_OFF) {
    su_timer_reset(f->tick);
    su_timer_reset(f->deadline);
    drop_orq(f);
    f->state = FLOW_OFF;
    f->peer[0] = '\0';
    f->natted = 0;
    if (!s->stopping)
      route_changed(s);
  }
}
