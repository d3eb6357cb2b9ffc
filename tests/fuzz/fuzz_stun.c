/*
 * libFuzzer target for proto/stun.  Builds with clang -fsanitize=fuzzer, or
 * with any compiler and a driver that calls LLVMFuzzerTestOneInput() on
 * each corpus file (there is no main() here).
 *
 * For each input: classify and frame it; parse it as a STUN message, walk
 * every attribute, decode what has a typed getter, re-encode the message
 * with the builder and check that the result parses to the same values,
 * that its integrity and fingerprint check, and that encoding it once more
 * gives the same bytes.  Then the same for ChannelData, and every getter
 * on the raw input.  A broken invariant aborts.
 */
#include "proto/stun.h"
#include "tests/fuzz/fuzz.h"

#include <stdlib.h>
#include <string.h>

static const uint8_t KEY[] = "fuzz-key";
#define KEY_LEN (sizeof(KEY) - 1)

/* How an attribute was understood. */
enum {
  V_RAW,     /* bytes, copied as they are */
  V_SKIP,    /* dropped on re-encoding: MI-SHA256, text over its bound */
  V_MI,      /* recomputed with KEY */
  V_FP,      /* recomputed */
  V_ADDR,
  V_XADDR,
  V_ERROR,
  V_U32,     /* LIFETIME, PRIORITY */
  V_TRANSPORT,
  V_CHANNEL,
  V_FAMILY,
  V_EVEN_PORT,
  V_UNKNOWN,
};

typedef struct {
  int kind;
  proto_stun_addr_t addr;
  proto_stun_error_t err;
  uint32_t num;
  size_t n;
} value_t;

static uint16_t unknown_types[UINT16_MAX / 2];

static int decode(const proto_stun_msg_t *m, const proto_stun_attr_t *a, value_t *v) {
  uint8_t u8;
  uint16_t u16;
  const char *s;
  size_t n;
  int flag;
  memset(v, 0, sizeof(*v));
  switch (a->type) {
  case PROTO_STUN_A_MESSAGE_INTEGRITY: return v->kind = V_MI;
  case PROTO_STUN_A_FINGERPRINT: return v->kind = V_FP;
  case PROTO_STUN_A_MESSAGE_INTEGRITY_SHA256: return v->kind = V_SKIP;
  case PROTO_STUN_A_MAPPED_ADDRESS:
  case PROTO_STUN_A_ALTERNATE_SERVER:
    return v->kind = proto_stun_get_addr(a, &v->addr) ? V_RAW : V_ADDR;
  case PROTO_STUN_A_XOR_MAPPED_ADDRESS:
  case PROTO_STUN_A_XOR_PEER_ADDRESS:
  case PROTO_STUN_A_XOR_RELAYED_ADDRESS:
    return v->kind = proto_stun_get_xaddr(a, m->txid, &v->addr) ? V_RAW : V_XADDR;
  case PROTO_STUN_A_ERROR_CODE: return v->kind = proto_stun_get_error(a, &v->err) ? V_RAW : V_ERROR;
  case PROTO_STUN_A_LIFETIME:
  case PROTO_STUN_A_PRIORITY: return v->kind = proto_stun_get_u32(a, &v->num) ? V_RAW : V_U32;
  case PROTO_STUN_A_REQUESTED_TRANSPORT:
    if (proto_stun_get_transport(a, &u8)) return v->kind = V_RAW;
    v->num = u8;
    return v->kind = V_TRANSPORT;
  case PROTO_STUN_A_CHANNEL_NUMBER:
    if (proto_stun_get_channel(a, &u16)) return v->kind = V_RAW;
    v->num = u16;
    return v->kind = V_CHANNEL;
  case PROTO_STUN_A_REQUESTED_ADDRESS_FAMILY:
  case PROTO_STUN_A_ADDITIONAL_ADDRESS_FAMILY:
    if (proto_stun_get_family(a, &u8)) return v->kind = V_RAW;
    v->num = u8;
    return v->kind = V_FAMILY;
  case PROTO_STUN_A_EVEN_PORT:
    if (proto_stun_get_even_port(a, &flag)) return v->kind = V_RAW;
    v->num = (uint32_t)flag;
    return v->kind = V_EVEN_PORT;
  case PROTO_STUN_A_UNKNOWN_ATTRIBUTES:
    if (proto_stun_get_unknown(a, unknown_types, sizeof(unknown_types) / 2, &v->n))
      return v->kind = V_RAW;
    return v->kind = V_UNKNOWN;
  case PROTO_STUN_A_USERNAME:
  case PROTO_STUN_A_REALM:
  case PROTO_STUN_A_NONCE:
  case PROTO_STUN_A_SOFTWARE:
    return v->kind = proto_stun_get_text(a, &s, &n) ? V_SKIP : V_RAW;
  }
  return v->kind = V_RAW;
}

