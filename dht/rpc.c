/*
 * Connections, framing, transaction ids and timeouts.
 *
 * One TCP connection per peer and direction, reused for every request; the
 * first frame each way is HELLO, which names the sender's node and overlay.
 * Requests and responses are matched by txid.  This file is the only one
 * that touches sockets: a TLS layer would slot in between the uv_tcp_t and
 * conn_feed()/conn_send() without anything above noticing.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dht/internal.h"
#include "dht/log.h"

/* Connections to ring neighbours and fingers carry upkeep and most
 * lookups, so they stay open while idle; one made for a single lookup hop
 * or a store closes soon, or a node would end up holding a socket to
 * every node it ever asked. */
#define CONN_IDLE_MS 120000
#define CONN_IDLE_STRANGER_MS 45000 /* outlives a refresh interval: refreshes reuse it */

typedef struct wreq {
  uv_write_t req;
  struct wreq *next;
  size_t len;
  uint8_t data[];
} wreq_t;

struct dht__conn {
  uv_tcp_t tcp;
  dht_t *d;
  dht__conn_t *next;
  struct sockaddr_storage addr; /* the peer's listen address once known */
  dht_node_t peer;
  bool have_peer, outgoing, connected, closing, hello_sent;
  uint8_t *rbuf; /* bytes of an incomplete frame */
  size_t rlen, rcap;
  wreq_t *queue; /* frames waiting for connect */
  wreq_t **queue_tail;
  uint64_t last_active;
  uv_connect_t connect_req;
  int refs;     /* answers pending on this connection (dht__conn_ref) */
  struct sockaddr_storage remote; /* the other end: whom we dialled, or who dialled us */
  bool handle_closed;
};

typedef struct dht__pending {
  struct dht__pending *next;
  dht_t *d;
  dht__conn_t *conn;
  uint32_t txid;
  uint8_t type;
  uv_timer_t timer;
  dht__rpc_cb cb;
  void *arg;
} pending_t;

/* libuv reads into this and calls us at once, so one buffer serves every
 * connection; only the tail of an incomplete frame is copied out. */
static uint8_t read_buf[64 * 1024];

static bool addr_eq(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return false;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
  return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

static void conn_close(dht__conn_t *c, const char *why);

/* Pending calls ------------------------------------------------------------ */

static void pending_closed(uv_handle_t *h) { free(h->data); }

static void pending_finish(pending_t *p, int status, const proto_frame_t *f) {
  dht_t *d = p->d;
  pending_t **pp = &d->pending;
  while (*pp && *pp != p) pp = &(*pp)->next;
  if (*pp) *pp = p->next;
  uv_timer_stop(&p->timer);
  p->timer.data = p;
  uv_close((uv_handle_t *)&p->timer, pending_closed);
  dht_node_t peer = p->conn && p->conn->have_peer ? p->conn->peer : (dht_node_t){0};
  if (p->conn) peer.addr = p->conn->addr;
  if (status) d->stats.rpc_timeouts += status == DHT_ETIMEDOUT;
  p->cb(d, status, f, &peer, p->arg);
}

static void pending_timeout(uv_timer_t *t) {
  pending_t *p = t->data;
  char a[64] = "?";
  if (p->conn) dht_addr_str(&p->conn->addr, a, sizeof(a));
  log_debug("request %u to %s timed out", p->txid, a);
  pending_finish(p, DHT_ETIMEDOUT, NULL);
}

static pending_t *pending_take(dht_t *d, dht__conn_t *c, uint32_t txid) {
  for (pending_t *p = d->pending; p; p = p->next)
    if (p->txid == txid && p->conn == c) return p;
  return NULL;
}

static void fail_pending_of(dht_t *d, dht__conn_t *c) {
  for (pending_t *p = d->pending, *next; p; p = next) {
    next = p->next;
    if (p->conn == c) pending_finish(p, -ECONNRESET, NULL);
  }
}

/* Sending ------------------------------------------------------------------ */

static void write_done(uv_write_t *req, int status) {
  wreq_t *w = (wreq_t *)req;
  dht__conn_t *c = req->handle->data;
  if (status < 0 && c && !c->closing) conn_close(c, uv_strerror(status));
  free(w);
}

static void write_now(dht__conn_t *c, wreq_t *w) {
  uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)w->len);
  int err = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, write_done);
  if (err) {
    free(w);
    conn_close(c, uv_strerror(err));
  }
}

