/*
 * DNS registration of a proxy peer (spec 2.1, 3.1): RFC 2136 UPDATE signed
 * with TSIG (RFC 8945), built and checked with libldns, sent over UDP on
 * the libuv loop (ldns' own resolver would block the loop).
 *
 * In the overlay's zone it adds
 *     pp-<node id, 12 hex>.OVERLAY.  A/AAAA  <our address>
 *     _sip._udp.OVERLAY.  SRV 10 10 <port> pp-<...>.OVERLAY.
 *     _sip._tcp.OVERLAY.  SRV 10 10 <port> pp-<...>.OVERLAY.
 * (first deleting any older address of that name), sends it again every
 * DNS_REFRESH_MS, and on leave deletes exactly these records.
 *
 * A proxy peer that crashes deletes nothing, so the live ones clean up
 * after it, and they delete only what the server lets every proxy peer's
 * key write (docs/DNS.md): a dead peer's SRV records, never its pp- name,
 * which only its own key may change.  Callers find proxy peers through
 * the SRV records alone, so a pp- name no SRV record names is unused.
 *
 * Nothing but our own look at the peer removes it.  Every GC_INTERVAL_MS a
 * check asks the server for the SRV RRsets of _sip._udp and _sip._tcp,
 * then the DHT for the proxy peers under sip:OVERLAY (gateway.c); a target
 * pp-<hex12>.OVERLAY. whose node is absent from two consecutive checks
 * becomes a suspect.  So does a peer reported dead (gateway.c: the
 * overlay finds a crash within milliseconds).  A suspect is checked: its
 * SRV records, then the addresses of its pp- name, come from the server,
 * and an OPTIONS to each address at the SRV port must go unanswered (an
 * ICMP error, or nothing within DOWN_PROBE_MS) before its SRV records are
 * removed.  The evidence is what callers would meet at the address DNS
 * gives them: neither a report nor a value missing from the DHT (a forged
 * tombstone in the open mode, a DHT split) removes a peer that answers.
 * Names of any other form than pp-<hex12> are never touched: an
 * operator's own records stay.  A peer removed while alive (stopped or cut
 * off for a moment) is told so by an OPTIONS that nta keeps retransmitting
 * for 32 s, and adds its records again as soon as it gets it; failing
 * that, at its next check, which finds them missing.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ldns/ldns.h>

#include "sip/sip_int.h"

/* Resolvers keep a record this long: a crashed peer leaves DNS within
 * milliseconds (a peer reported dead), but a proxy such as kamailio that
 * looked the overlay up just before keeps sending there, and loses the
 * stateless ACK of a 2xx, until its copy expires.  The load is a few
 * queries per resolver and TTL; 30 s cost calls for 30 s after a crash. */
#define DNS_TTL 5
#define DNS_REFRESH_MS 60000
#define DNS_RETRY_MS 500
#define DNS_TRIES 3
#define DNS_FUDGE 300
#define DNS_RECV_MAX 4096 /* the receive buffer, and the EDNS size we announce */

/* The clean-up runs once per re-put of the proxy peer values: a crashed
 * peer's value is gone from the DHT SIP_PEER_TTL_S after its last put, and
 * its records from DNS at most two intervals later. */
#define GC_INTERVAL_MS SIP_PEER_REPUBLISH_MS
#define GC_STRIKES 2     /* consecutive checks a peer must be missing from */
#define GC_MAX_SRV 64    /* SRV records looked at per answer (STYLE 8) */
#define GC_MAX_CAND 64   /* missing peers remembered between checks */
#define GC_MAX_SUSPECTS 8 /* suspects per check; the rest wait a check */
#define GC_HOST_LEN 320

/* A peer reported dead (the fast check). */
#define DOWN_MAX_ADDR 4       /* addresses (address, port pairs) probed */
#define DOWN_PROBE_MS 1000    /* an address that does not answer by then is dead */
#define DOWN_RECHECK_MS 1000  /* a peer is checked at most this often; reports wait */
#define DNS_READD_MIN_MS 1000 /* re-adds of our records on another's word, at most */
#define HEX12 13              /* the 12 hex digits of a pp- name, and a NUL */

/* One DNS message in flight: its wire form, sent again by the retry
 * timer, and what its answer must carry (the id and, with a key, a TSIG
 * over our MAC). */
typedef struct {
  uv_timer_t retry;
  uint16_t id;
  ldns_rdf *mac;
  uint8_t *wire;
  size_t wire_len;
  int tries;
} dns_flight_t;

enum gc_phase { GC_IDLE, GC_QUERY_UDP, GC_QUERY_TCP, GC_DHT, GC_ADDR_A, GC_ADDR_AAAA, GC_PROBE,
                GC_DELETE };

/* A pp- target (not ours) of the last SRV answers, which reports may name. */
typedef struct {
  char hex[HEX12];
  uint64_t checked; /* uv_now() when its last check began; 0: never */
  uint64_t due;     /* a suspect: check it from then on */
  int queued;
  int missing;      /* suspected for its absence from the DHT, not a report */
} gc_peer_t;

/* A pp- target missing from the DHT at check number `check`. */
typedef struct {
  char host[GC_HOST_LEN];
  unsigned strikes;
  uint64_t check;
} gc_cand_t;

struct sip_dnsreg {
  sip_svc_t *s; /* NULL once the service is gone */
  uv_udp_t udp;
  uv_timer_t refresh, gc;
  dns_flight_t reg; /* our own records */
  dns_flight_t gcq; /* the clean-up's queries and deletes */
  int handles;
  struct sockaddr_storage server;
  char zone[300], host[320], addr[INET6_ADDRSTRLEN];
  unsigned port;
  int v6;
  char key_name[256], key_alg[80], key_secret[256];
  int have_key;
  int removing;
  void (*done)(sip_svc_t *s); /* after the removal */

  /* The clean-up (see the top of the file). */
  enum gc_phase phase;
  char asked[320];     /* the SRV owner name asked for */
  int self_seen;       /* bit 0: our _sip._udp SRV was in the answer; bit 1: _tcp */
  ldns_rr_list *seen;  /* SRV records naming pp- targets, this check */
  uint64_t check;      /* checks completed with a usable DHT answer */
  gc_cand_t cand[GC_MAX_CAND];
  int n_cand;
  char suspects[GC_MAX_SUSPECTS][GC_HOST_LEN]; /* missing from the DHT, this check */
  int n_suspects;
  gc_peer_t known[GC_MAX_CAND]; /* what reports may name, and the reported ones */
  int n_known;
  gc_peer_t stranger;      /* a reported peer that is not among them (one at a time) */

