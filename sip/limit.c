/*
 * Limits per source, so that one source cannot take what the others need
 * (pike-like, checked before anything else, before any state exists):
 *
 * - a request rate: a token bucket of --sip-rate RATE[:BURST] per source;
 *   a source that empties it gets one 503 with Retry-After and is dropped
 *   for SIP_RATE_BLOCK_MS (each 503 is an answer a forged source would
 *   reflect, so there is one per block);
 * - live transactions: a source holds at most --sip-source-transactions
 *   of the proxy's and the registrar's (and never more than an eighth of
 *   the proxy's table), so that a flood toward a silent address from one
 *   source leaves room for every other caller.
 *
 * A source is an IPv4 address or an IPv6 /64; on loopback, where every
 * process of one host shares the address, an address and port.  Overlay
 * nodes (TLS with a node certificate), --sip-trusted ranges and requests
 * for this node's own phones (core.c) are not limited.  Sources live in a
 * table of SIP_SOURCES slots, open addressing with SIP_SOURCE_PROBES
 * probes; a new source takes the slot seen longest ago among those that
 * hold no transaction, and goes unlimited (the table-wide limits still
 * hold) when all of them do.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sofia-sip/sip_tag.h>

#include "sip/sip_int.h"

typedef struct {
  char key[48];           /* "" when free */
  uint64_t last, seen;    /* uv_now() of the last refill, of the last request */
  uint64_t blocked_until; /* dropped until then */
  double tokens;
  unsigned live;          /* transactions held */
} sip_src_t;

struct sip_limits {
  double rate, burst;
  unsigned per_source;
  sip_src_t src[SIP_SOURCES];
};

int sip__limit_new(sip_svc_t *s, unsigned rate, unsigned burst, unsigned per_source)
{
  if (!rate && !per_source)
    return 0;
  sip_limits_t *l = calloc(1, sizeof *l);
  if (!l)
    return -ENOMEM;
  l->rate = rate, l->burst = burst ? burst : 2.0 * rate;
  l->per_source = per_source;
  if (l->per_source > SIP_MAX_TRANSACTIONS / 8)
    l->per_source = SIP_MAX_TRANSACTIONS / 8;
  s->limits = l;
  return 0;
}

void sip__limit_free(sip_svc_t *s)
{
  free(s->limits);
  s->limits = NULL;
}

/* v in decimal at p; returns the end. */
static char *put_dec(char *p, unsigned v)
{
  char d[10];
  int n = 0;
  do
    d[n++] = (char)('0' + v % 10);
  while ((v /= 10) && n < 10);
  while (n)
    *p++ = d[--n];
  return p;
}

/* The source's key: "a.b.c.d", "v6/64 prefix", or with ":port" on
 * loopback.  IPv4 by hand: inet_ntop() and snprintf() for every request
 * were 4 % of a loaded registrar. */
static int source_key(const struct sockaddr *sa, char key[48])
{
  if (!sa)
    return -EINVAL;
  char ip[INET6_ADDRSTRLEN];
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    uint32_t h = ntohl(a->sin_addr.s_addr);
    char *p = key;
    for (int i = 3; i >= 0; i--) {
      p = put_dec(p, (h >> (8 * i)) & 255);
      *p++ = i ? '.' : ':';
    }
    p = (h >> 24) == 127 ? put_dec(p, ntohs(a->sin_port)) : p - 1;
    *p = '\0';
    return 0;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    struct in6_addr p = a->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(&p)) {
      snprintf(key, 48, "[::1]:%u", ntohs(a->sin6_port));
      return 0;
    }
    memset(p.s6_addr + 8, 0, 8);
    inet_ntop(AF_INET6, &p, ip, sizeof ip);
    snprintf(key, 48, "%.44s/64", ip); /* a /64 prints in 21 at most */
    return 0;
  }
  return -EAFNOSUPPORT;
}

/* --sip-trusted: a SIP trunk, another domain's proxy (kamailio's
 * permissions module plays this part). */
static int trusted(const sip_svc_t *s, const struct sockaddr *sa, size_t len)
{
  struct sockaddr_storage ss;
  if (!s->n_trusted || !sa || len > sizeof ss)
    return 0;
  memset(&ss, 0, sizeof ss);
  memcpy(&ss, sa, len);
  return dht_cidr_list_match(s->trusted, s->n_trusted, &ss);
}

