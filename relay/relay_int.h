/*
 * Internals of relay/, shared by server.c (sockets, demux, replies),
 * auth.c (nonces, credentials), alloc.c (allocations, permissions,
 * channels, expiry), peers.c (which peers are allowed), quota.c
 * (allocations counted per user name and client IP), tcp.c and records.c
 * (the turn: value).
 */
#ifndef P2PSIP_RELAY_INT_H
#define P2PSIP_RELAY_INT_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "dht/dht.h"
#include "dht/udpq.h"
#include "proto/stun.h"
#include "relay/relay.h"

/* RFC 8656 section 3.6 and 9: lifetimes, in seconds. */
#define RELAY_DEFAULT_LIFETIME 600
#define RELAY_MAX_LIFETIME 3600
#define RELAY_PERM_LIFETIME 300
#define RELAY_CHAN_LIFETIME 600
/* Caps that bound what one client can make us hold. */
#define RELAY_MAX_PERMS 64
#define RELAY_MAX_CHANS 64
#define RELAY_STATS_ALLOCS 64 /* allocations listed in the stats, at most */
#define RELAY_RESV_LIFETIME 30 /* RFC 8656 7.2: about 30 s */
#define RELAY_PORT_TRIES 64 /* binds tried per Allocate before 508 */
#define RELAY_REMOVE_WAIT_MS 2000 /* relay_stop waits this long for dht_remove */
/* Room in front of received data, so a ChannelData header (4 bytes) or a
 * Data indication's header, XOR-PEER-ADDRESS and DATA header (at most 48)
 * can be written in place before a packet from a peer. */
#define RELAY_HEADROOM 64
/* One receive buffer for every socket; a datagram (at most 65507 bytes)
 * leaves room behind it for ChannelData padding (at most 3 bytes, TCP).
 * libuv's recvmmsg (UV_UDP_RECVMMSG, 64 KiB per datagram slot) was tried
 * on the TURN port and saved no measurable CPU (docs/BENCHMARKS.md). */
#define RELAY_RBUF (RELAY_HEADROOM + 65536)
#define RELAY_SOFTWARE "p2psip-relay"
#define RELAY_TURN_RCVBUF (1 << 20)
/* RFC 8656 section 12 narrowed channel numbers to 0x4000-0x4FFF, but
 * RFC 5766 clients (coturn's turnutils_uclient among them) still pick from
 * 0x4000-0x7FFE; like coturn we accept the old range too, since nothing
 * else (DTLS, RTP) shares our TURN port. */
#define RELAY_CHAN_MAX_LEGACY 0x7FFE
/* TURN over TCP (RFC 8656 section 2.1): each connection reads into its
 * own buffer of RELAY_TCP_BUF bytes, so no message on a stream may be
 * longer (clients send MTU-sized data; a longer declared length closes the
 * connection).  At most RELAY_TCP_QUEUE bytes wait to be written to one
 * connection; beyond that whole messages to it are dropped, as a UDP
 * socket would drop them. */
#define RELAY_TCP_BUF 8192
#define RELAY_TCP_QUEUE (256 * 1024)
#define RELAY_TCP_MAX_CLIENTS 1000
#define RELAY_TCP_IDLE 10 /* s a connection without an allocation may stay quiet */
/* Datagrams sent on the TURN port are batched and sent with one
 * sendmmsg() when the loop has run its I/O callbacks (uv_check), or when
 * the batch is full: at most RELAY_TXB datagrams and RELAY_TXB_BYTES of
 * copied data. */
#define RELAY_TXB 64
#define RELAY_TXB_BYTES (64 * 1024)

typedef struct relay_alloc relay_alloc_t;
typedef struct relay_op relay_op_t;
typedef struct relay_resv relay_resv_t;
typedef struct relay_conn relay_conn_t;

/* What an Allocate asks for besides a port. */
typedef struct {
  int even, reserve, token;
  uint8_t token_val[PROTO_STUN_TOKEN_LEN];
} relay_want_t;

typedef struct {
  proto_stun_addr_t peer;
  uint16_t num;
  uint64_t expires; /* loop time, ms */
} relay_chan_t;

typedef struct {
  uint8_t family;
  uint8_t ip[16];
  uint64_t expires;
} relay_perm_t;

struct relay_alloc {
  relay_t *r;
  relay_alloc_t *hnext;      /* hash chain by client address */
  relay_alloc_t *rnext;      /* hash chain by relayed address */
  relay_alloc_t *next, **prevp; /* every allocation */
  proto_stun_addr_t client;
  relay_conn_t *conn; /* the TCP connection it was made on; NULL: UDP */
  proto_stun_addr_t relayed;
  uv_udp_t sock; /* the relayed transport address */
  char *user;
  uint8_t key[PROTO_STUN_KEY_LEN];
  uint8_t txid[PROTO_STUN_TXID_LEN]; /* of the Allocate, for retransmits */
  uint64_t expires;
  uint32_t lifetime; /* as granted */
  uint16_t n_perms, n_chans;
  relay_perm_t *perms;
  relay_chan_t *chans;
  uint64_t to_peers, to_client; /* datagrams relayed each way (stats' allocation_list) */
};

