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
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <ldns/ldns.h>

#include "sip/sip_int.h"

#define DNS_TTL 30
#define DNS_REFRESH_MS 60000
#define DNS_RETRY_MS 500
#define DNS_TRIES 3
#define DNS_FUDGE 300

struct sip_dnsreg {
  sip_svc_t *s; /* NULL once the service is gone */
  uv_udp_t udp;
  uv_timer_t retry, refresh;
  int handles;
  struct sockaddr_storage server;
  char zone[300], host[320], addr[INET6_ADDRSTRLEN];
  unsigned port;
  int v6;
  char key_name[256], key_alg[80], key_secret[256];
  int have_key;
  int removing, tries;
  uint16_t id;
  ldns_rdf *mac; /* TSIG MAC of the update in flight, to check the answer */
  uint8_t *wire;
  size_t wire_len;
  void (*done)(sip_svc_t *s); /* after the removal */
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
  if (!removing) {
    ldns_rr *any = ldns_rr_new();
    ldns_rdf *owner = ldns_dname_new_frm_str(d->host);
    if (!any || !owner) {
      ldns_rr_free(any), ldns_rdf_deep_free(owner);
      ldns_rr_list_deep_free(list);
      return NULL;
    }
    ldns_rr_set_owner(any, owner);
    ldns_rr_set_type(any, d->v6 ? LDNS_RR_TYPE_AAAA : LDNS_RR_TYPE_A);
    ldns_rr_set_class(any, LDNS_RR_CLASS_ANY);
    ldns_rr_set_ttl(any, 0);
    ldns_rr_list_push_rr(list, any);
  }
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

static void clear_flight(sip_dnsreg_t *d)
{
  ldns_rdf_deep_free(d->mac);
  d->mac = NULL;
  free(d->wire);
  d->wire = NULL, d->wire_len = 0;
}

/* Builds and signs the UPDATE; its wire form waits in d->wire. */
static int build(sip_dnsreg_t *d)
{
  clear_flight(d);
  ldns_rdf *zone = ldns_dname_new_frm_str(d->zone);
  ldns_rr_list *up = update_rrs(d, d->removing);
  /* The packet takes the zone name and copies the list. */
  ldns_pkt *pkt = zone && up ? ldns_update_pkt_new(zone, LDNS_RR_CLASS_IN, NULL, up, NULL)
                             : NULL;
  ldns_rr_list_deep_free(up);
  if (!pkt) {
    if (!up)
      ldns_rdf_deep_free(zone);
    return -ENOMEM;
  }
  ldns_pkt_set_random_id(pkt);
  d->id = ldns_pkt_id(pkt);
  int rc = 0;
  if (d->have_key &&
      ldns_pkt_tsig_sign(pkt, d->key_name, d->key_secret, DNS_FUDGE, d->key_alg, NULL) !=
          LDNS_STATUS_OK)
    rc = -EINVAL;
  if (rc == 0 && d->have_key && ldns_pkt_tsig(pkt))
    d->mac = ldns_rdf_clone(ldns_rr_rdf(ldns_pkt_tsig(pkt), 3));
  if (rc == 0 && ldns_pkt2wire(&d->wire, pkt, &d->wire_len) != LDNS_STATUS_OK)
    rc = -EINVAL;
  ldns_pkt_free(pkt);
  return rc;
}

static void on_retry(uv_timer_t *t);

static void send_update(sip_dnsreg_t *d)
{
  uv_buf_t buf = uv_buf_init((char *)d->wire, (unsigned)d->wire_len);
  int rc = uv_udp_try_send(&d->udp, &buf, 1, (const struct sockaddr *)&d->server);
  if (rc < 0)
    log_info("DNS update not sent: %s", uv_strerror(rc));
  uv_timer_start(&d->retry, on_retry, DNS_RETRY_MS, 0);
}

static void start_update(sip_dnsreg_t *d, int removing)
{
  d->removing = removing;
  d->tries = 0;
  if (build(d) < 0) {
    log_warn("DNS update for %s cannot be built (check --tsig)", d->zone);
    if (d->s)
      d->s->c.dns_update_failed++;
    if (removing)
      finish_removal(d);
    return;
  }
  d->tries = 1;
  send_update(d);
}

static void on_retry(uv_timer_t *t)
{
  sip_dnsreg_t *d = t->data;
  if (!d->wire)
    return;
  if (d->tries++ < DNS_TRIES) {
    send_update(d);
    return;
  }
  log_warn("DNS server did not answer the update for %s", d->zone);
  clear_flight(d);
  if (d->s)
    d->s->c.dns_update_failed++;
  if (d->removing)
    finish_removal(d);
}

static void on_refresh(uv_timer_t *t)
{
  sip_dnsreg_t *d = t->data;
  if (!d->removing && !d->wire)
    start_update(d, 0);
}

/* An answer is taken only if it matches the id and, with a key, carries a
 * valid TSIG over our MAC; anything else on the socket is ignored. */
static int answer_ok(sip_dnsreg_t *d, const uint8_t *data, size_t len, ldns_pkt_rcode *rcode)
{
  ldns_pkt *pkt = NULL;
  if (len < 12 || ldns_wire2pkt(&pkt, data, len) != LDNS_STATUS_OK)
    return 0;
  int ok = ldns_pkt_id(pkt) == d->id && ldns_pkt_qr(pkt);
  *rcode = ldns_pkt_get_rcode(pkt);
  if (ok && d->have_key && *rcode == LDNS_RCODE_NOERROR)
    ok = ldns_pkt_tsig_verify(pkt, data, len, d->key_name, d->key_secret, d->mac);
  ldns_pkt_free(pkt);
  return ok;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
  static char space[4096]; /* one datagram at a time, parsed at once */
  *buf = uv_buf_init(space, sizeof space);
}

static void on_recv(uv_udp_t *u, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from,
                    unsigned flags)
{
  sip_dnsreg_t *d = u->data;
  ldns_pkt_rcode rcode;
  if (n <= 0 || !d->wire || !answer_ok(d, (const uint8_t *)buf->base, (size_t)n, &rcode))
    return;
  uv_timer_stop(&d->retry);
  clear_flight(d);
  if (rcode == LDNS_RCODE_NOERROR) {
    log_info("DNS %s %s for %s", d->removing ? "removed" : "added", d->host,
             d->zone);
    if (d->s)
      d->s->c.dns_updates++;
  } else {
    log_warn("DNS update for %s refused: rcode %d", d->zone, (int)rcode);
    if (d->s)
      d->s->c.dns_update_failed++;
  }
  if (d->removing)
    finish_removal(d);
}

static int open_socket(sip_dnsreg_t *d, uv_loop_t *uv)
{
  uv_udp_init(uv, &d->udp);
  uv_timer_init(uv, &d->retry);
  uv_timer_init(uv, &d->refresh);
  d->udp.data = d->retry.data = d->refresh.data = d;
  d->handles = 3;
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
  return 0;
}

int sip__dnsreg_start(sip_svc_t *s)
{
  if (s->dnsreg) { /* the gateway role comes back (sip_set_gateway) */
    sip_dnsreg_t *d = s->dnsreg;
    if (d->handles == 0)
      return -EIO;
    d->done = NULL;
    uv_timer_start(&d->refresh, on_refresh, DNS_REFRESH_MS, DNS_REFRESH_MS);
    start_update(d, 0);
    return 0;
  }
  sip_dnsreg_t *d = calloc(1, sizeof *d);
  if (!d)
    return -ENOMEM;
  d->s = s;
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
  uv_timer_start(&d->refresh, on_refresh, DNS_REFRESH_MS, DNS_REFRESH_MS);
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
  uv_timer_stop(&d->retry);
  d->done = done;
  start_update(d, 1);
}

static void on_closed(uv_handle_t *h)
{
  sip_dnsreg_t *d = h->data;
  if (--d->handles == 0) {
    clear_flight(d);
    free(d);
  }
}

void sip__dnsreg_free(sip_svc_t *s)
{
  sip_dnsreg_t *d = s->dnsreg;
  if (!d)
    return;
  s->dnsreg = NULL;
  d->s = NULL, d->done = NULL;
  if (d->handles == 0) {
    clear_flight(d);
    free(d);
    return;
  }
  uv_close((uv_handle_t *)&d->udp, on_closed);
  uv_close((uv_handle_t *)&d->retry, on_closed);
  uv_close((uv_handle_t *)&d->refresh, on_closed);
}