static void encode(proto_stun_builder_t *b, const proto_stun_attr_t *a, const value_t *v) {
  switch (v->kind) {
  case V_SKIP: break;
  case V_RAW: proto_stun_add(b, a->type, a->val, a->len); break;
  case V_MI: proto_stun_add_integrity(b, KEY, KEY_LEN); break;
  case V_FP: proto_stun_add_fingerprint(b); break;
  case V_ADDR: proto_stun_add_addr(b, a->type, &v->addr); break;
  case V_XADDR: proto_stun_add_xaddr(b, a->type, &v->addr); break;
  case V_ERROR: proto_stun_add_error(b, v->err.code, v->err.reason, v->err.reason_len); break;
  case V_U32: proto_stun_add_u32(b, a->type, v->num); break;
  case V_TRANSPORT: proto_stun_add_transport(b, (uint8_t)v->num); break;
  case V_CHANNEL: proto_stun_add_channel(b, (uint16_t)v->num); break;
  case V_FAMILY: proto_stun_add_family(b, a->type, (uint8_t)v->num); break;
  case V_EVEN_PORT: proto_stun_add_even_port(b, (int)v->num); break;
  case V_UNKNOWN: proto_stun_add_unknown(b, unknown_types, v->n); break;
  }
}

static long reencode(const proto_stun_msg_t *m, uint8_t *out, size_t size) {
  proto_stun_builder_t b;
  proto_stun_iter_t it;
  proto_stun_attr_t a;
  value_t v;
  proto_stun_begin(&b, out, size, m->type, m->txid);
  proto_stun_iter_init(&it, m);
  while (proto_stun_next(&it, &a) == 1) {
    decode(m, &a, &v);
    encode(&b, &a, &v);
  }
  return proto_stun_finish(&b);
}

static int same_value(const proto_stun_attr_t *a, const value_t *va, const proto_stun_attr_t *b,
                      const value_t *vb) {
  if (a->type != b->type || va->kind != vb->kind) return 0;
  switch (va->kind) {
  case V_ADDR:
  case V_XADDR:
    return va->addr.family == vb->addr.family && va->addr.port == vb->addr.port &&
           memcmp(va->addr.ip, vb->addr.ip, va->addr.family == 4 ? 4 : 16) == 0;
  case V_ERROR:
    return va->err.code == vb->err.code && va->err.reason_len == vb->err.reason_len &&
           memcmp(va->err.reason, vb->err.reason, va->err.reason_len) == 0;
  case V_U32:
  case V_TRANSPORT:
  case V_CHANNEL:
  case V_FAMILY:
  case V_EVEN_PORT: return va->num == vb->num;
  case V_MI:
  case V_FP: return 1; /* recomputed; checked on the whole message */
  }
  /* V_RAW and V_UNKNOWN: the encoding is the value. */
  return a->len == b->len && memcmp(a->val, b->val, a->len) == 0;
}

/* in was re-encoded into out: the same attributes in the same order, minus
 * the ones skipped.  Returns the size out must have: every attribute kept
 * keeps its size. */
static size_t compare(const proto_stun_msg_t *in, const proto_stun_msg_t *out) {
  proto_stun_iter_t ii, io;
  proto_stun_attr_t a, b;
  value_t va, vb;
  size_t want = PROTO_STUN_HDR_LEN;
  proto_stun_iter_init(&ii, in);
  proto_stun_iter_init(&io, out);
  while (proto_stun_next(&ii, &a) == 1) {
    if (decode(in, &a, &va) == V_SKIP) continue;
    want += 4 + (((size_t)a.len + 3) & ~(size_t)3);
    CHECK(proto_stun_next(&io, &b) == 1);
    decode(out, &b, &vb);
    CHECK(same_value(&a, &va, &b, &vb));
  }
  CHECK(proto_stun_next(&io, &b) == 0);
  return want;
}

static uint8_t out1[PROTO_STUN_MAX_MSG], out2[PROTO_STUN_MAX_MSG];

