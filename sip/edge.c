/*
 * The edge: what a request must show before this node does anything for
 * it.  Runs before any transaction exists (core.c's on_stateless), so what
 * it refuses costs one stateless answer and no memory, and a forged source
 * gets one answer per request it sent (no retransmissions to amplify).
 *
 * - ACKs of our stateless answers (their To tag is ours) are absorbed,
 *   other requests with that tag answered 481 (it makes no dialog).
 * - REGISTER for this node needs digest authentication (401) when the node
 *   has users (--users), and the AOR must be the authenticated user's
 *   (403); in the secured mode a node without users serves no phones
 *   (403).
 * - An out-of-dialog request whose From names one of this node's users
 *   needs proxy authentication (407) as that user, unless it comes on the
 *   TCP connection that user registered over (a UDP source can be forged,
 *   so a UDP phone authenticates every call).
 * - The secured mode has no open relay: an out-of-dialog request for
 *   anywhere but an overlay user, this node or one of its phones goes on
 *   only from an overlay node (TLS with a node certificate of the overlay)
 *   or from a phone of this node that authenticated (407 on a node with
 *   users, else 403 Relay forbidden); an in-dialog request only with a
 *   Route naming us (as our Record-Route made it), and from the public
 *   side it is sent on without a transaction: one copy out per copy in.
 * - Targets a request names (an IP literal Request-URI or Route) in the
 *   loopback, private and other special-purpose ranges, and stream
 *   transports to ports other than SIP's, are refused (403) unless
 *   allowed (--sip-allow-loopback, --sip-allow-targets).
 */
#include <arpa/inet.h>
#include <string.h>

#include <sofia-sip/hostdomain.h>
#include <sofia-sip/sip_tag.h>
#include <sofia-sip/su_strlst.h>
#include <sofia-sip/tport.h>

#include "sip/sip_int.h"

/* The user part of From when it names one of the overlay's users (the
 * overlay's domain, or this node), else NULL. */
static const char *from_overlay_user(const sip_svc_t *s, const sip_t *sip)
{
  const url_t *u = sip->sip_from ? sip->sip_from->a_url : NULL;
  if (!u || (u->url_type != url_sip && u->url_type != url_sips) || !u->url_user)
    return NULL;
  return sip__host_is_overlay(s, u->url_host) || sip__uri_is_self(s, u) ? u->url_user : NULL;
}

static int refuse(sip_svc_t *s, msg_t *msg, sip_t *sip, int status, const char *phrase)
{
  sip__reply_stateless(s, msg, sip, status, phrase, TAG_END());
  return 1;
}

/* Proxy-Authorization for our realm has done its work here: it goes no
 * further (RFC 3261 22.3), other realms' credentials stay. */
static void consume_credentials(sip_svc_t *s, msg_t *msg, sip_t *sip)
{
  sip_proxy_authorization_t *au = sip->sip_proxy_authorization, *next;
  for (int n = 0; au && n < 8; au = next, n++) {
    next = au->au_next;
    for (int i = 0; au->au_params && au->au_params[i]; i++) {
      const char *p = au->au_params[i];
      if (strncasecmp(p, "realm=", 6) == 0 && strlen(p + 6) == strlen(s->overlay) + 2 &&
          strncasecmp(p + 7, s->overlay, strlen(s->overlay)) == 0) {
        msg_header_remove(msg, (msg_pub_t *)sip, (msg_header_t *)au);
        break;
      }
    }
  }
}

/* Digest credentials of one of our users: 0 with rq->user set, or 1 when
 * the request was answered (challenge, or 403). */
static int authenticate(sip_svc_t *s, msg_t *msg, sip_t *sip, int proxy, sip_req_t *rq)
{
  int r = sip__auth_check(s, sip, proxy, rq->user);
  if (r == SIP_AUTH_NONE || r == SIP_AUTH_STALE) {
    sip__auth_challenge(s, msg, sip, proxy, r == SIP_AUTH_STALE);
    return 1;
  }
  if (r != SIP_AUTH_OK)
    return refuse(s, msg, sip, SIP_403_FORBIDDEN);
  rq->origin = SIP_FROM_PHONE;
  return 0;
}

static int admit_register(sip_svc_t *s, msg_t *msg, sip_t *sip, sip_req_t *rq)
{
  if (!s->auth) {
    if (!s->ca)
      return 0; /* the open mode without users: anyone registers, as before */
    s->c.no_users++;
    return refuse(s, msg, sip, 403, "No phones are served here (no --users)");
  }
  if (authenticate(s, msg, sip, 0, rq))
    return 1;
  const url_t *to = sip->sip_to ? sip->sip_to->a_url : NULL;
  if (!to || !to->url_user || strcmp(to->url_user, rq->user) != 0) {
    s->c.auth_wrong_user++;
    return refuse(s, msg, sip, 403, "Not the authenticated user's AOR");
  }
  return 0;
}

