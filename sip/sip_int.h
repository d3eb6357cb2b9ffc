/*
 * Internals of sip/: shared by its .c files only.  This is the one place
 * that includes sofia-sip; nothing sofia-specific leaves sip/.
 */
#ifndef P2PSIP_SIP_INT_H
#define P2PSIP_SIP_INT_H

#include <stdint.h>

#include <sofia-sip/msg_addr.h>
#include <sofia-sip/nta.h>
#include <sofia-sip/nta_stateless.h>
#include <sofia-sip/nta_tport.h>
#include <sofia-sip/sip.h>
#include <sofia-sip/sip_header.h>
#include <sofia-sip/sip_status.h>
#include <sofia-sip/sip_util.h>
#include <sofia-sip/su_alloc.h>
#include <sofia-sip/su_wait.h>
#include <sofia-sip/url.h>

#include "dht/cert.h"
#include "dht/log.h"
#include "dht/udpq.h"
#include "sip/sip.h"

/* Limits on what one request may make us do (STYLE 8). */
#define SIP_MAX_FORWARDS 70       /* added when a request has none */
#define SIP_MAX_BRANCHES 8        /* parallel forks per request */
#define SIP_MAX_CONTACTS 16       /* bindings per AOR and per REGISTER */
#define SIP_MAX_ROUTES 16         /* Route entries we look at */
#define SIP_MAX_TRANSACTIONS 4096 /* proxy transactions alive at once */
#define SIP_MAX_PEERS 16          /* proxy peers remembered */
#define SIP_MAX_BODY 65536        /* bytes: larger messages get 413 */
/* Per-source limits (limit.c). */
#define SIP_SOURCES 4096          /* sources tracked at once */
#define SIP_SOURCE_PROBES 8       /* slots looked at for one source */
#define SIP_RATE_BLOCK_MS 5000    /* a source over its rate is refused this long (Retry-After) */
#define SIP_DEFAULT_RATE 50       /* requests/s per source, burst twice that (--sip-rate) */
#define SIP_DEFAULT_SOURCE_TX 256 /* live transactions per source (--sip-source-transactions) */
/* A REGISTER's answer over UDP is at most this long, or the request's
 * length if that is more (the path carried that): RFC 3261 18.1.1's
 * 1300 bytes for an unknown path MTU. */
#define SIP_UDP_ANSWER_MAX 1300
#define SIP_ANSWER_HEAD 600       /* bytes of an answer besides its Contacts, at most */
#define SIP_UDP_RCVBUF (2 << 20)  /* bytes of socket receive buffer (capped by rmem_max) */
/* The REGISTER socket's: what it holds must be able to exceed
 * SIP_SHED_DELAY_MS of work, or a fast node never sheds and the kernel
 * drops instead.  At 2 MB (4 MB as the kernel counts) it held 3,276
 * REGISTERs, 55 ms for a node taking 60 a ms; now about 200 ms. */
#define SIP_REG_RCVBUF (8 << 20)
/* Overload: when what is queued on the SIP UDP socket would take more than
 * SIP_SHED_DELAY_MS to go through at the rate messages were taken lately,
 * new work is refused with 503 before any state is made, so that the
 * queue, and what waits in it (an OPTIONS, an ACK), stays short.  (A fixed
 * byte count either shed calls on every 25 ms the node was descheduled or
 * let REGISTERs, ten times costlier each, wait for hundreds of ms.) */
#define SIP_SHED_DELAY_MS 50.0
/* The REGISTER socket's queue, which nothing else waits behind, sheds only
 * once it has stood above SIP_SHED_DELAY_MS this long: a brief shortage
 * (the node descheduled, a burst) is served late, as a queue is for, and
 * only a standing one, where more comes than the node takes, is answered
 * 503.  Every 503 is a registration refused; a REGISTER served 200 ms late
 * is not even retransmitted (T1 is 500 ms).  With 50 ms, bench-sip's
 * steps failed on moments: 81,214 shed at 21,000/s under perf. */
#define SIP_SHED_STANDING_MS 500
/* Then a share of new REGISTERs is shed, the share steered by the queue's
 * delay as RFC 8033 (PIE) steers its drop probability: every
 * SIP_SHED_UPDATE_MS it moves by SIP_SHED_ALPHA per second of delay above
 * SIP_SHED_DELAY_MS and SIP_SHED_BETA per second the delay grew.  Shedding
 * all while the queue was long cut it to 50 ms each time: at 27,000/s,
 * a little past what the node took, 26 % of registrations got 503s. */
#define SIP_SHED_UPDATE_MS 16
#define SIP_SHED_ALPHA 0.125
#define SIP_SHED_BETA 1.25
#define SIP_QUEUE_TRUESIZE 1400.0 /* kernel bytes per queued datagram, about (loopback) */
#define SIP_RATE_WINDOW_MS 100
#define SIP_RATE_MIN_BUSY_MS 5.0 /* a window busy less than this leaves the rate as it was */
#define SIP_RATE_MIN_MSGS 50     /* and one with fewer messages */
#define SIP_QUEUE_READ_NS 1000000 /* the queue is read again after this long (1 ms) */
#define SIP_RATE_FLOOR 1.0        /* messages/ms assumed at least (a node just woken) */
/* messages/ms assumed before a busy window measured any: a release build
 * takes 20-100, one with ASan a tenth.  With the floor instead, a fresh
 * node's first burst of 300 INVITEs looked like 300 ms of work and was
 * all shed (bench-sip's first calls step lost 10-15 at bob's node). */
#define SIP_RATE_UNMEASURED 20.0
/* REGISTERs waiting for the DHT at once: a node draining a backlog at 60-70
 * a ms, its STOREs held up to 30 ms by --link-hold 20, holds ~2,000. */
#define SIP_MAX_REGISTERING 4096
#define SIP_PEEK_BYTES 4096       /* of a datagram looked at before sofia reads it */
/* Our answers gathered in a loop turn (core.c, send_answer): a 401 or a
 * 200 is 400-1,500 bytes, so a full batch is 40-160 answers. */
#define SIP_TXQ_MAX 64
#define SIP_TXQ_BYTES (64 * 1024)
#define SIP_PEEK_MAX 64           /* datagrams dropped so at most, per step */
/* REGISTER answers kept as bytes (resend.c): at a registrar's knee, 38,000
 * answers a second, 32,768 are 0.86 s, past a first retransmission (T1).
 * A 401 or a 200 with one Contact and its key take 400-450 bytes; an
 * answer too long for its slot is answered again from the answers table. */
#define SIP_RESEND_MAX 32768
#define SIP_RESEND_SLOT 1024     /* bytes of key and answer one keeps (32 MB mapped in all) */
#define SIP_RESEND_MS 8000        /* for so long (sipp/phones retransmit within 4 s, T2) */
/* REGISTERs shed at the peek remembered (4 MB, made when shedding first
 * starts): past the knee the peek sheds ~28,000 a second, and sipp sends
 * each again at 0.5, 1.5 and 3.5 s; 16,384 held 0.6 s of them, and most
 * copies cost a 503 again. */
