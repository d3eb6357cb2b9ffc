/*
 * relay/probe: which of the listed relays answer now.  A relay killed
 * without leaving stays under turn:OVERLAY until its value expires (one
 * --refresh); a node provisioning a phone (phone-config) asks each relay
 * for a STUN Binding over UDP (RFC 8489 section 6) and keeps those whose
 * success response, with the transaction id it sent, comes back in time.
 * One socket per relay, so an answer is matched by socket and id alone;
 * whatever else arrives there is ignored.
 */
#include <errno.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "relay/relay_int.h"

typedef struct probe probe_t;

typedef struct {
  uv_udp_t h;
  probe_t *p;
  uint8_t txid[PROTO_STUN_TXID_LEN];
  int answered;
} target_t;

struct probe {
  uv_timer_t timer;
  target_t *t;
  size_t n, answers, open; /* targets, answered, handles not yet closed */
  json_t *list;            /* the entries, in the caller's order */
  void (*cb)(json_t *alive, void *arg);
  void *arg;
  uint8_t rbuf[512];
};

static void release(probe_t *p) {
  if (--p->open) return;
  json_decref(p->list);
  free(p->t);
  free(p);
}

static void on_timer_closed(uv_handle_t *h) { release(h->data); }
static void on_target_closed(uv_handle_t *h) { release(((target_t *)h->data)->p); }

/* Every relay answered, or time is up: report once, then close. */
static void finish(probe_t *p) {
  if (!p->cb) return;
  json_t *alive = json_array();
  for (size_t i = 0; i < p->n; i++)
    if (p->t[i].answered) json_array_append(alive, json_array_get(p->list, i));
  void (*cb)(json_t *, void *) = p->cb;
  p->cb = NULL;
  cb(alive, p->arg);
  uv_close((uv_handle_t *)&p->timer, on_timer_closed);
  for (size_t i = 0; i < p->n; i++)
    if (p->t[i].p) uv_close((uv_handle_t *)&p->t[i].h, on_target_closed);
}

static void on_timeout(uv_timer_t *t) { finish(t->data); }

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  target_t *t = h->data;
  *buf = uv_buf_init((char *)t->p->rbuf, sizeof(t->p->rbuf));
}

static void on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *from,
                    unsigned flags) {
  target_t *t = h->data;
  proto_stun_msg_t m;
  if (nread <= 0 || t->answered || !t->p->cb || (flags & UV_UDP_PARTIAL)) return;
  if (proto_stun_parse((const uint8_t *)buf->base, (size_t)nread, &m) < 0) return;
  if (m.method != PROTO_STUN_BINDING || m.cls != PROTO_STUN_SUCCESS ||
      memcmp(m.txid, t->txid, sizeof(t->txid)) != 0)
    return;
  t->answered = 1;
  if (++t->p->answers == t->p->n) finish(t->p);
}

/* Open target t and send its request.  A target that fails here just never
 * answers. */
static void start(probe_t *p, target_t *t, const struct sockaddr_storage *to) {
  if (uv_udp_init_ex(p->timer.loop, &t->h, to->ss_family) < 0) return;
  t->p = p, t->h.data = t;
  p->open++;
  uint8_t buf[64];
  proto_stun_builder_t b;
  if (RAND_bytes(t->txid, sizeof(t->txid)) != 1) return; /* ids must not be guessed */
  proto_stun_begin(&b, buf, sizeof(buf), proto_stun_type(PROTO_STUN_BINDING, PROTO_STUN_REQUEST), t->txid);
  proto_stun_add_fingerprint(&b);
  long len = proto_stun_finish(&b);
  if (len < 0 || uv_udp_recv_start(&t->h, on_alloc, on_recv) < 0) return;
  uv_buf_t ub = uv_buf_init((char *)buf, (unsigned)len);
  (void)uv_udp_try_send(&t->h, &ub, 1, (const struct sockaddr *)to);
}

int relay_probe(uv_loop_t *loop, json_t *relays, unsigned timeout_ms, void (*cb)(json_t *alive, void *arg),
                void *arg) {
  size_t n = json_array_size(relays);
  if (n > RELAY_PROBE_MAX) return -E2BIG;
  probe_t *p = calloc(1, sizeof(*p));
  target_t *t = calloc(n ? n : 1, sizeof(*t));
  if (!p || !t) {
    free(p), free(t);
    return -ENOMEM;
  }
  *p = (probe_t){.t = t, .n = n, .open = 1, .list = json_incref(relays), .cb = cb, .arg = arg};
  uv_timer_init(loop, &p->timer);
  p->timer.data = p;
  for (size_t i = 0; i < n; i++) {
    struct sockaddr_storage ss;
    if (dht_addr_parse(json_string_value(json_object_get(json_array_get(relays, i), "addr")), &ss) == 0)
      start(p, &t[i], &ss);
  }
  /* Reported from the loop, never from inside this call. */
  uv_timer_start(&p->timer, on_timeout, n ? timeout_ms : 0, 0);
  return 0;
}