/* quota.c: a count per key (user name or client IP). */
typedef struct relay_count relay_count_t;
typedef struct {
  relay_count_t **b;
  size_t nb, n; /* buckets (0 or a power of 2), keys */
} relay_counts_t;

typedef struct {
  uint64_t stun_in, chan_in, peer_in, bytes_in;
  uint64_t to_peer, to_client, bytes_out;
  uint64_t dropped_malformed, dropped_other, dropped_no_alloc, dropped_no_perm;
  uint64_t send_errors;
  uint64_t requests, errors_sent, auth_failures, stale_nonces, quota_refusals;
  uint64_t quota_user, quota_ip, quota_total; /* quota_refusals by cause */
  uint64_t peers_denied;             /* CreatePermission/ChannelBind answered 403 */
  uint64_t dropped_peer_denied;      /* Send, ChannelData or a datagram to or from a denied peer */
  uint64_t cred_expired, cred_too_long; /* 401 for the credential's EXPIRY */
  uint64_t allocs_made, allocs_expired;
  uint64_t tcp_accepted, tcp_refused, tcp_closed_malformed, tcp_closed_idle, tcp_closed_peer;
  uint64_t tcp_queue_drops;
  /* Datagrams from one of our relayed addresses to another, handed over in
   * process (alloc.c, handover); they count in to_peer and peer_in too. */
  uint64_t relayed_internal;
} relay_counters_t;

struct relay {
  uv_loop_t *loop;
  dht_t *dht;
  char *overlay, *secret, *realm;
  size_t secret_len;
  proto_stun_addr_t listen;
  uint16_t port_min, port_max, port_next;
  int allow_loopback;
  dht_cidr_t allow[RELAY_MAX_PEER_RANGES], deny[RELAY_MAX_PEER_RANGES];
  int n_allow, n_deny;
  proto_stun_addr_t own[RELAY_MAX_OWN_ADDRS]; /* the node's IPs (ports 0) */
  int8_t own_listed[RELAY_MAX_OWN_ADDRS]; /* each one's allow (1) / deny (-1) listing */
  int n_own;
  unsigned quota_user, quota_ip, quota_total, record_ttl, max_cred_ttl;
  relay_counts_t by_name, by_ip; /* live allocations per user name, per client IP */
  uv_udp_t udp;
  uv_tcp_t tcp; /* the TURN port's listener, same IP and port */
  uv_check_t flush; /* sends the TURN port's batch once per loop turn */
  relay_conn_t *conns; /* TCP connections */
  unsigned n_conns, tcp_max, tcp_idle;
  udpq_t *txq; /* the TURN port's pending datagrams (to clients) */
  uv_timer_t tick;
  uv_timer_t rec_timer;
  int started, stopping, removing, open_handles;
  void (*stop_cb)(relay_t *, void *);
  void *stop_arg;
  relay_alloc_t **buckets; /* hash of allocations by client address */
  relay_alloc_t **rbuckets; /* the same allocations by relayed address */
  size_t n_buckets, n_allocs; /* both tables have n_buckets buckets */
  relay_alloc_t *allocs;
  uint8_t nonce_key[20];
  relay_op_t *ops; /* DHT calls in flight */
  relay_resv_t *resv; /* reserved ports (EVEN-PORT R) */
  relay_counters_t c;
  uint8_t *rbuf; /* RELAY_RBUF bytes, shared by every socket's recv */
};

/* What a request handler needs to answer. */
typedef struct {
  relay_t *r;
  relay_conn_t *conn; /* the request came over this TCP connection; NULL: UDP */
  proto_stun_addr_t src;
  const proto_stun_msg_t *m;
  const uint8_t *key; /* set once authenticated: replies carry MI */
  const char *user;
  size_t ulen;
  int fp; /* the request had FINGERPRINT: so do replies */
  uint8_t keybuf[PROTO_STUN_KEY_LEN];
} relay_req_t;

/* server.c */
void relay__addr_from_sa(const struct sockaddr *sa, proto_stun_addr_t *out);
void relay__addr_to_sa(const proto_stun_addr_t *a, struct sockaddr_storage *out);
int relay__addr_eq(const proto_stun_addr_t *a, const proto_stun_addr_t *b);
void relay__reply_begin(const relay_req_t *q, proto_stun_builder_t *b, uint8_t *buf, size_t size,
                        uint8_t cls);
/* Adds MI (if q->key) and FINGERPRINT (if the request had one), sends. */
void relay__reply_send(const relay_req_t *q, proto_stun_builder_t *b);
void relay__reply_error(const relay_req_t *q, uint16_t code, const char *reason);
/* To a client over UDP (conn NULL: batched, see RELAY_TXB) or down its
 * TCP connection; p must stay valid only during the call. */
int relay__send_client(relay_t *r, relay_conn_t *conn, const proto_stun_addr_t *to, const void *p,
                       size_t n);