  /* The check of a suspect, while `fast` is set. */
  int fast;
  int fast_missing;        /* it is a suspect for its absence from the DHT */
  char fast_hex[HEX12];
  int gc_due;              /* a periodic check waits for the fast one to end */
  uv_timer_t kick;         /* starts the next check; the probe's deadline */
  char down_host[GC_HOST_LEN];
  unsigned ports[2];       /* of the suspect's SRV records */
  int n_ports;
  char probe[DOWN_MAX_ADDR][80]; /* "sip:IP:PORT" to probe, from DNS */
  int n_probe, probe_at, probe_ping;
  uint64_t readd_at;       /* uv_now() of the last re-add on another's word */
};

static void finish_removal(sip_dnsreg_t *d);

/* "NAME:ALG:SECRET"; ALG as BIND names them ("hmac-sha256"). */
static int parse_tsig(sip_dnsreg_t *d, const char *spec)
{
  const char *a = strchr(spec, ':');
  const char *b = a ? strchr(a + 1, ':') : NULL;
  if (!a || !b || a == spec || b == a + 1 || !b[1] || (size_t)(a - spec) >= 250 ||
      (size_t)(b - a) >= 40 || strlen(b + 1) >= sizeof d->key_secret)
    return -EINVAL;
  snprintf(d->key_name, sizeof d->key_name, "%.*s%s", (int)(a - spec), spec,
           spec[a - spec - 1] == '.' ? "" : ".");
  char alg[64];
  snprintf(alg, sizeof alg, "%.*s", (int)(b - a - 1), a + 1);
  for (char *p = alg; *p; p++)
    *p = (char)tolower((unsigned char)*p);
  if (strcmp(alg, "hmac-md5") == 0 || strcmp(alg, "hmac-md5.sig-alg.reg.int") == 0)
    snprintf(d->key_alg, sizeof d->key_alg, "hmac-md5.sig-alg.reg.int.");
  else
    snprintf(d->key_alg, sizeof d->key_alg, "%s%s", alg,
             alg[strlen(alg) - 1] == '.' ? "" : ".");
  snprintf(d->key_secret, sizeof d->key_secret, "%s", b + 1);
  d->have_key = 1;
  return 0;
}

static int add_rr(ldns_rr_list *list, const char *text, ldns_rr_class cls, uint32_t ttl)
{
  ldns_rr *rr = NULL;
  if (ldns_rr_new_frm_str(&rr, text, DNS_TTL, NULL, NULL) != LDNS_STATUS_OK)
    return -EINVAL;
  ldns_rr_set_class(rr, cls);
  ldns_rr_set_ttl(rr, ttl);
  ldns_rr_list_push_rr(list, rr);
  return 0;
}

/* RFC 2136 2.5.2: delete an RRset (class ANY, ttl 0, no rdata). */
static int add_rrset_delete(ldns_rr_list *list, const char *owner_text, ldns_rr_type type)
{
  ldns_rr *rr = ldns_rr_new();
  ldns_rdf *owner = ldns_dname_new_frm_str(owner_text);
  if (!rr || !owner) {
    ldns_rr_free(rr), ldns_rdf_deep_free(owner);
    return -ENOMEM;
  }
  ldns_rr_set_owner(rr, owner);
  ldns_rr_set_type(rr, type);
  ldns_rr_set_class(rr, LDNS_RR_CLASS_ANY);
  ldns_rr_set_ttl(rr, 0);
  ldns_rr_list_push_rr(list, rr);
  return 0;
}

/* The update section: RFC 2136 2.5.1 adds, 2.5.2 deletes an RRset (class
 * ANY, no rdata), 2.5.4 deletes one RR (class NONE, ttl 0). */
static ldns_rr_list *update_rrs(const sip_dnsreg_t *d, int removing)
{
  ldns_rr_list *list = ldns_rr_list_new();
  if (!list)
    return NULL;
  char text[700];
  int err = 0;
  const char *type = d->v6 ? "AAAA" : "A";
  ldns_rr_class cls = removing ? LDNS_RR_CLASS_NONE : LDNS_RR_CLASS_IN;
  uint32_t ttl = removing ? 0 : DNS_TTL;
  if (!removing)
    err |= add_rrset_delete(list, d->host, d->v6 ? LDNS_RR_TYPE_AAAA : LDNS_RR_TYPE_A);
  snprintf(text, sizeof text, "%s %u IN %s %s", d->host, DNS_TTL, type, d->addr);
  err |= add_rr(list, text, cls, ttl);
  snprintf(text, sizeof text, "_sip._udp.%s %u IN SRV 10 10 %u %s", d->zone, DNS_TTL, d->port,
           d->host);
  err |= add_rr(list, text, cls, ttl);
  snprintf(text, sizeof text, "_sip._tcp.%s %u IN SRV 10 10 %u %s", d->zone, DNS_TTL, d->port,
           d->host);
  err |= add_rr(list, text, cls, ttl);
  if (err) {
    ldns_rr_list_deep_free(list);
    return NULL;
  }
  return list;
}

/* ---- messages in flight ------------------------------------------------ */

static void flight_clear(dns_flight_t *f)
{
  ldns_rdf_deep_free(f->mac);
  f->mac = NULL;
  free(f->wire);
  f->wire = NULL, f->wire_len = 0;
}

/* Gives pkt an id, signs it and keeps its wire form in f; frees pkt. */
static int flight_load(sip_dnsreg_t *d, dns_flight_t *f, ldns_pkt *pkt)
{
  flight_clear(f);
  uv_timer_stop(&f->retry);
  f->tries = 0;
  ldns_pkt_set_random_id(pkt);
  f->id = ldns_pkt_id(pkt);
  int rc = 0;
  if (d->have_key &&
      ldns_pkt_tsig_sign(pkt, d->key_name, d->key_secret, DNS_FUDGE, d->key_alg, NULL) !=
          LDNS_STATUS_OK)
    rc = -EINVAL;
  if (rc == 0 && d->have_key && ldns_pkt_tsig(pkt))
    f->mac = ldns_rdf_clone(ldns_rr_rdf(ldns_pkt_tsig(pkt), 3));
  if (rc == 0 && ldns_pkt2wire(&f->wire, pkt, &f->wire_len) != LDNS_STATUS_OK)
    rc = -EINVAL;
  ldns_pkt_free(pkt);
  if (rc < 0)
    flight_clear(f);
  return rc;
}