#define SIP_SHED_KEYS 262144
#define SIP_SHED_MEMORY_MS 4000   /* for so long (T2) */
/* A source that sends copies of REGISTERs shed with a 503 ignores the 503
 * (sipp does): SIP_DEAF_COPIES of them within SIP_SHED_MEMORY_MS, and
 * what is shed from it gets no answer until SIP_SHED_MEMORY_MS after its
 * latest copy.  Each 503 was a datagram its busy receiver had to read for
 * nothing (past the knee sipp's socket dropped 200s among them: session
 * 26).  A few copies are allowed for 503s lost on the way. */
#define SIP_DEAF_COPIES 8
#define SIP_DEAF_SOURCES 256      /* sources judged so at once, direct-mapped */
/* The Retry-After of a 503 for load, s and ms: a copy of the REGISTER shed
 * within it is dropped even once the node takes work again. */
#define SIP_SHED_RETRY_AFTER "2"
#define SIP_SHED_RETRY_AFTER_MS 2000
#define SIP_LOOP_BURST 8          /* sofia steps in a row while datagrams are queued */
#define SIP_RTX_SPARES 128       /* freed REGISTER records kept for reuse (~1 MB) */
#define SIP_OP_SPARES 1024       /* finished DHT call records kept for reuse (48 KB) */
#define SIP_REG_LINGER_MS 16000   /* a REGISTER's answer is kept for retransmissions */
#define SIP_REG_ANSWER_BUCKETS 262144 /* SIP_REG_ANSWERS_MAX at most: chains under one */
#define SIP_REG_ANSWERS_MAX 200000 /* answers kept at most (~50 MB at worst) */

/* Digest authentication of phones (auth.c, users.c). */
#define SIP_NONCE_TTL_S 300        /* older nonces are stale */
#define SIP_USERS_RECHECK_MS 10000 /* without inotify, a user's file is looked at again this often */
#define SIP_USERS_MAX 2000000      /* users read at start (~130 bytes each); more are read when needed */

/* Registrar policy (RFC 3261 10.3). */
#define SIP_DEFAULT_EXPIRES 3600
#define SIP_MIN_EXPIRES 10    /* shorter gets 423 with Min-Expires */
#define SIP_MAX_EXPIRES 86400 /* longer is cut to this */
/* A user record stays in the DHT this long after its contact expired, so
 * that a lookup can tell "expired" (480) from "never registered" (404). */
#define SIP_GRACE_S 300
#define SIP_SWEEP_BATCH 2048 /* bindings looked at per sweep (every second) */

/* Proxy peers (spec 3.1, 3.3.1). */
/* A crashed proxy peer leaves the list this soon (and DNS, when no one
 * reports it dead: dnsreg.c): the same 30 s as a relay's turn:OVERLAY
 * value with the default --refresh.  Re-put three times per lifetime. */
#define SIP_PEER_TTL_S 30        /* lifetime of our sip:OVERLAY value */
#define SIP_PEER_REPUBLISH_MS 10000
#define SIP_PEER_RETRY_MS 2000    /* the first re-put, and after a failure */
#define SIP_PEER_CACHE_MS 5000   /* how long a fetched peer list is reused */
#define SIP_PEER_MISS_MS 1000    /* a peer missing from the list: fetched again at most this often */
#define SIP_FAILOVER_MS 4000     /* no answer at all from a peer: try another */
#define SIP_STOP_MAX_MS 2000     /* sip_stop() calls back within this */
/* A proxy peer found dead (gateway.c, dnsreg.c, ping.c). */
#define SIP_MAX_PINGS 32         /* OPTIONS of ping.c in flight */
#define SIP_DOWN_PENDING 8       /* deaths being looked up under sip:OVERLAY at once */
#define SIP_DOWN_REPORTS 2       /* proxy peers told of each death */
#define SIP_HDR_PEER_DOWN "P2PSIP-Peer-Down"     /* value: the dead node's id, 40 hex */
#define SIP_HDR_DNS_REMOVED "P2PSIP-DNS-Removed" /* value: the pp- name removed */

/* User records a proxy reuses instead of asking the DHT again (dhtop.c). */
#define SIP_LOCATE_CACHE_MS 2000 /* default age limit; --sip-cache-ms */
#define SIP_GCACHE_SLOTS 512     /* names kept at most */
#define SIP_GCACHE_BYTES 8192    /* larger answers are not kept */

/* The flow from a node that is not public to one proxy peer (flow.c,
 * RFC 5626 3.5 style keep-alives, but with OPTIONS). */
#define SIP_FLOW_KEEPALIVE_MS 20000 /* under the 30 s of common UDP NAT bindings */
#define SIP_FLOW_TIMEOUT_MS 4000    /* no answer to a keep-alive: the peer failed */
#define SIP_FLOW_RETRY_MS 2000      /* no peer known, or after a failure */
#define SIP_FLOW_REPUT_BATCH 64     /* user records re-put per SIP_FLOW_REPUT_MS */
#define SIP_FLOW_REPUT_MS 100

typedef struct sip_loop sip_loop_t;
typedef struct sip_ptx sip_ptx_t;
typedef struct sip_reg sip_reg_t;
typedef struct sip_op sip_op_t;
typedef struct sip_dnsreg sip_dnsreg_t;
typedef struct sip_flow sip_flow_t;
typedef struct sip_ping sip_ping_t;
typedef struct sip_authdb sip_authdb_t;
typedef struct sip_users sip_users_t;
typedef struct sip_limits sip_limits_t;
typedef struct sip_lines sip_lines_t;
typedef struct sip_regsock sip_regsock_t;

