/*
 * Connections, framing, transaction ids and timeouts.
 *
 * One TCP connection per peer and direction: our requests go out on
 * connections we opened, and an accepted connection carries only the
 * other side's requests and our answers, so no one can have traffic for
 * another node routed down its connection by claiming that node's address
 * in a HELLO.  The first frame each way is HELLO, which names the sender's
 * node and overlay.  Requests and responses are matched by txid.  This file
 * is the only one that touches sockets.
 *
 * In the secured mode every connection is TLS 1.3 with mutual
 * authentication against the overlay CA (dht/cert.h), through one BIO of
 * ours between the uv_tcp_t and conn_feed()/conn_send() (tls_bio_*):
 * frames wait until the handshake is done, and a HELLO must name the node id the peer's
 * certificate carries.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "dht/cert.h"
#include "dht/internal.h"
#include "dht/log.h"

/* Connections to ring neighbours and fingers carry upkeep and most
 * lookups, so they stay open while idle (with TLS for as long as the node
 * is in our table, see conn_overdue); one made for a single lookup hop
 * or a store closes soon, or a node would end up holding a socket to
 * every node it ever asked. */
#define CONN_IDLE_MS 120000
#define CONN_IDLE_STRANGER_MS 45000 /* outlives a refresh interval: refreshes reuse it */
/* A TLS link holds ~20 KB of OpenSSL state where a plain one holds 1 KB,
 * while a new handshake costs about a millisecond of CPU: with TLS a
 * stranger's link is not worth keeping for the next refresh. */
#define CONN_IDLE_STRANGER_TLS_MS 15000
/* An opener closes its idle connections itself (above), so an accepted
 * connection idle for longer is held by someone who forgot it or keeps it
 * on purpose. */
#define CONN_IDLE_INBOUND_MS (2 * CONN_IDLE_MS + 30000)
/* With TLS, a link the peer opened and we keep is pinged when idle this
 * long, and its opener, if it does not keep it itself, holds it for this
 * idle time at most (a keepalive, the reap sweep's 5 s and a margin). */
#define CONN_KEEPALIVE_ASKED_MS 20000
#define CONN_IDLE_ASKED_MS (CONN_KEEPALIVE_ASKED_MS + 25000)


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
  bool ready;   /* frames may flow: connected, and the TLS handshake done */
  SSL *ssl;     /* secured mode: the TLS session, reading and writing through tls_bio_* */
  const uint8_t *tls_in; /* what arrived and TLS has not read yet (in libuv's read buffer) */
  size_t tls_in_len;
  dht_id_t auth_id; /* secured mode: the peer's certified node id once ready */
  dht_id_t expect;  /* outgoing: the node we meant to reach (zero: unknown) */
  uint64_t opened;  /* loop time */
  bool peer_asked;  /* the peer sent requests on it: it may be a link the peer keeps */
  bool join_seen;   /* it carried a JOIN (dht__conn_first_join) */
  uint64_t frame_since; /* loop time the frame being assembled in rbuf began */
  uint8_t first_type;   /* outgoing: the request that opened it (for the log) */
  wreq_t *out;          /* frames (or TLS records) of this loop iteration, not yet written */
  size_t out_cap;
  dht__conn_t *dirty_next; /* d->dirty: out to write */
  bool dirty;
  uint64_t written_at, written_before; /* loop times of its last two writes (rpc_flush_all) */
  bool held;               /* what out holds waits for written_at + link_hold_ms */
  bool urgent;             /* out holds a frame that may not wait (frame_may_wait) */
};

typedef struct dht__pending {
  struct dht__pending *next, **prevp;   /* d->pending */
  struct dht__pending *hnext, **hprevp; /* d->pending_tab[txid % DHT_PENDING_SLOTS] */
  dht_t *d;
  dht__conn_t *conn;
  uint32_t txid;
  uint8_t type;
  bool looked;   /* the timeout gave the socket one more poll */
  uint64_t sent; /* uv_now() when sent on a ready link, else 0 */
  uv_timer_t timer;
  dht__rpc_cb cb;
  void *arg;
} pending_t;

/* libuv reads into this and calls us at once, so one buffer serves every
 * connection; only the tail of an incomplete frame is copied out. */
static uint8_t read_buf[64 * 1024];

static void conn_close(dht__conn_t *c, const char *why);

/* Pending calls ------------------------------------------------------------ */

static void pending_closed(uv_handle_t *h) { free(h->data); }

/* Answers come back oldest first while new calls go to the list's head:
 * at thousands of calls a second, walking the list for each answer was a
 * walk over hundreds of calls.  The table finds a call by its txid; both
 * lists unlink in O(1). */
