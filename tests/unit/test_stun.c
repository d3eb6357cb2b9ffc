/*
 * Unit tests for proto/stun: RFC 5769 test vectors, builder round trips,
 * truncation and corrupted lengths, ChannelData, credentials.
 *
 * With STUN_CORPUS_DIR set, the messages used here are also written there
 * as files, to seed tests/fuzz/corpus/stun/.
 */
#include "proto/stun.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/test.h"

/* RFC 5769 test vectors, copied from the RFC's hex dumps. ---------------- */

/* 2.1 Sample Request: SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
 * MESSAGE-INTEGRITY (short-term password below), FINGERPRINT.  Note the
 * padding bytes are 0x20, not zero. */
static const char RFC_REQUEST[] =
    "00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae"
    "80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74"
    "00 24 00 04 6e 00 01 ff"
    "80 29 00 08 93 2f f9 b1 51 26 3b 36"
    "00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20"
    "00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2"
    "80 28 00 04 e5 7a 3b cf";
/* 2.2 Sample IPv4 Response: XOR-MAPPED-ADDRESS 192.0.2.1:32853. */
static const char RFC_IPV4[] =
    "01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae"
    "80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20"
    "00 20 00 08 00 01 a1 47 e1 12 a6 43"
    "00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7"
    "80 28 00 04 c0 7d 4c 96";
/* 2.3 Sample IPv6 Response: [2001:db8:1234:5678:11:2233:4455:6677]:32853. */
static const char RFC_IPV6[] =
    "01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae"
    "80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20"
    "00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9"
    "00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41"
    "80 28 00 04 c8 fb 0b 4c";
/* 2.4 Sample Request with Long-Term Authentication: USERNAME (U+30DE
 * U+30C8 U+30EA U+30C3 U+30AF U+30B9 in UTF-8), NONCE, REALM, and
 * MESSAGE-INTEGRITY with password "TheMatrIX" (after SASLprep). */
static const char RFC_LONGTERM[] =
    "00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e"
    "00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00"
    "00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46"
    "53 54 76 79 36 34 73 41"
    "00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00"
    "00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

static const char SHORT_TERM_PASS[] = "VOkJxbRl1RmTxUk/WvJxBt";
static const uint8_t RFC_TXID[12] = {0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34,
                                     0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae};
static const char RFC_USER_UTF8[] =
    "\xe3\x83\x9e\xe3\x83\x88\xe3\x83\xaa\xe3\x83\x83\xe3\x82\xaf\xe3\x82\xb9";

static size_t unhex(const char *s, uint8_t *out, size_t max) {
  size_t n = 0;
  int half = -1;
  for (; *s; s++) {
    int v;
    if (*s >= '0' && *s <= '9') v = *s - '0';
    else if (*s >= 'a' && *s <= 'f') v = *s - 'a' + 10;
    else if (*s >= 'A' && *s <= 'F') v = *s - 'A' + 10;
    else continue;
    if (half < 0) {
      half = v;
    } else {
      ASSERT_LT(n, max);
      out[n++] = (uint8_t)(half << 4 | v);
      half = -1;
    }
  }
  ASSERT_EQ(half, -1);
  return n;
}

static void save_seed(const char *name, const uint8_t *buf, size_t len) {
  const char *dir = getenv("STUN_CORPUS_DIR");
  if (!dir) return;
  char path[512];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  ASSERT(f != NULL);
  ASSERT_EQ(fwrite(buf, 1, len, f), len);
  ASSERT_OK(fclose(f));
}

static void expect_text(const proto_stun_msg_t *m, uint16_t type, const char *want) {
  proto_stun_attr_t a;
  const char *s;
  size_t n;
  ASSERT_EQ(proto_stun_find(m, type, &a), 1);
  ASSERT_OK(proto_stun_get_text(&a, &s, &n));
  ASSERT_EQ(n, strlen(want));
  ASSERT_MEM_EQ(s, want, n);
}

/* Message types ------------------------------------------------------------ */

static void test_types(void) {
  ASSERT_HEX_EQ(proto_stun_type(PROTO_STUN_BINDING, PROTO_STUN_REQUEST), 0x0001);
  ASSERT_HEX_EQ(proto_stun_type(PROTO_STUN_BINDING, PROTO_STUN_SUCCESS), 0x0101);
  ASSERT_HEX_EQ(proto_stun_type(PROTO_STUN_ALLOCATE, PROTO_STUN_ERROR), 0x0113);
  ASSERT_HEX_EQ(proto_stun_type(PROTO_STUN_SEND, PROTO_STUN_INDICATION), 0x0016);
  ASSERT_HEX_EQ(proto_stun_type(PROTO_STUN_DATA, PROTO_STUN_INDICATION), 0x0017);
  ASSERT_HEX_EQ(proto_stun_type(0xFFF, PROTO_STUN_ERROR), 0x3FFF);
  for (unsigned method = 0; method <= 0xFFF; method++) {
    for (unsigned cls = 0; cls < 4; cls++) {
      uint16_t t = proto_stun_type((uint16_t)method, (uint8_t)cls);
      ASSERT_LT(t, 0x4000);
      ASSERT_EQ(proto_stun_method(t), method);
      ASSERT_EQ(proto_stun_class(t), cls);
    }
  }
}

static void test_crc(void) {
  /* The CRC-32 check value of "123456789" (also what gzip stores). */
  ASSERT_HEX_EQ(proto_stun_crc32((const uint8_t *)"123456789", 9), 0xCBF43926);
  ASSERT_HEX_EQ(proto_stun_crc32(NULL, 0), 0);
}

/* RFC 5769 ------------------------------------------------------------------ */

