/*
 * Proxy peers (spec 3.1, 3.3.1): the gateway role publishes this node
 * under "sip:OVERLAY"; every node fetches that list to send requests for
 * public domains (and Routes naming the overlay) to a proxy peer.
 *
 * Published value: vid = node id hex, kind DHT_KIND_PROXY, ttl
 * SIP_PEER_TTL_S, body {"uri":"sip:IP:PORT","node":"<hex>","transports":
 * ["udp","tcp"]}.  It is put again every SIP_PEER_REPUBLISH_MS, so it
 * outlives no crash by more than the ttl, and removed on leave.  The ids
 * of the values found there also tell dnsreg.c which proxy peers are
 * alive: the DNS records of the others are removed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sip/sip_int.h"

struct sip_peer_wait {
  void (*cb)(sip_svc_t *, void *, int);
  void *ctx;
};

#define BAD_PEER_MS 60000 /* a peer that failed goes last this long */

static void peer_name(const sip_svc_t *s, char *out, size_t len)
{
  snprintf(out, len, "sip:%s", s->overlay);
}

/* ---- publication ------------------------------------------------------- */

static void on_retry(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg);

static void on_published(sip_svc_t *s, void *ctx, int status, const dht_value_t *v, size_t n)
{
  if (status >= 0 || !s->gateway || s->stopping)
    return;
  log_warn("publishing the proxy peer value failed (%d): retrying", status);
  su_timer_set_interval(s->republish, on_retry, (su_timer_arg_t *)s, SIP_PEER_RETRY_MS);
}

char *sip__peer_encode(const char *uri, const char *node)
{
  json_t *o = json_pack("{s:s, s:s, s:[s,s]}", "uri", uri, "node", node, "transports", "udp",
                        "tcp");
  char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  return body;
}

static void publish(sip_svc_t *s)
{
  char name[300], hex[DHT_ID_HEX], uri[128];
  peer_name(s, name, sizeof name);
  dht_id_hex(&dht_self(s->dht)->id, hex);
  snprintf(uri, sizeof uri, "sip:%s", s->hostport);
  char *body = sip__peer_encode(uri, hex);
  if (body)
    sip__dht_put(s, name, NULL, DHT_KIND_PROXY, body, SIP_PEER_TTL_S, on_published, NULL);
  free(body);
}

static void on_republish(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  sip_svc_t *s = (sip_svc_t *)arg;
  if (s->gateway && !s->stopping)
    publish(s);
}

/* The first put may land before the node has joined the ring (sip_start
 * runs right after dht_start), or fail: put again soon, then every
 * SIP_PEER_REPUBLISH_MS. */
static void on_retry(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  sip_svc_t *s = (sip_svc_t *)arg;
  on_republish(m, t, arg);
  su_timer_run(s->republish, on_republish, arg);
}

int sip__gateway_start(sip_svc_t *s)
{
  publish(s);
  su_timer_set_interval(s->republish, on_retry, (su_timer_arg_t *)s, SIP_PEER_RETRY_MS);
  if (s->dns_update)
    sip__dnsreg_start(s);
  return 0;
}

static void withdrawn(sip_svc_t *s)
{
  if (--s->gw_pending > 0)
    return;
  void (*done)(sip_svc_t *) = s->gw_done;
  s->gw_done = NULL;
  if (done)
    done(s);
}

static void on_removed(sip_svc_t *s, void *ctx, int status, const dht_value_t *v, size_t n)
{
  withdrawn(s);
}

void sip__gateway_stop(sip_svc_t *s, void (*done)(sip_svc_t *s))
{
  char name[300];
  peer_name(s, name, sizeof name);
  su_timer_reset(s->republish);
  s->gw_done = done;
  s->gw_pending = 1;
  if (sip__dht_remove(s, name, NULL, on_removed, NULL) == 0)
    s->gw_pending++;
  if (s->dnsreg) {
    s->gw_pending++;
    sip__dnsreg_stop(s, withdrawn);
  }
  withdrawn(s);
}

/* ---- the list of proxy peers -------------------------------------------- */

static int is_bad(const sip_svc_t *s, const char *uri)
{
  uint64_t now = sip__now_ms(s);
  for (int i = 0; i < SIP_MAX_PEERS; i++)
    if (s->bad[i].until > now && strcmp(s->bad[i].uri, uri) == 0)
      return 1;
  return 0;
}

void sip__peer_failed(sip_svc_t *s, const char *uri)
{
  int slot = 0;
  for (int i = 0; i < SIP_MAX_PEERS; i++) {
    if (strcmp(s->bad[i].uri, uri) == 0) {
      slot = i;
      break;
    }
    if (s->bad[i].until < s->bad[slot].until)
      slot = i;
  }
  snprintf(s->bad[slot].uri, sizeof s->bad[slot].uri, "%s", uri);
  s->bad[slot].until = sip__now_ms(s) + BAD_PEER_MS;
  s->peers_at = 0; /* order the list again at the next request */
}