static void pending_link(dht_t *d, pending_t *p) {
  if ((p->next = d->pending)) p->next->prevp = &p->next;
  p->prevp = &d->pending;
  d->pending = p;
  pending_t **slot = &d->pending_tab[p->txid % DHT_PENDING_SLOTS];
  if ((p->hnext = *slot)) p->hnext->hprevp = &p->hnext;
  p->hprevp = slot;
  *slot = p;
}

static void pending_unlink(pending_t *p) {
  if ((*p->prevp = p->next)) p->next->prevp = p->prevp;
  if ((*p->hprevp = p->hnext)) p->hnext->hprevp = p->hprevp;
}

static void pending_finish(pending_t *p, int status, const proto_frame_t *f) {
  dht_t *d = p->d;
  pending_unlink(p);
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
  /* libuv runs timers before it polls: after the process was not scheduled
   * for a while (a starved machine), the answer may sit unread in the
   * socket.  One more poll before the peer is called dead. */
  if (!p->looked) {
    p->looked = true;
    uv_timer_start(t, pending_timeout, 1, 0);
    return;
  }
  char a[64] = "?";
  if (p->conn) dht_addr_str(&p->conn->addr, a, sizeof(a));
  log_debug("request %u to %s timed out", p->txid, a);
  pending_finish(p, DHT_ETIMEDOUT, NULL);
}

/* The timeout follows the round trips seen (an EWMA of 1/8, as TCP's):
 * on a machine so busy that answers take a second, a fixed timeout calls
 * live nodes dead, and every false death costs a handshake and a repair
 * that make the machine busier still.  Never below the configured
 * timeout (dht_config_t rpc_timeout_ms, 1 s by default), at most eight
 * times it. */
static void rtt_sample(dht_t *d, uint64_t ms) {
  if (ms > 60000) ms = 60000;
  d->srtt8 = d->srtt8 ? d->srtt8 - d->srtt8 / 8 + (unsigned)ms : 8 * (unsigned)ms;
}

static unsigned rpc_timeout(const dht_t *d) {
  unsigned ms = d->srtt8 / 2; /* 4 x the smoothed round trip */
  if (ms < d->rpc_timeout) ms = d->rpc_timeout;
  return ms > 8 * d->rpc_timeout ? 8 * d->rpc_timeout : ms;
}

static pending_t *pending_take(dht_t *d, dht__conn_t *c, uint32_t txid) {
  for (pending_t *p = d->pending_tab[txid % DHT_PENDING_SLOTS]; p; p = p->hnext)
    if (p->txid == txid && p->conn == c) return p;
  return NULL;
}

/* The calls on c move to a list of their own in one walk, then fail from
 * its head.  Each callback may finish others (a peer it finds dead gets its
 * links closed, and their calls fail), so none is held across one: a call
 * stepped onto after its end had its timer closed twice, which aborted a
 * node at SIGTERM; one of ours a callback finishes unlinks itself from
 * this list.  Starting over from the head of all calls after each was
 * quadratic: a leaving node's 35,000 handover calls took seconds.  None is
 * added for c, which is closing. */
static void fail_pending_of(dht_t *d, dht__conn_t *c) {
  pending_t *mine = NULL;
  for (pending_t *p = d->pending, *next; p; p = next) {
    next = p->next;
    if (p->conn != c) continue;
    if ((*p->prevp = p->next)) p->next->prevp = p->prevp;
    if ((p->next = mine)) mine->prevp = &p->next;
    p->prevp = &mine;
    mine = p;
  }
  while (mine) pending_finish(mine, -ECONNRESET, NULL);
}

/* Sending ------------------------------------------------------------------ */

static void write_done(uv_write_t *req, int status) {
  wreq_t *w = (wreq_t *)req;
  dht__conn_t *c = req->handle->data;
  if (status < 0 && c && !c->closing) conn_close(c, uv_strerror(status));
  free(w);
}

/* What the socket takes at once goes with uv_try_write(): uv_write() queues
 * a completion for the next iteration and (libuv 1.44) makes it register
 * the socket with epoll again, an epoll_ctl() per flush, one per
 * registration on a registrar and on the key's holder.  The rest, if any,
 * goes through uv_write(), behind what it already holds. */
static void write_now(dht__conn_t *c, wreq_t *w) {
  uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)w->len);
  int err = uv_try_write((uv_stream_t *)&c->tcp, &buf, 1);
  if (err >= 0 && (size_t)err == w->len) {
    free(w);
    return;
  }
  if (err > 0) {
    memmove(w->data, w->data + err, w->len - (size_t)err);
    w->len -= (size_t)err;
    buf = uv_buf_init((char *)w->data, (unsigned)w->len);
  }
  if (err >= 0 || err == UV_EAGAIN) err = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, write_done);
  if (err) {
    free(w);
    conn_close(c, uv_strerror(err));
  }
}

