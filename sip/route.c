/*
 * Request checks and the choice of next hop (RFC 3261 16.3, 16.4, 16.5).
 *
 * Which way a request goes depends only on the Route set left after our
 * own entries are removed, and on the Request-URI:
 *  - a Route <sip:OVERLAY;lr> is consumed by proxy peers; any other node
 *    sends the request to a proxy peer, which consumes it (spec 3.1: the
 *    overlay identifier stands for whichever proxy peer DNS gives);
 *  - another Route, or a Request-URI without AOR meaning, whose host is an
 *    IP literal goes straight there (contacts, Record-Routes of nodes and
 *    of public proxies);
 *  - a domain other than the overlay is public: proxy peers resolve it by
 *    RFC 3263, other nodes send the request to a proxy peer;
 *  - sip:USER@OVERLAY is an AOR: the DHT says where it is.  So is
 *    sip:USER@<this node>, which phones configured with the node's address
 *    as domain send.
 */
#include <string.h>

#include <sofia-sip/hostdomain.h>
#include <sofia-sip/su_md5.h>

#include "sip/sip_int.h"

#define LOOP_BRANCH "z9hG4bK.p2p" /* our branches: this, the loop hash, ".", a nonce */

static void md5_url(su_md5_t *md5, const url_t *u)
{
  char buf[1024];
  issize_t n = u ? url_e(buf, sizeof buf, u) : 0;
  if (n > 0 && (size_t)n < sizeof buf)
    su_md5_update(md5, buf, (usize_t)n);
  su_md5_update(md5, "|", 1);
}

/* The part of our branch that identifies a request as it arrived
 * (RFC 3261 16.6 step 8): everything that affects its routing, nothing
 * that a looping request changes on the way (Via, Max-Forwards). */
void sip__loop_hash(const sip_t *sip, char out[17])
{
  su_md5_t md5[1];
  su_md5_init(md5);
  md5_url(md5, sip->sip_request->rq_url);
  su_md5_strupdate(md5, sip->sip_from && sip->sip_from->a_tag ? sip->sip_from->a_tag : "");
  su_md5_update(md5, "|", 1);
  su_md5_strupdate(md5, sip->sip_to && sip->sip_to->a_tag ? sip->sip_to->a_tag : "");
  su_md5_update(md5, "|", 1);
  su_md5_strupdate(md5, sip->sip_call_id ? sip->sip_call_id->i_id : "");
  char cseq[32];
  snprintf(cseq, sizeof cseq, "|%u|", sip->sip_cseq ? sip->sip_cseq->cs_seq : 0);
  su_md5_strupdate(md5, cseq);
  int n = 0;
  for (const sip_route_t *r = sip->sip_route; r && n < SIP_MAX_ROUTES; r = r->r_next, n++)
    md5_url(md5, r->r_url);
  char hex[33];
  su_md5_hexdigest(md5, hex);
  memcpy(out, hex, 16);
  out[16] = '\0';
}

/* A Via we put (our sent-by) whose branch carries the same hash: the
 * request has come back unchanged, a loop rather than a spiral. */
static int is_loop(const sip_svc_t *s, const sip_t *sip, const char *hash)
{
  int n = 0;
  for (const sip_via_t *v = sip->sip_via; v && n < 2 * SIP_MAX_FORWARDS; v = v->v_next, n++) {
    const char *b = v->v_branch;
    size_t pl = strlen(LOOP_BRANCH);
    if (!b || strncasecmp(b, LOOP_BRANCH, pl) != 0 || strncmp(b + pl, hash, 16) != 0)
      continue;
    url_t u[1];
    url_init(u, url_sip);
    u->url_host = v->v_host, u->url_port = v->v_port;
    if (sip__uri_is_self(s, u))
      return 1;
  }
  return 0;
}