static void conn_send(dht__conn_t *c, uint8_t type, uint32_t txid, const uint8_t *body, size_t len) {
  if (c->closing) return;
  wreq_t *w = malloc(sizeof(*w) + PROTO_HDR_LEN + len);
  if (!w) {
    conn_close(c, "out of memory");
    return;
  }
  w->next = NULL;
  w->len = PROTO_HDR_LEN + len;
  proto_frame_header(w->data, type, txid, (uint32_t)len);
  if (len) memcpy(w->data + PROTO_HDR_LEN, body, len);
  c->d->stats.msgs_out++;
  c->d->stats.out_by_type[type]++;
  c->d->stats.bytes_out += w->len;
  c->last_active = uv_now(c->d->loop);
  if (!c->connected) {
    *c->queue_tail = w;
    c->queue_tail = &w->next;
    return;
  }
  write_now(c, w);
}

static void send_hello(dht__conn_t *c, uint8_t type) {
  uint8_t body[64 + PROTO_MAX_OVERLAY];
  proto_hello_t h = {.self = c->d->self_wire, .overlay = c->d->overlay,
                     .overlay_len = (uint8_t)strlen(c->d->overlay)};
  long n = proto_hello_encode(body, sizeof(body), &h);
  if (n < 0) fatalx("cannot encode HELLO: %s", proto_strerror((int)n));
  conn_send(c, type, 0, body, (size_t)n);
  c->hello_sent = true;
}

/* Receiving ---------------------------------------------------------------- */

static int on_hello(dht__conn_t *c, const proto_frame_t *f) {
  proto_hello_t h;
  int err = proto_hello_decode(f->body, f->body_len, &h);
  if (err) return err;
  if (h.overlay_len != strlen(c->d->overlay) || memcmp(h.overlay, c->d->overlay, h.overlay_len)) {
    log_warn("peer speaks for overlay \"%.*s\", not ours: closing", h.overlay_len, h.overlay);
    return PROTO_EINVAL;
  }
  dht__node_from_proto(&h.self, &c->peer);
  c->have_peer = true;
  if (!c->outgoing) c->addr = c->peer.addr;
  if (f->type == PROTO_HELLO && !c->hello_sent) send_hello(c, PROTO_HELLO_R);
  /* A HELLO only says who is talking, not that it is part of the ring yet
   * (it may still be joining): the ring learns of nodes from the answers
   * of nodes that are in it. */
  return 0;
}

/* One complete frame.  Returns 0, or a negative error that closes the
 * connection (the peer broke the protocol). */
static int conn_frame(dht__conn_t *c, const proto_frame_t *f) {
  dht_t *d = c->d;
  d->stats.msgs_in++;
  d->stats.bytes_in += PROTO_HDR_LEN + f->body_len;
  if (f->type == PROTO_HELLO || f->type == PROTO_HELLO_R) return on_hello(c, f);
  if (!c->have_peer) return PROTO_EINVAL; /* HELLO must come first */
  if (f->type & 1) {
    if (!d->leaving || f->type == PROTO_LEAVE || f->type == PROTO_PING)
      return dht__handle_request(d, c, f, &c->peer);
    return 0;
  }
  pending_t *p = pending_take(d, c, f->txid);
  if (!p) return 0; /* a response that came after its timeout */
  if (f->type != p->type + 1) return PROTO_EINVAL; /* answered the wrong question */
  pending_finish(p, 0, f);
  return 0;
}

/* Parse as many frames as buf holds; returns bytes used or a negative error. */
static long conn_parse(dht__conn_t *c, const uint8_t *buf, size_t len) {
  size_t off = 0;
  while (off < len && !c->closing) {
    proto_frame_t f;
    long n = proto_frame_decode(buf + off, len - off, &f);
    if (n == PROTO_NEED_MORE) break;
    if (n < 0) return n;
    int err = conn_frame(c, &f);
    if (err) return err;
    off += (size_t)n;
  }
  return (long)off;
}

static void bad_frame(dht__conn_t *c, long err) {
  char a[64];
  dht_addr_str(&c->addr, a, sizeof(a));
  c->d->stats.bad_frames++;
  log_warn("bad frame from %s: %s; closing the connection", a, proto_strerror((int)err));
  conn_close(c, NULL);
}

/* Move up to len bytes of the frame being assembled into rbuf, never more
 * than that frame needs; returns bytes taken or a negative error.  The
 * bound is on the one frame (its declared body is checked against
 * PROTO_MAX_BODY as soon as its header is in), not on what a read brought:
 * a peer may pipeline many large frames in one go. */
static long fill_frame(dht__conn_t *c, const uint8_t *data, size_t len) {
  long size = proto_frame_size(c->rbuf, c->rlen);
  if (size < 0) return size;
  size_t want = size ? (size_t)size : PROTO_HDR_LEN;
  size_t take = want - c->rlen < len ? want - c->rlen : len;
  if (want > c->rcap) {
    uint8_t *nb = realloc(c->rbuf, want);
    if (!nb) return -ENOMEM;
    c->rbuf = nb;
    c->rcap = want;
  }
  memcpy(c->rbuf + c->rlen, data, take);
  c->rlen += take;
  return (long)take;
}

