/* Peer protocol codec: round trips, every prefix incomplete, rejection of
 * garbage, oversized and truncated input. */
#include <string.h>

#include "proto/proto.h"
#include "tests/unit/test.h"

static proto_node_t node(uint8_t tag, uint8_t family) {
  proto_node_t n;
  memset(&n, 0, sizeof(n));
  memset(n.id, tag, sizeof(n.id));
  n.family = family;
  for (int i = 0; i < (family == 4 ? 4 : 16); i++) n.ip[i] = (uint8_t)(tag + i);
  n.port = (uint16_t)(1000 + tag);
  return n;
}

static void test_header(void) {
  uint8_t buf[PROTO_HDR_LEN + 5] = {0};
  proto_frame_header(buf, PROTO_FIND, 0xdeadbeef, 5);
  memcpy(buf + PROTO_HDR_LEN, "hello", 5);
  proto_frame_t f;
  ASSERT_EQ(proto_frame_decode(buf, sizeof(buf), &f), (long)sizeof(buf));
  ASSERT_EQ(f.type, PROTO_FIND);
  ASSERT_UINT_EQ(f.txid, 0xdeadbeef);
  ASSERT_EQ(f.body_len, 5);
  ASSERT_MEM_EQ(f.body, "hello", 5);
  /* Every strict prefix needs more. */
  for (size_t i = 0; i < sizeof(buf); i++) ASSERT_EQ(proto_frame_decode(buf, i, &f), PROTO_NEED_MORE);
  /* Two frames back to back: the first is returned alone. */
  uint8_t two[2 * sizeof(buf)];
  memcpy(two, buf, sizeof(buf));
  memcpy(two + sizeof(buf), buf, sizeof(buf));
  ASSERT_EQ(proto_frame_decode(two, sizeof(two), &f), (long)sizeof(buf));
}

static void test_header_rejects(void) {
  uint8_t buf[PROTO_HDR_LEN];
  proto_frame_t f;
  proto_frame_header(buf, PROTO_PING, 1, 0);
  buf[0] = 'G'; /* "GET / HTTP/1.1" is told off at its first byte */
  ASSERT_EQ(proto_frame_decode(buf, 1, &f), PROTO_EMAGIC);
  proto_frame_header(buf, PROTO_PING, 1, 0);
  buf[1] = 'X';
  ASSERT_EQ(proto_frame_decode(buf, 2, &f), PROTO_EMAGIC);
  proto_frame_header(buf, PROTO_PING, 1, 0);
  buf[2] = 9;
  ASSERT_EQ(proto_frame_decode(buf, sizeof(buf), &f), PROTO_EVERSION);
  proto_frame_header(buf, 0, 1, 0);
  ASSERT_EQ(proto_frame_decode(buf, sizeof(buf), &f), PROTO_EINVAL);
  proto_frame_header(buf, PROTO_TYPE_MAX + 1, 1, 0);
  ASSERT_EQ(proto_frame_decode(buf, 4, &f), PROTO_EINVAL);
  /* A declared body above the bound is refused before the body arrives. */
  proto_frame_header(buf, PROTO_STORE, 1, PROTO_MAX_BODY + 1);
  ASSERT_EQ(proto_frame_decode(buf, sizeof(buf), &f), PROTO_ETOOBIG);
  proto_frame_header(buf, PROTO_STORE, 1, 0xffffffffu);
  ASSERT_EQ(proto_frame_decode(buf, sizeof(buf), &f), PROTO_ETOOBIG);
}

static void test_hello(void) {
  proto_hello_t h = {.self = node(7, 6), .overlay = "overlay.test", .overlay_len = 12}, g;
  uint8_t buf[512];
  long n = proto_hello_encode(buf, sizeof(buf), &h);
  ASSERT_GT(n, 0);
  ASSERT_OK(proto_hello_decode(buf, (size_t)n, &g));
  ASSERT_MEM_EQ(&g.self, &h.self, sizeof(h.self));
  ASSERT_EQ(g.overlay_len, 12);
  ASSERT_MEM_EQ(g.overlay, "overlay.test", 12);
  for (long i = 0; i < n; i++) ASSERT(proto_hello_decode(buf, (size_t)i, &g) < 0);
  buf[n] = 0;
  ASSERT_EQ(proto_hello_decode(buf, (size_t)n + 1, &g), PROTO_ETRAIL);
  ASSERT_EQ(proto_hello_encode(buf, 10, &h), PROTO_ENOSPC);
  /* An address family other than 4 or 6 is refused. */
  buf[PROTO_ID_LEN] = 5;
  ASSERT_EQ(proto_hello_decode(buf, (size_t)n, &g), PROTO_EINVAL);
}