static void on_retry(uv_timer_t *t);

static void flight_send(sip_dnsreg_t *d, dns_flight_t *f)
{
  uv_buf_t buf = uv_buf_init((char *)f->wire, (unsigned)f->wire_len);
  int rc = uv_udp_try_send(&d->udp, &buf, 1, (const struct sockaddr *)&d->server);
  if (rc < 0)
    log_info("DNS message not sent: %s", uv_strerror(rc));
  f->tries++;
  uv_timer_start(&f->retry, on_retry, DNS_RETRY_MS, 0);
}

/* An update of the zone with the given update section (copied). */
static ldns_pkt *update_pkt(const sip_dnsreg_t *d, const ldns_rr_list *up)
{
  ldns_rdf *zone = ldns_dname_new_frm_str(d->zone);
  /* The packet takes the zone name and copies the list. */
  ldns_pkt *pkt = zone && up ? ldns_update_pkt_new(zone, LDNS_RR_CLASS_IN, NULL, up, NULL)
                             : NULL;
  if (!pkt)
    ldns_rdf_deep_free(zone);
  return pkt;
}

/* ---- our own records ----------------------------------------------------- */

static void start_update(sip_dnsreg_t *d, int removing)
{
  d->removing = removing;
  ldns_rr_list *up = update_rrs(d, removing);
  ldns_pkt *pkt = update_pkt(d, up);
  ldns_rr_list_deep_free(up);
  if (!pkt || flight_load(d, &d->reg, pkt) < 0) {
    log_warn("DNS update for %s cannot be built (check --tsig)", d->zone);
    if (d->s)
      d->s->c.dns_update_failed++;
    if (removing)
      finish_removal(d);
    return;
  }
  flight_send(d, &d->reg);
}

static const char *rcode_name(ldns_pkt_rcode rcode)
{
  const ldns_lookup_table *t = ldns_lookup_by_id(ldns_rcodes, (int)rcode);
  return t ? t->name : "?";
}

/* An update the server did not take: counted, and a refusal explained
 * (need: what the zone's update-policy must let our key write). */
static void update_failed(sip_dnsreg_t *d, const char *what, ldns_pkt_rcode rcode,
                          const char *need)
{
  int refused = rcode == LDNS_RCODE_REFUSED || rcode == LDNS_RCODE_NOTAUTH;
  if (refused)
    log_warn("DNS %s for %s refused (%s): the zone's update-policy must let key %s write %s "
             "(docs/DNS.md)", what, d->zone, rcode_name(rcode), d->have_key ? d->key_name : "(none)",
             need);
  else
    log_warn("DNS %s for %s failed: %s", what, d->zone, rcode_name(rcode));
  if (!d->s)
    return;
  d->s->c.dns_update_failed++;
  d->s->c.dns_refused += refused;
}

static void reg_timed_out(sip_dnsreg_t *d)
{
  log_warn("DNS server did not answer the update for %s", d->zone);
  if (d->s)
    d->s->c.dns_update_failed++;
  if (d->removing)
    finish_removal(d);
}

static void reg_answered(sip_dnsreg_t *d, ldns_pkt_rcode rcode)
{
  if (rcode == LDNS_RCODE_NOERROR) {
    log_info("DNS %s %s for %s", d->removing ? "removed" : "added", d->host, d->zone);
    if (d->s)
      d->s->c.dns_updates++;
  } else {
    char need[GC_HOST_LEN + 80];
    snprintf(need, sizeof need, "%s (its key should be named so) and the SRV records", d->host);
    update_failed(d, "update", rcode, need);
  }
  if (d->removing)
    finish_removal(d);
}

/* The refresh, and a re-add after another peer removed our records
 * (sip__dnsreg_removed).  An update still in flight is replaced: the
 * server may have taken it before the other peer's removal. */
static void on_refresh(uv_timer_t *t)
{
  sip_dnsreg_t *d = t->data;
  d->readd_at = uv_now(t->loop);
  if (!d->removing)
    start_update(d, 0);
}

void sip__dnsreg_removed(sip_svc_t *s, const char *host, const char *by)
{
  sip_dnsreg_t *d = s->dnsreg;
  if (!d || d->removing || d->handles == 0 || strcasecmp(host, d->host) != 0)
    return;
  log_info("DNS: %s says it removed our records %s: adding them again", by, d->host);
  s->c.dns_readded++;
  uint64_t now = uv_now(s->uv), next = d->readd_at + DNS_READD_MIN_MS;
  uv_timer_start(&d->refresh, on_refresh, next > now ? next - now : 0, DNS_REFRESH_MS);
}

/* ---- the clean-up of crashed peers' records ---------------------------- */

/* A peer reported dead: see "a peer reported dead" below. */
static void remember_targets(sip_dnsreg_t *d);
static void down_targets(sip_dnsreg_t *d);
static void down_addresses(sip_dnsreg_t *d, ldns_pkt *pkt, ldns_pkt_rcode rcode);
static void probe_failed(sip_dnsreg_t *d, const char *why);
static void down_removed(sip_dnsreg_t *d);

/* The name in rdf as lower-case text with the final dot; -EINVAL if it is
 * not a domain name or does not fit. */
static int dname_text(const ldns_rdf *rdf, char *out, size_t len)
{
  if (!rdf || ldns_rdf_get_type(rdf) != LDNS_RDF_TYPE_DNAME)
    return -EINVAL;
  char *t = ldns_rdf2str(rdf);
  int ok = t && strlen(t) < len;
  if (ok) {
    for (size_t i = 0; t[i]; i++)
      out[i] = (char)tolower((unsigned char)t[i]);
    out[strlen(t)] = '\0';
  }
  free(t);
  return ok ? 0 : -EINVAL;
}

/* Nonzero for "pp-<12 hex>.ZONE." exactly: the only names we may delete.
 * ldns prints unusual bytes of a label as \DDD, which no hex test passes. */
static int is_pp_name(const char *zone, const char *name)
{
  if (strncmp(name, "pp-", 3) != 0 || strlen(name) != 16 + strlen(zone) || name[15] != '.')
    return 0;
  for (int i = 3; i < 15; i++)
    if (!isdigit((unsigned char)name[i]) && !(name[i] >= 'a' && name[i] <= 'f'))
      return 0;
  return strcmp(name + 16, zone) == 0;
}

