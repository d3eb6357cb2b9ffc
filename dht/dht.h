/*
 * dht: a Chord ring with replicated storage, on one libuv loop.
 *
 * The node joins through bootstrap addresses, keeps a successor list, a
 * predecessor and a finger table, stores the values of the keys it is
 * responsible for, replicates them on its successors, and re-stores the
 * values it put itself until they expire.  Lookups are iterative: see
 * dht/README.md for why.
 *
 * Everything here runs on the loop given to dht_new(); nothing is
 * thread-safe.  Functions return 0 or a negative errno-style code; a
 * function that takes a callback and fails immediately never calls it.
 * Callbacks never fire from inside the call that started the operation.
 */
#ifndef P2PSIP_DHT_H
#define P2PSIP_DHT_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define DHT_ID_LEN 20
#define DHT_ID_HEX 41 /* 40 hex digits and a NUL */
#define DHT_MAX_SUCC 16
#define DHT_MAX_PATH 32 /* hops a lookup may take before it gives up */

typedef struct dht dht_t;
typedef struct dht_cert_ca dht_cert_ca_t;       /* dht/cert.h */
typedef struct dht_cert_creds dht_cert_creds_t; /* dht/cert.h */

typedef struct {
  uint8_t b[DHT_ID_LEN];
} dht_id_t;

typedef struct {
  dht_id_t id;
  struct sockaddr_storage addr;
} dht_node_t;

/* Kinds of stored values (informational; the DHT treats bodies as bytes). */
enum dht_kind {
  DHT_KIND_ANY = 0,
  DHT_KIND_JSON = 1,     /* admin "put" */
  DHT_KIND_USER = 2,     /* sip: user record */
  DHT_KIND_PROXY = 3,    /* sip:OVERLAY proxy peer */
  DHT_KIND_RELAY = 4,    /* turn:OVERLAY relay */
};

/* One value as returned by dht_get(); valid during the callback only. */
typedef struct {
  const char *vid; /* value id, NUL-terminated */
  uint8_t kind;
  dht_id_t owner;
  uint64_t seq;
  uint32_t expires_in; /* seconds */
  const uint8_t *body;
  size_t body_len;
} dht_value_t;

/* Limits no peer can exceed; 0 takes the default in brackets.  Defaults
 * are far above what a 500-node testbed on one machine uses. */
typedef struct {
  unsigned conns;            /* accepted peer connections in all [4096] */
  unsigned conns_per_ip;     /* accepted connections from one IP [512] */
  unsigned frame_kb;         /* KiB of unfinished frames held over all connections [65536] */
  unsigned key_values;       /* values under one key [1024]; and never more bytes than
                              * one FETCH answer carries */
  unsigned owner_key_values; /* values one owner may keep under one key [32] */
  unsigned owner_values;     /* values of one owner stored here [200000] */
  unsigned owner_kb;         /* KiB of one owner's values stored here [131072] */
  unsigned hello_ms;         /* to finish the TLS handshake and HELLO [10000] */
  unsigned frame_ms;         /* to finish a frame once begun [30000] */
  unsigned ids_per_net;      /* fingers in one /24 (IPv4) or /48 (IPv6) [8; off when
                              * listening on loopback, a testbed on one host] */
} dht_limits_t;

typedef struct {
  const char *overlay;           /* overlay identifier, e.g. "overlay.test" */
  struct sockaddr_storage listen; /* peer protocol; port 0 picks one */
  const struct sockaddr_storage *bootstrap; /* none: start a new ring */
  int n_bootstrap;
  const dht_id_t *node_id; /* NULL: SHA-1 of the listen address "IP:PORT" */
  int replicas;            /* copies of each key, counting the primary (>= 1) */
  int succ_list;           /* successor list length (3..DHT_MAX_SUCC) */
  /* Timers, in milliseconds (0 = default). */
  unsigned stabilize_min_ms; /* while the ring changes around us */
  unsigned stabilize_max_ms; /* once it is quiet */
  unsigned refresh_ms;       /* owners re-store their values this often */
  unsigned rpc_timeout_ms;
  /* A busy link (written twice within this, the last time less than
   * this ago) keeps new STOREs and their answers until then, so that
   * under load one write carries several; other frames never wait
   * (0: every loop iteration writes). */
  unsigned link_hold_ms;
  /* The secured mode (both NULL: the open mode): the overlay CA and this
   * node's certificate and key (dht/cert.h).  Peer links are then TLS 1.3
   * with mutual authentication, and the node id is the certificate's
   * (node_id must be NULL).  Borrowed: both must outlive the node. */
  dht_cert_ca_t *ca;
  const dht_cert_creds_t *creds;
  dht_limits_t limits;
} dht_config_t;