int sip__check_request(sip_svc_t *s, msg_t *msg, sip_t *sip, const char *hash)
{
  const url_t *ruri = sip->sip_request->rq_url;
  if (ruri->url_type != url_sip && ruri->url_type != url_sips)
    return 416;
  if (!ruri->url_host || !ruri->url_host[0])
    return 400;
  /* RFC 3261 16.3 step 3: an OPTIONS for us may still be answered. */
  if (sip->sip_max_forwards && sip->sip_max_forwards->mf_count == 0)
    return sip->sip_request->rq_method == sip_method_options &&
                   (sip__uri_is_self(s, ruri) || sip__uri_is_overlay(s, ruri))
               ? 0
               : 483;
  if (is_loop(s, sip, hash))
    return 482;
  if (sip->sip_proxy_require)
    return 420;
  return 0;
}

int sip__route_is_ours(const sip_svc_t *s, const url_t *u)
{
  if (sip__uri_is_self(s, u))
    return 1;
  return s->gateway && sip__uri_is_overlay(s, u);
}

/* RFC 3261 16.4: how many Route entries on top name us.  A proxy peer
 * also owns the overlay identifier.
 *
 * Behind a NAT our Record-Route is <private>,<reflexive>,<edge> on the
 * side of our phones (flow.c).  A request from a phone would, after our
 * first two, go back in through the edge proxy peer, a detour that breaks
 * when that peer dies: we reach the outside directly, so the edge right
 * after our own two entries counts as ours too. */
static int routes_ours(const sip_svc_t *s, const sip_t *sip)
{
  int n = 0, own_then_reflexive = 0, prev_own = 0;
  const sip_route_t *r = sip->sip_route;
  for (; r && n < SIP_MAX_ROUTES && sip__route_is_ours(s, r->r_url); r = r->r_next, n++) {
    int reflexive = sip__flow_is_reflexive(s, r->r_url);
    own_then_reflexive = prev_own && reflexive;
    prev_own = !reflexive;
  }
  if (own_then_reflexive && r && !s->gateway && host_is_ip_address(r->r_url->url_host))
    n++;
  return n;
}

void sip__pop_routes(sip_svc_t *s, msg_t *msg, sip_t *sip)
{
  for (int n = routes_ours(s, sip); n > 0 && sip->sip_route; n--)
    sip_route_remove(msg, sip);
}

static enum sip_hop classify(const sip_svc_t *s, const url_t *u, int is_ruri)
{
  if (u->url_type != url_sip && u->url_type != url_sips)
    return SIP_HOP_DIRECT;
  if (sip__host_is_overlay(s, u->url_host) && is_ruri)
    return u->url_user ? SIP_HOP_LOCATE : SIP_HOP_SELF;
  if (sip__host_is_overlay(s, u->url_host)) /* a Route a proxy peer did not consume */
    return s->gateway ? SIP_HOP_DIRECT : SIP_HOP_PEER;
  if (is_ruri && sip__uri_is_self(s, u))
    return u->url_user ? SIP_HOP_LOCATE : SIP_HOP_SELF;
  if (host_is_ip_address(u->url_host))
    return SIP_HOP_DIRECT;
  return s->gateway ? SIP_HOP_DIRECT : SIP_HOP_PEER;
}

enum sip_hop sip__peek_hop(const sip_svc_t *s, const sip_t *sip, int *ours)
{
  const sip_route_t *r = sip->sip_route;
  *ours = routes_ours(s, sip);
  for (int i = 0; r && i < *ours; i++)
    r = r->r_next;
  return r ? classify(s, r->r_url, 0) : sip__ruri_hop(s, sip->sip_request->rq_url);
}

enum sip_hop sip__ruri_hop(const sip_svc_t *s, const url_t *u)
{
  return classify(s, u, 1);
}

enum sip_hop sip__next_hop(const sip_svc_t *s, const sip_t *sip)
{
  if (sip->sip_route)
    return classify(s, sip->sip_route->r_url, 0);
  return sip__ruri_hop(s, sip->sip_request->rq_url);
}