static void test_rfc_request(void) {
  uint8_t buf[256];
  size_t len = unhex(RFC_REQUEST, buf, sizeof(buf));
  save_seed("rfc5769-2.1-request.bin", buf, len);
  proto_stun_msg_t m;
  ASSERT_OK(proto_stun_parse(buf, len, &m));
  ASSERT_EQ(m.method, PROTO_STUN_BINDING);
  ASSERT_EQ(m.cls, PROTO_STUN_REQUEST);
  ASSERT_EQ(m.len, len);
  ASSERT_MEM_EQ(m.txid, RFC_TXID, 12);

  static const uint16_t want[] = {PROTO_STUN_A_SOFTWARE, PROTO_STUN_A_PRIORITY,
                                  PROTO_STUN_A_ICE_CONTROLLED, PROTO_STUN_A_USERNAME,
                                  PROTO_STUN_A_MESSAGE_INTEGRITY, PROTO_STUN_A_FINGERPRINT};
  proto_stun_iter_t it;
  proto_stun_attr_t a;
  size_t i = 0;
  proto_stun_iter_init(&it, &m);
  while (proto_stun_next(&it, &a) == 1) {
    ASSERT_LT(i, 6);
    ASSERT_HEX_EQ(a.type, want[i++]);
  }
  ASSERT_EQ(i, 6);
  ASSERT_EQ(proto_stun_next(&it, &a), 0);

  expect_text(&m, PROTO_STUN_A_SOFTWARE, "STUN test client");
  expect_text(&m, PROTO_STUN_A_USERNAME, "evtj:h6vY");
  uint32_t prio;
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_PRIORITY, &a), 1);
  ASSERT_OK(proto_stun_get_u32(&a, &prio));
  ASSERT_HEX_EQ(prio, 0x6e0001ff);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_ICE_CONTROLLED, &a), 1);
  ASSERT_EQ(a.len, 8);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_REALM, &a), 0);

  const uint8_t *pw = (const uint8_t *)SHORT_TERM_PASS;
  ASSERT_EQ(m.mi_off, 20 + 20 + 8 + 12 + 16);
  ASSERT_OK(proto_stun_check_integrity(&m, pw, strlen(SHORT_TERM_PASS)));
  ASSERT_EQ(proto_stun_check_integrity(&m, pw, strlen(SHORT_TERM_PASS) - 1), PROTO_EINVAL);
  ASSERT_OK(proto_stun_check_fingerprint(&m));

  /* One flipped bit in SOFTWARE: still well formed, but neither check
   * passes any more. */
  buf[30] ^= 1;
  ASSERT_OK(proto_stun_parse(buf, len, &m));
  ASSERT_EQ(proto_stun_check_integrity(&m, pw, strlen(SHORT_TERM_PASS)), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_check_fingerprint(&m), PROTO_EINVAL);
}

static void check_rfc_response(const char *hex, const char *seed, const proto_stun_addr_t *want) {
  uint8_t buf[256];
  size_t len = unhex(hex, buf, sizeof(buf));
  save_seed(seed, buf, len);
  proto_stun_msg_t m;
  proto_stun_attr_t a;
  proto_stun_addr_t got;
  ASSERT_OK(proto_stun_parse(buf, len, &m));
  ASSERT_EQ(m.method, PROTO_STUN_BINDING);
  ASSERT_EQ(m.cls, PROTO_STUN_SUCCESS);
  expect_text(&m, PROTO_STUN_A_SOFTWARE, "test vector");
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_XOR_MAPPED_ADDRESS, &a), 1);
  ASSERT_OK(proto_stun_get_xaddr(&a, m.txid, &got));
  ASSERT_EQ(got.family, want->family);
  ASSERT_EQ(got.port, want->port);
  ASSERT_MEM_EQ(got.ip, want->ip, want->family == 4 ? 4 : 16);
  /* Read as a plain address it is the XORed bytes, not the address. */
  ASSERT_OK(proto_stun_get_addr(&a, &got));
  ASSERT_EQ(got.port, 0xa147);
  ASSERT_OK(proto_stun_check_integrity(&m, (const uint8_t *)SHORT_TERM_PASS,
                                       strlen(SHORT_TERM_PASS)));
  ASSERT_OK(proto_stun_check_fingerprint(&m));

  /* The builder XORs to the very same bytes. */
  uint8_t out[128];
  proto_stun_builder_t b;
  proto_stun_begin(&b, out, sizeof(out), m.type, m.txid);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_MAPPED_ADDRESS, want);
  long n = proto_stun_finish(&b);
  ASSERT_EQ(n, 20 + 4 + a.len);
  ASSERT_MEM_EQ(out + 24, a.val, a.len);
}

static void test_rfc_responses(void) {
  proto_stun_addr_t v4 = {.family = 4, .port = 32853, .ip = {192, 0, 2, 1}};
  proto_stun_addr_t v6 = {.family = 6,
                          .port = 32853,
                          .ip = {0x20, 0x01, 0x0d, 0xb8, 0x12, 0x34, 0x56, 0x78, 0x00, 0x11, 0x22,
                                 0x33, 0x44, 0x55, 0x66, 0x77}};
  check_rfc_response(RFC_IPV4, "rfc5769-2.2-ipv4-response.bin", &v4);
  check_rfc_response(RFC_IPV6, "rfc5769-2.3-ipv6-response.bin", &v6);
}

static void test_rfc_longterm(void) {
  uint8_t buf[256];
  size_t len = unhex(RFC_LONGTERM, buf, sizeof(buf));
  save_seed("rfc5769-2.4-longterm-request.bin", buf, len);
  proto_stun_msg_t m;
  ASSERT_OK(proto_stun_parse(buf, len, &m));
  ASSERT_EQ(m.fp_off, 0);
  ASSERT_EQ(proto_stun_check_fingerprint(&m), PROTO_EINVAL);
  expect_text(&m, PROTO_STUN_A_USERNAME, RFC_USER_UTF8);
  expect_text(&m, PROTO_STUN_A_NONCE, "f//499k954d6OL34oL9FSTvy64sA");
  expect_text(&m, PROTO_STUN_A_REALM, "example.org");

  /* Expected key from the command line, independently of our code:
   *   printf 'マトリックス:example.org:TheMatrIX' | openssl md5
   *   MD5(stdin)= e8ca7ad59d5eb0518e312911d2dab2a9 */
  uint8_t want_key[16], key[16];
  unhex("e8ca7ad59d5eb0518e312911d2dab2a9", want_key, sizeof(want_key));
  ASSERT_OK(proto_stun_lt_key(RFC_USER_UTF8, strlen(RFC_USER_UTF8), "example.org", 11,
                              "TheMatrIX", 9, key));
  ASSERT_MEM_EQ(key, want_key, 16);
  ASSERT_OK(proto_stun_check_integrity(&m, key, sizeof(key)));
  ASSERT_OK(proto_stun_lt_key(RFC_USER_UTF8, strlen(RFC_USER_UTF8), "example.org", 11,
                              "thematrix", 9, key));
  ASSERT_EQ(proto_stun_check_integrity(&m, key, sizeof(key)), PROTO_EINVAL);

  /* Its padding is zeros, so the builder reproduces it byte for byte. */
  uint8_t out[256];
  proto_stun_builder_t b;
  proto_stun_begin(&b, out, sizeof(out), m.type, m.txid);
  proto_stun_add(&b, PROTO_STUN_A_USERNAME, RFC_USER_UTF8, strlen(RFC_USER_UTF8));
  proto_stun_add(&b, PROTO_STUN_A_NONCE, "f//499k954d6OL34oL9FSTvy64sA", 28);
  proto_stun_add(&b, PROTO_STUN_A_REALM, "example.org", 11);
  proto_stun_add_integrity(&b, want_key, sizeof(want_key));
  ASSERT_EQ(proto_stun_finish(&b), len);
  ASSERT_MEM_EQ(out, buf, len);
}