static void test_find_neigh(void) {
  proto_find_r_t r = {.flags = PROTO_FIND_DONE, .n = 3}, s;
  r.nodes[0] = node(1, 4);
  r.nodes[1] = node(2, 6);
  r.nodes[2] = node(3, 4);
  uint8_t buf[1024];
  long n = proto_find_r_encode(buf, sizeof(buf), &r);
  ASSERT_GT(n, 0);
  ASSERT_OK(proto_find_r_decode(buf, (size_t)n, &s));
  ASSERT_EQ(s.n, 3);
  ASSERT_EQ(s.flags, PROTO_FIND_DONE);
  ASSERT_MEM_EQ(&s.nodes[1], &r.nodes[1], sizeof(r.nodes[1]));
  for (long i = 0; i < n; i++) ASSERT(proto_find_r_decode(buf, (size_t)i, &s) < 0);
  /* A declared count above the bound never reaches the loop. */
  buf[1] = PROTO_MAX_NODES + 1;
  ASSERT_EQ(proto_find_r_decode(buf, (size_t)n, &s), PROTO_ETOOBIG);
  /* An empty answer names no one and is refused. */
  uint8_t empty[2] = {0, 0};
  ASSERT_EQ(proto_find_r_decode(empty, 2, &s), PROTO_EINVAL);

  proto_neigh_r_t nb = {.has_pred = 1, .pred = node(9, 4), .n = 2}, nc;
  nb.succ[0] = node(10, 4);
  nb.succ[1] = node(11, 6);
  n = proto_neigh_r_encode(buf, sizeof(buf), &nb);
  ASSERT_OK(proto_neigh_r_decode(buf, (size_t)n, &nc));
  ASSERT_EQ(nc.has_pred, 1);
  ASSERT_MEM_EQ(&nc.pred, &nb.pred, sizeof(nb.pred));
  ASSERT_EQ(nc.n, 2);
  for (long i = 0; i < n; i++) ASSERT(proto_neigh_r_decode(buf, (size_t)i, &nc) < 0);
  buf[0] = 2;
  ASSERT_EQ(proto_neigh_r_decode(buf, (size_t)n, &nc), PROTO_EINVAL);

  proto_find_t q, q2;
  memset(q.key, 0xab, sizeof(q.key));
  n = proto_find_encode(buf, sizeof(buf), &q);
  ASSERT_EQ(n, PROTO_ID_LEN);
  ASSERT_OK(proto_find_decode(buf, (size_t)n, &q2));
  ASSERT_EQ(proto_find_decode(buf, (size_t)n - 1, &q2), PROTO_ETRUNC);
  ASSERT_EQ(proto_find_decode(buf, (size_t)n + 1, &q2), PROTO_ETRAIL);
}