/* Counters shown by {"cmd":"sip"}. */
typedef struct {
  uint64_t requests, responses_fwd, acks_fwd, stray_fwd;
  uint64_t registers, register_ok, register_failed, unregisters;
  uint64_t lookups, lookup_failed, not_found, expired;
  uint64_t proxied, via_peer, peer_failover, to_public, from_public;
  uint64_t edge_unknown; /* calls that read the proxy peer list again for a target's edge */
  uint64_t loops, too_many_hops, bad_requests, cancels, no_peer;
  uint64_t dns_updates, dns_update_failed;
  uint64_t dns_refused; /* updates the server refused (its update-policy) */
  /* dnsreg.c's clean-up: checks of the DHT, SRV records of dead peers
   * removed; peers missing from the DHT for two checks probed, and found
   * answering (their records kept). */
  uint64_t dns_gc_checks, dns_stale_removed;
  uint64_t dns_missing_checks, dns_missing_alive;
  uint64_t cache_hits, stale, stateless;
  /* A proxy peer found dead: deaths this node told proxy peers of; suspects
   * a proxy peer heard of (from others or itself), ignored (not in DNS, or
   * checked a moment ago), checked, found answering, removed; re-adds of
   * our own records after another peer removed them. */
  uint64_t down_reported, down_heard, down_ignored, down_checks, down_alive, down_removed;
  uint64_t dns_readded;
  /* The edge (auth.c, edge.c): challenges sent (401/407), credentials
   * accepted and refused, requests whose To (REGISTER) or From was not the
   * authenticated user, ACKs of our stateless answers absorbed, REGISTERs
   * refused for want of --users in the secured mode. */
  uint64_t auth_challenges, auth_ok, auth_failed, auth_wrong_user, acks_absorbed, no_users;
  uint64_t no_dialog; /* requests with our stateless To tag, answered 481 */
  /* Requests from overlay nodes (TLS, node certificate), refused as
   * relaying (403 Relay forbidden, or an ACK dropped) and for their target
   * (special-purpose address, stream transport to another port); in-dialog
   * requests from the public side sent on statelessly. */
  uint64_t from_nodes, relay_forbidden, target_refused, stateless_in_dialog;
  /* Limits (limit.c, core.c, registrar.c): 503s for a source over its rate
   * and its requests dropped while it is blocked; 503s for a source holding
   * its share of transactions, and for a full table; REGISTER answers cut
   * to the requester's own bindings, and 513s where even those did not fit
   * a datagram. */
  uint64_t rate_limited, rate_dropped, source_limited, overloaded, register_trimmed,
      register_too_big;
  uint64_t shed; /* 503s for new work while the socket's queue or the DHT is behind */
  uint64_t register_repeats; /* REGISTER retransmissions dropped or answered again */
  uint64_t register_repeats_peeked; /* of those, dropped before sofia parsed them (peek.c) */
  uint64_t register_resent_peeked;  /* of those, answered again from kept bytes, unparsed */
  uint64_t shed_peeked; /* of shed, at the peek: a 503 built from the datagram (peek.c), or none */
  uint64_t shed_repeats_dropped; /* copies of a REGISTER shed lately, dropped while we still shed */
  uint64_t shed_silent;  /* of shed, dropped unanswered: the source ignores 503s (SIP_DEAF_COPIES) */
  uint64_t shed_deaf_sources; /* times a source was judged so */
  uint64_t shed_queue;      /* of shed, for the socket's queue (SIP_SHED_DELAY_MS) */
  uint64_t shed_dht_behind; /* of shed, the others: SIP_MAX_REGISTERING waited for the DHT */
  uint64_t challenged_peeked; /* REGISTERs without credentials answered 401 at the peek */
  uint64_t register_answers_built; /* registrar's UDP answers built from the request's lines */
  uint64_t register_direct; /* REGISTERs parsed from the peek's bytes, past tport and nta */
  uint64_t register_socket, register_truncated; /* read from the REGISTER socket; too long for it */
} sip_counters_t;

/* A proxy peer as found under sip:OVERLAY. */
typedef struct {
  char uri[96];    /* "sip:IP:PORT" */
  char tls[112];   /* "sip:IP:PORT;transport=tls" in the secured mode, or "" */
  char node[DHT_ID_HEX];
} sip_peer_t;

#define SIP_MAX_ALLOW 32 /* --sip-allow-targets ranges (node/ caps them at 32) */

/* The REGISTER socket's shedding (core.c, SIP_SHED_STANDING_MS). */
typedef struct {
  uint64_t above_hr;  /* uv_hrtime() since when its queue is long, 0: it is not */
  uint64_t update_hr; /* the share's last update, 0: not shedding */
  double share;       /* of new REGISTERs shed, 0 to 1 */
  double delay_ms;    /* the queue's delay at that update */
} sip_shedctl_t;

struct sip_svc {
  uv_loop_t *uv;
  dht_t *dht;
  char *overlay;       /* lower case */
  char *dns, *dns_update, *tsig, *dns_address;
  struct sockaddr_storage listen; /* as bound */
  char host[64];       /* "127.0.0.1" or "[::1]" */
  unsigned port;
  char hostport[80];   /* host ":" port */
  char self_lr[128];   /* "<sip:HOST:PORT;lr>" */
  char overlay_lr[300];/* "<sip:OVERLAY;lr>" */
  char resolv_conf[64];/* temporary resolv.conf for cfg->dns, or "" */
  int gateway, started, stopping;

  sip_loop_t *loop;
  su_home_t home[1];
  nta_agent_t *agent;
  nta_leg_t *leg;
  nta_outgoing_t *stateless_orq; /* receives stray responses */

  sip_ptx_t *ptx;      /* live proxy transactions */
  unsigned n_ptx;
  sip_reg_t *regs;     /* bindings this node put */
  sip_reg_t **reg_hash[3]; /* the same, hashed three ways (registrar.c) */
  sip_reg_t **reg_old[3];  /* the tables before they grew, while moved */
  sip_reg_t *reg_cursor;   /* where the next sweep resumes, or NULL: the head */
  size_t reg_nb, n_regs, reg_old_nb, reg_moved;
  struct sip_rtx *rtx; /* REGISTERs waiting for the DHT */
  struct sip_rtx *rtx_spare; /* freed ones kept for reuse (registrar.c) */
  unsigned n_rtx_spare;
  sip_op_t *ops;       /* DHT operations in flight */
  sip_op_t *op_spare;  /* finished ones kept for reuse (dhtop.c) */
  unsigned n_op_spare;

  /* Proxy peers: the list last fetched and who waits for a fetch. */
  sip_peer_t peers[SIP_MAX_PEERS];
  int n_peers;
  uint64_t peers_at;   /* uv_now() of the fetch; 0: never */
  uint64_t peers_tried; /* uv_now() the last fetch ended, whatever it found */
  int peers_fetching;
  unsigned peer_rr;    /* round robin start */
  struct sip_peer_wait *waiters; /* requests waiting for the list */
  int n_waiters;
  struct { char uri[96]; uint64_t until; } bad[SIP_MAX_PEERS]; /* failed lately */
  int gw_pending;      /* withdrawals in flight */
  void (*gw_done)(sip_svc_t *s);

  su_timer_t *republish; /* gateway: re-put the proxy-peer value */
  su_timer_t *sweep;     /* drops expired local registrations */
  sip_dnsreg_t *dnsreg;

  void (*stop_cb)(sip_svc_t *, void *);
  void *stop_arg;
  int stop_pending;
  su_timer_t *stop_timer;

  /* Public or not (sip_set_public) and the flow a private node keeps to
   * a proxy peer (flow.c).  route_gen changes whenever the route into this
   * node that user records carry changes (registrar.c re-puts them). */
  int public_known, is_public;
  sip_flow_t *flow;
  unsigned route_gen;
  /* A proxy peer's double Record-Route for dialogs of its own phones
   * (RFC 5658 style): its own address on the phone's side, the overlay on
   * the other.  "in": toward the phone; "out": from it. */
  char gw_rr_in[450], gw_rr_out[450];

  sip_counters_t c;
  sip_ping_t *pings;   /* ping.c: SIP_MAX_PINGS slots, or NULL */
  struct { dht_id_t id; int used; } down[SIP_DOWN_PENDING]; /* gateway.c */