/* Truncation and corruption ---------------------------------------------- */

/* Every proper prefix is rejected by the datagram parser and is "need
 * more" to the stream framer; extra bytes are "trailing" to the parser and
 * left alone by the framer. */
static void check_prefixes(const uint8_t *msg, size_t len) {
  static uint8_t copy[PROTO_STUN_MAX_MSG + 8];
  proto_stun_msg_t m;
  ASSERT_LE(len, PROTO_STUN_MAX_MSG);
  memcpy(copy, msg, len);
  for (size_t k = 0; k < len; k++) {
    int err = proto_stun_parse(copy, k, &m);
    ASSERT_LT(err, 0);
    if (k >= 20) ASSERT_EQ(err, PROTO_ETRUNC);
    ASSERT_EQ(proto_stun_frame(copy, k), PROTO_NEED_MORE);
  }
  ASSERT_OK(proto_stun_parse(copy, len, &m));
  ASSERT_EQ(proto_stun_frame(copy, len), len);
  memcpy(copy + len, "\0\0\0\0\x40\x00\x00\x00", 8);
  ASSERT_EQ(proto_stun_parse(copy, len + 4, &m), PROTO_ETRAIL);
  ASSERT_EQ(proto_stun_frame(copy, len + 8), len);
}

static void set16(uint8_t *p, unsigned v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

/* Give every attribute header of msg every possible length: whenever the
 * attribute then runs past the end, the parser must say so. */
static void check_attr_lengths(const uint8_t *msg, size_t len) {
  uint8_t buf[512];
  proto_stun_msg_t m;
  ASSERT_LE(len, sizeof(buf));
  for (size_t off = 20; off + 4 <= len;) {
    unsigned orig = (unsigned)(msg[off + 2] << 8 | msg[off + 3]);
    for (unsigned v = 0; v <= 0xFFFF; v++) {
      memcpy(buf, msg, len);
      set16(buf + off + 2, v);
      int err = proto_stun_parse(buf, len, &m);
      if (off + 4 + ((v + 3) & ~3u) > len) ASSERT_EQ(err, PROTO_ETRUNC);
      else if (v == orig) ASSERT_OK(err);
    }
    off += 4 + ((orig + 3) & ~3u);
  }
}

static void check_header_lengths(const uint8_t *msg, size_t len) {
  uint8_t buf[512];
  proto_stun_msg_t m;
  memcpy(buf, msg, len);
  for (unsigned v = 0; v <= 0xFFFF; v++) {
    set16(buf + 2, v);
    int err = proto_stun_parse(buf, len, &m);
    if (v % 4) ASSERT_EQ(err, PROTO_EINVAL);
    else if (v > len - 20) ASSERT_EQ(err, PROTO_ETRUNC);
    else if (v < len - 20) ASSERT_EQ(err, PROTO_ETRAIL);
    else ASSERT_OK(err);
  }
}

static void test_truncation(void) {
  const char *vectors[] = {RFC_REQUEST, RFC_IPV4, RFC_IPV6, RFC_LONGTERM};
  for (size_t i = 0; i < 4; i++) {
    uint8_t buf[256];
    size_t len = unhex(vectors[i], buf, sizeof(buf));
    check_prefixes(buf, len);
    check_header_lengths(buf, len);
    check_attr_lengths(buf, len);
  }
}

static void test_bad_headers(void) {
  uint8_t buf[256];
  size_t len = unhex(RFC_IPV4, buf, sizeof(buf));
  proto_stun_msg_t m;

  buf[0] |= 0x80; /* not STUN: the first two bits are 10 */
  ASSERT_EQ(proto_stun_parse(buf, len, &m), PROTO_EMAGIC);
  ASSERT_EQ(proto_stun_frame(buf, len), PROTO_EMAGIC);
  buf[0] &= 0x3F;
  buf[7] ^= 1; /* wrong cookie */
  ASSERT_EQ(proto_stun_parse(buf, len, &m), PROTO_EMAGIC);
  ASSERT_EQ(proto_stun_frame(buf, 8), PROTO_EMAGIC);
  ASSERT_EQ(proto_stun_frame(buf, 7), PROTO_NEED_MORE);
  buf[4] ^= 1; /* told off at the first wrong byte */
  ASSERT_EQ(proto_stun_frame(buf, 5), PROTO_EMAGIC);
  buf[4] ^= 1;
  buf[7] ^= 1;
  set16(buf + 2, 0x3d);
  ASSERT_EQ(proto_stun_frame(buf, 4), PROTO_EINVAL);
}

/* Hand-made messages: a header, then raw attribute bytes. */
static size_t raw_msg(uint8_t *buf, const char *attrs_hex) {
  size_t n = unhex(attrs_hex, buf + 20, 480);
  unhex("00 01 00 00 21 12 a4 42 00 01 02 03 04 05 06 07 08 09 0a 0b", buf, 20);
  set16(buf + 2, (unsigned)n);
  return 20 + n;
}

static void test_attr_order(void) {
  uint8_t buf[512];
  proto_stun_msg_t m;
  proto_stun_attr_t a;
  size_t len;

  /* Something after FINGERPRINT. */
  len = raw_msg(buf, "80 28 00 04 00 00 00 00  80 22 00 00");
  ASSERT_EQ(proto_stun_parse(buf, len, &m), PROTO_ETRAIL);
  /* Integrity attributes of the wrong size. */
  len = raw_msg(buf, "00 08 00 10 00000000 00000000 00000000 00000000");
  ASSERT_EQ(proto_stun_parse(buf, len, &m), PROTO_EINVAL);
  len = raw_msg(buf, "80 28 00 08 00000000 00000000");
  ASSERT_EQ(proto_stun_parse(buf, len, &m), PROTO_EINVAL);
  len = raw_msg(buf, "00 1c 00 0c 00000000 00000000 00000000");
  ASSERT_EQ(proto_stun_parse(buf, len, &m), PROTO_EINVAL);
  len = raw_msg(buf, "00 1c 00 12 00000000 00000000 00000000 00000000 00000000");
  ASSERT_EQ(proto_stun_parse(buf, len, &m), PROTO_EINVAL);
  /* MI, then DATA (ignored), MI-SHA256 (seen), SOFTWARE (ignored), FP. */
  len = raw_msg(buf,
                "00 08 00 14 00000000 00000000 00000000 00000000 00000000"
                "00 13 00 01 aa 00 00 00"
                "00 1c 00 10 00000000 00000000 00000000 00000000"
                "80 22 00 01 61 00 00 00"
                "80 28 00 04 00 00 00 00");
  ASSERT_OK(proto_stun_parse(buf, len, &m));
  ASSERT_EQ(m.mi_off, 20);
  ASSERT_EQ(m.mi256_off, 20 + 24 + 8);
  ASSERT_EQ(m.fp_off, len - 8);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_DATA, &a), 0);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_SOFTWARE, &a), 0);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_FINGERPRINT, &a), 1);
  /* Only the first MESSAGE-INTEGRITY counts. */
  len = raw_msg(buf,
                "00 08 00 14 00000000 00000000 00000000 00000000 00000000"
                "00 08 00 14 00000000 00000000 00000000 00000000 00000000");
  ASSERT_OK(proto_stun_parse(buf, len, &m));
  ASSERT_EQ(m.mi_off, 20);

  /* An attribute appended after a real MESSAGE-INTEGRITY is ignored, and
   * the integrity still checks: it is computed with the length field cut
   * back to the end of MESSAGE-INTEGRITY. */
  static const uint8_t key[] = "k3y";
  proto_stun_builder_t b;
  proto_stun_begin(&b, buf, sizeof(buf), 0x0003, RFC_TXID);
  proto_stun_add_u32(&b, PROTO_STUN_A_LIFETIME, 600);
  proto_stun_add_integrity(&b, key, 3);
  len = (size_t)proto_stun_finish(&b);
  ASSERT_EQ(len, 20 + 8 + 24);
  memcpy(buf + len, "\x00\x13\x00\x04" "abcd", 8);
  len += 8;
  set16(buf + 2, (unsigned)len - 20);
  ASSERT_OK(proto_stun_parse(buf, len, &m));
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_DATA, &a), 0);
  ASSERT_OK(proto_stun_check_integrity(&m, key, 3));
}