static void test_store(void) {
  uint8_t key[PROTO_ID_LEN], buf[4096];
  memset(key, 0x42, sizeof(key));
  proto_wcur_t w = {buf, buf + sizeof(buf), 0};
  proto_store_begin(&w, key, PROTO_STORE_REPLICA);
  for (int i = 0; i < 5; i++) {
    char vid[8];
    snprintf(vid, sizeof(vid), "v%d", i);
    proto_value_t v = {.vid = (const uint8_t *)vid, .vid_len = (uint8_t)strlen(vid), .kind = 1,
                       .flags = i == 4 ? PROTO_VF_TOMBSTONE : 0, .seq = 1000u + (unsigned)i,
                       .ttl = 60, .body = (const uint8_t *)"{\"a\":1}", .body_len = 7};
    memset(v.owner, i, sizeof(v.owner));
    proto_store_add(&w, &v);
  }
  long n = proto_store_end(&w, buf);
  ASSERT_GT(n, 0);
  proto_store_t s;
  ASSERT_OK(proto_store_decode(buf, (size_t)n, &s));
  ASSERT_EQ(s.count, 5);
  ASSERT_EQ(s.flags, PROTO_STORE_REPLICA);
  ASSERT_MEM_EQ(s.key, key, sizeof(key));
  proto_value_t v;
  int i = 0;
  while (proto_value_next(&s.values, &v) == 1) {
    ASSERT_EQ(v.seq, 1000 + i);
    ASSERT_EQ(v.vid_len, 2);
    ASSERT_EQ(v.body_len, 7);
    ASSERT_EQ(v.owner[0], i);
    ASSERT_EQ(v.flags, i == 4 ? PROTO_VF_TOMBSTONE : 0);
    i++;
  }
  ASSERT_EQ(i, 5);
  for (long k = 0; k < n; k++) ASSERT(proto_store_decode(buf, (size_t)k, &s) < 0);
  /* A value body declared above its bound. */
  size_t body_len_at = PROTO_ID_LEN + 3 + 1 + 2 + 2 + PROTO_ID_LEN + 8 + 4;
  uint8_t bad[4096];
  memcpy(bad, buf, (size_t)n);
  bad[body_len_at] = 0x7f;
  ASSERT_EQ(proto_store_decode(bad, (size_t)n, &s), PROTO_ETOOBIG);
  /* A zero-length value id. */
  memcpy(bad, buf, (size_t)n);
  bad[PROTO_ID_LEN + 3] = 0;
  ASSERT(proto_store_decode(bad, (size_t)n, &s) < 0);
  /* More values declared than present. */
  memcpy(bad, buf, (size_t)n);
  bad[PROTO_ID_LEN + 2] = 6;
  ASSERT_EQ(proto_store_decode(bad, (size_t)n, &s), PROTO_ETRUNC);
  /* Fewer declared than present: trailing bytes. */
  bad[PROTO_ID_LEN + 2] = 4;
  ASSERT_EQ(proto_store_decode(bad, (size_t)n, &s), PROTO_ETRAIL);

  proto_store_r_t r = {.status = 0, .stored = 5, .replicas = 3}, r2;
  n = proto_store_r_encode(buf, sizeof(buf), &r);
  ASSERT_OK(proto_store_r_decode(buf, (size_t)n, &r2));
  ASSERT_EQ(r2.stored, 5);
  ASSERT_EQ(r2.replicas, 3);
  ASSERT(r2.before == NULL);
  /* With the key's values before (PROTO_STORE_READ): a FETCH_R body. */
  uint8_t before[PROTO_ID_LEN + 3], rb[64];
  proto_wcur_t bw = {before, before + sizeof(before), 0};
  proto_store_begin(&bw, key, PROTO_FETCH_PRIMARY);
  long bn = proto_store_end(&bw, before);
  ASSERT_EQ(bn, (long)sizeof(before));
  r.before = before, r.before_len = (size_t)bn;
  n = proto_store_r_encode(rb, sizeof(rb), &r);
  ASSERT_EQ(n, 4 + bn);
  ASSERT_OK(proto_store_r_decode(rb, (size_t)n, &r2));
  ASSERT(r2.before == rb + 4 && r2.before_len == (size_t)bn);
  ASSERT_EQ(r2.stored, 5);
  /* Trailing bytes that are not a FETCH_R body are refused. */
  ASSERT(proto_store_r_decode(rb, (size_t)n - 1, &r2) < 0);
  ASSERT(proto_store_r_decode(rb, 5, &r2) < 0);
  ASSERT(proto_store_r_encode(rb, 10, &r) < 0); /* no room for the values */
}

static void test_stores(void) {
  uint8_t key[PROTO_ID_LEN], one[64], buf[256];
  memset(key, 7, sizeof(key));
  proto_wcur_t w = {one, one + sizeof(one), 0};
  proto_store_begin(&w, key, 0);
  long on = proto_store_end(&w, one);
  ASSERT(on > 0);
  w = (proto_wcur_t){buf, buf + sizeof(buf), 0};
  proto_stores_begin(&w);
  proto_stores_add(&w, one, (size_t)on);
  proto_stores_add(&w, one, (size_t)on);
  long n = proto_stores_end(&w, buf, 2);
  ASSERT_EQ(n, 2 + 2 * (4 + on));
  proto_stores_t ss;
  ASSERT_OK(proto_stores_decode(buf, (size_t)n, &ss));
  ASSERT_EQ(ss.count, 2);
  const uint8_t *b;
  size_t len;
  ASSERT_EQ(proto_stores_next(&ss.items, &b, &len), 1);
  ASSERT(b == buf + 6 && len == (size_t)on);
  ASSERT_EQ(proto_stores_next(&ss.items, &b, &len), 1);
  ASSERT_EQ(proto_stores_next(&ss.items, &b, &len), 0);
  /* A STORE inside that does not decode, a count above what is there or
   * above the bound, trailing bytes: all refused whole. */
  buf[6 + PROTO_ID_LEN + 2] = 1;
  ASSERT(proto_stores_decode(buf, (size_t)n, &ss) < 0);
  buf[6 + PROTO_ID_LEN + 2] = 0;
  buf[1] = 3;
  ASSERT(proto_stores_decode(buf, (size_t)n, &ss) < 0);
  buf[1] = 1;
  ASSERT_EQ(proto_stores_decode(buf, (size_t)n, &ss), PROTO_ETRAIL);
  buf[0] = 0xff;
  ASSERT_EQ(proto_stores_decode(buf, (size_t)n, &ss), PROTO_ETOOBIG);
  uint8_t st[3] = {0, PROTO_STORE_NOT_MINE, PROTO_STORE_NEED_FULL};
  proto_stores_r_t r = {.count = 3, .status = st}, r2;
  n = proto_stores_r_encode(buf, sizeof(buf), &r);
  ASSERT_EQ(n, 5);
  ASSERT_OK(proto_stores_r_decode(buf, (size_t)n, &r2));
  ASSERT(r2.count == 3 && r2.status[1] == PROTO_STORE_NOT_MINE);
  ASSERT(proto_stores_r_decode(buf, (size_t)n - 1, &r2) < 0);
}

