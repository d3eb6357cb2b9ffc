/*
 * relay: the relay agent peer (draft-marocco-p2psip-interwork 3.2), a TURN
 * server (RFC 8656 over RFC 8489 STUN, UDP transport) on the node's libuv
 * loop, and its record under "turn:OVERLAY" in the DHT (3.3.2).  Clients
 * reach it over UDP and over TCP at the same IP and port (RFC 8656
 * section 2.1); relayed addresses are UDP.
 *
 * Credentials are the overlay's shared secret in the time-limited scheme
 * TURN servers commonly use (coturn's --use-auth-secret): username
 * "EXPIRY:NAME", password base64(HMAC-SHA1(secret, username)), so any
 * overlay member can mint credentials for its UAs (relay_mint_credentials).
 *
 * Everything runs on the loop given to relay_new(); nothing is
 * thread-safe.  Functions return 0 or a negative errno-style code; a
 * function that takes a callback and fails at once never calls it.
 * relay/ never includes sip/ and sip/ never includes relay/.
 */
#ifndef P2PSIP_RELAY_H
#define P2PSIP_RELAY_H

#include <jansson.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "dht/dht.h"

typedef struct relay relay_t;

#define RELAY_MAX_PEER_RANGES 32 /* --relay-allow-peers, --relay-deny-peers: each */
#define RELAY_MAX_OWN_ADDRS 8
#define RELAY_DEFAULT_CRED_TTL 86400
/* Credentials are minted by any node of the overlay, whose clock may run a
 * little ahead of ours: this much slack beyond max_credential_ttl. */
#define RELAY_CRED_SKEW 60

typedef struct {
  const char *overlay;            /* "overlay.test": the record is "turn:" + overlay */
  struct sockaddr_storage listen; /* the TURN port (UDP and TCP); its IP is also the relayed IP */
  const char *secret;             /* the overlay's shared secret (required) */
  const char *realm;              /* NULL: the overlay */
  uint16_t port_min, port_max;    /* relayed ports; 0,0: 49152-65535 */
  /* Peers (relay/peers.c has the rules and their order): special-purpose
   * addresses (dht_addr_special) and the node's own addresses get 403
   * unless allowed; the lists are copied. */
  int allow_loopback_peers;       /* allow 127.0.0.0/8 and ::1 (tests) */
  const dht_cidr_t *allow_peers;  /* allowed despite the default deny */
  int n_allow_peers;              /* at most RELAY_MAX_PEER_RANGES */
  const dht_cidr_t *deny_peers;   /* denied whatever else says */
  int n_deny_peers;               /* at most RELAY_MAX_PEER_RANGES */
  const struct sockaddr_storage *own_addrs; /* the node's addresses besides listen
                                               (DHT, SIP); ports ignored */
  int n_own_addrs;                /* fewer than RELAY_MAX_OWN_ADDRS */
  /* Quotas on live allocations; a user is the NAME of "EXPIRY:NAME", a
   * client IP an IPv4 address or an IPv6 /64. */
  unsigned quota_per_user;        /* per user name (486); 0: 100 */
  unsigned quota_per_ip;          /* per client IP (486); 0: 100 */
  unsigned quota_total;           /* in all (508); 0: 1000 */
  unsigned max_credential_ttl;    /* credentials expiring more than this many
                                     seconds (plus RELAY_CRED_SKEW) from now get
                                     401; 0: 86400 */
  unsigned record_ttl;            /* seconds the turn: value lives; 0: 60.
                                     It is re-put every record_ttl / 3. */
  unsigned tcp_max_clients;       /* TCP connections at once; 0: 1000 */
  unsigned tcp_idle;              /* seconds a TCP connection without an allocation
                                     may send no complete message; 0: 10 */
} relay_config_t;

/* Create the relay: copies cfg, binds the TURN port, UDP and TCP (so a taken port fails
 * here with -EADDRINUSE, and nothing is left to close), and does nothing
 * else until relay_start().  dht may be NULL (no record is published: unit
 * tests).  On failure *out is NULL. */
int relay_new(uv_loop_t *loop, dht_t *dht, const relay_config_t *cfg, relay_t **out);
/* Serve requests and publish the turn: record. */
int relay_start(relay_t *r);
/* Withdraw the record (dht_remove), drop every allocation and close every
 * handle; cb(r, arg) runs once all handles are closed (never from inside
 * this call).  Then call relay_free(). */
void relay_stop(relay_t *r, void (*cb)(relay_t *r, void *arg), void *arg);
/* Free the relay after relay_stop's callback, or one that never started
 * (after relay_new).  DHT operations still in flight are detached. */
void relay_free(relay_t *r);

/* Counters and live state, a new reference: {"addr","realm","transports",
 * "allocations","permissions","channels","allocation_list" (the first
 * 64: {"user","client","transport","relayed","to_peers",
 * "to_client","permissions","channels"}),"users","client_ips",
 * "quota_per_user","quota_per_ip","quota_total","max_credential_ttl",
 * "peers":{"allow","deny","allow_loopback"}, "rx":{...},"tx":{...},
 * "requests":{...},"refused":{...},"dropped":{...},"tcp":{"connections",...},
 * "tx_batches","relayed_internal"}; relayed_internal counts datagrams from
 * one of our relayed addresses to another, handed over in process (they
 * count in tx.to_peers and rx.from_peers as well).  refused counts error
 * answers by cause: peer_denied (403), quota_user, quota_ip (486),
 * quota_total (508), credential_expired, credential_too_long (401). */
json_t *relay_stats_json(const relay_t *r);
/* The TURN address as "IP:PORT" (len >= 64). */
void relay_addr(const relay_t *r, char *out, size_t len);

/* Helpers for admin commands that any node, relay or not, answers. */

/* Read "turn:OVERLAY" from the DHT and call cb once with a new array
 * [{"addr":"IP:PORT","transports":["udp","tcp"],"owner":HEX40},...] (cb owns
 * it; empty if there is none) or NULL if the lookup failed. */
int relay_list(dht_t *d, const char *overlay, void (*cb)(json_t *relays, void *arg), void *arg);
/* Which relays answer now: a STUN Binding request over UDP to each entry
 * of relays (as relay_list gives them, at most RELAY_PROBE_MAX; an "addr"
 * that does not parse never answers); cb(alive, arg) runs once, from the
 * loop, when all have answered or after timeout_ms, with a new array (cb
 * owns it) of the entries that answered, in their order.  Returns 0, or
 * -E2BIG / -ENOMEM without calling cb. */
#define RELAY_PROBE_MAX 16
int relay_probe(uv_loop_t *loop, json_t *relays, unsigned timeout_ms, void (*cb)(json_t *alive, void *arg),
                void *arg);
/* Mint {"username":"EXPIRY:USER","password":S,"realm":S,"ttl":N} valid ttl
 * seconds from now (ttl 1..86400*30; a relay refuses credentials that
 * expire later than its max_credential_ttl from now).  Returns 0 or
 * -EINVAL. */
int relay_mint_credentials(const char *secret, const char *realm, const char *user, unsigned ttl,
                           json_t **out);

#endif
