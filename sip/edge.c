/*
 * The edge: what a request must show before this node does anything for
 * it.  Runs before any transaction exists (core.c's on_stateless), so what
 * it refuses costs one stateless answer and no memory, and a forged source
 * gets one answer per request it sent (no retransmissions to amplify).
 *
 * - ACKs of our stateless answers (their To tag is ours) are absorbed.
 * - REGISTER for this node needs digest authentication (401) when the node
 *   has users (--users), and the AOR must be the authenticated user's
 *   (403); in the secured mode a node without users serves no phones
 *   (403).
 * - An out-of-dialog request whose From names one of this node's users
 *   needs proxy authentication (407) as that user, unless it comes on the
 *   TCP connection that user registered over (a UDP source can be forged,
 *   so a UDP phone authenticates every call).
 */
#include <string.h>

#include <sofia-sip/sip_tag.h>

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

/* An out-of-dialog request for anywhere but this node itself. */
static int admit_call(sip_svc_t *s, msg_t *msg, sip_t *sip, sip_req_t *rq)
{
  const char *fu = from_overlay_user(s, sip);
  if (!s->auth || !fu || !sip__auth_has_user(s, fu))
    return 0;
  if (sip__reg_stream_user(s, msg, fu)) {
    rq->origin = SIP_FROM_PHONE;
    snprintf(rq->user, sizeof rq->user, "%s", fu);
    return 0;
  }
  if (authenticate(s, msg, sip, 1, rq))
    return 1;
  if (strcmp(fu, rq->user) != 0) {
    s->c.auth_wrong_user++;
    return refuse(s, msg, sip, 403, "From is not the authenticated user");
  }
  consume_credentials(s, msg, sip);
  return 0;
}

int sip__edge_admit(sip_svc_t *s, msg_t *msg, sip_t *sip, sip_req_t *rq)
{
  memset(rq, 0, sizeof *rq);
  sip__loop_hash(sip, rq->hash);
  sip_method_t m = sip->sip_request->rq_method;
  const char *to_tag = sip->sip_to ? sip->sip_to->a_tag : NULL;
  if (m == sip_method_ack && to_tag && strcmp(to_tag, s->sl_tag) == 0) {
    s->c.acks_absorbed++;
    msg_destroy(msg);
    return 1;
  }
  if (m == sip_method_ack || m == sip_method_cancel || !sip->sip_to || !sip->sip_from)
    return 0;
  int ours;
  enum sip_hop hop = sip__peek_hop(s, sip, &ours);
  if (hop == SIP_HOP_SELF)
    return m == sip_method_register ? admit_register(s, msg, sip, rq) : 0;
  return to_tag ? 0 : admit_call(s, msg, sip, rq);
}