  sip_users_t *users;     /* --users: this node's phones' credentials, or NULL */
  sip_authdb_t *auth;     /* --users: digest nonces and algorithms, or NULL */
  sip_limits_t *limits;   /* per-source limits, or NULL (off) */
  int udp_fd;             /* sofia's SIP UDP socket (its queue says when to shed), or -1 */
  sip_regsock_t *regsock; /* the REGISTER socket beside it (regsock.c), or NULL */
  udpq_t *txq;            /* our own answers on udp_fd, sent once a loop turn, or NULL */
  uint64_t rx_taken;      /* datagrams the node read past sofia (peek, REGISTER socket) */
  uint64_t rx_at;         /* start of the current rate window (uv_now), 0: none yet */
  usize_t rx_count;       /* nta's messages received then */
  uint64_t rx_hr, rx_idle; /* uv_hrtime(), uv_metrics_idle_time() then (ns) */
  uint64_t q_hr;           /* uv_hrtime() when the queues were read (ns) */
  unsigned q_bytes;        /* sofia's SIP UDP socket's queue then */
  unsigned q_reg_bytes;    /* the REGISTER socket's queue then */
  sip_shedctl_t reg_shed;  /* the REGISTER socket's shedding (core.c) */
  double rx_rate;         /* messages/ms, smoothed */
  unsigned n_rtx;         /* REGISTERs waiting for the DHT */
  struct sip_resend *resend; /* REGISTER answers' bytes (resend.c), or NULL */
  struct sip_shed *shed_keys; /* REGISTERs the peek shed lately (resend.c), or NULL */
  sip_lines_t *head;      /* the datagram at the head of the UDP queue (peek), or NULL */
  int head_left;          /* head is a REGISTER the peek left to sofia's next step */
  struct sip_regans_tab *answers; /* recent REGISTER answers (registrar.c), or NULL */
  dht_cert_ca_t *ca;    /* the secured mode's CA, or NULL */
  char tls_hostport[80];/* "IP:PORT" of SIP over TLS between nodes, or "" (open mode) */
  int allow_loopback;   /* targets: see sip_config_t */
  dht_cidr_t allow[SIP_MAX_ALLOW];
  int n_allow;
  dht_cidr_t trusted[SIP_MAX_ALLOW]; /* sources the per-source limits spare */
  int n_trusted;
  char sl_tag[24];      /* To tag of our stateless answers (their ACKs are absorbed) */

  struct sip_gcache *gcache; /* recent DHT answers (dhtop.c), or NULL */
  unsigned locate_cache_ms;  /* how long a located user record is reused; 0: never */
};

/* loop.c: the one file that knows there are two event loops. */
int sip__loop_new(uv_loop_t *uv, sip_loop_t **out);
su_root_t *sip__loop_root(sip_loop_t *l);
/* Runs fn(arg) from libuv, outside any sofia callback; -EBUSY if another
 * call is pending. */
int sip__loop_defer(sip_loop_t *l, void (*fn)(void *), void *arg);
/* fn(arg) before each step of sofia's loop (NULL: none); while it
 * returns 1 (datagrams are queued) the bridge steps again; SIP_LOOP_TOOK:
 * it took the datagram a step would read itself, so the bridge calls it
 * again in place of that step (sofia still steps at least once per
 * burst, for its timers). */
#define SIP_LOOP_TOOK 2
void sip__loop_before_step(sip_loop_t *l, int (*fn)(void *), void *arg);
/* fn(arg) twice a libuv turn (NULL: none): before the poll, which may
 * block (after the timers and sofia's step), and after the poll's I/O
 * callbacks.  Whatever the node queued to send in the turn leaves then. */
void sip__loop_flush(sip_loop_t *l, void (*fn)(void *), void *arg);
/* The first open fd for which match() is nonzero, or -1: sofia hands out
 * none of its sockets' fds (core.c looks for its SIP UDP socket). */
int sip__loop_find_fd(int (*match)(int fd, void *arg), void *arg);
/* Destroys the root (after the agent is gone) and closes the handles; the
 * memory goes in the close callbacks. */
void sip__loop_free(sip_loop_t *l);

/* regsock.c: the REGISTER socket beside sofia's UDP socket (s->udp_fd),
 * polled on uv: 0, or -errno (the node then reads REGISTERs from sofia's
 * socket as before).  Closing takes effect in libuv's close callback.
 * Its fd, or -1 (r NULL). */
int sip__regsock_open(sip_svc_t *s, uv_loop_t *uv, sip_regsock_t **out);
void sip__regsock_close(sip_regsock_t *r);
int sip__regsock_fd(const sip_regsock_t *r);

/* core.c */
/* A datagram the REGISTER socket read (len bytes; truncated when it was
 * longer than SIP_PEEK_BYTES), from sa. */
void sip__regsock_take(sip_svc_t *s, const char *buf, size_t len, int truncated,
                       const struct sockaddr_storage *sa, socklen_t salen);
/* An ICMP error (errno err) the REGISTER socket got for a datagram
 * sofia sent to the address to. */
void sip__regsock_error(sip_svc_t *s, int err, const struct sockaddr_storage *to,
                        socklen_t tolen);
uint64_t sip__now_ms(const sip_svc_t *s);
/* A home for a parse's scratch in the caller's stack, bytes of it, and
 * the heap only past them (sofia's su_home_auto): su_home_init() allocates
 * its block table at once, and each header sofia made in one was a
 * malloc.  Released with su_home_deinit(). */