static void fuzz_stun(const uint8_t *data, size_t size) {
  proto_stun_msg_t m, m1, m2;
  if (proto_stun_parse(data, size, &m)) return;
  CHECK(m.len == size && m.type < 0x4000);
  CHECK(((size_t)data[2] << 8 | data[3]) + PROTO_STUN_HDR_LEN == size);
  /* Exercised for memory safety; the input's own MAC is random. */
  (void)proto_stun_check_integrity(&m, KEY, KEY_LEN);
  (void)proto_stun_check_fingerprint(&m);

  /* Every attribute kept has the size it had, so the copy fits in size. */
  long n1 = reencode(&m, out1, size);
  CHECK(n1 >= PROTO_STUN_HDR_LEN && (size_t)n1 <= size);
  CHECK(proto_stun_parse(out1, (size_t)n1, &m1) == 0);
  CHECK(m1.type == m.type && memcmp(m1.txid, m.txid, PROTO_STUN_TXID_LEN) == 0);
  CHECK(compare(&m, &m1) == (size_t)n1);
  CHECK(!m.mi_off == !m1.mi_off);
  CHECK(!m.fp_off == !m1.fp_off);
  if (m1.mi_off) CHECK(proto_stun_check_integrity(&m1, KEY, KEY_LEN) == 0);
  if (m1.fp_off) CHECK(proto_stun_check_fingerprint(&m1) == 0);

  /* What the builder wrote is canonical: once more gives the same bytes. */
  long n2 = reencode(&m1, out2, sizeof(out2));
  CHECK(n2 == n1 && memcmp(out1, out2, (size_t)n1) == 0);
  CHECK(proto_stun_parse(out2, (size_t)n2, &m2) == 0);
}

static void fuzz_chan(const uint8_t *data, size_t size) {
  proto_stun_chan_t c;
  if (proto_stun_chan_parse(data, size, &c)) return;
  size_t exact = PROTO_STUN_CHAN_HDR_LEN + (size_t)c.len;
  CHECK(size >= exact && size <= ((exact + 3) & ~(size_t)3));
  CHECK(c.chan >= PROTO_STUN_CHAN_MIN && c.chan <= PROTO_STUN_CHAN_MAX);
  int pad = size > exact;
  long n = proto_stun_chan_build(out1, sizeof(out1), c.chan, c.data, c.len, pad);
  CHECK(n == (long)(pad ? (exact + 3) & ~(size_t)3 : exact));
  CHECK(memcmp(out1, data, exact) == 0);
}

static void fuzz_frame(const uint8_t *data, size_t size) {
  proto_stun_msg_t m;
  proto_stun_chan_t c;
  int kind = proto_stun_kind(data, size);
  long n = proto_stun_frame(data, size);
  if (kind == PROTO_STUN_KIND_STUN) CHECK(n != PROTO_EMAGIC);
  if (n <= 0) return;
  CHECK((size_t)n <= size);
  /* The framer checked the header; what is left to fail is in the body. */
  if (data[0] < 0x40) {
    CHECK(proto_stun_parse(data, (size_t)n, &m) != PROTO_EMAGIC);
  } else {
    CHECK(proto_stun_chan_parse(data, (size_t)n, &c) == 0);
  }
}

/* Every getter on the input taken as one attribute value. */
static void fuzz_getters(const uint8_t *data, size_t size) {
  if (size < 2) return;
  proto_stun_attr_t a = {.type = (uint16_t)(data[0] << 8 | data[1]),
                         .len = (uint16_t)(size - 2 > UINT16_MAX ? UINT16_MAX : size - 2),
                         .val = data + 2};
  static const uint8_t txid[PROTO_STUN_TXID_LEN];
  proto_stun_addr_t addr;
  proto_stun_error_t err;
  const char *s;
  size_t n;
  uint32_t u32;
  uint16_t u16;
  uint8_t u8, token[PROTO_STUN_TOKEN_LEN];
  int flag;
  uint64_t expiry;
  (void)proto_stun_get_addr(&a, &addr);
  (void)proto_stun_get_xaddr(&a, txid, &addr);
  (void)proto_stun_get_text(&a, &s, &n);
  (void)proto_stun_get_error(&a, &err);
  (void)proto_stun_get_u32(&a, &u32);
  (void)proto_stun_get_transport(&a, &u8);
  (void)proto_stun_get_channel(&a, &u16);
  (void)proto_stun_get_family(&a, &u8);
  (void)proto_stun_get_even_port(&a, &flag);
  (void)proto_stun_get_token(&a, token);
  (void)proto_stun_get_flag(&a);
  (void)proto_stun_get_unknown(&a, unknown_types, 4, &n);
  (void)proto_stun_rest_expiry((const char *)data, size, &expiry);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_frame(data, size);
  fuzz_stun(data, size);
  fuzz_chan(data, size);
  fuzz_getters(data, size);
  return 0;
}