/* Frames are written once per loop iteration and connection (rpc_flush):
 * a registrar under load sent a few frames per iteration to each peer,
 * one write() each, and the kernel's TCP send path (on loopback the
 * receiver's too) took a fifth of its CPU. */
static void rpc_flush_all(dht_t *d, bool all);
static void on_flush_idle(uv_idle_t *h) { rpc_flush_all(h->data, false); }
static void on_flush_check(uv_check_t *h) { rpc_flush_all(h->data, false); }
static void on_flush_timer(uv_timer_t *h) { rpc_flush_all(h->data, false); }

static void mark_dirty(dht__conn_t *c) {
  dht_t *d = c->d;
  if (c->dirty) return;
  c->dirty = true;
  c->dirty_next = d->dirty;
  d->dirty = c;
  /* Frames sent outside the poll phase (timers, prepare handles) must not
   * wait through a blocking poll: an active idle handle makes it return at
   * once, and its callback flushes. */
  if (!uv_is_active((uv_handle_t *)&d->flush_idle) && !uv_is_closing((uv_handle_t *)&d->flush_idle))
    uv_idle_start(&d->flush_idle, on_flush_idle);
}

static void dirty_unlink(dht__conn_t *c) {
  if (!c->dirty) return;
  for (dht__conn_t **pp = &c->d->dirty; *pp; pp = &(*pp)->dirty_next) {
    if (*pp == c) {
      *pp = c->dirty_next;
      break;
    }
  }
  c->dirty = false;
}

/* Makes room for len more bytes in what this iteration writes to the
 * peer; where they go, or NULL. */
static uint8_t *out_room(dht__conn_t *c, size_t len) {
  size_t have = c->out ? c->out->len : 0;
  if (!c->out || have + len > c->out_cap) {
    /* The first block fits glibc's per-thread cache (1,032 bytes): most
     * links carry one frame an iteration (a registrar's STORE to a
     * primary), and a 4 KB block per frame went through malloc's bins. */
    size_t cap = c->out_cap ? c->out_cap : 1024 - sizeof(wreq_t);
    while (cap < have + len) cap *= 2;
    wreq_t *w = realloc(c->out, sizeof(*w) + cap);
    if (!w) return NULL;
    if (!c->out) w->len = 0;
    c->out = w;
    c->out_cap = cap;
  }
  uint8_t *at = c->out->data + c->out->len;
  c->out->len += len;
  mark_dirty(c);
  return at;
}

/* Writes what the connection gathered: the frames, or in the secured mode
 * the TLS records they became. */
static void conn_flush(dht__conn_t *c) {
  wreq_t *w = c->out;
  c->out = NULL;
  c->out_cap = 0;
  if (w) write_now(c, w);
}

/* Only writes wait: STOREs, their answers and batches, and in the
 * secured mode the ROUTE and ROUTE_R frames that carry them (their inner
 * type is read from the body).  Lookups, gets and the ring's upkeep go at
 * once and take what a link held with them. */
static bool frame_may_wait(uint8_t type, const uint8_t *body, size_t len) {
  proto_route_t q;
  proto_route_r_t r;
  switch (type) {
  case PROTO_STORE:
  case PROTO_STORE_R:
  case PROTO_STORES:
  case PROTO_STORES_R:
    return true;
  case PROTO_ROUTE: /* the decoders refuse a ROUTE inside one: no deeper */
    return proto_route_decode(body, len, &q) == 0 && frame_may_wait(q.type, NULL, 0);
  case PROTO_ROUTE_R:
    return proto_route_r_decode(body, len, &r) == 0 && frame_may_wait(r.type, NULL, 0);
  default:
    return false;
  }
}

/* A busy link, written to twice within link_hold_ms and last less than
 * that ago, keeps the writes it gathers until then (all: write everything
 * now).  Under load each write then carries several frames, and its
 * reader wakes once for them: a registrar's STOREs went one per write to
 * each of 63 holders, and holders spent a quarter of their CPU being
 * woken (docs/BENCHMARKS.md, session 19).  A request and the next one of
 * the same operation (a lookup's FIND, then the FETCH to the node it
 * found) are never held: only a third frame that soon is. */
static bool flush_held(dht_t *d, dht__conn_t *c, bool all, uint64_t *due) {
  uint64_t now = uv_now(d->loop), at = c->written_at + d->link_hold_ms;
  if (all || c->closing || c->urgent || now >= at || c->written_before == 0 ||
      c->written_at - c->written_before > d->link_hold_ms)
    return false;
  if (at < *due) *due = at;
  d->stats.link_holds += !c->held;
  c->held = true;
  return true;
}