#define SIP_SCRATCH_HOME(name, bytes)                  \
  su_home_t name##_area[SU_HOME_AUTO_SIZE(bytes)];     \
  su_home_t *name = su_home_auto(name##_area, sizeof name##_area)
/* FNV-1a over a string, folded to lower case when fold is set. */
#define SIP_FNV_INIT 2166136261u
uint32_t sip__fnv(uint32_t h, const char *p, int fold);
/* The same over n bytes, as they are. */
uint32_t sip__fnv_n(uint32_t h, const char *p, size_t n);
/* Answers a request without a transaction (nothing is kept, nothing
 * retransmitted: one answer per request, so a forged source gets no more
 * than it sent) and marks it with our stateless To tag, whose ACKs are
 * absorbed.  Takes msg. */
void sip__reply_stateless(sip_svc_t *s, msg_t *msg, sip_t *sip, int status, const char *phrase,
                          tag_type_t tag, tag_value_t value, ...);
/* The lines of the REGISTER msg (sip) as the peek read them off the
 * datagram before sofia parsed it, when msg is that datagram: a copy the
 * caller frees, or NULL (not UDP, not read at the peek). */
sip_lines_t *sip__lines_take(sip_svc_t *s, msg_t *msg, const sip_t *sip);
/* The answer sip__reply_stateless() would send to sip, read in l, built
 * from l's lines (sip__peek_answer()) with headers ("Name: value" lines,
 * or NULL), sent with one sendto and kept for retransmissions (resend.c).
 * 0, or negative when sofia must build it (sofia would send it elsewhere
 * than where it came from, it does not fit).  msg stays the caller's. */
int sip__lines_reply(sip_svc_t *s, const sip_lines_t *l, const sip_t *sip, int status,
                     const char *phrase, const char *headers);
int sip__uri_is_self(const sip_svc_t *s, const url_t *u);
int sip__uri_is_overlay(const sip_svc_t *s, const url_t *u); /* sip:OVERLAY, no user */
int sip__host_is_overlay(const sip_svc_t *s, const char *host);
/* "IP", "IP:PORT", "[v6]:PORT" or bare v6; 0 or -EINVAL. */
int sip__parse_hostport(const char *str, unsigned default_port, struct sockaddr_storage *out);
void sip__addr_ip(const struct sockaddr_storage *ss, char *ip, size_t len, unsigned *port);
/* Where to send to a proxy peer: over TLS in the secured mode (where it
 * can tell us from a stranger), else its SIP address. */
const char *sip__peer_next(const sip_svc_t *s, const sip_peer_t *p);
/* "IP:PORT" a request came from, or "". */
void sip__msg_source(msg_t *msg, char *out, size_t len);

/* dhtop.c: DHT calls whose callbacks survive sip_free (STYLE 16). */
typedef void (*sip_op_cb)(sip_svc_t *s, void *ctx, int status, const dht_value_t *v, size_t n);
int sip__dht_get(sip_svc_t *s, const char *name, sip_op_cb cb, void *ctx);
/* From the key's primary alone (dht_get_primary: one FETCH, no merge). */
int sip__dht_get_primary(sip_svc_t *s, const char *name, sip_op_cb cb, void *ctx);
/* signer: the user's credentials for a user record in the secured mode
 * (kept while the service lives, as dht_put_as wants), NULL: the node's. */
int sip__dht_put(sip_svc_t *s, const dht_cert_creds_t *signer, const char *name, const char *vid,
                 uint8_t kind, const char *body, uint32_t ttl, sip_op_cb cb, void *ctx);
/* The same, and the values the key's primary held before it (dht_put_read:
 * cb's status DHT_OK with them, DHT_UNREAD when none came, < 0 failed). */
int sip__dht_put_read(sip_svc_t *s, const dht_cert_creds_t *signer, const char *name,
                      const char *vid, uint8_t kind, const char *body, uint32_t ttl, sip_op_cb cb,
                      void *ctx);
/* Removes a value this node put since it started (seen NULL: dht_remove),
 * or, whoever put it, one a get returned (dht_remove_value, signed by
 * signer as above). */
int sip__dht_remove(sip_svc_t *s, const dht_cert_creds_t *signer, const char *name,
                    const char *vid, const dht_value_t *seen, sip_op_cb cb, void *ctx);
void sip__dht_detach_all(sip_svc_t *s);
/* A get answered from an answer for the same name fetched less than max_ms
 * ago (perhaps before returning; status SIP_GET_CACHED), else from the
 * DHT, whose answer is kept when it has values.  max_ms 0: a plain get. */
#define SIP_GET_CACHED 1
int sip__dht_get_cached(sip_svc_t *s, const char *name, unsigned max_ms, sip_op_cb cb, void *ctx);
void sip__dht_forget(sip_svc_t *s, const char *name);
void sip__dht_cache_free(sip_svc_t *s);

/* What the edge (edge.c) learnt of a request before any state was made
 * for it. */
enum sip_origin {
  SIP_FROM_OTHER = 0, /* anyone: the public side, or a phone not authenticated */
  SIP_FROM_PHONE,     /* a phone of this node, authenticated as user */
  SIP_FROM_NODE,      /* an overlay node (TLS with its node certificate) */
};
typedef struct {
  char hash[17];                     /* sip__loop_hash of the request as received */
  int origin;                        /* enum sip_origin */
  int stateless;                     /* send on without a transaction (no reflector) */
  int src;                           /* the source's slot in limit.c, or -1 */
  char user[DHT_CERT_MAX_USER + 1];  /* SIP_FROM_PHONE, and an authenticated REGISTER's */
} sip_req_t;

/* edge.c: decides, before a transaction exists, whether a request may go
 * on (0, rq filled) or was answered or dropped here (1, msg taken).  node:
 * sip__from_node()'s verdict. */
int sip__edge_admit(sip_svc_t *s, msg_t *msg, sip_t *sip, int node, sip_req_t *rq);
/* Nonzero when msg came over TLS from an overlay node (its certificate). */
int sip__from_node(const sip_svc_t *s, msg_t *msg);

/* limit.c: per-source limits.  rate 0: no rate limit; per_source 0: no cap
 * on transactions; both 0: nothing tracked. */
int sip__limit_new(sip_svc_t *s, unsigned rate, unsigned burst, unsigned per_source);
void sip__limit_free(sip_svc_t *s);
/* Before anything else: 0 (the source's slot in *slot, or -1) or 1 when
 * the request was refused (503, one per block) or dropped; msg taken then.
 * exempt: an overlay node. */
int sip__limit_admit(sip_svc_t *s, msg_t *msg, sip_t *sip, int exempt, int *slot);
/* Nonzero when the source holds its share of transactions. */
/* The rate check of sip__limit_admit() for a datagram from sa that the
 * peek (core.c) would answer: 0 pass (a token taken), 1 drop (the source
 * is blocked; counted), -1 leave it to sofia (out of tokens: admit blocks
 * the source and answers once). */
int sip__limit_peek(sip_svc_t *s, const struct sockaddr *sa, size_t len);
int sip__limit_full(const sip_svc_t *s, int slot);
void sip__limit_hold(sip_svc_t *s, int slot);
void sip__limit_release(sip_svc_t *s, int slot);
/* Nonzero when requests may be sent to u (an IP literal outside the
 * special-purpose ranges or allowed, and a stream transport only to
 * 5060/5061); domain names are left to DNS. */
int sip__target_ok(const sip_svc_t *s, const url_t *u);

/* users.c: the phones' credentials, --users DIR, kept and watched.  ca:
 * NULL in the open mode (no user certificates). */
int sip__users_new(sip_svc_t *s, const char *dir, dht_cert_ca_t *ca);
void sip__users_free(sip_svc_t *s);
/* The user's HA1 for alg ("MD5" or "SHA-256") as hex into out: 0, or
 * -ENOENT (no such user, or none for alg). */
int sip__users_ha1(sip_svc_t *s, const char *user, const char *alg, char out[65]);
int sip__users_has(sip_svc_t *s, const char *user);
/* A user's HA1 values, as a digest file gives them. */
typedef struct {
  uint8_t md5[16], sha256[32];
  uint8_t has_md5, has_sha256;
} sip_ha1_t;
/* The HA1s that text (a digest file's bytes, NUL-terminated; strtok'ed)
 * gives name in the realm overlay into h: 0, or -ENOENT when none. */
int sip__users_parse(const char *overlay, const char *name, char *text, sip_ha1_t *h);
/* The user's certificate and key (the secured mode), loaded on first use
 * and kept while the service lives; NULL if there are none. */
const dht_cert_creds_t *sip__users_creds(sip_svc_t *s, const char *user);
/* {"known", "files_read", "changes", "watched", "reading", "complete"}, or null. */
json_t *sip__users_json(const sip_svc_t *s);

/* auth.c: digest authentication against users.c's credentials. */
/* algs: the algorithms to offer, "SHA-256,MD5" (NULL: that) or one. */
int sip__auth_new(sip_svc_t *s, const char *algs);
void sip__auth_free(sip_svc_t *s);
enum { SIP_AUTH_OK = 0, SIP_AUTH_NONE, SIP_AUTH_STALE, SIP_AUTH_BAD };
/* The request's credentials for our realm (Proxy-Authorization when proxy
 * is set, else Authorization): SIP_AUTH_OK with user set, SIP_AUTH_NONE
 * (none for our realm), SIP_AUTH_STALE (right, but the nonce is old) or
 * SIP_AUTH_BAD (unknown user, wrong response, nonce not ours, digest URI
 * not the Request-URI, unknown algorithm). */
int sip__auth_check(sip_svc_t *s, const sip_t *sip, int proxy, char user[DHT_CERT_MAX_USER + 1]);
/* The challenge header lines (WWW-Authenticate, or Proxy-Authenticate
 * when proxy is set), one per algorithm in --sip-digest's order (RFC
 * 8760), stale=true if asked, each ending in CRLF, in buf: their length,
 * or -ENOSPC.  Both the answer sofia builds
 * and the peek's 401 carry these lines. */
#define SIP_AUTH_LINES 1024
int sip__auth_challenge_lines(sip_svc_t *s, int proxy, int stale, char *buf, size_t len);
/* Answers 401 (407 when proxy is set) statelessly with the challenge
 * lines above.  Takes msg. */
void sip__auth_challenge(sip_svc_t *s, msg_t *msg, sip_t *sip, int proxy, int stale);
/* RFC 7616 3.4.1 response for alg "MD5" or "SHA-256" (qop "auth" or NULL:
 * RFC 2069 style), lowercase hex into out. */
/* n bytes as 2n lower-case hex digits and a NUL (digest.c). */
void sip__hex(const uint8_t *in, size_t n, char *out);
int sip__digest(const char *alg, const char *ha1, const char *nonce, const char *nc,
                const char *cnonce, const char *qop, const char *method, const char *uri,
                char *out, size_t outlen);

/* peek.c: a request read off its datagram before sofia parses it. */
#define SIP_PEEK_VIAS 8  /* Via lines at most (more: not known) */
#define SIP_PEEK_URI 512 /* a longer Request-URI: not known */
typedef struct {
  const char *p;
  size_t n;
} sip_span_t;
typedef struct {
  sip_span_t method, callid;                 /* into the datagram */
  sip_span_t callid_line, cseq_line, from, to; /* whole header lines, without CRLF */
  sip_span_t via[SIP_PEEK_VIAS];
  sip_span_t ruri; /* the Request-URI */
  int n_via;
  uint32_t cseq;
  int sofia;    /* a line only sofia judges: Proxy-Authorization, Require, Route, a body */
  int auth;     /* Authorization lines */
  int n_length; /* Content-Length lines */
} sip_peek_t;
/* A REGISTER, INVITE, SUBSCRIBE or REFER whose request line, Call-ID,
 * CSeq (of the same method), From, To and Via lines read plainly in buf
 * (len bytes, the headers' end within them): 0 and *out (pointing into
 * buf); else -EINVAL. */
int sip__peek_read(const char *buf, size_t len, sip_peek_t *out);
int sip__peek_is(const sip_peek_t *pk, const char *method);
/* buf (len bytes) is a REGISTER request whose Call-ID and CSeq read
 * plainly: 1 and "CALL-ID CSEQ" in key (as registrar.c knows requests);
 * else 0. */
int sip__peek_register_key(const char *buf, size_t len, char *key, size_t keylen);
/* "CALL-ID CSEQ" (branch NULL) or "CALL-ID CSEQ BRANCH" in key, what
 * REGISTERs and their kept answers are known by: 1, or 0 when it does not
 * fit in keylen.  Without snprintf: every REGISTER datagram makes two or
 * three of these keys. */
int sip__key(char *key, size_t keylen, const char *callid, size_t callid_len, uint32_t cseq,
             const char *branch);
/* The same "CALL-ID CSEQ" for a request already read: 1, or 0 when it
 * does not fit in keylen. */
int sip__peek_key(const sip_peek_t *pk, char *key, size_t keylen);
/* "CALL-ID CSEQ BRANCH" (the top Via's branch, as sofia reads it) in key:
 * what the answers kept for retransmissions are found by; -EINVAL when
 * sofia reads the top Via line otherwise (not one Via, an error). */
int sip__peek_branch(const sip_peek_t *pk, char *key, size_t keylen);
/* A stateless 503 with Retry-After (RFC 3261 8.2.6) for the request read
 * in pk, received from ip:port in a datagram of reqlen bytes: its Via,
 * From, Call-ID and CSeq lines copied, the top Via with received/rport
 * as sofia sets them, the To with ;tag=tag.  Never longer than the
 * request.  Its length, or -EINVAL (sofia reads the Via, From or To
 * lines otherwise, or the To has a tag: in a dialog), -ENOSPC. */
int sip__peek_503(const sip_peek_t *pk, size_t reqlen, const char *tag, const char *ip,
                  unsigned port, char *out, size_t outlen);
/* The same with 513 Message Too Large, for a datagram longer than the
 * node reads (pk: its first SIP_PEEK_BYTES). */
int sip__peek_513(const sip_peek_t *pk, size_t reqlen, const char *tag, const char *ip,
                  unsigned port, char *out, size_t outlen);
/* The 401 sofia would send for the REGISTER read in pk (no
 * Authorization): built as the 503 above, with the challenge lines
 * (sip__auth_challenge_lines()) instead of Retry-After.  Never longer
 * than SIP_UDP_ANSWER_MAX, or the request if that is larger.  Its length,
 * or -EINVAL, -ENOSPC. */
int sip__peek_401(const sip_peek_t *pk, size_t reqlen, const char *challenge, const char *tag,
                  const char *ip, unsigned port, char *out, size_t outlen);

/* The answer status ("SIP/2.0 200 OK") to the request read in pk: via
 * (its top Via as sofia answers it, received/rport set) encoded, its other
 * Via, From, Call-ID and CSeq lines copied, its To with ;tag=tag (NULL:
 * as it is), extra (header lines, each ending in CRLF), Content-Length: 0;
 * in out, cap bytes at most.  Its length, or -ENOSPC.  The two above are
 * built with it; the registrar builds its answers with it (core.c). */
int sip__peek_answer(const sip_peek_t *pk, const char *status, const sip_via_t *via,
                     const char *tag, const char *extra, char *out, size_t cap);
/* The top Via v of a request from ip:port as sofia's agent marks it on
 * receipt and answers it (RFC 3261 18.2.1, RFC 3581 4): received= when
 * the source is not the sent-by host, rport= filled in; the parameters'
 * text in home.  0, or -ENOMEM. */
int sip__peek_via_source(su_home_t *home, sip_via_t *v, const char *ip, unsigned port);
/* Every span of pk moved from the bytes at from to a copy of them at to. */
void sip__peek_move(sip_peek_t *pk, const char *from, const char *to);
/* A REGISTER datagram as the peek read it, from where it came. */
struct sip_lines {
  struct sockaddr_storage from;
  socklen_t fromlen;
  sip_peek_t pk; /* into bytes */
  size_t len;
  char bytes[];
};

/* resend.c: answers to REGISTERs kept as sent, by sip__peek_branch()'s
 * key, SIP_RESEND_MS at most (the oldest goes first past SIP_RESEND_MAX). */
typedef struct sip_resend sip_resend_t;
void sip__resend_keep(sip_svc_t *s, const char *key, const void *bytes, size_t len);
/* The bytes kept for key (and their length in *len), or NULL. */
const void *sip__resend_find(sip_svc_t *s, const char *key, size_t *len);
/* The REGISTERs the peek answered with 503, by the same key, remembered
 * SIP_SHED_MEMORY_MS: a copy of one is dropped rather than answered again
 * (core.c). */
void sip__resend_shed_note(sip_svc_t *s, const char *key);
int sip__resend_shed_seen(sip_svc_t *s, const char *key, unsigned within_ms);
/* A copy of a REGISTER shed lately came from sa (see SIP_DEAF_COPIES);
 * 1 when this copy got the source judged deaf to 503s. */
int sip__resend_shed_copy(sip_svc_t *s, const struct sockaddr *sa);
/* Whether what is shed from sa now goes unanswered. */
int sip__resend_shed_deaf(sip_svc_t *s, const struct sockaddr *sa);
void sip__resend_free(sip_svc_t *s);

/* registrar.c */
/* A REGISTER for this node: answered statelessly, now or once the DHT
 * has answered (registrar.c keeps answers for retransmissions).  Takes msg. */
void sip__register(sip_svc_t *s, msg_t *msg, sip_t *sip, const sip_req_t *rq);
/* A retransmission of a REGISTER still under way here: dropped (and
 * counted), 1; otherwise 0 and msg is left alone. */
int sip__reg_underway(sip_svc_t *s, msg_t *msg, const sip_t *sip);
/* Whether the REGISTER known by key ("Call-ID CSeq") is under way here. */
int sip__reg_key_underway(sip_svc_t *s, const char *key);
void sip__reg_answers_free(sip_svc_t *s);
const sip_reg_t *sip__reg_by_contact(const sip_svc_t *s, const url_t *u);
const sip_reg_t *sip__reg_by_hostport(const sip_svc_t *s, const url_t *u);
const char *sip__reg_flow(const sip_reg_t *r, char *buf, size_t len);
void sip__reg_sweep(sip_svc_t *s);
void sip__reg_free_all(sip_svc_t *s);
json_t *sip__regs_json(const sip_svc_t *s);
size_t sip__regs_count(const sip_svc_t *s);
/* A REGISTER's Contact as the user record stores it: display name, URI
 * and parameters other than expires and q (malloc'd; NULL when it does not
 * fit); its q-value times 1000 (1000 when q is NULL, -1 when malformed);
 * and the seconds it asks for, capped at SIP_MAX_EXPIRES (-1: malformed). */
char *sip__contact_value(const sip_contact_t *m);
int sip__parse_q(const char *q);
long sip__contact_expires(const sip_t *sip, const sip_contact_t *m);
/* Nonzero when a stored Contact value parses as one Contact of that URI. */
int sip__contact_reads_back(const char *value, const url_t *url);

/* record.c: the user record stored in the DHT. */
typedef struct {
  char *aor, *contact, *uri, *call_id, *path, *node, *received, *transport;
  char *edge;        /* "sip:IP:PORT" of the proxy peer to go through first, or "" */
  uint32_t cseq;
  int q1000;         /* q times 1000 */
  int32_t remaining; /* seconds until the contact expires; <= 0: expired */
  char vid[DHT_ID_HEX + 8];
  uint64_t seq;      /* the DHT value's sequence number and life (expires_in), */
  uint32_t ttl;      /* which a removal must outlast (dht_remove_value) */
} sip_binding_t;
/* Longest text decode takes in these fields: the registrar refuses a
 * REGISTER whose record would not decode (registered, yet unreachable). */
#define SIP_REC_MAX_TEXT 512 /* aor, uri, call_id */
#define SIP_REC_MAX_CONTACT 1024
#define SIP_REC_MAX_BODY 4096 /* a record's JSON body, as decode takes it */
/* Nonzero when s can be such a field: UTF-8 (all JSON holds) of at most
 * max bytes as the record's body holds it (escaped), so that a record of
 * such fields stays within SIP_REC_MAX_BODY. */
int sip__record_text_ok(const char *s, size_t max);
char *sip__binding_encode(const sip_binding_t *b, uint32_t expires);
int sip__binding_decode(const dht_value_t *v, sip_binding_t *out); /* malloc'd strings */
void sip__binding_clear(sip_binding_t *b);
/* Nonzero when a path or edge is a plain "sip:HOST[:PORT]" we may put
 * into a Route header. */
int sip__binding_hop_ok(const char *u);


/* registrar.c, for the proxy: does a request go to (> 0) or come from
 * (< 0) a phone registered through this node, or neither (0)?  Re-puts up
 * to max user records whose route is older than s->route_gen; returns how
 * many are left. */
int sip__reg_direction(const sip_svc_t *s, msg_t *msg, const sip_t *sip);
/* Nonzero when a live binding of sip:user@OVERLAY was registered through
 * the TCP connection msg came on. */
int sip__reg_stream_user(const sip_svc_t *s, msg_t *msg, const char *user);
size_t sip__reg_reput(sip_svc_t *s, size_t max);

/* flow.c */
int sip__flow_new(sip_svc_t *s);
void sip__flow_free(sip_svc_t *s);
/* Starts or stops the flow as started/stopping/gateway/is_public say. */
void sip__flow_update(sip_svc_t *s);
/* The route into this node for user records: path "sip:IP:PORT" (the
 * reflexive address behind a NAT, else our own) and edge "sip:IP:PORT" of
 * the proxy peer holding the flow, or "". */
void sip__flow_route(const sip_svc_t *s, char *path, size_t plen, char *edge, size_t elen);
/* Nonzero when u names our reflexive address (behind a NAT only). */
int sip__flow_is_reflexive(const sip_svc_t *s, const url_t *u);
/* Double Record-Route of a node behind a NAT (RFC 5658 style), toward its
 * phone (> 0) or from it; NULL when no NAT is in the way. */
const char *sip__flow_rr(const sip_svc_t *s, int toward_phone);
json_t *sip__flow_json(const sip_svc_t *s);

/* proxy.c */
/* src: the source's slot in limit.c (its transactions are counted), or -1. */
int sip__proxy(sip_svc_t *s, nta_incoming_t *irq, msg_t *msg, sip_t *sip, const char *hash,
               int src);
int sip__proxy_full(const sip_svc_t *s); /* no room for another proxy transaction */
void sip__proxy_free_all(sip_svc_t *s);
int sip__stray_response(sip_svc_t *s, nta_outgoing_t *orq, const sip_t *sip);
/* Nonzero when the request's only way on is a phone registered through this
 * node (Routes left name only us): sip__proxy_edge() then forwards it
 * statelessly, taking msg. */
int sip__edge_hop(const sip_svc_t *s, const sip_t *sip);
void sip__proxy_edge(sip_svc_t *s, msg_t *msg, sip_t *sip, const char *hash);

/* route.c: RFC 3261 16.3-16.4 checks and the choice of next hop. */
enum sip_hop {
  SIP_HOP_DIRECT,   /* Route or Request-URI as it is: nta resolves it */
  SIP_HOP_LOCATE,   /* Request-URI is an overlay AOR: ask the DHT */
  SIP_HOP_PEER,     /* through a proxy peer */
  SIP_HOP_SELF,     /* addressed to this node, no user part */
};
/* 0 or a status; hash: sip__loop_hash() of the request, which the
 * callers have computed already. */
int sip__check_request(sip_svc_t *s, msg_t *msg, sip_t *sip, const char *hash);
void sip__pop_routes(sip_svc_t *s, msg_t *msg, sip_t *sip);
int sip__route_is_ours(const sip_svc_t *s, const url_t *u); /* a Route entry naming us */
enum sip_hop sip__next_hop(const sip_svc_t *s, const sip_t *sip);
/* The same without popping: the hop after the Route entries naming us;
 * *ours counts those entries. */
enum sip_hop sip__peek_hop(const sip_svc_t *s, const sip_t *sip, int *ours);
/* The hop a Request-URI names when the request has no Route. */
enum sip_hop sip__ruri_hop(const sip_svc_t *s, const url_t *u);
void sip__loop_hash(const sip_t *sip, char out[17]);

/* gateway.c */
int sip__gateway_start(sip_svc_t *s);
void sip__gateway_stop(sip_svc_t *s, void (*done)(sip_svc_t *s));
/* Calls cb (perhaps before returning) once s->peers holds the proxy peers
 * known, best first; status < 0 when the DHT did not answer.  cb NULL:
 * only refresh s->peers. */
int sip__peers_get(sip_svc_t *s, void (*cb)(sip_svc_t *, void *, int), void *ctx);
/* The same, but fetched again unless the last fetch ended less than
 * SIP_PEER_MISS_MS ago: for a proxy peer the list should hold and does
 * not (proxy.c: the edge of a node behind a NAT, whose TLS address only
 * the list gives). */
int sip__peers_refresh(sip_svc_t *s, void (*cb)(sip_svc_t *, void *, int), void *ctx);
void sip__peer_failed(sip_svc_t *s, const char *uri);
void sip__peers_free(sip_svc_t *s);
/* The proxy-peer value's body (malloc'd, NULL when out of memory), and
 * its decoder for values from other nodes: 0 with p set, or -EINVAL. */
char *sip__peer_encode(const char *uri, const char *node, const char *tls);
int sip__peer_decode(const dht_value_t *v, sip_peer_t *p);
/* For the DNS clean-up: asks the DHT (no cache) for the values under
 * sip:OVERLAY and passes their owners and value ids to sip__dnsreg_peers()
 * (later, never from inside this call); -errno if it cannot ask. */
#define SIP_DNSGC_MAX_PEERS 256 /* a longer list is not taken as complete */
int sip__gateway_peer_ids(sip_svc_t *s);
/* Hears (on) or stops hearing of nodes the DHT finds dead; a dead proxy
 * peer is reported to proxy peers (SIP_HDR_PEER_DOWN). */
void sip__gateway_watch(sip_svc_t *s, int on);
/* An OPTIONS to this node may carry news of a proxy peer found dead
 * (SIP_HDR_PEER_DOWN) or of our own records removed (SIP_HDR_DNS_REMOVED);
 * from: its source, for the log. */
void sip__peer_news(sip_svc_t *s, const sip_t *sip, const char *from);

/* ping.c: OPTIONS carrying news between proxy peers. */
typedef void (*sip_ping_cb)(sip_svc_t *s, void *ctx, int status);
/* Sends OPTIONS to uri ("sip:HOST:PORT") with one more header line
 * ("Name: value") unless header is NULL.  cb, unless NULL, gets the status
 * of the peer's final answer, or 0 when none came from it (an ICMP error,
 * or nta gave up), once, never from inside this call, unless
 * sip__ping_cancel() comes first.  Returns a handle >= 0 or -errno
 * (-EBUSY: SIP_MAX_PINGS in flight). */
int sip__ping(sip_svc_t *s, const char *uri, const char *header, sip_ping_cb cb, void *ctx);
void sip__ping_cancel(sip_svc_t *s, int handle);
void sip__pings_free(sip_svc_t *s);
/* The value of an extension header of a request, or NULL. */
const char *sip__header_value(const sip_t *sip, const char *name);

/* dnsreg.c: RFC 2136 UPDATE with TSIG. */
int sip__dnsreg_start(sip_svc_t *s);
void sip__dnsreg_stop(sip_svc_t *s, void (*done)(sip_svc_t *s));
void sip__dnsreg_free(sip_svc_t *s);
/* The proxy peers in the DHT for the clean-up of crashed peers' records:
 * status < 0 when the DHT gave no complete answer; ids borrowed. */
void sip__dnsreg_peers(sip_svc_t *s, int status, const dht_id_t *ids, size_t n);
/* A hint from `by` (for the log) that the proxy peer with this id (hex;
 * its first 12 digits name its records) may be dead: checked soon if its
 * pp- name was in DNS at the last look (see dnsreg.c). */
void sip__dnsreg_suspect(sip_svc_t *s, const char *id_hex, const char *by);
/* `by` says it removed the pp- name `host` from DNS: if that is ours, we
 * add our records again (at most once per DNS_READD_MIN_MS). */
void sip__dnsreg_removed(sip_svc_t *s, const char *host, const char *by);
/* The clean-up's reading of an answer to "SRV asked": each SRV record of
 * asked naming a "pp-<12 hex>.zone" target other than self is cloned onto
 * *seen (made when NULL); one naming self sets *self_found.  Returns 0,
 * -EINVAL when the answer is not to that question, or -ENOMEM. */
struct ldns_struct_pkt;
struct ldns_struct_rr_list;
int sip__dns_srv_collect(const struct ldns_struct_pkt *pkt, const char *asked, const char *zone,
                         const char *self, struct ldns_struct_rr_list **seen, int *self_found);

#endif