/* Builders ------------------------------------------------------------------ */

static const uint8_t TXID[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

static void expect_addr(const proto_stun_addr_t *got, const proto_stun_addr_t *want) {
  ASSERT_EQ(got->family, want->family);
  ASSERT_EQ(got->port, want->port);
  ASSERT_MEM_EQ(got->ip, want->ip, want->family == 4 ? 4 : 16);
}

/* One message with every builder, then every getter on it. */
static long build_everything(uint8_t *buf, size_t size, const proto_stun_addr_t *v4,
                             const proto_stun_addr_t *v6) {
  static const uint16_t unknown[] = {0x0002, 0x0003, 0x7777};
  static const uint8_t token[8] = {8, 7, 6, 5, 4, 3, 2, 1};
  proto_stun_builder_t b;
  proto_stun_begin(&b, buf, size, proto_stun_type(PROTO_STUN_ALLOCATE, PROTO_STUN_ERROR), TXID);
  proto_stun_add_addr(&b, PROTO_STUN_A_MAPPED_ADDRESS, v4);
  proto_stun_add_addr(&b, PROTO_STUN_A_ALTERNATE_SERVER, v6);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_MAPPED_ADDRESS, v4);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_PEER_ADDRESS, v6);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_RELAYED_ADDRESS, v6);
  proto_stun_add(&b, PROTO_STUN_A_USERNAME, "alice", 5);
  proto_stun_add(&b, PROTO_STUN_A_REALM, "overlay.test", 12);
  proto_stun_add(&b, PROTO_STUN_A_NONCE, "n0nce", 5);
  proto_stun_add(&b, PROTO_STUN_A_SOFTWARE, "p2psip", 6);
  proto_stun_add_error(&b, 438, "Stale Nonce", 11);
  proto_stun_add_u32(&b, PROTO_STUN_A_LIFETIME, 600);
  proto_stun_add_transport(&b, PROTO_STUN_PROTO_UDP);
  proto_stun_add_channel(&b, 0x7FFF);
  proto_stun_add_family(&b, PROTO_STUN_A_REQUESTED_ADDRESS_FAMILY, 6);
  proto_stun_add_family(&b, PROTO_STUN_A_ADDITIONAL_ADDRESS_FAMILY, 4);
  proto_stun_add_even_port(&b, 1);
  proto_stun_add(&b, PROTO_STUN_A_RESERVATION_TOKEN, token, 8);
  proto_stun_add(&b, PROTO_STUN_A_DONT_FRAGMENT, NULL, 0);
  proto_stun_add_unknown(&b, unknown, 3);
  proto_stun_add(&b, PROTO_STUN_A_DATA, "hello", 5);
  proto_stun_add_integrity(&b, (const uint8_t *)"key", 3);
  proto_stun_add_fingerprint(&b);
  return proto_stun_finish(&b);
}

