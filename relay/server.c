/*
 * relay/server: lifecycle, the TURN port, demultiplexing of what arrives
 * on it (STUN or ChannelData, RFC 8656 section 12), and building replies.
 *
 * Every socket reads into one shared buffer (relay_t.rbuf): libuv calls
 * the read callback synchronously after each datagram and we finish with
 * it before returning, so no per-packet allocation happens.  Datagrams to
 * peers go out at once (uv_udp_try_send on the allocation's socket);
 * datagrams to clients on the TURN port are copied into a batch that one
 * sendmmsg() sends per loop turn (about 10% less CPU per relayed packet,
 * docs/BENCHMARKS.md).  libuv's UDP reader takes at most 32 datagrams per
 * socket per wakeup (uv__udp_recvmsg, count = 32), so a flood on one
 * socket cannot starve the DHT sharing this loop.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "dht/log.h"
#include "relay/relay_int.h"

void relay__addr_from_sa(const struct sockaddr *sa, proto_stun_addr_t *out) {
  memset(out, 0, sizeof(*out));
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    out->family = 6, out->port = ntohs(s6->sin6_port);
    memcpy(out->ip, &s6->sin6_addr, 16);
  } else {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    out->family = 4, out->port = ntohs(s4->sin_port);
    memcpy(out->ip, &s4->sin_addr, 4);
  }
}

void relay__addr_to_sa(const proto_stun_addr_t *a, struct sockaddr_storage *out) {
  memset(out, 0, sizeof(*out));
  if (a->family == 6) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
    s6->sin6_family = AF_INET6, s6->sin6_port = htons(a->port);
    memcpy(&s6->sin6_addr, a->ip, 16);
  } else {
    struct sockaddr_in *s4 = (struct sockaddr_in *)out;
    s4->sin_family = AF_INET, s4->sin_port = htons(a->port);
    memcpy(&s4->sin_addr, a->ip, 4);
  }
}

int relay__addr_eq(const proto_stun_addr_t *a, const proto_stun_addr_t *b) {
  return a->family == b->family && a->port == b->port &&
         memcmp(a->ip, b->ip, a->family == 6 ? 16 : 4) == 0;
}

uint64_t relay__now_ms(const relay_t *r) { return uv_now(r->loop); }

/* The TURN port's handle data is the relay; a relayed socket's is its
 * allocation (alloc.c has its own alloc callback). */
static void on_alloc_buf(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  relay_t *r = h->data;
  buf->base = (char *)r->rbuf + RELAY_HEADROOM;
  buf->len = RELAY_RBUF - RELAY_HEADROOM;
}

/* The TURN port's outgoing datagrams ------------------------------------ */

/* Datagrams to clients over UDP wait in r->txq (dht/udpq.h) until the loop
 * has run every I/O callback of this turn; then one sendmmsg() sends them
 * all (on_flush, from the uv_check handle). */
static void on_flush(uv_check_t *h) {
  relay_t *r = h->data;
  udpq_flush(r->txq);
}