static void on_kick(uv_timer_t *t);
static gc_peer_t *known_find(gc_peer_t *list, int n, const char *hex);
static void suspect_queue(sip_dnsreg_t *d, gc_peer_t *p, int missing);

/* The suspect to check next: the one due first, or NULL; *wait is
 * how long until it is due (0 when it is). */
static gc_peer_t *down_next(sip_dnsreg_t *d, uint64_t *wait)
{
  uint64_t now = uv_now(d->kick.loop);
  gc_peer_t *best = d->stranger.queued ? &d->stranger : NULL;
  for (int i = 0; i < d->n_known; i++)
    if (d->known[i].queued && (!best || d->known[i].due < best->due))
      best = &d->known[i];
  *wait = best && best->due > now ? best->due - now : 0;
  return best;
}

/* The next check (from the loop, not from inside this one): a reported
 * peer once it is due, or a periodic check that had to wait. */
static void gc_kick(sip_dnsreg_t *d)
{
  uint64_t wait;
  if (!d->s || d->removing || !d->handles || d->phase != GC_IDLE)
    return;
  if (d->gc_due || down_next(d, &wait))
    uv_timer_start(&d->kick, on_kick, d->gc_due ? 0 : wait, 0);
}

/* Ends the check in progress, whatever its state. */
static void gc_reset(sip_dnsreg_t *d)
{
  uv_timer_stop(&d->gcq.retry);
  uv_timer_stop(&d->kick);
  flight_clear(&d->gcq);
  ldns_rr_list_deep_free(d->seen);
  d->seen = NULL;
  d->n_suspects = 0;
  d->phase = GC_IDLE;
  if (d->probe_ping >= 0 && d->s)
    sip__ping_cancel(d->s, d->probe_ping);
  d->probe_ping = -1;
  d->fast = 0;
  gc_kick(d);
}

/* A check that cannot finish: what it saw so far is dropped, and so are
 * the strikes of a periodic check, since "consecutive" is no longer true. */
static void gc_fail(sip_dnsreg_t *d, const char *why)
{
  log_debug("DNS clean-up check for %s abandoned: %s", d->zone, why);
  if (!d->fast)
    d->n_cand = 0;
  gc_reset(d);
}

/* Asks the server for the RRset (name, type); the answer comes to
 * gc_answered() in the given phase. */
static void gc_ask(sip_dnsreg_t *d, const char *owner, ldns_rr_type type, enum gc_phase phase)
{
  snprintf(d->asked, sizeof d->asked, "%s", owner);
  ldns_rdf *name = ldns_dname_new_frm_str(d->asked);
  ldns_pkt *pkt = name ? ldns_pkt_query_new(name, type, LDNS_RR_CLASS_IN, 0) : NULL;
  if (!pkt) {
    ldns_rdf_deep_free(name);
    gc_fail(d, "cannot build the query");
    return;
  }
  ldns_pkt_set_edns_udp_size(pkt, DNS_RECV_MAX);
  if (flight_load(d, &d->gcq, pkt) < 0) {
    gc_fail(d, "cannot sign the query");
    return;
  }
  d->phase = phase;
  flight_send(d, &d->gcq);
}

static void gc_query(sip_dnsreg_t *d, const char *label, enum gc_phase phase)
{
  char owner[GC_HOST_LEN];
  snprintf(owner, sizeof owner, "%s.%s", label, d->zone);
  gc_ask(d, owner, LDNS_RR_TYPE_SRV, phase);
}

/* Nonzero when pkt answers the one question (asked, type). */
static int question_is(const ldns_pkt *pkt, const char *asked, ldns_rr_type type)
{
  char name[GC_HOST_LEN];
  const ldns_rr_list *q = ldns_pkt_question(pkt);
  return ldns_rr_list_rr_count(q) == 1 && ldns_rr_get_type(ldns_rr_list_rr(q, 0)) == type &&
         dname_text(ldns_rr_owner(ldns_rr_list_rr(q, 0)), name, sizeof name) == 0 &&
         strcmp(name, asked) == 0;
}

static int question_ok(const sip_dnsreg_t *d, ldns_pkt *pkt, ldns_rr_type type)
{
  return question_is(pkt, d->asked, type);
}

/* The answer is untrusted even when signed: at most GC_MAX_SRV records are
 * looked at, and each must be an SRV of the name asked, in class IN, with
 * four fields whose last is a domain name. */
int sip__dns_srv_collect(const ldns_pkt *pkt, const char *asked, const char *zone,
                         const char *self, ldns_rr_list **seen, int *self_found)
{
  char name[GC_HOST_LEN];
  if (!question_is(pkt, asked, LDNS_RR_TYPE_SRV))
    return -EINVAL;
  if (!*seen && !(*seen = ldns_rr_list_new()))
    return -ENOMEM;
  const ldns_rr_list *an = ldns_pkt_answer(pkt);
  size_t n = ldns_rr_list_rr_count(an);
  for (size_t i = 0; i < n && i < GC_MAX_SRV; i++) {
    const ldns_rr *rr = ldns_rr_list_rr(an, i);
    if (ldns_rr_get_type(rr) != LDNS_RR_TYPE_SRV ||
        ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN || ldns_rr_rd_count(rr) != 4 ||
        dname_text(ldns_rr_owner(rr), name, sizeof name) < 0 || strcmp(name, asked) != 0 ||
        dname_text(ldns_rr_rdf(rr, 3), name, sizeof name) < 0 || !is_pp_name(zone, name))
      continue;
    if (strcmp(name, self) == 0) {
      *self_found = 1;
      continue;
    }
    ldns_rr *copy = ldns_rr_clone(rr);
    if (!copy || !ldns_rr_list_push_rr(*seen, copy)) {
      ldns_rr_free(copy);
      return -ENOMEM;
    }
  }
  return 0;
}

/* Keeps the SRV records of the answer that name a pp- target. */
static int gc_collect(sip_dnsreg_t *d, ldns_pkt *pkt)
{
  int self = 0;
  int rc = sip__dns_srv_collect(pkt, d->asked, d->zone, d->host, &d->seen, &self);
  if (self)
    d->self_seen |= d->phase == GC_QUERY_UDP ? 1 : 2;
  return rc;
}

static gc_cand_t *cand_find(sip_dnsreg_t *d, const char *host)
{
  for (int i = 0; i < d->n_cand; i++)
    if (strcmp(d->cand[i].host, host) == 0)
      return &d->cand[i];
  return NULL;
}