static void rpc_flush_all(dht_t *d, bool all) {
  dht__conn_t *held = NULL;
  uint64_t due = UINT64_MAX;
  while (d->dirty) { /* a failed write may close links and send more: keep going */
    dht__conn_t *c = d->dirty;
    d->dirty = c->dirty_next;
    if (flush_held(d, c, all, &due)) {
      c->dirty_next = held;
      held = c;
      continue;
    }
    c->dirty = false;
    if (c->closing) continue;
    c->written_before = c->written_at;
    c->written_at = uv_now(d->loop);
    c->held = c->urgent = false;
    d->stats.link_writes += c->out != NULL;
    conn_flush(c);
  }
  d->dirty = held; /* still marked dirty: mark_dirty() leaves them */
  uv_idle_stop(&d->flush_idle);
  if (held && !uv_is_closing((uv_handle_t *)&d->hold_timer))
    uv_timer_start(&d->hold_timer, on_flush_timer, due - uv_now(d->loop), 0);
}

/* A whole frame to the peer: encrypted in the secured mode. */
static void conn_write(dht__conn_t *c, wreq_t *w) {
  if (!c->ssl) {
    uint8_t *at = out_room(c, w->len);
    if (at) memcpy(at, w->data, w->len);
    free(w);
    if (!at) conn_close(c, "out of memory");
    return;
  }
  int n = SSL_write(c->ssl, w->data, (int)w->len);
  free(w);
  if (n <= 0) {
    conn_close(c, "TLS write failed");
    return;
  }
  mark_dirty(c);
}

static void conn_send(dht__conn_t *c, uint8_t type, uint32_t txid, const uint8_t *body, size_t len) {
  if (c->closing) return;
  c->d->stats.msgs_out++;
  c->d->stats.out_by_type[type]++;
  c->d->stats.bytes_out += PROTO_HDR_LEN + len;
  c->last_active = uv_now(c->d->loop);
  c->urgent |= !frame_may_wait(type, body, len);
  uint8_t *at = c->ready && !c->ssl ? out_room(c, PROTO_HDR_LEN + len) : NULL;
  wreq_t *w = at ? NULL : malloc(sizeof(*w) + PROTO_HDR_LEN + len);
  if (!at && !w) {
    conn_close(c, "out of memory");
    return;
  }
  if (w) {
    w->next = NULL;
    w->len = PROTO_HDR_LEN + len;
    at = w->data;
  }
  proto_frame_header(at, type, txid, (uint32_t)len);
  if (len) memcpy(at + PROTO_HDR_LEN, body, len);
  if (!w) return;
  if (!c->ready) {
    *c->queue_tail = w;
    c->queue_tail = &w->next;
    return;
  }
  conn_write(c, w);
}

/* The connection is up (and authenticated): send what waited. */
static void conn_ready(dht__conn_t *c) {
  c->ready = true;
  wreq_t *w = c->queue;
  c->queue = NULL;
  c->queue_tail = &c->queue;
  for (wreq_t *next; w; w = next) {
    next = w->next;
    if (c->closing) free(w);
    else conn_write(c, w);
  }
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
  dht_node_t claimed;
  dht__node_from_proto(&h.self, &claimed);
  if (c->ssl && !dht__id_eq(&claimed.id, &c->auth_id)) {
    char a[64], id[DHT_ID_HEX];
    dht_addr_str(&c->remote, a, sizeof(a));
    dht_id_hex(&c->auth_id, id);
    c->d->stats.auth_refused++;
    log_warn("peer %s (certified as %s) claims another node id in its HELLO: closing", a, id);
    return PROTO_EINVAL;
  }
  static const dht_id_t unknown;
  if (c->outgoing && !dht__id_eq(&c->expect, &unknown) && !dht__id_eq(&claimed.id, &c->expect)) {
    /* Stale ring state (a node restarted with another id), or a node that
     * names someone else's address as its own. */
    char a[64], want[DHT_ID_HEX], got[DHT_ID_HEX];
    dht_addr_str(&c->remote, a, sizeof(a));
    dht_id_hex(&c->expect, want);
    dht_id_hex(&claimed.id, got);
    c->d->stats.auth_refused++;
    log_warn("the node at %s is %.8s, not the %.8s we were told of: closing", a, got, want);
    return PROTO_EINVAL;
  }
  c->peer = claimed;
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
    c->peer_asked = true;
    if (!d->leaving || f->type == PROTO_LEAVE || f->type == PROTO_PING)
      return dht__handle_request(d, c, f, &c->peer);
    return 0;
  }
  pending_t *p = pending_take(d, c, f->txid);
  if (!p) return 0; /* a response that came after its timeout */
  if (f->type != p->type + 1) return PROTO_EINVAL; /* answered the wrong question */
  if (p->sent) rtt_sample(d, uv_now(d->loop) - p->sent);
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