static void test_builder_round_trip(void) {
  proto_stun_addr_t v4 = {.family = 4, .port = 3478, .ip = {127, 0, 0, 1}};
  proto_stun_addr_t v6 = {.family = 6, .port = 65535, .ip = {0xfe, 0x80, [15] = 1}};
  uint8_t buf[1024];
  long n = build_everything(buf, sizeof(buf), &v4, &v6);
  ASSERT_GT(n, 0);
  save_seed("built-everything.bin", buf, (size_t)n);
  proto_stun_msg_t m;
  proto_stun_attr_t a;
  proto_stun_addr_t addr;
  ASSERT_OK(proto_stun_parse(buf, (size_t)n, &m));
  ASSERT_EQ(m.method, PROTO_STUN_ALLOCATE);
  ASSERT_EQ(m.cls, PROTO_STUN_ERROR);
  ASSERT_MEM_EQ(m.txid, TXID, 12);

  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_MAPPED_ADDRESS, &a), 1);
  ASSERT_OK(proto_stun_get_addr(&a, &addr));
  expect_addr(&addr, &v4);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_ALTERNATE_SERVER, &a), 1);
  ASSERT_OK(proto_stun_get_addr(&a, &addr));
  expect_addr(&addr, &v6);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_XOR_MAPPED_ADDRESS, &a), 1);
  ASSERT_OK(proto_stun_get_xaddr(&a, m.txid, &addr));
  expect_addr(&addr, &v4);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_XOR_PEER_ADDRESS, &a), 1);
  ASSERT_OK(proto_stun_get_xaddr(&a, m.txid, &addr));
  expect_addr(&addr, &v6);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_XOR_RELAYED_ADDRESS, &a), 1);
  ASSERT_OK(proto_stun_get_xaddr(&a, m.txid, &addr));
  expect_addr(&addr, &v6);

  expect_text(&m, PROTO_STUN_A_USERNAME, "alice");
  expect_text(&m, PROTO_STUN_A_REALM, "overlay.test");
  expect_text(&m, PROTO_STUN_A_NONCE, "n0nce");
  expect_text(&m, PROTO_STUN_A_SOFTWARE, "p2psip");

  proto_stun_error_t e;
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_ERROR_CODE, &a), 1);
  ASSERT_OK(proto_stun_get_error(&a, &e));
  ASSERT_EQ(e.code, 438);
  ASSERT_EQ(e.reason_len, 11);
  ASSERT_MEM_EQ(e.reason, "Stale Nonce", 11);

  uint32_t u32;
  uint8_t u8;
  uint16_t u16;
  int flag;
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_LIFETIME, &a), 1);
  ASSERT_OK(proto_stun_get_u32(&a, &u32));
  ASSERT_EQ(u32, 600);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_REQUESTED_TRANSPORT, &a), 1);
  ASSERT_OK(proto_stun_get_transport(&a, &u8));
  ASSERT_EQ(u8, 17);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_CHANNEL_NUMBER, &a), 1);
  ASSERT_OK(proto_stun_get_channel(&a, &u16));
  ASSERT_HEX_EQ(u16, 0x7FFF); /* exposed as sent; the range is the server's call */
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_REQUESTED_ADDRESS_FAMILY, &a), 1);
  ASSERT_OK(proto_stun_get_family(&a, &u8));
  ASSERT_EQ(u8, 6);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_ADDITIONAL_ADDRESS_FAMILY, &a), 1);
  ASSERT_OK(proto_stun_get_family(&a, &u8));
  ASSERT_EQ(u8, 4);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_EVEN_PORT, &a), 1);
  ASSERT_OK(proto_stun_get_even_port(&a, &flag));
  ASSERT_EQ(flag, 1);
  ASSERT_EQ(a.val[1], 0); /* padding is zeros */
  uint8_t token[8];
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_RESERVATION_TOKEN, &a), 1);
  ASSERT_OK(proto_stun_get_token(&a, token));
  ASSERT_MEM_EQ(token, "\x08\x07\x06\x05\x04\x03\x02\x01", 8);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_DONT_FRAGMENT, &a), 1);
  ASSERT_OK(proto_stun_get_flag(&a));
  uint16_t types[3];
  size_t nt;
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_UNKNOWN_ATTRIBUTES, &a), 1);
  ASSERT_OK(proto_stun_get_unknown(&a, types, 3, &nt));
  ASSERT_EQ(nt, 3);
  ASSERT_HEX_EQ(types[2], 0x7777);
  ASSERT_EQ(proto_stun_get_unknown(&a, types, 2, &nt), PROTO_ETOOBIG);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_DATA, &a), 1);
  ASSERT_EQ(a.len, 5);
  ASSERT_MEM_EQ(a.val, "hello\0\0\0", 8);

  ASSERT_OK(proto_stun_check_integrity(&m, (const uint8_t *)"key", 3));
  ASSERT_EQ(proto_stun_check_integrity(&m, (const uint8_t *)"kez", 3), PROTO_EINVAL);
  ASSERT_OK(proto_stun_check_fingerprint(&m));

  check_prefixes(buf, (size_t)n);

  /* Every buffer too small fails with ENOSPC and writes nothing past its
   * end; the exact size gives the same bytes. */
  uint8_t small[1024 + 16];
  for (size_t size = 0; size < (size_t)n; size++) {
    memset(small, 0xA5, sizeof(small));
    ASSERT_EQ(build_everything(small, size, &v4, &v6), PROTO_ENOSPC);
    for (size_t i = size; i < sizeof(small); i++) ASSERT_EQ(small[i], 0xA5);
  }
  ASSERT_EQ(build_everything(small, (size_t)n, &v4, &v6), n);
  ASSERT_MEM_EQ(small, buf, (size_t)n);
}

static void test_error_codes(void) {
  for (unsigned code = 300; code <= 699; code++) {
    uint8_t buf[64];
    proto_stun_builder_t b;
    proto_stun_begin(&b, buf, sizeof(buf), 0x0113, TXID);
    proto_stun_add_error(&b, (uint16_t)code, NULL, 0);
    long n = proto_stun_finish(&b);
    ASSERT_EQ(n, 28);
    proto_stun_msg_t m;
    proto_stun_attr_t a;
    proto_stun_error_t e;
    ASSERT_OK(proto_stun_parse(buf, (size_t)n, &m));
    ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_ERROR_CODE, &a), 1);
    ASSERT_OK(proto_stun_get_error(&a, &e));
    ASSERT_EQ(e.code, code);
    ASSERT_EQ(e.reason_len, 0);
  }
}

static long build_one(uint16_t type, void (*add)(proto_stun_builder_t *)) {
  uint8_t buf[256];
  proto_stun_builder_t b;
  proto_stun_begin(&b, buf, sizeof(buf), type, TXID);
  add(&b);
  return proto_stun_finish(&b);
}

static void add_bad_code(proto_stun_builder_t *b) { proto_stun_add_error(b, 700, "x", 1); }
static void add_low_code(proto_stun_builder_t *b) { proto_stun_add_error(b, 299, "x", 1); }
static void add_bad_family(proto_stun_builder_t *b) {
  proto_stun_addr_t a = {.family = 5};
  proto_stun_add_xaddr(b, PROTO_STUN_A_XOR_PEER_ADDRESS, &a);
}
static void add_raw_mi(proto_stun_builder_t *b) {
  proto_stun_add(b, PROTO_STUN_A_MESSAGE_INTEGRITY, "01234567890123456789", 20);
}
static void add_raw_fp(proto_stun_builder_t *b) {
  proto_stun_add(b, PROTO_STUN_A_FINGERPRINT, "0123", 4);
}
static void add_after_fp(proto_stun_builder_t *b) {
  proto_stun_add_fingerprint(b);
  proto_stun_add_u32(b, PROTO_STUN_A_LIFETIME, 1);
}
static void add_after_mi(proto_stun_builder_t *b) {
  proto_stun_add_integrity(b, (const uint8_t *)"k", 1);
  proto_stun_add_u32(b, PROTO_STUN_A_LIFETIME, 1);
}
static void add_mi_fp(proto_stun_builder_t *b) {
  proto_stun_add_integrity(b, (const uint8_t *)"", 0); /* an empty key is a key */
  proto_stun_add_fingerprint(b);
}
static void add_long_user(proto_stun_builder_t *b) {
  static const char user[514];
  proto_stun_add(b, PROTO_STUN_A_USERNAME, user, sizeof(user));
}
static void add_long_reason(proto_stun_builder_t *b) {
  static const char reason[764];
  proto_stun_add_error(b, 400, reason, sizeof(reason));
}
static void einval_then_enospc(proto_stun_builder_t *b) {
  add_bad_code(b);
  static const char big[300];
  proto_stun_add(b, PROTO_STUN_A_DATA, big, sizeof(big));
}
static void enospc_then_einval(proto_stun_builder_t *b) {
  static const char big[300];
  proto_stun_add(b, PROTO_STUN_A_DATA, big, sizeof(big));
  add_bad_code(b);
}
static void add_nothing(proto_stun_builder_t *b) { (void)b; }