/* A value from another node: only a plain "sip:HOST:PORT" is taken. */
int sip__peer_decode(const dht_value_t *v, sip_peer_t *p)
{
  if (v->body_len == 0 || v->body_len > 2048)
    return -EINVAL;
  json_t *o = json_loadb((const char *)v->body, v->body_len, 0, NULL);
  const char *uri = json_string_value(json_object_get(o, "uri"));
  const char *node = json_string_value(json_object_get(o, "node"));
  int ok = uri && strncmp(uri, "sip:", 4) == 0 && strlen(uri) < sizeof p->uri &&
           !strpbrk(uri, " \t\r\n<>;,\"");
  if (ok) {
    snprintf(p->uri, sizeof p->uri, "%s", uri);
    snprintf(p->node, sizeof p->node, "%s", node ? node : "");
  }
  json_decref(o);
  return ok ? 0 : -EINVAL;
}

static void on_peer_values(sip_svc_t *s, void *ctx, int status, const dht_value_t *v, size_t n)
{
  char self[128];
  snprintf(self, sizeof self, "sip:%s", s->hostport);
  sip_peer_t good[SIP_MAX_PEERS], bad[SIP_MAX_PEERS];
  int n_good = 0, n_bad = 0;
  for (size_t i = 0; i < n && n_good + n_bad < SIP_MAX_PEERS; i++) {
    sip_peer_t p;
    if (sip__peer_decode(&v[i], &p) < 0 || strcmp(p.uri, self) == 0)
      continue;
    if (is_bad(s, p.uri))
      bad[n_bad++] = p;
    else
      good[n_good++] = p;
  }
  memcpy(s->peers, good, sizeof *good * (size_t)n_good);
  memcpy(s->peers + n_good, bad, sizeof *bad * (size_t)n_bad);
  s->n_peers = n_good + n_bad;
  s->peers_at = s->n_peers ? sip__now_ms(s) : 0;
  s->peers_fetching = 0;
  /* The callbacks may queue new waiters: take the list first. */
  struct sip_peer_wait *w = s->waiters;
  int nw = s->n_waiters;
  s->waiters = NULL, s->n_waiters = 0;
  for (int i = 0; i < nw; i++)
    w[i].cb(s, w[i].ctx, status == DHT_ENOTFOUND ? 0 : status);
  free(w);
}

int sip__peers_get(sip_svc_t *s, void (*cb)(sip_svc_t *, void *, int), void *ctx)
{
  if (s->n_peers > 0 && s->peers_at && sip__now_ms(s) - s->peers_at < SIP_PEER_CACHE_MS) {
    cb(s, ctx, 0);
    return 0;
  }
  if (s->n_waiters >= SIP_MAX_TRANSACTIONS)
    return -EBUSY;
  struct sip_peer_wait *w = realloc(s->waiters, sizeof *w * (size_t)(s->n_waiters + 1));
  if (!w)
    return -ENOMEM;
  s->waiters = w;
  if (!s->peers_fetching) {
    char name[300];
    peer_name(s, name, sizeof name);
    int rc = sip__dht_get(s, name, on_peer_values, NULL);
    if (rc < 0)
      return rc;
    s->peers_fetching = 1;
  }
  w[s->n_waiters].cb = cb, w[s->n_waiters].ctx = ctx;
  s->n_waiters++;
  return 0;
}

/* ---- the live proxy peers, for the DNS clean-up ------------------------ */

/* Both the owner (set by the DHT) and the value id (the node id in hex,
 * as publish() puts it) count as live: with more ids the clean-up only
 * removes less. */
static void on_peer_ids(sip_svc_t *s, void *ctx, int status, const dht_value_t *v, size_t n)
{
  if (status < 0 || n > SIP_DNSGC_MAX_PEERS) {
    sip__dnsreg_peers(s, status < 0 ? status : -E2BIG, NULL, 0);
    return;
  }
  dht_id_t ids[2 * SIP_DNSGC_MAX_PEERS];
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    ids[k++] = v[i].owner;
    if (dht_id_parse(v[i].vid, &ids[k]) == 0)
      k++;
  }
  sip__dnsreg_peers(s, 0, ids, k);
}

int sip__gateway_peer_ids(sip_svc_t *s)
{
  char name[300];
  peer_name(s, name, sizeof name);
  return sip__dht_get(s, name, on_peer_ids, NULL);
}

void sip__peers_free(sip_svc_t *s)
{
  free(s->waiters);
  s->waiters = NULL, s->n_waiters = 0;
}