/* A token from the source's bucket (refilled first). */
static int take_token(const sip_limits_t *l, sip_src_t *e, uint64_t now)
{
  e->tokens += (double)(now - e->last) * l->rate / 1000.0;
  if (e->tokens > l->burst)
    e->tokens = l->burst;
  e->last = now;
  if (e->tokens < 1.0)
    return 0;
  e->tokens -= 1.0;
  return 1;
}

static sip_src_t *source_get(sip_limits_t *l, const char *key, uint64_t now)
{
  uint32_t h = sip__fnv(SIP_FNV_INIT, key, 0);
  sip_src_t *victim = NULL;
  for (int i = 0; i < SIP_SOURCE_PROBES; i++) {
    sip_src_t *e = &l->src[(h + (uint32_t)i) % SIP_SOURCES];
    if (strcmp(e->key, key) == 0)
      return e;
    if (!e->key[0]) { /* a free slot beats any to evict */
      if (!victim || victim->key[0])
        victim = e;
    } else if (e->live == 0 && (!victim || (victim->key[0] && e->seen < victim->seen))) {
      victim = e;
    }
  }
  if (!victim)
    return NULL;
  memset(victim, 0, sizeof *victim);
  snprintf(victim->key, sizeof victim->key, "%s", key);
  victim->tokens = l->burst, victim->last = now;
  return victim;
}

/* The source's entry, seen now; NULL when the source is not limited. */
static sip_src_t *source_seen(sip_svc_t *s, const struct sockaddr *sa, size_t len, uint64_t now)
{
  char key[48];
  if (!s->limits || source_key(sa, key) < 0 || trusted(s, sa, len))
    return NULL;
  sip_src_t *e = source_get(s->limits, key, now);
  if (e)
    e->seen = now;
  return e;
}

int sip__limit_peek(sip_svc_t *s, const struct sockaddr *sa, size_t len)
{
  uint64_t now = sip__now_ms(s);
  sip_src_t *e = s->limits && s->limits->rate ? source_seen(s, sa, len, now) : NULL;
  if (!e)
    return 0;
  if (now < e->blocked_until) {
    s->c.rate_dropped++;
    return 1;
  }
  return take_token(s->limits, e, now) ? 0 : -1;
}

int sip__limit_admit(sip_svc_t *s, msg_t *msg, sip_t *sip, int exempt, int *slot)
{
  sip_limits_t *l = s->limits;
  *slot = -1;
  su_addrinfo_t *ai = msg_addrinfo(msg);
  uint64_t now = sip__now_ms(s);
  sip_src_t *e = exempt || !ai ? NULL
                              : source_seen(s, (const struct sockaddr *)ai->ai_addr, ai->ai_addrlen, now);
  if (!e)
    return 0;
  *slot = (int)(e - l->src);
  if (!l->rate)
    return 0;
  if (now < e->blocked_until) {
    s->c.rate_dropped++;
    msg_destroy(msg);
    return 1;
  }
  if (take_token(l, e, now))
    return 0;
  e->blocked_until = now + SIP_RATE_BLOCK_MS;
  s->c.rate_limited++;
  log_info("SIP source %s over %.0f requests/s: refused for %d s", e->key, l->rate,
           SIP_RATE_BLOCK_MS / 1000);
  if (sip->sip_request->rq_method == sip_method_ack) {
    msg_destroy(msg);
    return 1;
  }
  char after[16];
  snprintf(after, sizeof after, "%d", SIP_RATE_BLOCK_MS / 1000);
  sip__reply_stateless(s, msg, sip, SIP_503_SERVICE_UNAVAILABLE, SIPTAG_RETRY_AFTER_STR(after),
                       TAG_END());
  return 1;
}

int sip__limit_full(const sip_svc_t *s, int slot)
{
  const sip_limits_t *l = s->limits;
  return l && slot >= 0 && l->per_source && l->src[slot].live >= l->per_source;
}

void sip__limit_hold(sip_svc_t *s, int slot)
{
  if (s->limits && slot >= 0)
    s->limits->src[slot].live++;
}

void sip__limit_release(sip_svc_t *s, int slot)
{
  if (s->limits && slot >= 0 && s->limits->src[slot].live > 0)
    s->limits->src[slot].live--;
}