static int send_udp(relay_t *r, const proto_stun_addr_t *to, const void *p, size_t n) {
  struct sockaddr_storage ss;
  relay__addr_to_sa(to, &ss);
  return udpq_send(r->txq, p, n, (const struct sockaddr *)&ss,
                   to->family == 6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
}

int relay__send_client(relay_t *r, relay_conn_t *conn, const proto_stun_addr_t *to, const void *p,
                       size_t n) {
  int rc = conn ? relay__tcp_send(conn, p, n) : send_udp(r, to, p, n);
  if (rc < 0) {
    r->c.send_errors += conn != NULL; /* udpq counted its own */
    return rc;
  }
  r->c.bytes_out += n;
  return 0;
}

/* Replies --------------------------------------------------------------- */

void relay__reply_begin(const relay_req_t *q, proto_stun_builder_t *b, uint8_t *buf, size_t size,
                        uint8_t cls) {
  proto_stun_begin(b, buf, size, proto_stun_type(q->m->method, cls), q->m->txid);
  proto_stun_add(b, PROTO_STUN_A_SOFTWARE, RELAY_SOFTWARE, sizeof(RELAY_SOFTWARE) - 1);
}

void relay__reply_send(const relay_req_t *q, proto_stun_builder_t *b) {
  if (q->key) proto_stun_add_integrity(b, q->key, PROTO_STUN_KEY_LEN);
  if (q->fp) proto_stun_add_fingerprint(b);
  long n = proto_stun_finish(b);
  if (n < 0) {
    /* Our own replies are bounded well below the buffer: a bug. */
    fatalx("relay: building a reply failed: %s", proto_strerror((int)n));
  }
  relay__send_client(q->r, q->conn, &q->src, b->start, (size_t)n);
}

static const char *reason_of(uint16_t code) {
  switch (code) {
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 420: return "Unknown Attribute";
  case 437: return "Allocation Mismatch";
  case 438: return "Stale Nonce";
  case 440: return "Address Family not Supported";
  case 441: return "Wrong Credentials";
  case 442: return "Unsupported Transport Protocol";
  case 443: return "Peer Address Family Mismatch";
  case 486: return "Allocation Quota Reached";
  case 500: return "Server Error";
  case 508: return "Insufficient Capacity";
  default: return "Error";
  }
}

void relay__reply_error(const relay_req_t *q, uint16_t code, const char *reason) {
  uint8_t buf[512];
  proto_stun_builder_t b;
  if (!reason) reason = reason_of(code);
  q->r->c.errors_sent++;
  relay__reply_begin(q, &b, buf, sizeof(buf), PROTO_STUN_ERROR);
  proto_stun_add_error(&b, code, reason, strlen(reason));
  /* A challenge carries REALM and a fresh NONCE (RFC 8489 9.2.4), and no
   * MESSAGE-INTEGRITY: the client has not proven the key. */
  if (code == 401 || code == 438) {
    proto_stun_add(&b, PROTO_STUN_A_REALM, q->r->realm, strlen(q->r->realm));
    relay__add_nonce(q->r, &b, &q->src);
  }
  relay_req_t nq = *q;
  if (code == 401 || code == 438) nq.key = NULL;
  relay__reply_send(&nq, &b);
}

/* Binding (RFC 8489 section 3): no authentication, answers anyone. */
static void on_binding(relay_req_t *q) {
  uint8_t buf[256];
  proto_stun_builder_t b;
  relay__reply_begin(q, &b, buf, sizeof(buf), PROTO_STUN_SUCCESS);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_MAPPED_ADDRESS, &q->src);
  /* For RFC 3489 clients, which only read MAPPED-ADDRESS. */
  proto_stun_add_addr(&b, PROTO_STUN_A_MAPPED_ADDRESS, &q->src);
  relay__reply_send(q, &b);
}

/* Demultiplexing -------------------------------------------------------- */

/* A STUN message; -1 if malformed (counted). */
static int on_stun(relay_t *r, relay_conn_t *conn, const proto_stun_addr_t *src, const uint8_t *p,
                   size_t n) {
  proto_stun_msg_t m;
  if (proto_stun_parse(p, n, &m) < 0) {
    r->c.dropped_malformed++;
    return -1;
  }
  /* A FINGERPRINT that is present must be right (RFC 8489 section 7.3). */
  if (m.fp_off && proto_stun_check_fingerprint(&m) < 0) {
    r->c.dropped_malformed++;
    return -1;
  }
  relay_req_t q = {.r = r, .conn = conn, .src = *src, .m = &m, .fp = m.fp_off != 0};
  r->c.stun_in++;
  if (m.cls == PROTO_STUN_INDICATION) {
    relay__on_indication(r, conn, &m, src);
  } else if (m.cls != PROTO_STUN_REQUEST) {
    r->c.dropped_other++; /* responses are not for a server */
  } else if (m.method == PROTO_STUN_BINDING) {
    r->c.requests++;
    on_binding(&q);
  } else {
    r->c.requests++;
    relay__on_request(&q);
  }
  return 0;
}

int relay__on_message(relay_t *r, relay_conn_t *conn, const proto_stun_addr_t *src,
                      const uint8_t *p, size_t n) {
  int kind = proto_stun_kind(p, n);
  if (kind == PROTO_STUN_KIND_OTHER && n >= PROTO_STUN_CHAN_HDR_LEN && p[0] >= 0x50 && p[0] < 0x80)
    kind = PROTO_STUN_KIND_CHANNEL; /* RFC 5766 channel numbers */
  switch (kind) {
  case PROTO_STUN_KIND_CHANNEL: return relay__on_chandata(r, conn, src, p, n);
  case PROTO_STUN_KIND_STUN: return on_stun(r, conn, src, p, n);
  default: r->c.dropped_malformed++; return -1;
  }
}