static void test_builder_errors(void) {
  ASSERT_EQ(build_one(0x0001, add_bad_code), PROTO_EINVAL);
  ASSERT_EQ(build_one(0x0001, add_low_code), PROTO_EINVAL);
  ASSERT_EQ(build_one(0x0001, add_bad_family), PROTO_EINVAL);
  ASSERT_EQ(build_one(0x0001, add_raw_mi), PROTO_EINVAL);
  ASSERT_EQ(build_one(0x0001, add_raw_fp), PROTO_EINVAL);
  ASSERT_EQ(build_one(0x0001, add_after_fp), PROTO_EINVAL);
  ASSERT_EQ(build_one(0x0001, add_after_mi), PROTO_EINVAL);
  ASSERT_EQ(build_one(0x0001, add_mi_fp), 20 + 24 + 8);
  ASSERT_EQ(build_one(0x0001, add_long_user), PROTO_ETOOBIG);
  ASSERT_EQ(build_one(0x0001, add_long_reason), PROTO_ETOOBIG);
  ASSERT_EQ(build_one(0x0001, einval_then_enospc), PROTO_EINVAL);
  ASSERT_EQ(build_one(0x0001, enospc_then_einval), PROTO_ENOSPC);
  ASSERT_EQ(build_one(0x4001, add_nothing), PROTO_EINVAL);
  ASSERT_EQ(build_one(0x3FFF, add_nothing), 20);

  /* The body bound: 65532 bytes fit, one attribute more does not. */
  static uint8_t big[PROTO_STUN_MAX_MSG + 64];
  static uint8_t data[65536];
  proto_stun_builder_t b;
  proto_stun_begin(&b, big, sizeof(big), 0x0016, TXID);
  proto_stun_add(&b, PROTO_STUN_A_DATA, data, PROTO_STUN_MAX_BODY - 4);
  ASSERT_EQ(proto_stun_finish(&b), PROTO_STUN_MAX_MSG);
  proto_stun_msg_t m;
  ASSERT_OK(proto_stun_parse(big, PROTO_STUN_MAX_MSG, &m));
  proto_stun_add(&b, PROTO_STUN_A_DONT_FRAGMENT, NULL, 0);
  ASSERT_EQ(proto_stun_finish(&b), PROTO_ETOOBIG);
  proto_stun_begin(&b, big, sizeof(big), 0x0016, TXID);
  proto_stun_add(&b, PROTO_STUN_A_DATA, data, 65536);
  ASSERT_EQ(proto_stun_finish(&b), PROTO_ETOOBIG);
}

/* Getters on malformed values. */
static void test_getter_errors(void) {
  uint8_t v[32] = {0};
  proto_stun_attr_t a = {.type = PROTO_STUN_A_XOR_PEER_ADDRESS, .val = v};
  proto_stun_addr_t addr;
  v[1] = 1;
  for (a.len = 0; a.len < 32; a.len++)
    ASSERT_EQ(proto_stun_get_xaddr(&a, TXID, &addr), a.len == 8 ? 0 : PROTO_EINVAL);
  v[1] = 2;
  for (a.len = 0; a.len < 32; a.len++)
    ASSERT_EQ(proto_stun_get_addr(&a, &addr), a.len == 20 ? 0 : PROTO_EINVAL);
  v[1] = 3;
  a.len = 8;
  ASSERT_EQ(proto_stun_get_addr(&a, &addr), PROTO_EINVAL);

  proto_stun_error_t e;
  memset(v, 0, sizeof(v));
  a.len = 3;
  ASSERT_EQ(proto_stun_get_error(&a, &e), PROTO_EINVAL);
  a.len = 4;
  v[2] = 2;
  ASSERT_EQ(proto_stun_get_error(&a, &e), PROTO_EINVAL); /* class 2 */
  v[2] = 7;
  ASSERT_EQ(proto_stun_get_error(&a, &e), PROTO_EINVAL); /* class 7 */
  v[2] = 4, v[3] = 100;
  ASSERT_EQ(proto_stun_get_error(&a, &e), PROTO_EINVAL); /* number 100 */
  v[0] = 0xFF, v[1] = 0xFF, v[2] = 0xF4, v[3] = 99;    /* reserved bits are ignored */
  ASSERT_OK(proto_stun_get_error(&a, &e));
  ASSERT_EQ(e.code, 499);

  uint32_t u32;
  uint16_t u16;
  uint8_t u8, token[8];
  int r;
  size_t n;
  a.len = 3;
  ASSERT_EQ(proto_stun_get_u32(&a, &u32), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_get_channel(&a, &u16), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_get_transport(&a, &u8), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_get_unknown(&a, &u16, 1, &n), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_get_flag(&a), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_get_token(&a, token), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_get_even_port(&a, &r), PROTO_EINVAL);
  a.len = 4;
  v[0] = 3;
  ASSERT_EQ(proto_stun_get_family(&a, &u8), PROTO_EINVAL);

  const char *s;
  a.type = PROTO_STUN_A_USERNAME;
  a.len = 514;
  ASSERT_EQ(proto_stun_get_text(&a, &s, &n), PROTO_ETOOBIG);
  a.type = PROTO_STUN_A_NONCE;
  a.len = 764;
  ASSERT_EQ(proto_stun_get_text(&a, &s, &n), PROTO_ETOOBIG);
}

/* Demultiplexing and ChannelData ------------------------------------------------ */

static void test_kind(void) {
  uint8_t buf[256];
  size_t len = unhex(RFC_IPV4, buf, sizeof(buf));
  ASSERT_EQ(proto_stun_kind(buf, len), PROTO_STUN_KIND_STUN);
  ASSERT_EQ(proto_stun_kind(buf, 19), PROTO_STUN_KIND_OTHER);
  buf[5] ^= 1;
  ASSERT_EQ(proto_stun_kind(buf, len), PROTO_STUN_KIND_OTHER);
  uint8_t chan[4] = {0x40, 0x00, 0x00, 0x00};
  ASSERT_EQ(proto_stun_kind(chan, 4), PROTO_STUN_KIND_CHANNEL);
  ASSERT_EQ(proto_stun_kind(chan, 3), PROTO_STUN_KIND_OTHER);
  for (unsigned first = 0; first < 256; first++) {
    chan[0] = (uint8_t)first;
    int want = first >= 0x40 && first <= 0x4F ? PROTO_STUN_KIND_CHANNEL : PROTO_STUN_KIND_OTHER;
    ASSERT_EQ(proto_stun_kind(chan, 4), want);
  }
}