static void rbuf_free(dht__conn_t *c) {
  c->d->frame_bytes -= c->rcap;
  free(c->rbuf);
  c->rbuf = NULL;
  c->rcap = 0;
}

/* A peer is dropped at a limit: say who and why. */
static void conn_warn(dht__conn_t *c, const char *why) {
  char a[64];
  dht_addr_str(&c->remote, a, sizeof(a));
  log_warn("peer %s: %s; closing the connection", a, why);
  c->have_peer = false; /* a limit says nothing about the peer's liveness */
  conn_close(c, NULL);
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
  if (c->rlen == 0) c->frame_since = uv_now(c->d->loop);
  long size = proto_frame_size(c->rbuf, c->rlen);
  if (size < 0) return size;
  size_t want = size ? (size_t)size : PROTO_HDR_LEN;
  size_t take = want - c->rlen < len ? want - c->rlen : len;
  if (want > c->rcap) {
    /* All connections together may hold only so much of unfinished
     * frames: many peers each sending most of a large frame cannot make
     * us hold gigabytes. */
    dht_t *d = c->d;
    if (d->frame_bytes - c->rcap + want > (size_t)d->limits.frame_kb * 1024) return -ENOBUFS;
    uint8_t *nb = realloc(c->rbuf, want);
    if (!nb) return -ENOMEM;
    d->frame_bytes += want - c->rcap;
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
    if (took == -ENOBUFS) {
      c->d->stats.refused_frames++;
      conn_warn(c, "unfinished frames of all peers at the limit (frame_kb)");
      return;
    }
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
  if (c->rlen == 0) rbuf_free(c); /* only split frames need it: idle peers keep none */
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  *buf = uv_buf_init((char *)read_buf, sizeof(read_buf));
}

/* TLS ------------------------------------------------------------------------ */

static void tls_refused(dht__conn_t *c, const char *what) {
  char a[64], why[160];
  dht_addr_str(&c->remote, a, sizeof(a));
  unsigned long e = ERR_peek_last_error();
  ERR_error_string_n(e, why, sizeof(why));
  ERR_clear_error();
  c->d->stats.tls_failed++;
  log_warn("TLS with %s %s: %s; closing", a, what, e ? why : "connection closed");
  conn_close(c, NULL);
}

/* The BIO under each TLS session: OpenSSL reads what just arrived straight
 * from libuv's read buffer (c->tls_in) and writes its records into the
 * bytes this loop iteration sends (out_room), as plain frames go.  Two
 * memory BIOs held ~0.8 KB per link end for nothing and cost a copy each
 * way (docs/BENCHMARKS.md). */
static int tls_bio_write(BIO *b, const char *data, int len) {
  dht__conn_t *c = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  uint8_t *at = c->closing || len < 0 ? NULL : out_room(c, (size_t)len);
  if (!at) return -1;
  memcpy(at, data, (size_t)len);
  return len;
}

static int tls_bio_read(BIO *b, char *out, int len) {
  dht__conn_t *c = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (c->tls_in_len == 0) {
    BIO_set_retry_read(b); /* more to come */
    return -1;
  }
  size_t n = len < 0 ? 0 : (size_t)len < c->tls_in_len ? (size_t)len : c->tls_in_len;
  memcpy(out, c->tls_in, n);
  c->tls_in += n;
  c->tls_in_len -= n;
  return (int)n;
}

/* Nothing buffers here: a flush is done at once, the rest is unknown. */
static long tls_bio_ctrl(BIO *b, int cmd, long num, void *ptr) { return cmd == BIO_CTRL_FLUSH; }

static int tls_bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

/* Made once per process, kept until it exits. */
static BIO_METHOD *tls_bio_method(void) {
  static BIO_METHOD *m;
  if (m) return m;
  BIO_METHOD *nm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "p2psip link");
  if (nm && BIO_meth_set_write(nm, tls_bio_write) && BIO_meth_set_read(nm, tls_bio_read) &&
      BIO_meth_set_ctrl(nm, tls_bio_ctrl) && BIO_meth_set_create(nm, tls_bio_create))
    return m = nm;
  BIO_meth_free(nm);
  return NULL;
}

static int tls_start(dht__conn_t *c) {
  dht_t *d = c->d;
  if (!d->tls) return 0;
  BIO_METHOD *m = tls_bio_method();
  BIO *b = m ? BIO_new(m) : NULL;
  c->ssl = b ? SSL_new(d->tls) : NULL;
  if (!c->ssl) {
    BIO_free(b);
    return -ENOMEM;
  }
  BIO_set_data(b, c);
  SSL_set_bio(c->ssl, b, b); /* one reference for both directions */
  if (c->outgoing) SSL_set_connect_state(c->ssl);
  else SSL_set_accept_state(c->ssl);
  return 0;
}