/* One strike for a target missing from this check's DHT answer; it is a
 * suspect once missing from GC_STRIKES checks in a row. */
static void gc_strike(sip_dnsreg_t *d, const char *host)
{
  gc_cand_t *c = cand_find(d, host);
  if (c && c->check == d->check)
    return; /* seen twice in this check (udp and tcp) */
  if (!c) {
    if (d->n_cand == GC_MAX_CAND)
      return;
    c = &d->cand[d->n_cand++];
    snprintf(c->host, sizeof c->host, "%s", host);
    c->strikes = 0, c->check = 0;
  }
  c->strikes = c->check + 1 == d->check ? c->strikes + 1 : 1;
  c->check = d->check;
  if (c->strikes >= GC_STRIKES && d->n_suspects < GC_MAX_SUSPECTS)
    snprintf(d->suspects[d->n_suspects++], GC_HOST_LEN, "%s", host);
}

/* Targets not missing from this check are forgiven. */
static void cand_prune(sip_dnsreg_t *d)
{
  int k = 0;
  for (int i = 0; i < d->n_cand; i++)
    if (d->cand[i].check == d->check)
      d->cand[k++] = d->cand[i];
  d->n_cand = k;
}

/* The suspect's SRV records exactly as the server gave them (RFC 2136
 * 2.5.4, class NONE).  Not its A/AAAA RRsets: under the zone's policy
 * only its own key may write its pp- name (docs/DNS.md). */
static ldns_rr_list *gc_delete_rrs(const sip_dnsreg_t *d)
{
  ldns_rr_list *list = ldns_rr_list_new();
  int err = !list;
  char host[GC_HOST_LEN];
  for (size_t i = 0; !err && i < ldns_rr_list_rr_count(d->seen); i++) {
    const ldns_rr *rr = ldns_rr_list_rr(d->seen, i);
    if (dname_text(ldns_rr_rdf(rr, 3), host, sizeof host) < 0 || strcmp(host, d->down_host) != 0)
      continue;
    ldns_rr *del = ldns_rr_clone(rr);
    err = !del;
    if (del) {
      ldns_rr_set_class(del, LDNS_RR_CLASS_NONE);
      ldns_rr_set_ttl(del, 0);
      ldns_rr_list_push_rr(list, del);
    }
  }
  if (err) {
    ldns_rr_list_deep_free(list);
    return NULL;
  }
  return list;
}

static void gc_delete(sip_dnsreg_t *d, const char *why)
{
  ldns_rr_list *up = gc_delete_rrs(d);
  ldns_pkt *pkt = update_pkt(d, up);
  ldns_rr_list_deep_free(up);
  if (!pkt || flight_load(d, &d->gcq, pkt) < 0) {
    gc_fail(d, "cannot build the update");
    return;
  }
  log_info("DNS clean-up: removing the SRV records of %s: %s", d->down_host, why);
  d->phase = GC_DELETE;
  flight_send(d, &d->gcq);
}

static void gc_deleted(sip_dnsreg_t *d, ldns_pkt_rcode rcode)
{
  if (rcode != LDNS_RCODE_NOERROR) {
    update_failed(d, "clean-up update", rcode, "the SRV records of _sip._udp and _sip._tcp");
    gc_reset(d);
    return;
  }
  log_info("DNS clean-up: removed the SRV records of %s from %s", d->down_host, d->zone);
  gc_cand_t *c = cand_find(d, d->down_host);
  if (c)
    *c = d->cand[--d->n_cand];
  if (d->s)
    down_removed(d);
  gc_reset(d);
}

static void gc_answered(sip_dnsreg_t *d, ldns_pkt *pkt, ldns_pkt_rcode rcode)
{
  if (d->phase == GC_DELETE) {
    gc_deleted(d, rcode);
    return;
  }
  if (d->phase == GC_ADDR_A || d->phase == GC_ADDR_AAAA) {
    down_addresses(d, pkt, rcode);
    return;
  }
  /* NXDOMAIN: no proxy peer has an SRV record of that kind. */
  if ((rcode != LDNS_RCODE_NOERROR && rcode != LDNS_RCODE_NXDOMAIN) || gc_collect(d, pkt) < 0) {
    gc_fail(d, "bad answer to the SRV query");
    return;
  }
  if (d->phase == GC_QUERY_UDP) {
    gc_query(d, "_sip._tcp", GC_QUERY_TCP);
    return;
  }
  /* Another peer may have taken us for dead (our value missing from the
   * DHT for a while): come back now rather than at the next refresh. */
  if (d->self_seen != 3 && !d->reg.wire && !d->removing) {
    log_info("DNS: our records %s are missing from %s: adding them again", d->host, d->zone);
    start_update(d, 0);
  }
  remember_targets(d);
  if (d->fast) {
    down_targets(d);
    return;
  }
  if (ldns_rr_list_rr_count(d->seen) == 0) {
    gc_reset(d); /* nothing to compare: no need to ask the DHT */
    d->n_cand = 0;
    return;
  }
  d->phase = GC_DHT;
  if (!d->s || sip__gateway_peer_ids(d->s) < 0)
    gc_fail(d, "cannot ask the DHT");
}

static int id_listed(const dht_id_t *ids, size_t n, const char *host)
{
  char hex[DHT_ID_HEX];
  for (size_t i = 0; i < n; i++) {
    dht_id_hex(&ids[i], hex);
    if (strncasecmp(hex, host + 3, 12) == 0)
      return 1;
  }
  return 0;
}

void sip__dnsreg_peers(sip_svc_t *s, int status, const dht_id_t *ids, size_t n)
{
  sip_dnsreg_t *d = s->dnsreg;
  if (!d || d->phase != GC_DHT)
    return;
  /* An answer without ourselves is not one to judge others by: our own
   * value may not have been stored yet, or the DHT may be split. */
  if (status < 0 || !id_listed(ids, n, d->host)) {
    gc_fail(d, status < 0 ? "no answer from the DHT" : "our own value is not in the answer");
    return;
  }
  d->check++;
  s->c.dns_gc_checks++;
  char host[GC_HOST_LEN];
  for (size_t i = 0; i < ldns_rr_list_rr_count(d->seen); i++)
    if (dname_text(ldns_rr_rdf(ldns_rr_list_rr(d->seen, i), 3), host, sizeof host) == 0 &&
        !id_listed(ids, n, host))
      gc_strike(d, host);
  cand_prune(d);
  /* Absence from the DHT is no evidence of death (a forged tombstone in
   * the open mode, a split): each such peer is checked at its address. */
  for (int i = 0; i < d->n_suspects; i++) {
    gc_peer_t *p = known_find(d->known, d->n_known, d->suspects[i] + 3);
    if (!p || p->queued)
      continue;
    log_info("DNS: %s has not been under sip:%.*s for %d checks %d s apart: checking it",
             d->suspects[i], (int)strlen(d->zone) - 1, d->zone, GC_STRIKES, GC_INTERVAL_MS / 1000);
    suspect_queue(d, p, 1);
  }
  gc_reset(d);
}