/* An out-of-dialog request from a phone of ours (the From names one of
 * this node's users, or public is set: it leaves the overlay) must show
 * who it is: the TCP connection the user registered over, or proxy
 * credentials.  A From naming an overlay user must name that user. */
static int admit_call(sip_svc_t *s, msg_t *msg, sip_t *sip, sip_req_t *rq, int public)
{
  const char *fu = from_overlay_user(s, sip);
  int ours = s->auth && fu && sip__users_has(s, fu);
  if (!ours && !public)
    return 0;
  if (ours && sip__reg_stream_user(s, msg, fu)) {
    rq->origin = SIP_FROM_PHONE;
    snprintf(rq->user, sizeof rq->user, "%s", fu);
    return 0;
  }
  if (authenticate(s, msg, sip, 1, rq))
    return 1;
  if (fu && strcmp(fu, rq->user) != 0) {
    s->c.auth_wrong_user++;
    return refuse(s, msg, sip, 403, "From is not the authenticated user");
  }
  consume_credentials(s, msg, sip);
  return 0;
}

/* Nonzero when msg came over TLS from a peer whose certificate sofia
 * checked against the overlay CA and that names a node of this overlay
 * ("p2psip:<40 hex>@OVERLAY"; a user certificate names "sip:..."). */
int sip__from_node(const sip_svc_t *s, msg_t *msg)
{
  if (!s->tls_hostport[0])
    return 0;
  tport_t *tp = tport_delivered_by(nta_agent_tports(s->agent), msg);
  if (!tp || !tport_has_tls(tp) || !tport_is_verified(tp))
    return 0;
  su_strlst_t const *subj = tport_delivered_from_subjects(tp, msg);
  size_t ol = strlen(s->overlay);
  for (usize_t i = 0; subj && i < su_strlst_len(subj) && i < 8; i++) {
    const char *v = su_strlst_item(subj, i);
    if (v && strlen(v) == 7 + 40 + 1 + ol && strncmp(v, "p2psip:", 7) == 0 &&
        strspn(v + 7, "0123456789abcdef") == 40 && v[47] == '@' && strcasecmp(v + 48, s->overlay) == 0)
      return 1;
  }
  return 0;
}

static int in_ranges(const sip_svc_t *s, const struct sockaddr_storage *ss)
{
  return (s->allow_loopback && dht_addr_loopback(ss)) || dht_cidr_list_match(s->allow, s->n_allow, ss);
}

/* "localhost" and names under it (RFC 6761 6.3) are loopback whatever DNS
 * says: refused as the IP literals they stand for are. */
static int is_localhost(const char *host)
{
  size_t n = strlen(host);
  if (n && host[n - 1] == '.')
    n--;
  return (n == 9 && strncasecmp(host, "localhost", 9) == 0) ||
         (n > 10 && strncasecmp(host + n - 10, ".localhost", 10) == 0);
}

int sip__target_ok(const sip_svc_t *s, const url_t *u)
{
  char ip[64], tp[16] = "", maddr[64] = "";
  if (!u || !u->url_host)
    return 1;
  /* maddr (RFC 3261 19.1.1) names where the request really goes. */
  const char *host = url_param(u->url_params, "maddr", maddr, sizeof maddr) > 0 ? maddr
                                                                                : u->url_host;
  if (is_localhost(host))
    return s->allow_loopback;
  if (!host_is_ip_address(host))
    return 1; /* a domain: DNS says where (RFC 3263) */
  snprintf(ip, sizeof ip, "%s", host);
  if (ip[0] == '[')
    memmove(ip, ip + 1, strlen(ip)), ip[strcspn(ip, "]")] = '\0';
  struct sockaddr_storage ss = {0};
  struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1)
    ss.ss_family = AF_INET;
  else if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1)
    ss.ss_family = AF_INET6;
  else
    return 0;
  if (in_ranges(s, &ss))
    return 1; /* allowed ranges: any port, any transport */
  if (dht_addr_special(&ss))
    return 0;
  /* A stream transport writes the whole request, our own text and the
   * sender's, into whatever listens there: only to SIP's own ports. */
  url_param(u->url_params, "transport", tp, sizeof tp);
  int tls = u->url_type == url_sips || strcasecmp(tp, "tls") == 0;
  if (!tls && (!tp[0] || strcasecmp(tp, "udp") == 0))
    return 1;
  const char *port = u->url_port && u->url_port[0] ? u->url_port : tls ? "5061" : "5060";
  return strcmp(port, tls ? "5061" : "5060") == 0;
}