static void conn_feed(dht__conn_t *c, const uint8_t *data, size_t len) {
  while (len > 0 && !c->closing) {
    if (c->rlen == 0) { /* the common case: whole frames straight from the read */
      long used = conn_parse(c, data, len);
      if (used < 0) {
        bad_frame(c, used);
        return;
      }
      data += used;
      len -= (size_t)used;
      if (len == 0 || c->closing) break;
    }
    long took = fill_frame(c, data, len);
    if (took < 0) {
      if (took == -ENOMEM) conn_close(c, "out of memory");
      else bad_frame(c, took);
      return;
    }
    data += took;
    len -= (size_t)took;
    if (c->rlen >= PROTO_HDR_LEN && proto_frame_size(c->rbuf, c->rlen) == (long)c->rlen) {
      long used = conn_parse(c, c->rbuf, c->rlen);
      if (used < 0) {
        bad_frame(c, used);
        return;
      }
      c->rlen = 0;
    }
  }
  if (c->rlen == 0 && c->rcap > 4096) { /* don't keep a big buffer for an idle peer */
    free(c->rbuf);
    c->rbuf = NULL;
    c->rcap = 0;
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  *buf = uv_buf_init((char *)read_buf, sizeof(read_buf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  dht__conn_t *c = s->data;
  if (n < 0) {
    conn_close(c, n == UV_EOF ? NULL : uv_strerror((int)n));
    return;
  }
  if (n == 0) return;
  c->last_active = uv_now(c->d->loop);
  conn_feed(c, (const uint8_t *)buf->base, (size_t)n);
}

/* Connection lifecycle ----------------------------------------------------- */

static void conn_free(dht__conn_t *c) {
  for (wreq_t *w = c->queue, *next; w; w = next) {
    next = w->next;
    free(w);
  }
  free(c->rbuf);
  free(c);
}

static void conn_freed(uv_handle_t *h) {
  dht__conn_t *c = h->data;
  c->handle_closed = true;
  if (c->refs == 0) conn_free(c);
}

void dht__conn_ref(dht__conn_t *c) { c->refs++; }

void dht__conn_unref(dht__conn_t *c) {
  if (--c->refs == 0 && c->handle_closed) conn_free(c);
}

static void conn_close(dht__conn_t *c, const char *why) {
  if (c->closing) return;
  dht_t *d = c->d;
  c->closing = true;
  if (why) {
    char a[64];
    dht_addr_str(&c->addr, a, sizeof(a));
    log_debug("connection to %s closed: %s", a, why);
  }
  for (dht__conn_t **pp = &d->conns; *pp; pp = &(*pp)->next) {
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  }
  d->stats.connections--;
  fail_pending_of(d, c);
  if (c->have_peer && !d->closed) dht__peer_lost(d, &c->peer);
  uv_close((uv_handle_t *)&c->tcp, conn_freed);
}

static dht__conn_t *conn_new(dht_t *d, bool outgoing) {
  dht__conn_t *c = calloc(1, sizeof(*c));
  if (!c) return NULL;
  if (uv_tcp_init(d->loop, &c->tcp)) {
    free(c);
    return NULL;
  }
  c->d = d;
  c->tcp.data = c;
  c->outgoing = outgoing;
  c->queue_tail = &c->queue;
  c->last_active = uv_now(d->loop);
  c->next = d->conns;
  d->conns = c;
  d->stats.connections++;
  uv_tcp_nodelay(&c->tcp, 1);
  return c;
}

static void on_connect(uv_connect_t *req, int status) {
  dht__conn_t *c = req->handle->data;
  if (c->closing) return;
  if (status < 0) {
    conn_close(c, uv_strerror(status));
    return;
  }
  c->connected = true;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
    conn_close(c, "cannot read");
    return;
  }
  wreq_t *w = c->queue;
  c->queue = NULL;
  c->queue_tail = &c->queue;
  for (wreq_t *next; w && !c->closing; w = next) {
    next = w->next;
    write_now(c, w);
  }
}

int dht__bind_source(dht_t *d, uv_tcp_t *t, const struct sockaddr_storage *to) {
  struct sockaddr_storage src = d->self.addr;
  if (src.ss_family != to->ss_family) return 0;
  if (src.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&src;
    if (a->sin_addr.s_addr == htonl(INADDR_ANY)) return 0;
    a->sin_port = 0;
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&src;
    if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr)) return 0;
    a->sin6_port = 0;
  }
  return uv_tcp_bind(t, (const struct sockaddr *)&src, 0);
}