/* ---- a peer reported dead ------------------------------------------------ */

static gc_peer_t *known_find(gc_peer_t *list, int n, const char *hex)
{
  for (int i = 0; i < n; i++)
    if (strncmp(list[i].hex, hex, 12) == 0)
      return &list[i];
  return NULL;
}

/* The pp- targets of this check's SRV answers, keeping what we knew of
 * those that were there before.  Each is checked at most once per
 * DOWN_RECHECK_MS, and one report per peer waits at most, so forged
 * reports about live peers can neither flood the server nor crowd out a
 * real one.  A report naming any other peer (one that joined DNS since
 * our last look, or a name made up) is "the stranger": one at a time, at
 * most one a DOWN_RECHECK_MS, it costs a new look at the SRV records. */
static void remember_targets(sip_dnsreg_t *d)
{
  gc_peer_t old[GC_MAX_CAND];
  int n_old = d->n_known;
  memcpy(old, d->known, sizeof *old * (size_t)n_old);
  char host[GC_HOST_LEN];
  d->n_known = 0;
  for (size_t i = 0; i < ldns_rr_list_rr_count(d->seen) && d->n_known < GC_MAX_CAND; i++) {
    if (dname_text(ldns_rr_rdf(ldns_rr_list_rr(d->seen, i), 3), host, sizeof host) < 0 ||
        known_find(d->known, d->n_known, host + 3))
      continue;
    const gc_peer_t *was = known_find(old, n_old, host + 3);
    gc_peer_t *p = &d->known[d->n_known++];
    if (was)
      *p = *was;
    else
      *p = (gc_peer_t){.checked = 0};
    snprintf(p->hex, sizeof p->hex, "%.12s", host + 3);
  }
}

void sip__dnsreg_suspect(sip_svc_t *s, const char *id_hex, const char *by)
{
  sip_dnsreg_t *d = s->dnsreg;
  if (!d || d->removing || d->handles == 0)
    return;
  s->c.down_heard++;
  char hex[HEX12] = "";
  int ok = strspn(id_hex, "0123456789abcdefABCDEF") >= 12;
  for (int i = 0; ok && i < 12; i++)
    hex[i] = (char)tolower((unsigned char)id_hex[i]);
  gc_peer_t *p = ok ? known_find(d->known, d->n_known, hex) : NULL;
  if (ok && !p && !d->stranger.queued) {
    p = &d->stranger;
    snprintf(p->hex, sizeof p->hex, "%s", hex);
  }
  const char *why = !ok                                  ? "not a node id"
                    : strncmp(hex, d->host + 3, 12) == 0 ? "that is this node"
                    : !p                                 ? "another unknown peer waits"
                    : p->queued || (d->fast && strcmp(d->fast_hex, hex) == 0)
                        ? "a check is under way"
                        : NULL;
  if (why) {
    s->c.down_ignored++;
    log_debug("DNS: pp-%s reported down by %s: ignored (%s)", ok ? hex : "?", by, why);
    return;
  }
  log_info("DNS: pp-%s.%s reported down by %s: checking it", hex, d->zone, by);
  suspect_queue(d, p, 0);
}

/* A suspect is checked at most once per DOWN_RECHECK_MS. */
static void suspect_queue(sip_dnsreg_t *d, gc_peer_t *p, int missing)
{
  uint64_t now = uv_now(d->kick.loop);
  p->queued = 1;
  p->missing = missing;
  p->due = p->checked && p->checked + DOWN_RECHECK_MS > now ? p->checked + DOWN_RECHECK_MS : now;
  gc_kick(d);
}

/* After the SRV answers: the ports of the suspect's records, then its
 * addresses. */
static void down_targets(sip_dnsreg_t *d)
{
  char host[GC_HOST_LEN];
  snprintf(d->down_host, sizeof d->down_host, "pp-%s.%s", d->fast_hex, d->zone);
  d->n_ports = d->n_probe = 0;
  for (size_t i = 0; i < ldns_rr_list_rr_count(d->seen); i++) {
    const ldns_rr *rr = ldns_rr_list_rr(d->seen, i);
    const ldns_rdf *port = ldns_rr_rdf(rr, 2);
    if (dname_text(ldns_rr_rdf(rr, 3), host, sizeof host) < 0 ||
        strcmp(host, d->down_host) != 0 || ldns_rdf_get_type(port) != LDNS_RDF_TYPE_INT16)
      continue;
    unsigned p = ldns_rdf2native_int16(port);
    if (p && d->n_ports < 2 && (d->n_ports == 0 || d->ports[0] != p))
      d->ports[d->n_ports++] = p;
  }
  if (d->n_ports == 0) {
    log_info("DNS: %s is not in %s", d->down_host, d->zone);
    gc_reset(d);
    return;
  }
  gc_ask(d, d->down_host, LDNS_RR_TYPE_A, GC_ADDR_A);
}

static void probe_next(sip_dnsreg_t *d);

/* The A, then the AAAA records of the suspect's name: each address at
 * each SRV port is a place callers would send to. */
