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
 * alive: the DNS records of the others are removed.  And the list tells a
 * node that found a node dead whether that was a proxy peer, and which
 * proxy peers to tell (the end of this file).
 */
#include <errno.h>
#include <stdint.h>
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

char *sip__peer_encode(const char *uri, const char *node, const char *tls)
{
  json_t *o = json_pack("{s:s, s:s, s:[s,s]}", "uri", uri, "node", node, "transports", "udp",
                        "tcp");
  /* The secured mode: nodes send to us over TLS, where we can tell them
   * from strangers (edge.c). */
  if (o && tls && tls[0]) {
    json_object_set_new(o, "tls", json_string(tls));
    json_array_append_new(json_object_get(o, "transports"), json_string("tls"));
  }
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
  char *body = sip__peer_encode(uri, hex, s->tls_hostport);
  if (body)
    sip__dht_put(s, NULL, name, NULL, DHT_KIND_PROXY, body, SIP_PEER_TTL_S, on_published, NULL);
  free(body);
}

/* With each put, the list of the other proxy peers is read again: a proxy
 * peer routes calls for nodes behind a NAT through the peer holding their
 * flow, over TLS in the secured mode (proxy.c), and takes its TLS address
 * from that list. */
static void on_republish(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  sip_svc_t *s = (sip_svc_t *)arg;
  if (s->gateway && !s->stopping) {
    publish(s);
    if (s->tls_hostport[0])
      sip__peers_get(s, NULL, NULL);
  }
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
  if (sip__dht_remove(s, NULL, name, NULL, NULL, on_removed, NULL) == 0)
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

/* A plain "IP:PORT" ("[v6]:PORT"), as a peer's TLS address must be. */
static int hostport_ok(const char *hp)
{
  struct sockaddr_storage ss;
  return hp && strlen(hp) < 64 && !strpbrk(hp, " \t\r\n<>;,\"@") && dht_addr_parse(hp, &ss) == 0;
}

/* A value from another node: only a plain "sip:HOST:PORT" is taken. */
int sip__peer_decode(const dht_value_t *v, sip_peer_t *p)
{
  if (v->kind != DHT_KIND_PROXY || v->body_len == 0 || v->body_len > 2048)
    return -EINVAL;
  json_t *o = json_loadb((const char *)v->body, v->body_len, 0, NULL);
  const char *uri = json_string_value(json_object_get(o, "uri"));
  const char *node = json_string_value(json_object_get(o, "node"));
  const char *tls = json_string_value(json_object_get(o, "tls"));
  int ok = uri && strncmp(uri, "sip:", 4) == 0 && strlen(uri) < sizeof p->uri &&
           !strpbrk(uri, " \t\r\n<>;,\"");
  if (ok) {
    snprintf(p->uri, sizeof p->uri, "%s", uri);
    snprintf(p->node, sizeof p->node, "%s", node ? node : "");
    p->tls[0] = '\0';
    if (tls && hostport_ok(tls))
      snprintf(p->tls, sizeof p->tls, "sip:%s;transport=tls", tls);
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
  /* A read that failed (no answer, not an empty record) says nothing of
   * the peers: the list we had stands, stale, and the next request reads
   * again, instead of every call going without a proxy peer meanwhile. */
  bool keep = status != 0 && status != DHT_ENOTFOUND && s->n_peers > 0;
  for (size_t i = 0; !keep && i < n && n_good + n_bad < SIP_MAX_PEERS; i++) {
    sip_peer_t p;
    if (sip__peer_decode(&v[i], &p) < 0 || strcmp(p.uri, self) == 0)
      continue;
    if (is_bad(s, p.uri))
      bad[n_bad++] = p;
    else
      good[n_good++] = p;
  }
  if (keep) {
    s->peers_at = 0;
    status = 0;
  } else {
    memcpy(s->peers, good, sizeof *good * (size_t)n_good);
    memcpy(s->peers + n_good, bad, sizeof *bad * (size_t)n_bad);
    s->n_peers = n_good + n_bad;
    s->peers_at = s->n_peers ? sip__now_ms(s) : 0;
  }
  s->peers_tried = sip__now_ms(s);
  s->peers_fetching = 0;
  /* The callbacks may queue new waiters: take the list first. */
  struct sip_peer_wait *w = s->waiters;
  int nw = s->n_waiters;
  s->waiters = NULL, s->n_waiters = 0;
  for (int i = 0; i < nw; i++)
    if (w[i].cb)
      w[i].cb(s, w[i].ctx, status == DHT_ENOTFOUND ? 0 : status);
  free(w);
}

int sip__peers_get(sip_svc_t *s, void (*cb)(sip_svc_t *, void *, int), void *ctx)
{
  if (s->n_peers > 0 && s->peers_at && sip__now_ms(s) - s->peers_at < SIP_PEER_CACHE_MS) {
    if (cb)
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

int sip__peers_refresh(sip_svc_t *s, void (*cb)(sip_svc_t *, void *, int), void *ctx)
{
  if (s->peers_tried && sip__now_ms(s) - s->peers_tried < SIP_PEER_MISS_MS && !s->peers_fetching) {
    if (cb)
      cb(s, ctx, 0); /* just fetched: that list stands */
    return 0;
  }
  s->peers_at = 0; /* wait for a fetch: the one under way, or a new one */
  return sip__peers_get(s, cb, ctx);
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

/* ---- a proxy peer found dead ---------------------------------------------
 *
 * The overlay notices a crash within milliseconds: the dead node's ring
 * neighbours see their connections to it close and a ping refused
 * (dht_on_dead).  A proxy peer is seldom such a neighbour, so the node
 * that notices asks the DHT whether the dead node was a proxy peer (its id
 * is the value id or the owner of a value under sip:OVERLAY) and, if so,
 * tells the SIP_DOWN_REPORTS other proxy peers whose ids are nearest the
 * dead one (every neighbour picks the same ones) by an OPTIONS carrying
 * "P2PSIP-Peer-Down: <id>"; a proxy peer doing DNS registration that
 * notices checks too.  For the proxy peer that hears it this is a hint to
 * check, never evidence: dnsreg.c probes the address DNS gives. */

static int names(const dht_value_t *v, const dht_id_t *id)
{
  dht_id_t vid;
  return memcmp(&v->owner, id, sizeof *id) == 0 ||
         (dht_id_parse(v->vid, &vid) == 0 && memcmp(&vid, id, sizeof *id) == 0);
}

/* Nonzero when a is nearer to `to` than b (XOR distance). */
static int nearer(const dht_id_t *a, const dht_id_t *b, const dht_id_t *to)
{
  for (int i = 0; i < DHT_ID_LEN; i++) {
    int x = a->b[i] ^ to->b[i], y = b->b[i] ^ to->b[i];
    if (x != y)
      return x < y;
  }
  return 0;
}

/* The values of the SIP_DOWN_REPORTS proxy peers nearest dead, other
 * than dead and ourselves; returns how many (indices into v). */
static int pick_told(sip_svc_t *s, const dht_id_t *dead, const dht_value_t *v, size_t n,
                     size_t *out, dht_id_t *ids)
{
  int k = 0;
  for (size_t i = 0; i < n; i++) {
    dht_id_t id;
    if (dht_id_parse(v[i].vid, &id) < 0 || names(&v[i], dead) ||
        memcmp(&id, &dht_self(s->dht)->id, sizeof id) == 0)
      continue;
    int pos = k;
    while (pos > 0 && nearer(&id, &ids[pos - 1], dead))
      pos--;
    if (pos >= SIP_DOWN_REPORTS)
      continue;
    k += k < SIP_DOWN_REPORTS;
    memmove(out + pos + 1, out + pos, sizeof *out * (size_t)(k - 1 - pos));
    memmove(ids + pos + 1, ids + pos, sizeof *ids * (size_t)(k - 1 - pos));
    out[pos] = i, ids[pos] = id;
  }
  return k;
}

static void on_down_values(sip_svc_t *s, void *ctx, int status, const dht_value_t *v, size_t n)
{
  int slot = (int)(intptr_t)ctx;
  dht_id_t dead = s->down[slot].id;
  s->down[slot].used = 0;
  size_t i = 0;
  while (status >= 0 && i < n && !names(&v[i], &dead))
    i++;
  if (status < 0 || i == n || s->stopping)
    return; /* not a proxy peer, or the DHT cannot tell */
  char hex[DHT_ID_HEX], header[100];
  dht_id_hex(&dead, hex);
  snprintf(header, sizeof header, "%s: %s", SIP_HDR_PEER_DOWN, hex);
  if (s->gateway && s->dnsreg)
    sip__dnsreg_suspect(s, hex, "this node");
  size_t told[SIP_DOWN_REPORTS];
  dht_id_t ids[SIP_DOWN_REPORTS];
  int k = pick_told(s, &dead, v, n, told, ids);
  for (int j = 0; j < k; j++) {
    sip_peer_t p;
    if (sip__peer_decode(&v[told[j]], &p) < 0 || sip__ping(s, p.uri, header, NULL, NULL) < 0)
      continue;
    s->c.down_reported++;
    log_info("proxy peer %.12s found dead: telling proxy peer %s", hex, p.uri);
  }
}

static void on_dead(dht_t *dht, const dht_node_t *node, void *arg)
{
  sip_svc_t *s = arg;
  int slot = 0;
  while (slot < SIP_DOWN_PENDING && s->down[slot].used)
    slot++;
  if (!s->started || s->stopping || slot == SIP_DOWN_PENDING)
    return; /* a burst of deaths: the DNS clean-up's checks catch the rest */
  char name[300];
  peer_name(s, name, sizeof name);
  s->down[slot].id = node->id;
  if (sip__dht_get(s, name, on_down_values, (void *)(intptr_t)slot) == 0)
    s->down[slot].used = 1;
}

void sip__gateway_watch(sip_svc_t *s, int on)
{
  dht_on_dead(s->dht, on ? on_dead : NULL, s);
}

void sip__peer_news(sip_svc_t *s, const sip_t *sip, const char *from)
{
  const char *down = sip__header_value(sip, SIP_HDR_PEER_DOWN);
  const char *removed = sip__header_value(sip, SIP_HDR_DNS_REMOVED);
  if (down && s->gateway && s->dnsreg)
    sip__dnsreg_suspect(s, down, from);
  if (removed && s->gateway && s->dnsreg)
    sip__dnsreg_removed(s, removed, from);
}