static void test_channel_data(void) {
  uint8_t buf[64], hdr[4];
  proto_stun_chan_t c;

  long n = proto_stun_chan_build(buf, sizeof(buf), 0x4001, "hello", 5, 0);
  ASSERT_EQ(n, 9);
  ASSERT_MEM_EQ(buf, "\x40\x01\x00\x05hello", 9);
  proto_stun_chan_header(hdr, 0x4001, 5);
  ASSERT_MEM_EQ(hdr, buf, 4);
  ASSERT_OK(proto_stun_chan_parse(buf, 9, &c));
  ASSERT_EQ(c.chan, 0x4001);
  ASSERT_EQ(c.len, 5);
  ASSERT(c.data == buf + 4);
  for (size_t k = 0; k < 9; k++) ASSERT_EQ(proto_stun_chan_parse(buf, k, &c), PROTO_ETRUNC);
  /* Over a stream the unpadded message is incomplete. */
  ASSERT_EQ(proto_stun_frame(buf, 9), PROTO_NEED_MORE);

  n = proto_stun_chan_build(buf, sizeof(buf), 0x4FFF, "hello", 5, 1);
  ASSERT_EQ(n, 12);
  ASSERT_MEM_EQ(buf + 9, "\0\0\0", 3);
  save_seed("channeldata-padded.bin", buf, 12);
  ASSERT_EQ(proto_stun_kind(buf, 12), PROTO_STUN_KIND_CHANNEL);
  for (size_t k = 9; k <= 12; k++) {
    ASSERT_OK(proto_stun_chan_parse(buf, k, &c));
    ASSERT_EQ(c.len, 5);
  }
  ASSERT_EQ(proto_stun_chan_parse(buf, 13, &c), PROTO_ETRAIL);
  for (size_t k = 0; k < 12; k++) ASSERT_EQ(proto_stun_frame(buf, k), PROTO_NEED_MORE);
  ASSERT_EQ(proto_stun_frame(buf, 12), 12);

  ASSERT_EQ(proto_stun_chan_build(buf, sizeof(buf), 0x4000, NULL, 0, 1), 4);
  ASSERT_OK(proto_stun_chan_parse(buf, 4, &c));
  ASSERT_EQ(c.len, 0);
  ASSERT_EQ(proto_stun_chan_build(buf, sizeof(buf), 0x3FFF, "x", 1, 0), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_chan_build(buf, sizeof(buf), 0x5000, "x", 1, 0), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_chan_build(buf, 8, 0x4000, "hello", 5, 0), PROTO_ENOSPC);
  ASSERT_EQ(proto_stun_chan_build(buf, 9, 0x4000, "hello", 5, 1), PROTO_ENOSPC);
  /* Reserved channel numbers (RFC 8656 section 12) are rejected. */
  memcpy(buf, "\x50\x00\x00\x01x", 5);
  ASSERT_EQ(proto_stun_chan_parse(buf, 5, &c), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_frame(buf, 5), PROTO_EMAGIC);
  memcpy(buf, "\x3f\xff\x00\x01x", 5);
  ASSERT_EQ(proto_stun_chan_parse(buf, 5, &c), PROTO_EINVAL);

  /* The largest message. */
  static uint8_t big[4 + 65536], payload[65536];
  ASSERT_EQ(proto_stun_chan_build(big, sizeof(big), 0x4abc, payload, 65535, 1), 65540);
  ASSERT_OK(proto_stun_chan_parse(big, 65540, &c));
  ASSERT_EQ(c.len, 65535);
  ASSERT_EQ(proto_stun_chan_build(big, sizeof(big), 0x4abc, payload, 65536, 0), PROTO_ETOOBIG);
}

/* A stream holding ChannelData, STUN, ChannelData, then half a STUN
 * message: the framer walks it message by message. */
static void test_stream(void) {
  uint8_t stream[256], msg[256];
  size_t slen = 0, mlen = unhex(RFC_IPV4, msg, sizeof(msg));
  slen += (size_t)proto_stun_chan_build(stream, sizeof(stream), 0x4002, "abcdefg", 7, 1);
  memcpy(stream + slen, msg, mlen);
  slen += mlen;
  slen += (size_t)proto_stun_chan_build(stream + slen, sizeof(stream) - slen, 0x4003, NULL, 0, 1);
  memcpy(stream + slen, msg, 10);
  slen += 10;
  save_seed("stream-mixed.bin", stream, slen);

  static const long want[] = {12, 0, 4};
  size_t off = 0;
  for (int i = 0; i < 3; i++) {
    long n = proto_stun_frame(stream + off, slen - off);
    ASSERT_EQ(n, want[i] ? want[i] : (long)mlen);
    off += (size_t)n;
  }
  ASSERT_EQ(proto_stun_frame(stream + off, slen - off), PROTO_NEED_MORE);
  ASSERT_EQ(slen - off, 10);
}

/* Credentials ------------------------------------------------------------------ */

static const uint8_t SECRET[] = "p2psip-secret";
#define SECRET_LEN (sizeof(SECRET) - 1)

