/*
 * relay/tcp: TURN over TCP between client and server (RFC 8656 section
 * 2.1; the relayed transport stays UDP).  The listener shares the TURN
 * port's IP and port number with the UDP socket.
 *
 * A stream carries STUN messages and ChannelData back to back (RFC 8489
 * section 6.2.2, RFC 8656 section 12.5: ChannelData padded to 4).  Each
 * connection reads into its own RELAY_TCP_BUF bytes and handles every
 * complete message in place; a message that cannot be framed, or declares
 * more than the buffer holds, or does not parse, closes that connection
 * (counted), since a stream cannot be resynchronised.
 *
 * The connection is the allocation's 5-tuple: at most one allocation per
 * connection, replies and data for the client go down it, and closing it
 * deletes the allocation.  Bounds: at most tcp_max connections (more are
 * accepted and closed at once), a connection without an allocation that
 * sends no complete message for tcp_idle seconds is closed, and at most
 * RELAY_TCP_QUEUE bytes wait to be written to one client.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dht/log.h"
#include "relay/relay_int.h"

struct relay_conn {
  uv_tcp_t h; /* h.data is the connection */
  relay_t *r;
  relay_conn_t *next, **prevp;
  proto_stun_addr_t peer; /* the client's end of the 5-tuple */
  relay_alloc_t *alloc;
  uint64_t last_msg; /* loop time of accept or of the last complete message */
  uint8_t *buf;      /* RELAY_TCP_BUF bytes; len of them hold a partial message */
  size_t len;
  size_t queued; /* bytes in uv_write requests not yet done */
  int closing;
  int broken; /* a write failed: closed by the next tick (never from a send) */
};

/* A write libuv could not finish at once: the rest of one message. */
typedef struct {
  uv_write_t req;
  relay_conn_t *c;
  size_t n;
  uint8_t data[];
} relay_wreq_t;

relay_alloc_t *relay__conn_alloc(const relay_conn_t *c) { return c->alloc; }
void relay__conn_set_alloc(relay_conn_t *c, relay_alloc_t *a) { c->alloc = a; }

int relay__tcp_bind(const proto_stun_addr_t *at, int *fd_out) {
  struct sockaddr_storage ss;
  relay__addr_to_sa(at, &ss);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  /* Lets a restarted relay bind while old connections sit in TIME_WAIT;
   * it does not let two listeners share the port (that is SO_REUSEPORT). */
  int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  socklen_t len = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (bind(fd, (const struct sockaddr *)&ss, len) < 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  *fd_out = fd;
  return 0;
}

static void on_conn_closed(uv_handle_t *h) {
  relay_conn_t *c = h->data;
  relay_t *r = c->r;
  free(c->buf);
  free(c);
  relay__handle_gone(r);
}

static void conn_close(relay_conn_t *c, uint64_t *counter) {
  if (c->closing) return;
  relay_t *r = c->r;
  c->closing = 1;
  if (counter) (*counter)++;
  relay__alloc_conn_gone(c);
  if (c->prevp) {
    *c->prevp = c->next;
    if (c->next) c->next->prevp = c->prevp;
    r->n_conns--;
  }
  uv_close((uv_handle_t *)&c->h, on_conn_closed);
}

/* Reading --------------------------------------------------------------- */

/* The size a stream message declares (header and padding included), or 0
 * while fewer than 4 bytes are there. */
static size_t declared_len(const uint8_t *p, size_t n) {
  if (n < 4) return 0;
  size_t body = (size_t)p[2] << 8 | p[3];
  if (p[0] < 0x40) return PROTO_STUN_HDR_LEN + body;
  return (PROTO_STUN_CHAN_HDR_LEN + body + 3) & ~(size_t)3;
}

/* proto_stun_frame() plus RFC 5766 channel numbers (RELAY_CHAN_MAX_LEGACY),
 * which it refuses. */
static long frame(const uint8_t *p, size_t n) {
  if (n && p[0] >= 0x50 && p[0] < 0x80) {
    size_t want = declared_len(p, n);
    return want && n >= want ? (long)want : PROTO_NEED_MORE;
  }
  return proto_stun_frame(p, n);
}

long relay__tcp_frame(const uint8_t *p, size_t n) {
  long m = frame(p, n);
  if (m == PROTO_NEED_MORE && declared_len(p, n) > RELAY_TCP_BUF) return PROTO_ETOOBIG;
  return m;
}

static void bad_stream(relay_conn_t *c, const char *why) {
  char a[64];
  struct sockaddr_storage ss;
  relay__addr_to_sa(&c->peer, &ss);
  dht_addr_str(&ss, a, sizeof(a));
  log_debug("relay: closing TCP connection from %s: %s", a, why);
  conn_close(c, &c->r->c.tcp_closed_malformed);
}

/* Handle every complete message in the buffer, keep a partial one. */
static void drain(relay_conn_t *c) {
  relay_t *r = c->r;
  size_t off = 0;
  while (!c->closing && off < c->len) {
    const uint8_t *p = c->buf + off;
    size_t n = c->len - off;
    long m = relay__tcp_frame(p, n);
    if (m == PROTO_NEED_MORE) break;
    if (m < 0) {
      r->c.dropped_malformed++;
      bad_stream(c, m == PROTO_ETOOBIG ? "message longer than the stream buffer"
                                       : "not STUN or ChannelData");
      break;
    }
    c->last_msg = relay__now_ms(r);
    if (relay__on_message(r, c, &c->peer, p, (size_t)m) < 0) {
      bad_stream(c, "malformed message"); /* relay__on_message counted it */
      break;
    }
    off += (size_t)m;
  }
  if (c->closing) return;
  memmove(c->buf, c->buf + off, c->len - off);
  c->len -= off;
}

static void on_conn_buf(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  relay_conn_t *c = h->data;
  /* drain() never leaves a full buffer: a message that would fill it is
   * complete, and a longer one closes the connection. */
  buf->base = (char *)c->buf + c->len;
  buf->len = RELAY_TCP_BUF - c->len;
}

static void on_conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  relay_conn_t *c = s->data;
  if (nread < 0) {
    conn_close(c, &c->r->c.tcp_closed_peer);
    return;
  }
  c->len += (size_t)nread;
  c->r->c.bytes_in += (size_t)nread;
  drain(c);
}