/* Drive the handshake; once it is done, learn who the peer is. */
static void tls_handshake(dht__conn_t *c) {
  int r = SSL_do_handshake(c->ssl);
  if (c->closing) return;
  if (r != 1) {
    int e = SSL_get_error(c->ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) tls_refused(c, "handshake failed");
    return;
  }
  if (dht_cert_peer_id(c->ssl, &c->auth_id)) {
    tls_refused(c, "peer not authenticated");
    return;
  }
  c->d->stats.tls_handshakes++;
  if (c->outgoing) {
    /* What makes handshakes is what to avoid: say which request opened it. */
    char a[64];
    dht_addr_str(&c->remote, a, sizeof(a));
    const char *why = dht_frame_name(c->first_type);
    log_debug("TLS link to %s up, opened for a %s", a, why ? why : "?");
  }
  conn_ready(c);
}

/* Plaintext decrypted from what arrives. */
static uint8_t tls_plain[16 * 1024];

static void tls_read(dht__conn_t *c) {
  if (!c->ready) tls_handshake(c);
  while (c->ready && !c->closing) {
    int n = SSL_read(c->ssl, tls_plain, sizeof(tls_plain));
    if (n > 0) {
      conn_feed(c, tls_plain, (size_t)n);
      continue;
    }
    int e = SSL_get_error(c->ssl, n);
    if (e == SSL_ERROR_WANT_READ) break;
    if (e == SSL_ERROR_ZERO_RETURN) conn_close(c, "peer closed TLS");
    else tls_refused(c, "session failed");
    return;
  }
}

/* OpenSSL reads everything that arrived before we return (until it wants
 * more, or the link fails): libuv's read buffer is not ours afterwards.
 * A record cut in two waits in OpenSSL's own buffer. */
static void tls_input(dht__conn_t *c, const uint8_t *data, size_t len) {
  c->tls_in = data;
  c->tls_in_len = len;
  tls_read(c);
  c->tls_in = NULL;
  c->tls_in_len = 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  dht__conn_t *c = s->data;
  if (n < 0) {
    /* A close before any byte came (a REACH probe testing that the port
     * connects, a port scan) is no failed handshake. */
    if (c->ssl && !c->ready && n == UV_EOF && SSL_in_before(c->ssl)) conn_close(c, NULL);
    else if (c->ssl && !c->ready && n == UV_EOF) tls_refused(c, "closed during the handshake");
    else conn_close(c, n == UV_EOF ? NULL : uv_strerror((int)n));
    return;
  }
  if (n == 0) return;
  c->last_active = uv_now(c->d->loop);
  if (c->ssl) tls_input(c, (const uint8_t *)buf->base, (size_t)n);
  else conn_feed(c, (const uint8_t *)buf->base, (size_t)n);
}

/* Connection lifecycle ----------------------------------------------------- */

static void conn_free(dht__conn_t *c) {
  free(c->out);
  for (wreq_t *w = c->queue, *next; w; w = next) {
    next = w->next;
    free(w);
  }
  SSL_free(c->ssl); /* frees its BIO */
  rbuf_free(c);
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
  /* What was sent before goes out first, as when each frame was written
   * at once (a failing write closes c itself). */
  dirty_unlink(c);
  if (c->out) conn_flush(c); /* with TLS also an alert that says why */
  if (c->closing) return;
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
  c->last_active = c->opened = uv_now(d->loop);
  c->next = d->conns;
  d->conns = c;
  d->stats.connections++;
  uv_tcp_nodelay(&c->tcp, 1);
  if (tls_start(c)) {
    conn_close(c, "out of memory");
    return NULL;
  }
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
  if (c->ssl) tls_handshake(c); /* our ClientHello */
  else conn_ready(c);
}

int dht__bind_source(dht_t *d, uv_tcp_t *t, const struct sockaddr_storage *to) {
  struct sockaddr_storage src = d->self.addr;
  if (src.ss_family != to->ss_family) return 0;
  socklen_t len;
  if (src.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&src;
    if (a->sin_addr.s_addr == htonl(INADDR_ANY)) return 0;
    a->sin_port = 0;
    len = sizeof(*a);
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&src;
    if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr)) return 0;
    a->sin6_port = 0;
    len = sizeof(*a);
  }
  int fd = socket(src.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  /* The port is left to connect(): a bind to (IP, 0) would reserve a port
   * for every socket whatever its destination, and hundreds of nodes on
   * one address would run out of ephemeral ports (Linux 4.2+). */
  int one = 1;
  setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
  int err = bind(fd, (const struct sockaddr *)&src, len) ? -errno : uv_tcp_open(t, fd);
  if (err) close(fd);
  return err;
}