static void test_rest_credentials(void) {
  char user[64], pass[PROTO_STUN_REST_PASS_LEN + 1];
  long ulen = proto_stun_rest_mint(user, sizeof(user), 1700000000, "alice", 5, SECRET,
                                   SECRET_LEN, pass);
  ASSERT_EQ(ulen, 16);
  ASSERT_STR_EQ(user, "1700000000:alice");
  /* Expected password from the command line, independently of our code:
   *   printf '1700000000:alice' | openssl dgst -sha1 -hmac 'p2psip-secret' -binary | base64
   *   ZCM7VfXJSksRL+Aw1SF45Rn5Q1M= */
  ASSERT_STR_EQ(pass, "ZCM7VfXJSksRL+Aw1SF45Rn5Q1M=");

  ASSERT_OK(proto_stun_rest_check(user, 16, pass, 28, SECRET, SECRET_LEN, 1699999999));
  ASSERT_OK(proto_stun_rest_check(user, 16, pass, 28, SECRET, SECRET_LEN, 1700000000));
  ASSERT_EQ(proto_stun_rest_check(user, 16, pass, 28, SECRET, SECRET_LEN, 1700000001),
            PROTO_EINVAL);
  ASSERT_EQ(proto_stun_rest_check(user, 16, pass, 27, SECRET, SECRET_LEN, 0), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_rest_check(user, 16, pass, 28, SECRET, SECRET_LEN - 1, 0), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_rest_check("1700000000:alicf", 16, pass, 28, SECRET, SECRET_LEN, 0),
            PROTO_EINVAL);
  pass[5] ^= 1;
  ASSERT_EQ(proto_stun_rest_check(user, 16, pass, 28, SECRET, SECRET_LEN, 0), PROTO_EINVAL);
  pass[5] ^= 1;

  /* The key a server derives.  Expected from the command line:
   *   printf '1700000000:alice:overlay.test:ZCM7VfXJSksRL+Aw1SF45Rn5Q1M=' | openssl md5
   *   MD5(stdin)= 99b551c340e188491dff4fae3bc1da62 */
  uint8_t key[16], want[16];
  unhex("99b551c340e188491dff4fae3bc1da62", want, sizeof(want));
  ASSERT_OK(proto_stun_rest_key(user, 16, "overlay.test", 12, SECRET, SECRET_LEN, 1690000000,
                                key));
  ASSERT_MEM_EQ(key, want, 16);
  ASSERT_EQ(proto_stun_rest_key(user, 16, "overlay.test", 12, SECRET, SECRET_LEN, 1800000000,
                                key),
            PROTO_EINVAL);

  /* Minting: no name, and buffers one byte short. */
  ASSERT_EQ(proto_stun_rest_mint(user, sizeof(user), 42, NULL, 0, SECRET, SECRET_LEN, pass), 2);
  ASSERT_STR_EQ(user, "42");
  ASSERT_EQ(proto_stun_rest_mint(user, 16, 1700000000, "alice", 5, SECRET, SECRET_LEN, pass),
            PROTO_ENOSPC);
  ASSERT_EQ(proto_stun_rest_mint(user, 17, 1700000000, "alice", 5, SECRET, SECRET_LEN, pass), 16);

  uint64_t exp;
  ASSERT_OK(proto_stun_rest_expiry("123", 3, &exp));
  ASSERT_EQ(exp, 123);
  ASSERT_OK(proto_stun_rest_expiry("123:x:y", 7, &exp));
  ASSERT_EQ(exp, 123);
  ASSERT_OK(proto_stun_rest_expiry("18446744073709551615", 20, &exp));
  ASSERT(exp == UINT64_MAX);
  ASSERT_EQ(proto_stun_rest_expiry("18446744073709551616", 20, &exp), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_rest_expiry("", 0, &exp), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_rest_expiry(":alice", 6, &exp), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_rest_expiry("12a:alice", 9, &exp), PROTO_EINVAL);
  ASSERT_EQ(proto_stun_rest_expiry("alice:123", 9, &exp), PROTO_EINVAL);
}

/* A client's authenticated Allocate request, checked the way a server
 * would: USERNAME -> time-limited key -> MESSAGE-INTEGRITY. */
static void test_allocate_flow(void) {
  char user[64], pass[PROTO_STUN_REST_PASS_LEN + 1];
  long ulen = proto_stun_rest_mint(user, sizeof(user), 2000000000, "bob", 3, SECRET, SECRET_LEN,
                                   pass);
  ASSERT_GT(ulen, 0);
  uint8_t ckey[16];
  ASSERT_OK(proto_stun_lt_key(user, (size_t)ulen, "overlay.test", 12, pass, 28, ckey));

  uint8_t buf[256];
  proto_stun_builder_t b;
  proto_stun_begin(&b, buf, sizeof(buf), proto_stun_type(PROTO_STUN_ALLOCATE, PROTO_STUN_REQUEST),
                   TXID);
  proto_stun_add_transport(&b, PROTO_STUN_PROTO_UDP);
  proto_stun_add_u32(&b, PROTO_STUN_A_LIFETIME, 600);
  proto_stun_add(&b, PROTO_STUN_A_USERNAME, user, (size_t)ulen);
  proto_stun_add(&b, PROTO_STUN_A_REALM, "overlay.test", 12);
  proto_stun_add(&b, PROTO_STUN_A_NONCE, "0123456789abcdef", 16);
  proto_stun_add_integrity(&b, ckey, sizeof(ckey));
  proto_stun_add_fingerprint(&b);
  long n = proto_stun_finish(&b);
  ASSERT_GT(n, 0);
  save_seed("allocate-request.bin", buf, (size_t)n);
  check_prefixes(buf, (size_t)n);

  proto_stun_msg_t m;
  proto_stun_attr_t ua, ra;
  const char *u, *r;
  size_t un, rn;
  uint8_t skey[16];
  ASSERT_OK(proto_stun_parse(buf, (size_t)n, &m));
  ASSERT_EQ(m.method, PROTO_STUN_ALLOCATE);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_USERNAME, &ua), 1);
  ASSERT_EQ(proto_stun_find(&m, PROTO_STUN_A_REALM, &ra), 1);
  ASSERT_OK(proto_stun_get_text(&ua, &u, &un));
  ASSERT_OK(proto_stun_get_text(&ra, &r, &rn));
  ASSERT_OK(proto_stun_rest_key(u, un, r, rn, SECRET, SECRET_LEN, 1999999999, skey));
  ASSERT_OK(proto_stun_check_integrity(&m, skey, sizeof(skey)));
  ASSERT_OK(proto_stun_check_fingerprint(&m));
  ASSERT_OK(proto_stun_rest_key(u, un, r, rn, (const uint8_t *)"other", 5, 0, skey));
  ASSERT_EQ(proto_stun_check_integrity(&m, skey, sizeof(skey)), PROTO_EINVAL);

  /* Its success response, as a server would build it. */
  proto_stun_addr_t relayed = {.family = 4, .port = 49152, .ip = {127, 0, 0, 1}};
  proto_stun_addr_t mapped = {.family = 6, .port = 5060, .ip = {[15] = 1}};
  proto_stun_begin(&b, buf, sizeof(buf), proto_stun_type(PROTO_STUN_ALLOCATE, PROTO_STUN_SUCCESS),
                   m.txid);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_RELAYED_ADDRESS, &relayed);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_MAPPED_ADDRESS, &mapped);
  proto_stun_add_u32(&b, PROTO_STUN_A_LIFETIME, 600);
  proto_stun_add_integrity(&b, skey, sizeof(skey));
  proto_stun_add_fingerprint(&b);
  n = proto_stun_finish(&b);
  ASSERT_GT(n, 0);
  save_seed("allocate-success.bin", buf, (size_t)n);
  check_prefixes(buf, (size_t)n);
  check_attr_lengths(buf, (size_t)n);
}

int main(void) {
  test_types();
  test_crc();
  test_rfc_request();
  test_rfc_responses();
  test_rfc_longterm();
  test_truncation();
  test_bad_headers();
  test_attr_order();
  test_builder_round_trip();
  test_error_codes();
  test_builder_errors();
  test_getter_errors();
  test_kind();
  test_channel_data();
  test_stream();
  test_rest_credentials();
  test_allocate_flow();
  printf("test_stun: ok\n");
  return 0;
}