/* Accepting ------------------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status) {
  relay_t *r = server->data;
  if (status < 0 || r->stopping) return;
  /* A connection is accepted even when it is refused: libuv stops
   * watching the listener until the pending one is taken. */
  relay_conn_t *c = calloc(1, sizeof(*c));
  if (!c) return;
  c->r = r;
  uv_tcp_init(r->loop, &c->h);
  c->h.data = c;
  r->open_handles++;
  if (uv_accept(server, (uv_stream_t *)&c->h) < 0) {
    conn_close(c, NULL);
    return;
  }
  if (r->n_conns >= r->tcp_max || !(c->buf = malloc(RELAY_TCP_BUF))) {
    conn_close(c, &r->c.tcp_refused);
    return;
  }
  struct sockaddr_storage ss;
  int sl = sizeof(ss);
  if (uv_tcp_getpeername(&c->h, (struct sockaddr *)&ss, &sl) < 0 ||
      uv_read_start((uv_stream_t *)&c->h, on_conn_buf, on_conn_read) < 0) {
    conn_close(c, NULL);
    return;
  }
  relay__addr_from_sa((const struct sockaddr *)&ss, &c->peer);
  uv_tcp_nodelay(&c->h, 1); /* media: latency matters more than segments */
  c->last_msg = relay__now_ms(r);
  c->next = r->conns, c->prevp = &r->conns;
  if (r->conns) r->conns->prevp = &c->next;
  r->conns = c;
  r->n_conns++;
  r->c.tcp_accepted++;
}

int relay__tcp_start(relay_t *r) {
  return uv_listen((uv_stream_t *)&r->tcp, 128, on_connection);
}

void relay__tcp_close_all(relay_t *r) {
  while (r->conns) conn_close(r->conns, NULL);
}

void relay__tcp_sweep(relay_t *r, uint64_t now) {
  for (relay_conn_t *c = r->conns, *next; c; c = next) {
    next = c->next;
    if (c->broken) conn_close(c, &r->c.tcp_closed_peer);
    else if (!c->alloc && now - c->last_msg >= r->tcp_idle * 1000ull)
      conn_close(c, &r->c.tcp_closed_idle);
  }
}

/* Writing --------------------------------------------------------------- */

static void on_written(uv_write_t *req, int status) {
  relay_wreq_t *w = (relay_wreq_t *)req;
  relay_conn_t *c = w->c;
  c->queued -= w->n;
  free(w);
  if (status < 0 && status != UV_ECANCELED) c->broken = 1;
}

/* Write one whole message, or nothing: a message cut short would break
 * the stream's framing, so what the kernel does not take at once is copied
 * and queued, and messages that would overfill the queue are dropped.
 * Never closes the connection here (callers may still use its
 * allocation); a failed stream is marked and closed by the next tick. */
int relay__tcp_send(relay_conn_t *c, const void *p, size_t n) {
  if (c->closing || c->broken) return -EPIPE;
  size_t done = 0;
  if (!c->queued) {
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int k = uv_try_write((uv_stream_t *)&c->h, &b, 1);
    if (k >= 0) {
      done = (size_t)k;
    } else if (k != UV_EAGAIN) {
      c->broken = 1;
      return k;
    }
    if (done == n) return 0;
  }
  if (!done && c->queued + n > RELAY_TCP_QUEUE) {
    c->r->c.tcp_queue_drops++;
    return -ENOBUFS;
  }
  relay_wreq_t *w = malloc(sizeof(*w) + (n - done));
  if (!w) {
    if (done) c->broken = 1;
    return -ENOMEM;
  }
  w->c = c, w->n = n - done;
  memcpy(w->data, (const uint8_t *)p + done, w->n);
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->n);
  int rc = uv_write(&w->req, (uv_stream_t *)&c->h, &b, 1, on_written);
  if (rc < 0) {
    free(w);
    c->broken = 1;
    return rc;
  }
  c->queued += w->n;
  return 0;
}

json_t *relay__tcp_stats(const relay_t *r) {
  const relay_counters_t *k = &r->c;
  return json_pack("{sI sI sI sI sI sI sI sI}", "connections", (json_int_t)r->n_conns, "max",
                   (json_int_t)r->tcp_max, "accepted", (json_int_t)k->tcp_accepted, "refused",
                   (json_int_t)k->tcp_refused, "closed_malformed",
                   (json_int_t)k->tcp_closed_malformed, "closed_idle",
                   (json_int_t)k->tcp_closed_idle, "closed_by_peer",
                   (json_int_t)k->tcp_closed_peer, "queue_drops", (json_int_t)k->tcp_queue_drops);
}
