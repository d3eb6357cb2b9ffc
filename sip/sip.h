/*
 * sip: the SIP roles of a p2psip node, on the node's libuv loop.
 *
 * The "sip" role serves ordinary SIP phones: it is their registrar (user
 * records go into the DHT under "sip:USER@OVERLAY") and their outbound
 * proxy (requests for overlay users are located through the DHT and
 * proxied statefully; requests for other domains go through a proxy peer
 * found under "sip:OVERLAY").  The "gateway" role (a P2PSIP proxy peer,
 * spec 3.1) also publishes itself under "sip:OVERLAY", forwards between
 * the overlay and public domains with RFC 3263, record-routes with
 * <sip:OVERLAY;lr>, and, when asked, registers its SRV/A records in DNS
 * by RFC 2136 UPDATE.
 *
 * sofia-sip does the SIP work (transactions, parsing, RFC 3263); its own
 * event loop is stepped from libuv inside this module, so callers see only
 * libuv.  Everything runs on the loop given to sip_new(); nothing is
 * thread-safe.  Functions return 0 or a negative errno-style code.
 *
 * sofia-sip already names its parsed message type sip_t, so the service
 * object is sip_svc_t.
 */
#ifndef P2PSIP_SIP_H
#define P2PSIP_SIP_H

#include <jansson.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "dht/dht.h"

typedef struct sip_svc sip_svc_t;

typedef struct {
  const char *overlay;            /* overlay identifier (an FQDN); required */
  struct sockaddr_storage listen; /* UDP and TCP on this address; port 0 picks one */
  int gateway;                    /* nonzero: act as proxy peer (spec 3.1) */
  const char *dns;                /* "IP[:PORT]" resolver for RFC 3263, or NULL: resolv.conf */
  const char *dns_update;         /* "IP[:PORT]" for RFC 2136 updates, or NULL: none */
  const char *tsig;               /* "NAME:ALG:BASE64SECRET" signing the updates, or NULL */
  const char *dns_address;        /* address put in the A/AAAA record; NULL: listen's */
  int locate_cache_ms;            /* reuse a located user record this long; 0: 2000, < 0: never */
  /* Phones: --users DIR (the directory p2psip-ca user fills), or NULL.
   * With it, REGISTER needs digest authentication and out-of-dialog
   * requests from the node's users need proxy authentication. */
  const char *users;
  /* Digest algorithms to offer, in order: "SHA-256,MD5" (NULL: that, as
   * RFC 8760 asks), "MD5,SHA-256", or one of them. */
  const char *digest;
  /* The secured mode (NULL: the open mode): the overlay CA, borrowed (it
   * must outlive the service).  User records are then signed with the
   * users' certificates from the users directory. */
  dht_cert_ca_t *ca;
  /* The secured mode's files (all three, or none): SIP between nodes goes
   * over TLS with both ends presenting their node certificates, on
   * tls_listen ("IP:PORT"; NULL: the SIP IP, a port the system picks). */
  const char *ca_file, *cert_file, *key_file;
  const char *tls_listen;
  /* Targets in loopback, private and other special-purpose ranges, and
   * stream transports to ports other than 5060/5061, are refused unless
   * allowed here (loopback testbeds; a testbed's private segment). */
  int allow_loopback;
  const dht_cidr_t *allow_targets; /* borrowed during sip_new only */
  int n_allow_targets;
  /* Per source (an IPv4 address, an IPv6 /64; on loopback address and
   * port): requests per second (burst: rate_burst, 0: twice the rate), and
   * live transactions.  0: the defaults (50/s, 256); < 0: no limit. */
  int rate, rate_burst, source_tx;
  const dht_cidr_t *trusted; /* sources exempt from those (borrowed during sip_new) */
  int n_trusted;
} sip_config_t;

/* Create the service: binds UDP and TCP on cfg->listen (so sip_addr() knows
 * a picked port) but answers nothing until sip_start().  Strings in cfg are
 * copied; dht is borrowed and must outlive the service.  On failure *out is
 * NULL and nothing is left open. */
int sip_new(uv_loop_t *loop, dht_t *dht, const sip_config_t *cfg, sip_svc_t **out);

/* Begin serving requests.  A gateway also publishes its proxy-peer value
 * under "sip:OVERLAY" (re-published while it lives) and, with dns_update,
 * its DNS records.  Returns 0, or -EALREADY. */
int sip_start(sip_svc_t *s);

/* Turn the gateway role on or off at run time (when node/ decides the node
 * is public, or no longer is).  Publishes or withdraws as sip_start() and
 * sip_stop() do.  Returns 0. */
int sip_set_gateway(sip_svc_t *s, int on);

/* Tell the service whether node/ decided the node is public (reachable at
 * its own address).  A node that is not public and not a proxy peer keeps
 * a flow to one proxy peer (RFC 5626 style: a keep-alive OPTIONS from its
 * SIP UDP socket every SIP_FLOW_KEEPALIVE_MS), learns its reflexive
 * address from the answer's Via received/rport and, while that address is
 * not its own (a NAT is in between), publishes its users' records with the
 * route in: the proxy peer ("edge"), then the reflexive address ("path").
 * Before the first call the node is taken as public.  Returns 0. */
int sip_set_public(sip_svc_t *s, int on);

/* Stop taking new requests, withdraw the proxy-peer value and DNS records,
 * then call cb (never from inside this call).  Registrations this node put
 * are left to expire in the DHT: the phones will register again elsewhere. */
void sip_stop(sip_svc_t *s, void (*cb)(sip_svc_t *s, void *arg), void *arg);

/* Destroy the service: drops every transaction, closes the sockets.  Safe
 * after sip_stop's callback or instead of it.  DHT callbacks still pending
 * are ignored when they fire.  Run the loop afterwards until it has no
 * handles left (the bridge's handles close asynchronously). */
void sip_free(sip_svc_t *s);

/* For the admin socket ({"cmd":"sip"}): a new object (caller owns it) with
 * "listen", "gateway", "registrations" (held here), "transactions" and
 * "counters". */
json_t *sip_stats_json(const sip_svc_t *s);

/* For {"cmd":"registrations"}: a new array of the bindings this node put,
 * each {"aor","contact","expires","q","call_id","cseq","received","transport"}. */
json_t *sip_registrations_json(const sip_svc_t *s);

/* "IP:PORT" ("[v6]:PORT") where the service listens; out needs 64 bytes. */
void sip_addr(const sip_svc_t *s, char *out, size_t len);

/* Nonzero while the gateway role is on. */
int sip_is_gateway(const sip_svc_t *s);

/* Nonzero when the sofia-sip this module runs on never frees the SSL
 * object of a SIP-over-TLS connection it closes (1.12.x: its tls_free()
 * calls SSL_shutdown() and forgets the SSL, ~24-70 KB a connection, which
 * any stranger can open and close): the host process must then free it
 * after that SSL_shutdown() (node/sslfree.c). */
int sip_tls_leaks_ssl(void);

#endif