/* Status codes passed to callbacks. */
enum {
  DHT_OK = 0,
  DHT_ETIMEDOUT = -110,  /* no answer from the nodes that should know */
  DHT_ENOTFOUND = -2,    /* no value under that key */
  DHT_ECLOSING = -125,   /* the node is leaving */
  DHT_EREFUSED = -13,    /* the responsible node refused the value (access rules, limits) */
  DHT_UNREAD = 1,        /* dht_put_read(): stored, but no values came back with it */
};

typedef void (*dht_put_cb)(dht_t *d, int status, int replicas, void *arg);
typedef void (*dht_get_cb)(dht_t *d, int status, const dht_value_t *values, size_t n,
                           int hops, void *arg);
typedef void (*dht_lookup_cb)(dht_t *d, int status, const dht_node_t *owner, int hops,
                              const dht_id_t *path, int path_len, void *arg);
typedef void (*dht_succ_cb)(dht_t *d, void *arg);
typedef void (*dht_left_cb)(dht_t *d, void *arg);

/* Create a node on loop.  Binds the listen socket (so the caller learns a
 * picked port from dht_self()) but contacts no one until dht_start(). */
int dht_new(uv_loop_t *loop, const dht_config_t *cfg, dht_t **out);
/* Join through the bootstrap nodes (retrying until one answers), or start
 * a ring of one. */
int dht_start(dht_t *d);
/* Graceful leave: hand stored keys to the successor, tell the neighbours,
 * then call cb.  The node answers nothing after cb. */
int dht_leave(dht_t *d, dht_left_cb cb, void *arg);
/* Look our id up through each bootstrap address now (up to 8), as after a
 * rejoin: one that answers from another ring is told of us and the rings
 * merge (stats ring_splits).  The number of addresses asked; -ENOENT with
 * none, -EAGAIN while not joined. */
int dht_split_check(dht_t *d);
/* Close every handle; call after dht_leave's callback or instead of it.
 * Run the loop afterwards until it has no handles left, then dht_free. */
void dht_close(dht_t *d);
void dht_free(dht_t *d);