static void test_reach(void) {
  uint8_t buf[128];
  proto_reach_t q = {.port = 5060}, q2;
  long n = proto_reach_encode(buf, sizeof(buf), &q);
  ASSERT_OK(proto_reach_decode(buf, (size_t)n, &q2));
  ASSERT_EQ(q2.port, 5060);
  buf[0] = buf[1] = 0; /* port 0 is refused */
  ASSERT_EQ(proto_reach_decode(buf, (size_t)n, &q2), PROTO_EINVAL);
  proto_reach_r_t r = {.reachable = 1, .seen = node(0, 4)}, r2;
  n = proto_reach_r_encode(buf, sizeof(buf), &r);
  ASSERT_OK(proto_reach_r_decode(buf, (size_t)n, &r2));
  ASSERT_EQ(r2.reachable, 1);
  ASSERT_MEM_EQ(&r2.seen, &r.seen, sizeof(r.seen));
  for (long i = 0; i < n; i++) ASSERT(proto_reach_r_decode(buf, (size_t)i, &r2) < 0);
  buf[0] = 2;
  ASSERT_EQ(proto_reach_r_decode(buf, (size_t)n, &r2), PROTO_EINVAL);
}

static void test_route(void) {
  uint8_t inner[PROTO_ID_LEN], buf[256];
  memset(inner, 7, sizeof(inner));
  proto_route_t q = {.flags = PROTO_ROUTE_PASSED, .skip = 1, .hops = 3, .origin = node(9, 6),
                     .type = PROTO_FETCH, .body = inner, .body_len = sizeof(inner)}, q2;
  memset(q.key, 0xab, sizeof(q.key));
  long n = proto_route_encode(buf, sizeof(buf), &q);
  ASSERT(n > 0);
  ASSERT_OK(proto_route_decode(buf, (size_t)n, &q2));
  ASSERT_MEM_EQ(q2.key, q.key, PROTO_ID_LEN);
  ASSERT_EQ(q2.flags, PROTO_ROUTE_PASSED);
  ASSERT_EQ(q2.skip, 1);
  ASSERT_EQ(q2.hops, 3);
  ASSERT_MEM_EQ(&q2.origin, &q.origin, sizeof(q.origin));
  ASSERT_EQ(q2.type, PROTO_FETCH);
  ASSERT_EQ(q2.body_len, sizeof(inner));
  ASSERT_MEM_EQ(q2.body, inner, sizeof(inner));
  ASSERT(q2.body + q2.body_len == buf + n); /* points into the frame */
  for (long i = 0; i < n; i++) ASSERT(proto_route_decode(buf, (size_t)i, &q2) < 0);
  uint8_t big[300];
  memcpy(big, buf, (size_t)n);
  big[n] = 0;
  ASSERT_EQ(proto_route_decode(big, (size_t)n + 1, &q2), PROTO_ETRAIL);
  /* Unknown flags, a response inside, a ROUTE inside: refused. */
  q.flags = 0x80;
  n = proto_route_encode(buf, sizeof(buf), &q);
  ASSERT_EQ(proto_route_decode(buf, (size_t)n, &q2), PROTO_EINVAL);
  q.flags = 0;
  q.type = PROTO_FETCH_R;
  n = proto_route_encode(buf, sizeof(buf), &q);
  ASSERT_EQ(proto_route_decode(buf, (size_t)n, &q2), PROTO_EINVAL);
  q.type = PROTO_ROUTE;
  n = proto_route_encode(buf, sizeof(buf), &q);
  ASSERT_EQ(proto_route_decode(buf, (size_t)n, &q2), PROTO_EINVAL);
  /* A declared inner length above the frame's bound. */
  q.type = PROTO_FETCH;
  n = proto_route_encode(buf, sizeof(buf), &q);
  size_t at = (size_t)n - sizeof(inner) - 4;
  buf[at] = 0xff;
  ASSERT_EQ(proto_route_decode(buf, (size_t)n, &q2), PROTO_ETOOBIG);

  proto_store_r_t sr = {.stored = 1, .replicas = 3};
  uint8_t sbuf[8];
  long sn = proto_store_r_encode(sbuf, sizeof(sbuf), &sr);
  proto_route_r_t r = {.hops = 2, .responder = node(4, 4), .type = PROTO_STORE_R, .body = sbuf,
                       .body_len = (uint32_t)sn}, r2;
  n = proto_route_r_encode(buf, sizeof(buf), &r);
  ASSERT_OK(proto_route_r_decode(buf, (size_t)n, &r2));
  ASSERT_EQ(r2.status, 0);
  ASSERT_EQ(r2.hops, 2);
  ASSERT_MEM_EQ(&r2.responder, &r.responder, sizeof(r.responder));
  ASSERT_EQ(r2.type, PROTO_STORE_R);
  ASSERT_MEM_EQ(r2.body, sbuf, (size_t)sn);
  for (long i = 0; i < n; i++) ASSERT(proto_route_r_decode(buf, (size_t)i, &r2) < 0);
  /* A failure carries nothing; an answer carries a response. */
  r.status = PROTO_ROUTE_FAILED;
  n = proto_route_r_encode(buf, sizeof(buf), &r);
  ASSERT_EQ(proto_route_r_decode(buf, (size_t)n, &r2), PROTO_EINVAL);
  r.type = 0;
  r.body_len = 0;
  n = proto_route_r_encode(buf, sizeof(buf), &r);
  ASSERT_OK(proto_route_r_decode(buf, (size_t)n, &r2));
  ASSERT_EQ(r2.status, PROTO_ROUTE_FAILED);
  r.status = 0;
  r.type = PROTO_STORE;
  n = proto_route_r_encode(buf, sizeof(buf), &r);
  ASSERT_EQ(proto_route_r_decode(buf, (size_t)n, &r2), PROTO_EINVAL);
}

