/*
 * OPTIONS to other nodes' SIP addresses that carry news between proxy
 * peers (gateway.c, dnsreg.c): a node tells a proxy peer that another one
 * was found dead, a proxy peer probes a peer's address before removing its
 * DNS records, and tells a peer whose records it removed.
 *
 * At most SIP_MAX_PINGS are in flight (STYLE 8); a ping nobody waits for
 * lives as long as nta retransmits it (32 s over UDP), so that a peer that
 * was stopped for a moment still gets it when it runs again.  nta reports
 * an ICMP port unreachable as 503 and gives up with 408.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sofia-sip/sip_tag.h>

#include "sip/sip_int.h"

struct sip_ping {
  sip_svc_t *s;
  char uri[80];
  nta_outgoing_t *orq; /* NULL: a free slot */
  sip_ping_cb cb;
  void *ctx;
};

static int on_answer(nta_outgoing_magic_t *magic, nta_outgoing_t *orq, sip_t const *sip)
{
  sip_ping_t *p = (sip_ping_t *)magic;
  int status = sip && sip->sip_status ? sip->sip_status->st_status : nta_outgoing_status(orq);
  if (status < 200 || p->orq != orq)
    return 0;
  /* nta answers some requests itself (503 for an ICMP error, 408 when it
   * gives up); only a response that came from the network has a source. */
  char from[80] = "";
  msg_t *msg = sip ? nta_outgoing_getresponse(orq) : NULL;
  if (msg)
    sip__msg_source(msg, from, sizeof from);
  msg_destroy(msg);
  log_debug("OPTIONS to %s: %d from %s", p->uri, status, from[0] ? from : "nta itself");
  if (!from[0])
    status = 0;
  sip_ping_cb cb = p->cb;
  void *ctx = p->ctx;
  p->orq = NULL, p->cb = NULL, p->ctx = NULL;
  nta_outgoing_destroy(orq);
  if (cb)
    cb(p->s, ctx, status);
  return 0;
}

int sip__ping(sip_svc_t *s, const char *uri, const char *header, sip_ping_cb cb, void *ctx)
{
  if (!s->pings && !(s->pings = calloc(SIP_MAX_PINGS, sizeof *s->pings)))
    return -ENOMEM;
  int slot = 0;
  while (slot < SIP_MAX_PINGS && s->pings[slot].orq)
    slot++;
  if (slot == SIP_MAX_PINGS)
    return -EBUSY;
  sip_ping_t *p = &s->pings[slot];
  char from[160];
  snprintf(from, sizeof from, "<sip:%s>", s->hostport);
  p->s = s, p->cb = cb, p->ctx = ctx;
  snprintf(p->uri, sizeof p->uri, "%s", uri);
  p->orq = nta_outgoing_tcreate(s->leg, on_answer, (nta_outgoing_magic_t *)p,
                                (url_string_t const *)uri, SIP_METHOD_OPTIONS,
                                (url_string_t const *)uri, SIPTAG_FROM_STR(from),
                                SIPTAG_TO_STR(uri), TAG_IF(header, SIPTAG_HEADER_STR(header)),
                                TAG_END());
  if (!p->orq) {
    p->cb = NULL, p->ctx = NULL;
    return -EINVAL;
  }
  return slot;
}

void sip__ping_cancel(sip_svc_t *s, int handle)
{
  if (!s->pings || handle < 0 || handle >= SIP_MAX_PINGS || !s->pings[handle].orq)
    return;
  nta_outgoing_destroy(s->pings[handle].orq);
  s->pings[handle].orq = NULL, s->pings[handle].cb = NULL, s->pings[handle].ctx = NULL;
}

void sip__pings_free(sip_svc_t *s)
{
  for (int i = 0; s->pings && i < SIP_MAX_PINGS; i++)
    sip__ping_cancel(s, i);
  free(s->pings);
  s->pings = NULL;
}

/* The value of the extension header `name`, or NULL. */
const char *sip__header_value(const sip_t *sip, const char *name)
{
  for (const sip_unknown_t *u = sip->sip_unknown; u; u = u->un_next)
    if (u->un_name && strcasecmp(u->un_name, name) == 0)
      return u->un_value;
  return NULL;
}