/* Identifiers. */
void dht_id_of(const char *name, dht_id_t *out); /* SHA-1 of the string */
void dht_id_hex(const dht_id_t *id, char out[DHT_ID_HEX]);
int dht_id_parse(const char *hex, dht_id_t *out); /* 40 hex digits: 0, else -EINVAL */
/* "IP:PORT" ("[v6]:PORT"); out needs 64 bytes. */
void dht_addr_str(const struct sockaddr_storage *ss, char *out, size_t len);
int dht_addr_parse(const char *s, struct sockaddr_storage *out);
/* Same family, address and port. */
bool dht_addr_eq(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/* Address ranges (addr.c).  An IPv4 or IPv6 prefix, host bits zero. */
typedef struct {
  uint8_t family; /* AF_INET or AF_INET6 */
  uint8_t bits;   /* prefix length: up to 32 or 128 */
  uint8_t ip[16]; /* the network address (4 bytes used for IPv4) */
} dht_cidr_t;
#define DHT_CIDR_STRLEN 52 /* "ffff:...:ffff/128" and a NUL */

/* "10.0.0.0/8", "fc00::/7", or a bare address (a /32 or /128).  Host bits
 * set ("10.1.2.3/8") are refused.  Returns 0 or -EINVAL. */
int dht_cidr_parse(const char *s, dht_cidr_t *out);
/* "CIDR[,CIDR...]" appended to out[*n..max-1]; *n moves only on success.
 * Returns 0, -EINVAL (an entry does not parse) or -E2BIG (more than max). */
int dht_cidr_parse_list(const char *s, dht_cidr_t *out, int *n, int max);
void dht_cidr_str(const dht_cidr_t *c, char *out, size_t len);
/* 1 if the range holds the address's IP (the port is ignored), else 0.
 * An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is a.b.c.d to an IPv4
 * range and itself to an IPv6 range. */
int dht_cidr_match(const dht_cidr_t *c, const struct sockaddr_storage *ss);
int dht_cidr_list_match(const dht_cidr_t *list, int n, const struct sockaddr_storage *ss);
/* 1 if the address is loopback, private, link-local, multicast, reserved,
 * documentation or otherwise special-purpose (the IANA registries; the list
 * and its RFCs are in addr.c), i.e. not one to send to on a stranger's
 * behalf; the IPv4 address inside an IPv4-mapped or 6to4 (2002::/16)
 * address decides for it.  Other families count as special. */
int dht_addr_special(const struct sockaddr_storage *ss);
/* 1 if a and b share their first v4_bits (IPv4, mapped ones included)
 * or v6_bits (IPv6) bits. */
int dht_addr_same_net(const struct sockaddr_storage *a, const struct sockaddr_storage *b, unsigned v4_bits,
                      unsigned v6_bits);
/* 1 for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
int dht_addr_loopback(const struct sockaddr_storage *ss);

/* Put a value under name and keep it there until ttl_s runs out: the node
 * re-stores it every refresh interval and after ring changes.  vid NULL
 * means this node's id in hex.  A later put with the same (name, vid)
 * replaces it (higher sequence number).  body is copied. */
int dht_put(dht_t *d, const char *name, const char *vid, uint8_t kind, const void *body,
            size_t len, uint32_t ttl_s, dht_put_cb cb, void *arg);
/* The same, signed with signer's certificate instead of the node's own
 * (the secured mode: a home node puts its users' records with their
 * certificates, dht/cert.h).  signer is borrowed: it must outlive the
 * value (and its removal).  NULL: the node's own, as dht_put. */
int dht_put_as(dht_t *d, const dht_cert_creds_t *signer, const char *name, const char *vid,
               uint8_t kind, const void *body, size_t len, uint32_t ttl_s, dht_put_cb cb, void *arg);
/* dht_put_as(), and what the key's primary held just before the value
 * landed there (what dht_get_primary() would have read then; the value
 * put, in its old version, among it): one request where a read and then a
 * write are two.  cb gets DHT_OK and those values (checked as any read),
 * DHT_UNREAD when the value was stored but no values came back (a primary
 * of an older version, or the put waited for the join): read them yourself
 * if you need them, or a status < 0 as dht_put's cb would.  The put goes
 * to the primary a primary get would have asked (a range found lately). */
int dht_put_read(dht_t *d, const dht_cert_creds_t *signer, const char *name, const char *vid,
                 uint8_t kind, const void *body, size_t len, uint32_t ttl_s, dht_get_cb cb,
                 void *arg);
/* Withdraw a value this node put (a tombstone replaces it everywhere).
 * cb may be NULL; -ENOENT when this node has not put (name, vid) since it
 * started. */
int dht_remove(dht_t *d, const char *name, const char *vid, dht_put_cb cb, void *arg);
/* Withdraw a value as dht_get() returned it, whoever put it: this node
 * before it restarted (its table of what it put starts empty), or another
 * node.  A tombstone with a sequence number above v->seq and this node's
 * clock replaces it everywhere, and this node keeps re-storing it for
 * v->expires_in seconds (or longer if it put the value itself), so that no
 * stale copy comes back.  Reads v->vid, v->kind, v->seq and v->expires_in
 * only.  signer: as for dht_put_as() (in the secured mode only a signer
 * the access rules let write the value can remove it).  cb may be NULL. */
int dht_remove_value(dht_t *d, const dht_cert_creds_t *signer, const char *name,
                     const dht_value_t *v, dht_put_cb cb,
                     void *arg);
/* Fetch the live values under name. */
int dht_get(dht_t *d, const char *name, dht_get_cb cb, void *arg);
/* The same, from the key's primary alone: its answer, even empty, is the
 * answer (the next holders are asked only when it gives none).  One FETCH
 * where dht_get() sends two or three, but no merge with the replicas: a
 * primary that has just joined, or missed a write, answers without what
 * it lacks (or with a value a replica holds a tombstone of).  For callers
 * that only add or replace values and can live with such an answer.  A key
 * in a range a lookup found lately is not looked up again: the FETCH goes
 * to that range's primary, and counts only if it answers as the primary
 * (else the key is looked up; stats gets_direct). */
int dht_get_primary(dht_t *d, const char *name, dht_get_cb cb, void *arg);
/* Only this node's own copy of name's values (it may hold none: it is not
 * among the key's holders, or lost them), checked as dht_get() checks what
 * it reads; no message is sent.  For operators and tests that need to know
 * where the copies are.  cb runs from the loop, never before this returns. */
int dht_get_local(dht_t *d, const char *name, dht_get_cb cb, void *arg);
/* Find the node responsible for key. */
int dht_lookup(dht_t *d, const dht_id_t *key, dht_lookup_cb cb, void *arg);
/* Called whenever the successor list or the predecessor changes. */
void dht_watch(dht_t *d, dht_succ_cb cb, void *arg);
/* Called when this node finds another node dead and drops it from its ring
 * tables: a request to it failed or timed out, or a connection to a
 * neighbour closed and a ping found nothing listening.  Not for a node
 * that leaves gracefully, and once per node until it is heard from again.
 * node (id and peer address) is valid during the call only.  One callback
 * per dht_t: a later call replaces it; NULL stops the calls. */
typedef void (*dht_dead_cb)(dht_t *d, const dht_node_t *node, void *arg);
void dht_on_dead(dht_t *d, dht_dead_cb cb, void *arg);

/* Ask a peer which address it sees us at and whether it can open a TCP
 * connection back to that address at port (our peer port if 0).  cb gets
 * status 0 with the observed address and reachable 0/1, or an error
 * (-EAGAIN: no peer to ask yet). */
typedef void (*dht_reach_cb)(dht_t *d, int status, const struct sockaddr_storage *seen,
                             int reachable, void *arg);
int dht_check_reachable(dht_t *d, uint16_t port, dht_reach_cb cb, void *arg);
/* The same, asking the given peer (one that dht_successors(),
 * dht_predecessor() or dht_fingers() listed; copied): node/ asks several
 * and decides only on the agreement of two.  -EINVAL for ourselves. */
int dht_ask_reachable(dht_t *d, const dht_node_t *peer, uint16_t port, dht_reach_cb cb,
                      void *arg);

/* Introspection for the admin socket. */
const dht_node_t *dht_self(const dht_t *d);
const dht_node_t *dht_predecessor(const dht_t *d); /* NULL if none */
int dht_successors(const dht_t *d, const dht_node_t **out); /* returns count */
/* Distinct fingers: start[i] and the node; returns count (<= 160). */
int dht_fingers(const dht_t *d, dht_id_t *starts, dht_node_t *nodes, int max);
size_t dht_records(const dht_t *d); /* live values stored here */

typedef struct {
  uint64_t msgs_in, msgs_out, bytes_in, bytes_out;
  uint64_t link_writes; /* writes to peer links, each of the frames gathered since the last */
  uint64_t link_holds;  /* writes a busy link put off to gather more frames (link_hold_ms) */
  uint64_t lookups, lookups_failed, rpc_timeouts, bad_frames;
  uint64_t rejoins; /* joined again after losing every neighbour */
  uint64_t ring_splits; /* split checks that found our id held in another ring (ring.c) */
  uint64_t puts, gets, stores_in, values_stored;
  uint64_t gets_primary; /* of gets, those of dht_get_primary() */
  uint64_t gets_direct;  /* of those, FETCHes sent without a lookup that the primary confirmed */
  uint64_t puts_read;    /* of puts, those of dht_put_read() */
  uint64_t puts_read_direct; /* of those, sent to a range's primary without a lookup */
  uint64_t puts_unread;  /* of those, stored without the values before coming back */
  uint64_t puts_relooked; /* lookups made again after a just-found primary said NOT_MINE */
  uint64_t refresh_batches;      /* owner refreshes sent as one STORES per primary */
  uint64_t refresh_batch_misses; /* refreshes of those stored again alone (not the primary, no answer) */
  uint64_t copies_quick; /* copies a primary sent one-way (PROTO_STORE_QUICK: a registrar's writes) */
  uint64_t copies_quick_batches; /* STORES that carried them (gathered per replica, 50 ms) */
  uint64_t hops_hist[DHT_MAX_PATH + 1];
  uint64_t connections;
  uint64_t tls_failed;   /* secured mode: handshakes or sessions that failed */
  uint64_t tls_handshakes; /* secured mode: handshakes completed */
  uint64_t auth_refused; /* frames whose claims disagree with the peer's certificate */
  uint64_t deadline_closes; /* connections closed for no HELLO or no frame end in time */
  uint64_t values_refused;  /* values not stored: access rules, caps, limits */
  /* Refused at a limit (dht_limits_t), by limit. */
  uint64_t refused_conns;      /* conns, conns_per_ip */
  uint64_t refused_frames;     /* frame_kb */
  uint64_t refused_key_full;   /* key_values, or a FETCH answer's size */
  uint64_t refused_owner_key;  /* owner_key_values */
  uint64_t refused_owner;      /* owner_values, owner_kb */
  uint64_t refused_not_mine;   /* primary STOREs for keys of another node's range */
  uint64_t joins_repeated;     /* JOINs from our predecessor on a link that carried one: range not sent again */
  uint64_t refused_net;        /* fingers not taken: ids_per_net */
  /* Routed puts and gets (secured mode): sent by this node, passed on,
   * answered here, failed (here or on their way back to us), and puts or
   * gets that fell back to the iterative path after a routed one failed. */
  uint64_t routed_sent, routed_forwarded, routed_answered, routed_failed, routed_fallbacks;
  /* Secured mode: the cache of verified certificates (dht/cert.h): chains
   * checked, answers from the cache, certificates in it now, of those the
   * keys held ready for signature checks, and keys made again for one. */
  uint64_t cert_checks, cert_cache_hits, cert_cache, cert_cache_keys, cert_key_builds,
           cert_full_checks;
  uint64_t out_by_type[32]; /* requests and replies sent, by frame type */
} dht_stats_t;
/* Name of a frame type for out_by_type ("find", "store_r"...), or NULL. */
const char *dht_frame_name(int type);
void dht_stats(const dht_t *d, dht_stats_t *out);

#endif