/* The connection conn_to() would reuse for node to, or NULL. */
static dht__conn_t *conn_find(dht_t *d, const dht_node_t *to) {
  static const dht_id_t unknown;
  const struct sockaddr_storage *addr = &to->addr;
  bool any_id = dht__id_eq(&to->id, &unknown);
  for (dht__conn_t *c = d->conns; c; c = c->next) {
    if (c->closing) continue;
    if (c->outgoing ? dht_addr_eq(&c->addr, addr) && (any_id || dht__id_eq(&c->expect, &to->id) ||
                                                      (c->have_peer && dht__node_eq(&c->peer, to)))
                    : c->have_peer && dht__node_eq(&c->peer, to) && dht_addr_eq(&c->peer.addr, addr))
      return c;
  }
  return NULL;
}

bool dht__rpc_linked(dht_t *d, const dht_node_t *to) {
  dht__conn_t *c = conn_find(d, to);
  return c && c->ready;
}

static dht__conn_t *conn_to(dht_t *d, const dht_node_t *to) {
  dht__conn_t *c = conn_find(d, to);
  if (c) return c;
  const struct sockaddr_storage *addr = &to->addr;
  c = conn_new(d, true);
  if (!c) return NULL;
  c->expect = to->id;
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

static bool same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return false;
  if (a->ss_family == AF_INET)
    return ((const struct sockaddr_in *)a)->sin_addr.s_addr == ((const struct sockaddr_in *)b)->sin_addr.s_addr;
  return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
}

/* Accepted connections in all and from one IP (c itself included). */
static const char *accept_over_limit(dht_t *d, const dht__conn_t *c) {
  unsigned all = 0, same = 0;
  for (const dht__conn_t *x = d->conns; x; x = x->next) {
    if (x->outgoing || x->closing) continue;
    all++;
    same += same_ip(&x->remote, &c->remote);
  }
  if (all > d->limits.conns) return "accepted connections at the limit (conns)";
  return same > d->limits.conns_per_ip ? "connections from its address at the limit (conns_per_ip)" : NULL;
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
  const char *over = accept_over_limit(d, c);
  if (over) {
    d->stats.refused_conns++;
    conn_warn(c, over);
    return;
  }
  if (!c->ssl) conn_ready(c); /* TLS: once the client's handshake is in */
}