static void on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *from,
                    unsigned flags) {
  relay_t *r = h->data;
  if (nread <= 0 || !from) return;
  if (flags & UV_UDP_PARTIAL) {
    r->c.dropped_malformed++;
    return;
  }
  r->c.bytes_in += (size_t)nread;
  proto_stun_addr_t src;
  relay__addr_from_sa(from, &src);
  relay__on_message(r, NULL, &src, (const uint8_t *)buf->base, (size_t)nread);
}

/* Lifecycle ------------------------------------------------------------- */

static unsigned relay_port_of(const struct sockaddr_storage *ss) {
  proto_stun_addr_t a;
  relay__addr_from_sa((const struct sockaddr *)ss, &a);
  return a.port;
}

/* Bind with plain syscalls first, so a taken port fails before any libuv
 * handle exists and relay_new() has nothing to close. */
int relay__bind_socket(const struct sockaddr_storage *ss, int *fd_out) {
  int fd = socket(ss->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (bind(fd, (const struct sockaddr *)ss, len) < 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  *fd_out = fd;
  return 0;
}

static void relay_release(relay_t *r) {
  relay__quota_free(r);
  free(r->overlay);
  free(r->secret);
  free(r->realm);
  free(r->buckets);
  free(r->rbuckets);
  free(r->rbuf);
  udpq_free(r->txq);
  free(r);
}

static int copy_config(relay_t *r, const relay_config_t *cfg) {
  if (!cfg->overlay || !cfg->secret || !cfg->secret[0]) return -EINVAL;
  if (cfg->listen.ss_family != AF_INET && cfg->listen.ss_family != AF_INET6) return -EINVAL;
  if (cfg->port_min > cfg->port_max) return -EINVAL;
  r->overlay = strdup(cfg->overlay);
  r->secret = strdup(cfg->secret);
  r->realm = strdup(cfg->realm && cfg->realm[0] ? cfg->realm : cfg->overlay);
  r->rbuf = malloc(RELAY_RBUF);
  if (!r->overlay || !r->secret || !r->realm || !r->rbuf) return -ENOMEM;
  r->tcp_max = cfg->tcp_max_clients ? cfg->tcp_max_clients : RELAY_TCP_MAX_CLIENTS;
  r->tcp_idle = cfg->tcp_idle ? cfg->tcp_idle : RELAY_TCP_IDLE;
  r->secret_len = strlen(cfg->secret);
  relay__addr_from_sa((const struct sockaddr *)&cfg->listen, &r->listen);
  r->port_min = cfg->port_min ? cfg->port_min : 49152;
  r->port_max = cfg->port_max ? cfg->port_max : 65535;
  if (r->port_min > r->port_max) return -EINVAL;
  if (relay__peers_config(r, cfg) < 0) return -EINVAL;
  r->quota_user = cfg->quota_per_user ? cfg->quota_per_user : 100;
  r->quota_ip = cfg->quota_per_ip ? cfg->quota_per_ip : 100;
  r->quota_total = cfg->quota_total ? cfg->quota_total : 1000;
  r->max_cred_ttl = cfg->max_credential_ttl ? cfg->max_credential_ttl : RELAY_DEFAULT_CRED_TTL;
  r->record_ttl = cfg->record_ttl ? cfg->record_ttl : 60;
  if (RAND_bytes(r->nonce_key, sizeof(r->nonce_key)) != 1) return -EIO;
  /* Start the port search somewhere random, so relays sharing one IP (a
   * testbed) do not all race for the same ports. */
  unsigned span = (unsigned)r->port_max - r->port_min + 1, rnd;
  if (RAND_bytes((unsigned char *)&rnd, sizeof(rnd)) != 1) return -EIO;
  r->port_next = (uint16_t)(r->port_min + rnd % span);
  return 0;
}

static void maybe_stopped(relay_t *r) {
  if (r->stopping && r->open_handles == 0 && r->stop_cb) {
    void (*cb)(relay_t *, void *) = r->stop_cb;
    r->stop_cb = NULL;
    cb(r, r->stop_arg);
  }
}

void relay__handle_gone(relay_t *r) {
  r->open_handles--;
  maybe_stopped(r);
}

static void on_closed(uv_handle_t *h) { relay__handle_gone(h->data); }

static void close_handles(relay_t *r) {
  uv_close((uv_handle_t *)&r->udp, on_closed);
  uv_close((uv_handle_t *)&r->tcp, on_closed);
  uv_close((uv_handle_t *)&r->flush, on_closed);
  uv_close((uv_handle_t *)&r->tick, on_closed);
  uv_close((uv_handle_t *)&r->rec_timer, on_closed);
}

static void reap_on_stop(relay_t *r, void *arg) { relay_release(r); }

/* The UDP and TCP sockets of the TURN port, bound to the same port.  With
 * port 0 the kernel picks the UDP port, and the TCP one may be taken: try
 * a few picks. */
static int bind_turn_port(const relay_config_t *cfg, int *ufd, int *tfd) {
  for (int i = 0; i < 8; i++) {
    int rc = relay__bind_socket(&cfg->listen, ufd);
    if (rc < 0) return rc;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    proto_stun_addr_t at;
    if (getsockname(*ufd, (struct sockaddr *)&ss, &sl) < 0) rc = -errno;
    relay__addr_from_sa((const struct sockaddr *)&ss, &at);
    if (rc == 0 && (rc = relay__tcp_bind(&at, tfd)) == 0) return 0;
    close(*ufd);
    if (rc != -EADDRINUSE || relay_port_of(&cfg->listen) != 0) return rc;
  }
  return -EADDRINUSE;
}

int relay_new(uv_loop_t *loop, dht_t *dht, const relay_config_t *cfg, relay_t **out) {
  *out = NULL;
  relay_t *r = calloc(1, sizeof(*r));
  if (!r) return -ENOMEM;
  r->loop = loop, r->dht = dht;
  int rc = copy_config(r, cfg);
  if (rc < 0) {
    relay_release(r);
    return rc;
  }
  int ufd, tfd;
  if ((rc = bind_turn_port(cfg, &ufd, &tfd)) < 0) {
    relay_release(r);
    return rc;
  }
  /* From here on the handles exist and only relay_stop() closes them. */
  uv_udp_init(loop, &r->udp);
  uv_tcp_init(loop, &r->tcp);
  uv_check_init(loop, &r->flush);
  uv_timer_init(loop, &r->tick);
  uv_timer_init(loop, &r->rec_timer);
  r->udp.data = r, r->tcp.data = r, r->flush.data = r, r->tick.data = r, r->rec_timer.data = r;
  r->open_handles = 5;
  /* A handle that took its fd closes it; one that did not leaves it to us. */
  if ((rc = uv_udp_open(&r->udp, ufd)) < 0) close(ufd);
  int trc = uv_tcp_open(&r->tcp, tfd);
  if (trc < 0) close(tfd);
  if (rc == 0 && trc == 0 && !(r->txq = udpq_new(ufd, RELAY_TXB, RELAY_TXB_BYTES))) rc = -ENOMEM;
  if (rc < 0 || trc < 0) {
    /* Practically never; the handles reap the relay once closed. */
    r->stopping = 1, r->stop_cb = reap_on_stop;
    close_handles(r);
    return rc < 0 ? rc : trc;
  }
  /* If the listen port was 0, learn the one the kernel picked. */
  struct sockaddr_storage ss;
  int sl = sizeof(ss);
  if (uv_udp_getsockname(&r->udp, (struct sockaddr *)&ss, &sl) == 0)
    relay__addr_from_sa((const struct sockaddr *)&ss, &r->listen);
  *out = r;
  return 0;
}

int relay_start(relay_t *r) {
  if (r->started || r->stopping) return -EINVAL;
  int rc = uv_udp_recv_start(&r->udp, on_alloc_buf, on_recv);
  if (rc < 0 || (rc = relay__tcp_start(r)) < 0) return rc;
  uv_check_start(&r->flush, on_flush);
  /* Every client shares this socket: give bursts room (a limit, not an
   * allocation; the kernel caps it at net.core.rmem_max). */
  int size = RELAY_TURN_RCVBUF;
  uv_recv_buffer_size((uv_handle_t *)&r->udp, &size);
  uv_timer_start(&r->tick, relay__tick, 1000, 1000);
  r->started = 1;
  if (r->dht) relay__records_start(r);
  char a[64];
  relay_addr(r, a, sizeof(a));
  log_info("relay: TURN on %s (udp, tcp), realm %s, relayed ports %u-%u", a, r->realm, r->port_min,
           r->port_max);
  return 0;
}

void relay__records_stopped(relay_t *r) {
  uv_close((uv_handle_t *)&r->rec_timer, on_closed);
}

void relay_stop(relay_t *r, void (*cb)(relay_t *, void *), void *arg) {
  if (r->stopping) return;
  r->stopping = 1, r->stop_cb = cb, r->stop_arg = arg;
  relay__tcp_close_all(r);
  relay__free_all_allocs(r);
  udpq_flush(r->txq);
  uv_close((uv_handle_t *)&r->udp, on_closed);
  uv_close((uv_handle_t *)&r->tcp, on_closed);
  uv_close((uv_handle_t *)&r->flush, on_closed);
  uv_close((uv_handle_t *)&r->tick, on_closed);
  /* rec_timer guards the withdrawal of the record, if there is one. */
  if (!(r->dht && r->started && relay__records_stop(r)))
    uv_close((uv_handle_t *)&r->rec_timer, on_closed);
}

void relay_free(relay_t *r) {
  if (!r) return;
  relay__records_detach(r);
  relay_release(r);
}

void relay_addr(const relay_t *r, char *out, size_t len) {
  struct sockaddr_storage ss;
  relay__addr_to_sa(&r->listen, &ss);
  dht_addr_str(&ss, out, len);
}

json_t *relay_stats_json(const relay_t *r) {
  char a[64];
  relay_addr(r, a, sizeof(a));
  const relay_counters_t *c = &r->c;
  const udpq_counts_t none = {0}, *tx = r->txq ? udpq_counts(r->txq) : &none;
  json_t *j = relay__alloc_stats(r);
  json_object_set_new(j, "addr", json_string(a));
  json_object_set_new(j, "max_credential_ttl", json_integer((json_int_t)r->max_cred_ttl));
  json_object_set_new(j, "peers", relay__peers_stats(r));
  json_object_set_new(j, "realm", json_string(r->realm));
  json_object_set_new(j, "transports", json_pack("[ss]", "udp", "tcp"));
  json_object_set_new(j, "tcp", relay__tcp_stats(r));
  json_object_set_new(j, "rx", json_pack("{sI sI sI sI}", "stun", (json_int_t)c->stun_in,
                                         "channel_data", (json_int_t)c->chan_in, "from_peers",
                                         (json_int_t)c->peer_in, "bytes", (json_int_t)c->bytes_in));
  json_object_set_new(j, "tx", json_pack("{sI sI sI sI}", "to_peers", (json_int_t)c->to_peer,
                                         "to_clients", (json_int_t)c->to_client, "bytes",
                                         (json_int_t)c->bytes_out, "send_errors",
                                         (json_int_t)(c->send_errors + tx->dropped)));
  json_object_set_new(
      j, "requests",
      json_pack("{sI sI sI sI sI sI sI}", "total", (json_int_t)c->requests, "errors_sent",
                (json_int_t)c->errors_sent, "auth_failures", (json_int_t)c->auth_failures,
                "stale_nonces", (json_int_t)c->stale_nonces, "quota_refusals",
                (json_int_t)c->quota_refusals, "allocations_made", (json_int_t)c->allocs_made,
                "allocations_expired", (json_int_t)c->allocs_expired));
  json_object_set_new(
      j, "refused",
      json_pack("{sI sI sI sI sI sI}", "peer_denied", (json_int_t)c->peers_denied, "quota_user",
                (json_int_t)c->quota_user, "quota_ip", (json_int_t)c->quota_ip, "quota_total",
                (json_int_t)c->quota_total, "credential_expired", (json_int_t)c->cred_expired,
                "credential_too_long", (json_int_t)c->cred_too_long));
  json_object_set_new(j, "dropped",
                      json_pack("{sI sI sI sI sI}", "malformed", (json_int_t)c->dropped_malformed,
                                "no_allocation", (json_int_t)c->dropped_no_alloc,
                                "no_permission", (json_int_t)c->dropped_no_perm, "peer_denied",
                                (json_int_t)c->dropped_peer_denied, "other",
                                (json_int_t)c->dropped_other));
  /* Also counted in tx.to_peers and rx.from_peers (alloc.c, handover). */
  json_object_set_new(j, "relayed_internal", json_integer((json_int_t)c->relayed_internal));
  json_object_set_new(j, "tx_batches", json_pack("{sI sI}", "sendmmsg", (json_int_t)tx->batches,
                                                 "datagrams", (json_int_t)tx->sent));
  return j;
}