static void test_garbage(void) {
  /* Pseudo-random bytes never crash a decoder and never decode as a frame
   * that claims more than the buffer holds. */
  uint32_t x = 12345;
  uint8_t buf[256];
  for (int round = 0; round < 20000; round++) {
    size_t len = (size_t)(round % sizeof(buf));
    for (size_t i = 0; i < len; i++) {
      x = x * 1103515245u + 12345u;
      buf[i] = (uint8_t)(x >> 16);
    }
    if (round & 1 && len >= 4) {
      buf[0] = 'P';
      buf[1] = 'S';
      buf[2] = 1;
    }
    proto_frame_t f;
    long n = proto_frame_decode(buf, len, &f);
    ASSERT(n <= (long)len);
    proto_store_t s;
    proto_neigh_r_t nr;
    proto_find_r_t fr;
    proto_hello_t h;
    if (proto_store_decode(buf, len, &s) == 0) {
      proto_value_t v;
      while (proto_value_next(&s.values, &v) == 1) ASSERT(v.body + v.body_len <= buf + len);
    }
    (void)proto_neigh_r_decode(buf, len, &nr);
    (void)proto_find_r_decode(buf, len, &fr);
    (void)proto_hello_decode(buf, len, &h);
    proto_route_t rq;
    proto_route_r_t rr;
    if (proto_route_decode(buf, len, &rq) == 0) ASSERT(rq.body + rq.body_len == buf + len);
    if (proto_route_r_decode(buf, len, &rr) == 0) ASSERT(rr.body + rr.body_len == buf + len);
  }
}

int main(void) {
  test_header();
  test_header_rejects();
  test_hello();
  test_find_neigh();
  test_store();
  test_stores();
  test_reach();
  test_route();
  test_garbage();
  printf("test_frame: ok\n");
  return 0;
}