int dht__rpc_listen(dht_t *d) {
  uv_idle_init(d->loop, &d->flush_idle);
  uv_check_init(d->loop, &d->flush_check);
  uv_timer_init(d->loop, &d->hold_timer);
  d->flush_idle.data = d->flush_check.data = d->hold_timer.data = d;
  uv_check_start(&d->flush_check, on_flush_check);
  uv_unref((uv_handle_t *)&d->flush_check);
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

int dht__rpc_call(dht_t *d, const dht_node_t *to, uint8_t type, const uint8_t *body, size_t len,
                  dht__rpc_cb cb, void *arg) {
  if (d->closed) return DHT_ECLOSING;
  pending_t *p = calloc(1, sizeof(*p));
  if (!p) return -ENOMEM;
  dht__conn_t *c = conn_to(d, to);
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
  if (!c->first_type) c->first_type = type;
  uv_timer_init(d->loop, &p->timer);
  p->timer.data = p;
  /* A request that waits for a TLS handshake gets the handshake's time
   * too: on a loaded machine handshakes queue up, and a timeout here would
   * drop the half-made link, count its node as dead and start the same
   * work over (a join storm never converged that way). */
  unsigned ms = rpc_timeout(d);
  if (d->tls && !c->ready)
    ms += d->limits.hello_ms / 2;
  else
    p->sent = uv_now(d->loop); /* a round trip without a handshake in it */
  uv_timer_start(&p->timer, pending_timeout, ms, 0);
  pending_link(d, p);
  conn_send(c, type, p->txid, body, len);
  return 0;
}

int dht__rpc_send(dht_t *d, const dht_node_t *to, uint8_t type, const uint8_t *body, size_t len) {
  if (d->closed) return DHT_ECLOSING;
  dht__conn_t *c = conn_to(d, to);
  if (!c) return -ECONNREFUSED;
  if (!c->first_type) c->first_type = type;
  conn_send(c, type, ++d->next_txid ? d->next_txid : ++d->next_txid, body, len);
  return 0;
}

void dht__rpc_reply(dht_t *d, dht__conn_t *c, uint8_t type, uint32_t txid,
                    const uint8_t *body, size_t len) {
  conn_send(c, type, txid, body, len);
}

const struct sockaddr_storage *dht__conn_remote(const dht__conn_t *c) { return &c->remote; }

bool dht__conn_first_join(dht__conn_t *c) {
  bool first = !c->join_seen;
  c->join_seen = true;
  return first;
}

void dht__rpc_drop(dht_t *d, const struct sockaddr_storage *addr) {
  for (dht__conn_t *c = d->conns, *next; c; c = next) {
    next = c->next;
    if (dht_addr_eq(&c->addr, addr)) conn_close(c, "dropped");
  }
}

static bool conn_busy(dht_t *d, const dht__conn_t *c) {
  for (pending_t *p = d->pending; p; p = p->next)
    if (p->conn == c) return true;
  return false;
}

/* Why c should be closed now, or NULL. */
static const char *conn_overdue(dht_t *d, dht__conn_t *c, uint64_t now) {
  /* A peer cannot hold a connection, or a half-filled frame buffer, for free. */
  if (!c->have_peer && now - c->opened > d->limits.hello_ms) return "no HELLO in time (hello-ms)";
  if (c->rlen && now - c->frame_since > d->limits.frame_ms) return "frame not completed in time (frame-ms)";
  uint64_t idle = now - c->last_active;
  /* With TLS a link to a node of our routing table is kept however idle:
   * upkeep and routed requests use it again, and reopening it would cost
   * a handshake at both ends where keeping it costs ~20 KB.  Successors
   * past the first few (dht__ring_keeps) are not worth that: their links
   * close as strangers' do. */
  bool known = c->have_peer && (d->tls ? dht__ring_keeps(d, &c->peer) : dht__ring_knows(d, &c->peer));
  if (d->tls && known) return NULL;
  /* An outgoing TLS link the peer sends requests on may be one it keeps
   * (we are in its table): closing it would only make it link to us
   * again.  It closes when idle for longer than the keeper's keepalives
   * (keepalive()) let it be; it may as well be a link a node used once
   * (a vouching PING during a join storm), which would otherwise stay up
   * for minutes, ~5 of 27 links per node at N = 500. */
  if (d->tls && c->outgoing && c->peer_asked) return idle > CONN_IDLE_ASKED_MS ? "idle" : NULL;
  if (!c->outgoing) return idle > CONN_IDLE_INBOUND_MS ? "idle" : NULL;
  /* Only the side that opened a connection closes it when merely idle: an
   * EOF on an accepted connection then means the opener chose to stop or
   * died, and does not set off a liveness check on every idle close. */
  if (idle < (d->tls ? CONN_IDLE_STRANGER_TLS_MS : CONN_IDLE_STRANGER_MS)) return NULL;
  if (idle < CONN_IDLE_MS && known) return NULL;
  return conn_busy(d, c) ? NULL : "idle";
}

/* Close connections nobody used for a while (the ring's own traffic keeps
 * the neighbours' connections alive), and those that overstay a deadline. */
static void on_keepalive(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                         void *arg) {}

/* With TLS a link to our routing table is kept (conn_overdue); its other
 * end may not know us and closes it only when idle for CONN_IDLE_INBOUND_MS
 * (a link we opened) or CONN_IDLE_ASKED_MS (one it opened), so a PING now
 * and then tells it the link is still wanted. */
static void keepalive(dht_t *d, dht__conn_t *c, uint64_t now) {
  uint64_t every = c->outgoing ? CONN_IDLE_MS : CONN_KEEPALIVE_ASKED_MS;
  if (d->tls && c->ready && c->have_peer && now - c->last_active > every &&
      dht__ring_keeps(d, &c->peer) && !conn_busy(d, c))
    dht__rpc_call(d, &c->peer, PROTO_PING, NULL, 0, on_keepalive, NULL);
}

void dht__rpc_reap(dht_t *d) {
  uint64_t now = uv_now(d->loop);
  for (dht__conn_t *c = d->conns, *next; c; c = next) {
    next = c->next;
    const char *why = conn_overdue(d, c, now);
    if (!why) {
      keepalive(d, c, now);
      continue;
    }
    if (why[0] != 'i') {
      char a[64];
      dht_addr_str(&c->remote, a, sizeof(a));
      d->stats.deadline_closes++;
      log_warn("peer %s: %s; closing the connection", a, why);
    }
    c->have_peer = false; /* none of this says anything about liveness */
    conn_close(c, why);
  }
}

void dht__rpc_close_all(dht_t *d) {
  rpc_flush_all(d, true);
  uv_handle_t *flushers[] = {(uv_handle_t *)&d->flush_idle, (uv_handle_t *)&d->flush_check,
                             (uv_handle_t *)&d->hold_timer};
  for (size_t i = 0; i < 3; i++)
    if (flushers[i]->loop && !uv_is_closing(flushers[i])) uv_close(flushers[i], NULL);
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
      "reach_r", "route", "route_r", "stores", "stores_r"};
  return type > 0 && type <= PROTO_TYPE_MAX ? names[type] : NULL;
}