static void down_addresses(sip_dnsreg_t *d, ldns_pkt *pkt, ldns_pkt_rcode rcode)
{
  int v4 = d->phase == GC_ADDR_A;
  ldns_rr_type type = v4 ? LDNS_RR_TYPE_A : LDNS_RR_TYPE_AAAA;
  if ((rcode != LDNS_RCODE_NOERROR && rcode != LDNS_RCODE_NXDOMAIN) ||
      !question_ok(d, pkt, type)) {
    gc_fail(d, "bad answer to the address query");
    return;
  }
  const ldns_rr_list *an = ldns_pkt_answer(pkt);
  char name[GC_HOST_LEN], ip[INET6_ADDRSTRLEN];
  for (size_t i = 0; i < ldns_rr_list_rr_count(an) && i < GC_MAX_SRV; i++) {
    const ldns_rr *rr = ldns_rr_list_rr(an, i);
    const ldns_rdf *a = ldns_rr_rd_count(rr) == 1 ? ldns_rr_rdf(rr, 0) : NULL;
    if (!a || ldns_rr_get_type(rr) != type || ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN ||
        dname_text(ldns_rr_owner(rr), name, sizeof name) < 0 || strcmp(name, d->asked) != 0 ||
        ldns_rdf_size(a) != (v4 ? 4u : 16u) ||
        !inet_ntop(v4 ? AF_INET : AF_INET6, ldns_rdf_data(a), ip, sizeof ip))
      continue;
    for (int j = 0; j < d->n_ports && d->n_probe < DOWN_MAX_ADDR; j++)
      snprintf(d->probe[d->n_probe++], sizeof d->probe[0], v4 ? "sip:%s:%u" : "sip:[%s]:%u", ip,
               d->ports[j]);
  }
  if (v4) {
    gc_ask(d, d->down_host, LDNS_RR_TYPE_AAAA, GC_ADDR_AAAA);
    return;
  }
  d->probe_at = 0;
  probe_next(d);
}

/* No answer from the suspect itself: it is dead for everyone who looks
 * it up.  An answer, whatever its status, shows it alive. */
static void on_probe(sip_svc_t *s, void *ctx, int status)
{
  sip_dnsreg_t *d = ctx;
  if (d->phase != GC_PROBE)
    return;
  d->probe_ping = -1;
  if (status == 0) {
    probe_failed(d, "no SIP answer (ICMP error)");
    return;
  }
  log_info("DNS: %s was %s but answers %d at %s: keeping its records", d->down_host,
           d->fast_missing ? "missing from the DHT" : "reported down", status,
           d->probe[d->probe_at]);
  if (d->fast_missing)
    s->c.dns_missing_alive++;
  else
    s->c.down_alive++;
  gc_reset(d);
}

static void probe_next(sip_dnsreg_t *d)
{
  if (d->probe_at == d->n_probe) {
    char why[200];
    snprintf(why, sizeof why, "%s, and %s",
             d->fast_missing ? "its node has been missing from the DHT" : "it was reported down",
             d->n_probe ? "nothing answers SIP at its address" : "its name has no address");
    gc_delete(d, why);
    return;
  }
  d->phase = GC_PROBE;
  d->probe_ping = sip__ping(d->s, d->probe[d->probe_at], NULL, on_probe, d);
  if (d->probe_ping < 0) {
    gc_fail(d, "cannot send the probe"); /* no evidence: the records stay */
    return;
  }
  uv_timer_start(&d->kick, on_kick, DOWN_PROBE_MS, 0);
}

static void probe_failed(sip_dnsreg_t *d, const char *why)
{
  uv_timer_stop(&d->kick);
  if (d->probe_ping >= 0)
    sip__ping_cancel(d->s, d->probe_ping);
  d->probe_ping = -1;
  log_info("DNS: probe of %s at %s: %s", d->down_host, d->probe[d->probe_at], why);
  d->probe_at++;
  probe_next(d);
}

/* The peer may be alive after all (stopped or cut off for a moment): tell
 * it, so that it adds its records again as soon as it can
 * (sip__dnsreg_removed); nta retransmits for 32 s. */
static void down_removed(sip_dnsreg_t *d)
{
  d->s->c.dns_stale_removed++;
  if (!d->fast_missing)
    d->s->c.down_removed++;
  char header[GC_HOST_LEN + 40];
  snprintf(header, sizeof header, "%s: %s", SIP_HDR_DNS_REMOVED, d->down_host);
  for (int i = 0; i < d->n_probe; i++)
    sip__ping(d->s, d->probe[i], header, NULL, NULL);
}

static void on_gc(uv_timer_t *t)
{
  sip_dnsreg_t *d = t->data;
  if (!d->s || d->removing)
    return;
  if (d->phase != GC_IDLE && d->fast) {
    d->gc_due = 1; /* after the check of a reported peer */
    return;
  }
  if (d->phase != GC_IDLE)
    gc_fail(d, "the previous check did not finish in time");
  d->gc_due = 0;
  d->self_seen = 0;
  gc_query(d, "_sip._udp", GC_QUERY_UDP);
}

static void on_kick(uv_timer_t *t)
{
  sip_dnsreg_t *d = t->data;
  if (!d->s || d->removing)
    return;
  if (d->phase == GC_PROBE) {
    probe_failed(d, "no answer in time");
    return;
  }
  uint64_t wait;
  gc_peer_t *p = d->phase == GC_IDLE ? down_next(d, &wait) : NULL;
  if (p && wait == 0) {
    p->queued = 0;
    p->checked = uv_now(t->loop);
    memcpy(d->fast_hex, p->hex, sizeof d->fast_hex);
    d->fast = 1;
    d->fast_missing = p->missing;
    d->self_seen = 0;
    if (p->missing)
      d->s->c.dns_missing_checks++;
    else
      d->s->c.down_checks++;
    gc_query(d, "_sip._udp", GC_QUERY_UDP);
  } else if (d->phase == GC_IDLE && d->gc_due) {
    on_gc(&d->gc);
  } else {
    gc_kick(d); /* a reported peer that is not due yet */
  }
}

/* ---- the socket ---------------------------------------------------------- */

static void on_retry(uv_timer_t *t)
{
  sip_dnsreg_t *d = t->data;
  dns_flight_t *f = t == &d->reg.retry ? &d->reg : &d->gcq;
  if (!f->wire)
    return;
  if (f->tries < DNS_TRIES) {
    flight_send(d, f);
    return;
  }
  flight_clear(f);
  if (f == &d->reg)
    reg_timed_out(d);
  else
    gc_fail(d, "the DNS server did not answer");
}

/* An answer is taken only if it matches the id of a message in flight
 * and, with a key, carries a valid TSIG over that message's MAC; anything
 * else on the socket is ignored. */
static int answer_ok(sip_dnsreg_t *d, const dns_flight_t *f, ldns_pkt *pkt, const uint8_t *data,
                     size_t len)
{
  if (!f->wire || ldns_pkt_id(pkt) != f->id)
    return 0;
  if (d->have_key && ldns_pkt_get_rcode(pkt) == LDNS_RCODE_NOERROR)
    return ldns_pkt_tsig_verify(pkt, data, len, d->key_name, d->key_secret, f->mac);
  return 1;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
  static char space[DNS_RECV_MAX]; /* one datagram at a time, parsed at once */
  *buf = uv_buf_init(space, sizeof space);
}

