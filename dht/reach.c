/*
 * Reachability: a node asks a peer which address its request came from
 * (its reflexive address) and whether the peer can connect back to it.
 * node/ uses both to decide at run time whether the node is public.
 *
 * The answering side connects only to the address the request came from,
 * so no node can be used to probe a third party.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dht/internal.h"
#include "dht/log.h"

#define REACH_CONNECT_MS 700 /* below the asker's RPC timeout */

/* A probe in flight is listed on its node: closing the node ends each
 * (dht__reach_close) before anything else closes its handles. */
typedef struct dht__probe {
  uv_tcp_t tcp;
  uv_connect_t req;
  uv_timer_t timer;
  dht_t *d;
  dht__conn_t *conn;
  uint32_t txid;
  proto_reach_r_t r;
  int closing;
  struct dht__probe *next, **prevp;
} probe_t;

static void probe_closed(uv_handle_t *h) {
  probe_t *p = h->data;
  if (++p->closing == 3) free(p);
}

static void probe_finish(probe_t *p, int reachable) {
  if (p->closing) return;
  p->closing = 1;
  if ((*p->prevp = p->next)) p->next->prevp = p->prevp;
  p->r.reachable = (uint8_t)reachable;
  uint8_t buf[64];
  long n = proto_reach_r_encode(buf, sizeof(buf), &p->r);
  if (n > 0) dht__rpc_reply(p->d, p->conn, PROTO_REACH_R, p->txid, buf, (size_t)n);
  dht__conn_unref(p->conn);
  uv_timer_stop(&p->timer);
  uv_close((uv_handle_t *)&p->timer, probe_closed);
  uv_close((uv_handle_t *)&p->tcp, probe_closed);
}

static void on_probe_connect(uv_connect_t *req, int status) {
  probe_finish(req->data, status == 0);
}

static void on_probe_timeout(uv_timer_t *t) { probe_finish(t->data, 0); }

int dht__reach_answer(dht_t *d, dht__conn_t *c, const proto_frame_t *f) {
  proto_reach_t q;
  int err = proto_reach_decode(f->body, f->body_len, &q);
  if (err) return err;
  const struct sockaddr_storage *from = dht__conn_remote(c);
  if (from->ss_family != AF_INET && from->ss_family != AF_INET6) return 0;
  probe_t *p = calloc(1, sizeof(*p));
  if (!p) return 0;
  p->d = d;
  p->conn = c;
  p->txid = f->txid;
  dht_node_t seen = {.addr = *from};
  dht__node_to_proto(&seen, &p->r.seen);
  struct sockaddr_storage to = *from;
  if (to.ss_family == AF_INET) ((struct sockaddr_in *)&to)->sin_port = htons(q.port);
  else ((struct sockaddr_in6 *)&to)->sin6_port = htons(q.port);
  dht__conn_ref(c);
  if ((p->next = d->probes)) p->next->prevp = &p->next;
  p->prevp = &d->probes;
  d->probes = p;
  uv_tcp_init(d->loop, &p->tcp);
  uv_timer_init(d->loop, &p->timer);
  p->tcp.data = p->timer.data = p->req.data = p;
  p->closing = 0;
  uv_timer_start(&p->timer, on_probe_timeout, REACH_CONNECT_MS, 0);
  if (dht__bind_source(d, &p->tcp, &to) ||
      uv_tcp_connect(&p->req, &p->tcp, (const struct sockaddr *)&to, on_probe_connect))
    probe_finish(p, 0);
  return 0;
}

/* At close: a probe's handles are closed here, with their callbacks, not
 * by whoever closes every handle next; its connect, cancelled, then finds
 * it finished.  (The cancelled connect closed handles closed already, and
 * libuv aborted: a node stopped while probing.) */
void dht__reach_close(dht_t *d) {
  for (int i = 0; d->probes && i < 1000000; i++) probe_finish(d->probes, 0);
}

/* Asking ------------------------------------------------------------------- */

typedef struct {
  dht_reach_cb cb;
  void *arg;
} ask_t;

static void on_reach_r(dht_t *d, int status, const proto_frame_t *f, const dht_node_t *peer,
                       void *arg) {
  ask_t *a = arg;
  proto_reach_r_t r;
  if (status == 0 && proto_reach_r_decode(f->body, f->body_len, &r) == 0) {
    dht_node_t seen;
    dht__node_from_proto(&r.seen, &seen);
    a->cb(d, 0, &seen.addr, r.reachable, a->arg);
  } else {
    a->cb(d, status ? status : -EPROTO, NULL, 0, a->arg);
  }
  free(a);
}

int dht_check_reachable(dht_t *d, uint16_t port, dht_reach_cb cb, void *arg) {
  /* Any live peer will do; the successor is the one we talk to anyway. */
  const dht_node_t *peer = d->n_succ ? &d->succ[0] : d->has_pred ? &d->pred : NULL;
  if (!peer && !d->closed && !d->leaving) return -EAGAIN;
  return dht_ask_reachable(d, peer, port, cb, arg);
}

int dht_ask_reachable(dht_t *d, const dht_node_t *peer, uint16_t port, dht_reach_cb cb,
                      void *arg) {
  if (d->closed || d->leaving) return DHT_ECLOSING;
  if (!peer || dht__id_eq(&peer->id, &d->self.id)) return -EINVAL;
  if (port == 0) {
    const struct sockaddr_storage *a = &d->self.addr;
    port = ntohs(a->ss_family == AF_INET ? ((const struct sockaddr_in *)a)->sin_port
                                         : ((const struct sockaddr_in6 *)a)->sin6_port);
  }
  ask_t *a = malloc(sizeof(*a));
  if (!a) return -ENOMEM;
  a->cb = cb;
  a->arg = arg;
  uint8_t buf[8];
  proto_reach_t q = {.port = port};
  long n = proto_reach_encode(buf, sizeof(buf), &q);
  int err = dht__rpc_call(d, peer, PROTO_REACH, buf, (size_t)n, on_reach_r, a);
  if (err) free(a);
  return err;
}