/* The target the request names: the first Route not naming us, else the
 * Request-URI. */
static const url_t *named_target(const sip_svc_t *s, const sip_t *sip, int ours)
{
  const sip_route_t *r = sip->sip_route;
  for (int i = 0; r && i < ours; i++)
    r = r->r_next;
  return r ? r->r_url : sip->sip_request->rq_url;
}

/* Refusals of requests that are answered (403), and ACKs, which are not
 * (nothing answers an ACK): dropped. */
static int refuse_or_drop(sip_svc_t *s, msg_t *msg, sip_t *sip, int status, const char *phrase)
{
  if (sip->sip_request->rq_method == sip_method_ack) {
    msg_destroy(msg);
    return 1;
  }
  if (sip->sip_request->rq_method == sip_method_cancel) {
    sip__reply_stateless(s, msg, sip, SIP_481_NO_TRANSACTION, TAG_END());
    return 1;
  }
  return refuse(s, msg, sip, status, phrase);
}

/* A request within a dialog (To tag), or an ACK or CANCEL. */
static int admit_in_dialog(sip_svc_t *s, msg_t *msg, sip_t *sip, sip_req_t *rq, int ours,
                           enum sip_hop hop)
{
  if (ours > 0) {
    /* The public side may send along our Record-Route to wherever the
     * route set goes on: one copy on for each copy in, never a
     * transaction of ours retransmitting to a third party. */
    if (rq->origin == SIP_FROM_OTHER && hop == SIP_HOP_DIRECT) {
      rq->stateless = 1;
      s->c.stateless_in_dialog++;
    }
    return 0;
  }
  if (!s->ca)
    return 0;
  s->c.relay_forbidden++;
  return refuse_or_drop(s, msg, sip, 403, "Relay forbidden");
}

int sip__edge_admit(sip_svc_t *s, msg_t *msg, sip_t *sip, int node, sip_req_t *rq)
{
  memset(rq, 0, sizeof *rq);
  rq->src = -1;
  sip__loop_hash(sip, rq->hash);
  sip_method_t m = sip->sip_request->rq_method;
  const char *to_tag = sip->sip_to ? sip->sip_to->a_tag : NULL;
  if (m == sip_method_ack && to_tag && strcmp(to_tag, s->sl_tag) == 0) {
    s->c.acks_absorbed++;
    msg_destroy(msg);
    return 1;
  }
  /* Our stateless tag makes no dialog (it marks 401s, 403s, 503s and the
   * registrar's answers): a request "in" one is answered 481 (RFC 3261
   * 12.2.2) at once.  sipp sends a BYE so for every REGISTER it gives up
   * on; each one went through a DHT lookup and a server transaction, and
   * past the REGISTER knee their 32 s of timers were 16% of the node's
   * CPU (nta's sorted timer list).  A REGISTER carrying the tag of our
   * 401 (some phones copy it) is still the registrar's, and an OPTIONS is
   * answered as any. */
  if (to_tag && strcmp(to_tag, s->sl_tag) == 0 && m != sip_method_register &&
      m != sip_method_options) {
    s->c.no_dialog++;
    return refuse(s, msg, sip, SIP_481_NO_TRANSACTION);
  }
  if (!sip->sip_to || !sip->sip_from)
    return 0; /* nta answers these 400 */
  if (node) {
    rq->origin = SIP_FROM_NODE;
    s->c.from_nodes++;
  }
  int ours;
  enum sip_hop hop = sip__peek_hop(s, sip, &ours);
  if (hop == SIP_HOP_SELF)
    return m == sip_method_register ? admit_register(s, msg, sip, rq) : 0;
  /* Our own phones, reached through the address they registered from. */
  int local = sip__edge_hop(s, sip);
  if (hop == SIP_HOP_DIRECT && !local && !sip__target_ok(s, named_target(s, sip, ours))) {
    s->c.target_refused++;
    return refuse_or_drop(s, msg, sip, 403, "Forbidden target");
  }
  /* ACK and CANCEL carry no credentials (RFC 3261 22.1). */
  int tail = m == sip_method_ack || m == sip_method_cancel;
  if (local || rq->origin == SIP_FROM_NODE)
    return to_tag || tail || rq->origin == SIP_FROM_NODE ? 0 : admit_call(s, msg, sip, rq, 0);
  if (to_tag || tail)
    return admit_in_dialog(s, msg, sip, rq, ours, hop);
  if (hop == SIP_HOP_LOCATE || !s->ca)
    return admit_call(s, msg, sip, rq, 0);
  /* It would leave the overlay: only for our authenticated phones. */
  if (s->auth)
    return admit_call(s, msg, sip, rq, 1);
  s->c.relay_forbidden++;
  return refuse(s, msg, sip, 403, "Relay forbidden");
}