static void on_recv(uv_udp_t *u, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from,
                    unsigned flags)
{
  sip_dnsreg_t *d = u->data;
  const uint8_t *data = (const uint8_t *)buf->base;
  ldns_pkt *pkt = NULL;
  if (n < 12 || (flags & UV_UDP_PARTIAL) ||
      ldns_wire2pkt(&pkt, data, (size_t)n) != LDNS_STATUS_OK)
    return;
  dns_flight_t *f = NULL;
  if (ldns_pkt_qr(pkt) && answer_ok(d, &d->reg, pkt, data, (size_t)n))
    f = &d->reg;
  else if (ldns_pkt_qr(pkt) && answer_ok(d, &d->gcq, pkt, data, (size_t)n))
    f = &d->gcq;
  if (f) {
    uv_timer_stop(&f->retry);
    flight_clear(f);
    if (f == &d->reg)
      reg_answered(d, ldns_pkt_get_rcode(pkt));
    else
      gc_answered(d, pkt, ldns_pkt_get_rcode(pkt));
  }
  ldns_pkt_free(pkt);
}

static int open_socket(sip_dnsreg_t *d, uv_loop_t *uv)
{
  uv_udp_init(uv, &d->udp);
  uv_timer_init(uv, &d->reg.retry);
  uv_timer_init(uv, &d->gcq.retry);
  uv_timer_init(uv, &d->refresh);
  uv_timer_init(uv, &d->gc);
  uv_timer_init(uv, &d->kick);
  d->udp.data = d->reg.retry.data = d->gcq.retry.data = d->refresh.data = d->gc.data = d;
  d->kick.data = d;
  d->handles = 6;
  struct sockaddr_storage any;
  memset(&any, 0, sizeof any);
  any.ss_family = d->server.ss_family;
  int rc = uv_udp_bind(&d->udp, (const struct sockaddr *)&any, 0);
  if (rc == 0)
    rc = uv_udp_recv_start(&d->udp, on_alloc, on_recv);
  return rc;
}

static int configure(sip_dnsreg_t *d, sip_svc_t *s)
{
  if (sip__parse_hostport(s->dns_update, 53, &d->server) < 0)
    return -EINVAL;
  if (s->tsig && parse_tsig(d, s->tsig) < 0)
    return -EINVAL;
  snprintf(d->zone, sizeof d->zone, "%s.", s->overlay);
  char hex[DHT_ID_HEX];
  dht_id_hex(&dht_self(s->dht)->id, hex);
  snprintf(d->host, sizeof d->host, "pp-%.12s.%s.", hex, s->overlay);
  struct sockaddr_storage self = s->listen;
  if (s->dns_address && sip__parse_hostport(s->dns_address, s->port, &self) < 0)
    return -EINVAL;
  unsigned ignored;
  sip__addr_ip(&self, d->addr, sizeof d->addr, &ignored);
  d->v6 = self.ss_family == AF_INET6;
  d->port = s->port;
  if (d->have_key && strcasecmp(d->key_name, d->host) != 0)
    log_info("DNS: registering %s with key %s; a zone with one key per proxy peer "
             "(docs/DNS.md) wants it named %s", d->host, d->key_name, d->host);
  return 0;
}

static void start_timers(sip_dnsreg_t *d)
{
  uv_timer_start(&d->refresh, on_refresh, DNS_REFRESH_MS, DNS_REFRESH_MS);
  uv_timer_start(&d->gc, on_gc, GC_INTERVAL_MS, GC_INTERVAL_MS);
}

int sip__dnsreg_start(sip_svc_t *s)
{
  if (s->dnsreg) { /* the gateway role comes back (sip_set_gateway) */
    sip_dnsreg_t *d = s->dnsreg;
    if (d->handles == 0)
      return -EIO;
    d->done = NULL;
    start_timers(d);
    start_update(d, 0);
    return 0;
  }
  sip_dnsreg_t *d = calloc(1, sizeof *d);
  if (!d)
    return -ENOMEM;
  d->s = s;
  d->probe_ping = -1;
  int rc = configure(d, s);
  if (rc < 0) {
    log_warn("bad --dns-update or --tsig");
    free(d);
    return rc;
  }
  s->dnsreg = d;
  rc = open_socket(d, s->uv);
  if (rc < 0) {
    log_warn("DNS update socket: %s", uv_strerror(rc));
    return rc;
  }
  start_timers(d);
  start_update(d, 0);
  return 0;
}

static void finish_removal(sip_dnsreg_t *d)
{
  void (*done)(sip_svc_t *) = d->done;
  d->done = NULL;
  if (done && d->s)
    done(d->s);
}

void sip__dnsreg_stop(sip_svc_t *s, void (*done)(sip_svc_t *s))
{
  sip_dnsreg_t *d = s->dnsreg;
  uv_timer_stop(&d->refresh);
  uv_timer_stop(&d->gc);
  d->n_known = d->gc_due = 0;
  d->stranger.queued = d->fast = 0;
  gc_fail(d, "the gateway role stops");
  d->done = done;
  start_update(d, 1);
}

static void free_state(sip_dnsreg_t *d)
{
  flight_clear(&d->reg);
  flight_clear(&d->gcq);
  ldns_rr_list_deep_free(d->seen);
  free(d);
}

static void on_closed(uv_handle_t *h)
{
  sip_dnsreg_t *d = h->data;
  if (--d->handles == 0)
    free_state(d);
}

void sip__dnsreg_free(sip_svc_t *s)
{
  sip_dnsreg_t *d = s->dnsreg;
  if (!d)
    return;
  s->dnsreg = NULL;
  if (d->probe_ping >= 0)
    sip__ping_cancel(s, d->probe_ping);
  d->probe_ping = -1;
  d->s = NULL, d->done = NULL;
  if (d->handles == 0) {
    free_state(d);
    return;
  }
  uv_close((uv_handle_t *)&d->udp, on_closed);
  uv_close((uv_handle_t *)&d->reg.retry, on_closed);
  uv_close((uv_handle_t *)&d->gcq.retry, on_closed);
  uv_close((uv_handle_t *)&d->refresh, on_closed);
  uv_close((uv_handle_t *)&d->gc, on_closed);
  uv_close((uv_handle_t *)&d->kick, on_closed);
}
