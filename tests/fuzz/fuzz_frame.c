/* libFuzzer target for the peer protocol: the first byte picks a decoder,
 * the rest is its input.  Whatever decodes must re-encode to the same
 * bytes, since every field is consumed exactly and encodings are unique. */
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "tests/fuzz/fuzz.h"

static uint8_t out[PROTO_MAX_BODY + 64];

static void same(long n, const uint8_t *data, size_t size) {
  CHECK(n == (long)size);
  CHECK(memcmp(out, data, size) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  /* Selector bytes 0xf0 and up pick the ROUTE codecs, 0xe8-0xef the
   * STORES ones (added later: the other values keep the decoders their
   * corpus files were found for). */
  uint8_t which = data[0] >= 0xf0   ? 10 + (data[0] & 1)
                  : data[0] >= 0xe8 ? 12 + (data[0] & 1)
                                    : data[0] % 10;
  data++;
  size--;
  switch (which) {
  case 0: {
    proto_frame_t f;
    long n = proto_frame_decode(data, size, &f);
    if (n > 0) {
      CHECK((size_t)n <= size && f.body + f.body_len == data + n);
      proto_frame_header(out, f.type, f.txid, f.body_len);
      CHECK(memcmp(out, data, PROTO_HDR_LEN) == 0);
    }
    break;
  }
  case 1: {
    proto_hello_t h;
    if (proto_hello_decode(data, size, &h) == 0) same(proto_hello_encode(out, sizeof(out), &h), data, size);
    break;
  }
  case 2: {
    proto_node_t n;
    if (proto_node_decode(data, size, &n) == 0) same(proto_node_encode(out, sizeof(out), &n), data, size);
    break;
  }
  case 3: {
    proto_find_t q;
    if (proto_find_decode(data, size, &q) == 0) same(proto_find_encode(out, sizeof(out), &q), data, size);
    break;
  }
  case 4: {
    proto_find_r_t r;
    if (proto_find_r_decode(data, size, &r) == 0) same(proto_find_r_encode(out, sizeof(out), &r), data, size);
    break;
  }
  case 5: {
    proto_neigh_r_t r;
    if (proto_neigh_r_decode(data, size, &r) == 0) same(proto_neigh_r_encode(out, sizeof(out), &r), data, size);
    break;
  }
  case 6: {
    proto_store_r_t r;
    if (proto_store_r_decode(data, size, &r) == 0) same(proto_store_r_encode(out, sizeof(out), &r), data, size);
    break;
  }
  case 7: {
    proto_store_t s;
    if (proto_store_decode(data, size, &s) != 0) break;
    proto_wcur_t w = {out, out + sizeof(out), 0};
    proto_store_begin(&w, s.key, s.flags);
    proto_value_t v;
    int rc, count = 0;
    while ((rc = proto_value_next(&s.values, &v)) == 1) {
      proto_store_add(&w, &v);
      count++;
    }
    CHECK(rc == 0 && count == s.count);
    same(proto_store_end(&w, out), data, size);
    break;
  }
  case 8: {
    proto_reach_t q;
    if (proto_reach_decode(data, size, &q) == 0) same(proto_reach_encode(out, sizeof(out), &q), data, size);
    break;
  }
  case 9: {
    proto_reach_r_t r;
    if (proto_reach_r_decode(data, size, &r) == 0) same(proto_reach_r_encode(out, sizeof(out), &r), data, size);
    break;
  }
  case 10: {
    proto_route_t q;
    if (proto_route_decode(data, size, &q) == 0) same(proto_route_encode(out, sizeof(out), &q), data, size);
    break;
  }
  case 11: {
    proto_route_r_t r;
    if (proto_route_r_decode(data, size, &r) == 0) same(proto_route_r_encode(out, sizeof(out), &r), data, size);
    break;
  }
  case 12: {
    proto_stores_t ss;
    if (proto_stores_decode(data, size, &ss) != 0 || size > sizeof(out)) break;
    proto_wcur_t w = {out, out + sizeof(out), 0};
    proto_stores_begin(&w);
    const uint8_t *b;
    size_t len;
    unsigned count = 0;
    int rc;
    while ((rc = proto_stores_next(&ss.items, &b, &len)) == 1) {
      proto_store_t s;
      CHECK(proto_store_decode(b, len, &s) == 0);
      proto_stores_add(&w, b, len);
      count++;
    }
    CHECK(rc == 0 && count == ss.count);
    same(proto_stores_end(&w, out, count), data, size);
    break;
  }
  case 13: {
    proto_stores_r_t r;
    if (proto_stores_r_decode(data, size, &r) == 0) same(proto_stores_r_encode(out, sizeof(out), &r), data, size);
    break;
  }
  }
  return 0;
}