/* What arrived on the TURN port (UDP datagram or a message framed on a TCP
 * stream): STUN or ChannelData.  Returns -1 if it was malformed. */
int relay__on_message(relay_t *r, relay_conn_t *conn, const proto_stun_addr_t *src,
                      const uint8_t *p, size_t n);
/* An allocation's socket finished closing (open_handles counts it). */
void relay__handle_gone(relay_t *r);
int relay__bind_socket(const struct sockaddr_storage *ss, int *fd_out);
uint64_t relay__now_ms(const relay_t *r);

/* auth.c: 0 when q->key/user are set; else it has replied (400, 401, 438)
 * and returns -1. */
int relay__authenticate(relay_req_t *q);
void relay__add_nonce(relay_t *r, proto_stun_builder_t *b, const proto_stun_addr_t *src);

/* alloc.c */
void relay__on_request(relay_req_t *q);
void relay__on_indication(relay_t *r, relay_conn_t *conn, const proto_stun_msg_t *m,
                          const proto_stun_addr_t *src);
int relay__chan_parse(const uint8_t *p, size_t n, proto_stun_chan_t *out);
/* Returns -1 if the ChannelData was malformed (counted). */
int relay__on_chandata(relay_t *r, relay_conn_t *conn, const proto_stun_addr_t *src,
                       const uint8_t *p, size_t n);
/* The connection is going: delete its allocation. */
void relay__alloc_conn_gone(relay_conn_t *c);
void relay__tick(uv_timer_t *t);
void relay__sweep_resv(relay_t *r, int all);
void relay__free_all_allocs(relay_t *r);
/* The live allocation whose relayed address is addr, or NULL. */
relay_alloc_t *relay__find_relayed(const relay_t *r, const proto_stun_addr_t *addr);
json_t *relay__alloc_stats(const relay_t *r);

/* peers.c: the peer rules (see there). */
/* 1 if a client may not make us send to a (403), else 0. */
int relay__forbidden_peer(const relay_t *r, const proto_stun_addr_t *a);
/* relay__forbidden_peer for one of the node's own IPs, else 0: cheap
 * enough per packet (a few compares for other IPs). */
int relay__own_peer_denied(const relay_t *r, const proto_stun_addr_t *a);
/* Copy the allow/deny lists and own addresses: 0 or -EINVAL. */
int relay__peers_config(relay_t *r, const relay_config_t *cfg);
json_t *relay__peers_stats(const relay_t *r);

/* quota.c */
#define RELAY_FNV_BASIS 2166136261u
uint32_t relay__fnv(uint32_t h, const void *p, size_t n);
/* 0 if an Allocate by user from client is within the quotas, else the
 * error code (486 per user or per IP, 508 in all), counted. */
int relay__quota_check(relay_t *r, const char *user, size_t ulen, const proto_stun_addr_t *client);
/* Count a in (0 or -ENOMEM) / out (when it is unlinked). */
int relay__quota_take(relay_t *r, const relay_alloc_t *a);
void relay__quota_release(relay_t *r, const relay_alloc_t *a);
void relay__quota_free(relay_t *r);
/* Adds quota_per_user, quota_per_ip, quota_total, users, client_ips to j. */
void relay__quota_stats(const relay_t *r, json_t *j);

/* tcp.c */
/* Bind the listener at the TURN address (plain syscalls, like the UDP
 * port); *fd_out is a bound, not yet listening, socket. */
int relay__tcp_bind(const proto_stun_addr_t *at, int *fd_out);
int relay__tcp_start(relay_t *r);
/* Close every connection (their allocations go with them). */
void relay__tcp_close_all(relay_t *r);
/* From the 1 s tick: close connections without an allocation that have
 * been quiet for tcp_idle seconds. */
void relay__tcp_sweep(relay_t *r, uint64_t now);
int relay__tcp_send(relay_conn_t *c, const void *p, size_t n);
/* How the stream in p[0..n) starts: a complete STUN or ChannelData
 * message of the returned size, PROTO_NEED_MORE, or a negative PROTO_E*
 * code that closes the connection (PROTO_ETOOBIG: the message declares
 * more than RELAY_TCP_BUF bytes). */
long relay__tcp_frame(const uint8_t *p, size_t n);
relay_alloc_t *relay__conn_alloc(const relay_conn_t *c);
void relay__conn_set_alloc(relay_conn_t *c, relay_alloc_t *a);
json_t *relay__tcp_stats(const relay_t *r);

/* records.c */
int relay__records_start(relay_t *r);
int relay__records_stop(relay_t *r);
/* server.c: the withdrawal finished (or timed out); close the rest. */
void relay__records_stopped(relay_t *r);
void relay__records_detach(relay_t *r);
/* The turn: value's body for addr (malloc'd, NULL when out of memory), and
 * a value from any node as an entry of relay_list()'s array (a new
 * reference), or NULL when it is not a relay's. */
char *relay__record_encode(const char *addr);
json_t *relay__record_entry(const dht_value_t *v);

#endif