static dht__conn_t *conn_to(dht_t *d, const struct sockaddr_storage *addr) {
  for (dht__conn_t *c = d->conns; c; c = c->next)
    if (!c->closing && (c->outgoing || c->have_peer) && addr_eq(&c->addr, addr)) return c;
  dht__conn_t *c = conn_new(d, true);
  if (!c) return NULL;
  c->addr = *addr;
  c->remote = *addr;
  int err = dht__bind_source(d, &c->tcp, addr);
  if (!err) err = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)addr, on_connect);
  if (err) {
    conn_close(c, uv_strerror(err));
    return NULL;
  }
  send_hello(c, PROTO_HELLO);
  return c;
}

static void on_accept(uv_stream_t *server, int status) {
  dht_t *d = server->data;
  if (status < 0) return;
  dht__conn_t *c = conn_new(d, false);
  if (!c) return;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) ||
      uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
    conn_close(c, "accept failed");
    return;
  }
  int len = sizeof(c->addr);
  uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->addr, &len);
  c->remote = c->addr;
  c->connected = true;
}

int dht__rpc_listen(dht_t *d) {
  int err = uv_tcp_init(d->loop, &d->listener);
  if (err) return err;
  d->listener.data = d;
  if ((err = uv_tcp_bind(&d->listener, (const struct sockaddr *)&d->self.addr, 0)) ||
      (err = uv_listen((uv_stream_t *)&d->listener, 511, on_accept)))
    return err;
  int len = sizeof(d->self.addr);
  uv_tcp_getsockname(&d->listener, (struct sockaddr *)&d->self.addr, &len);
  return 0;
}

int dht__rpc_call(dht_t *d, const struct sockaddr_storage *addr, uint8_t type,
                  const uint8_t *body, size_t len, dht__rpc_cb cb, void *arg) {
  if (d->closed) return DHT_ECLOSING;
  pending_t *p = calloc(1, sizeof(*p));
  if (!p) return -ENOMEM;
  dht__conn_t *c = conn_to(d, addr);
  if (!c) {
    free(p);
    return -ECONNREFUSED;
  }
  p->d = d;
  p->conn = c;
  p->cb = cb;
  p->arg = arg;
  p->type = type;
  p->txid = ++d->next_txid ? d->next_txid : ++d->next_txid;
  uv_timer_init(d->loop, &p->timer);
  p->timer.data = p;
  uv_timer_start(&p->timer, pending_timeout, d->rpc_timeout, 0);
  p->next = d->pending;
  d->pending = p;
  conn_send(c, type, p->txid, body, len);
  return 0;
}

void dht__rpc_reply(dht_t *d, dht__conn_t *c, uint8_t type, uint32_t txid,
                    const uint8_t *body, size_t len) {
  conn_send(c, type, txid, body, len);
}

const struct sockaddr_storage *dht__conn_remote(const dht__conn_t *c) { return &c->remote; }

void dht__rpc_drop(dht_t *d, const struct sockaddr_storage *addr) {
  for (dht__conn_t *c = d->conns, *next; c; c = next) {
    next = c->next;
    if (addr_eq(&c->addr, addr)) conn_close(c, "dropped");
  }
}

/* Close connections nobody used for a while; the ring's own traffic keeps
 * the neighbours' connections alive. */
void dht__rpc_reap(dht_t *d) {
  uint64_t now = uv_now(d->loop);
  for (dht__conn_t *c = d->conns, *next; c; c = next) {
    next = c->next;
    /* Only the side that opened a connection closes it when idle: an EOF
     * on an accepted connection then means the opener chose to stop or
     * died, and does not set off a liveness check on every idle close. */
    if (!c->outgoing) continue;
    uint64_t idle = now - c->last_active;
    if (idle < CONN_IDLE_STRANGER_MS) continue;
    if (idle < CONN_IDLE_MS && c->have_peer && dht__ring_knows(d, &c->peer)) continue;
    bool busy = false;
    for (pending_t *p = d->pending; p && !busy; p = p->next) busy = p->conn == c;
    if (!busy) {
      c->have_peer = false; /* an idle close says nothing about liveness */
      conn_close(c, "idle");
    }
  }
}

void dht__rpc_close_all(dht_t *d) {
  while (d->conns) {
    d->conns->have_peer = false;
    conn_close(d->conns, NULL);
  }
  if (!uv_is_closing((uv_handle_t *)&d->listener)) uv_close((uv_handle_t *)&d->listener, NULL);
}

const char *dht_frame_name(int type) {
  static const char *const names[] = {
      NULL,     "hello",   "hello_r", "ping",  "ping_r",  "find",    "find_r",
      "neigh",  "neigh_r", "notify",  "notify_r", "store", "store_r", "fetch",
      "fetch_r", "leave",  "leave_r", "poke",  "poke_r", "join",   "join_r",  "reach",
      "reach_r"};
  return type > 0 && type <= PROTO_TYPE_MAX ? names[type] : NULL;
}
