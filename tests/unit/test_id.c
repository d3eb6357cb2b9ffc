/* Identifier arithmetic on the ring: intervals, wrap-around, finger
 * targets, hex and address round trips, SHA-1 of names. */
#include <string.h>

#include "dht/internal.h"
#include "tests/unit/test.h"

static dht_id_t id_of_byte(uint8_t first, uint8_t last) {
  dht_id_t id;
  memset(id.b, 0, sizeof(id.b));
  id.b[0] = first;
  id.b[DHT_ID_LEN - 1] = last;
  return id;
}

static void test_between(void) {
  dht_id_t a = id_of_byte(0x10, 0), b = id_of_byte(0x80, 0), x = id_of_byte(0x40, 0);
  dht_id_t lo = id_of_byte(0x05, 0), hi = id_of_byte(0xf0, 0);
  ASSERT(dht__between(&x, &a, &b));
  ASSERT(!dht__between(&a, &a, &b)); /* open at both ends */
  ASSERT(!dht__between(&b, &a, &b));
  ASSERT(dht__between_incl(&b, &a, &b)); /* (a, b] */
  ASSERT(!dht__between_incl(&a, &a, &b));
  ASSERT(!dht__between(&lo, &a, &b));
  /* Wrap-around: (0x80.., 0x10..) holds 0xf0.. and 0x05.. but not 0x40.. */
  ASSERT(dht__between(&hi, &b, &a));
  ASSERT(dht__between(&lo, &b, &a));
  ASSERT(!dht__between(&x, &b, &a));
  /* (a, a) is the whole ring but a: Chord's ring of one. */
  ASSERT(dht__between(&x, &a, &a));
  ASSERT(!dht__between(&a, &a, &a));
  ASSERT(dht__between_incl(&a, &a, &a));
  /* Neighbouring ids differ in the last byte only. */
  dht_id_t y = id_of_byte(0x40, 1);
  ASSERT(dht__between_incl(&y, &x, &y));
  ASSERT(!dht__between(&y, &x, &y));
}

static void test_add_pow2(void) {
  dht_id_t zero = id_of_byte(0, 0), out;
  dht__id_add_pow2(&zero, 0, &out);
  ASSERT_EQ(out.b[DHT_ID_LEN - 1], 1);
  dht__id_add_pow2(&zero, 159, &out);
  ASSERT_EQ(out.b[0], 0x80);
  /* Carry across bytes: 0x..ff + 1 = 0x..100 */
  dht_id_t ff = id_of_byte(0, 0xff);
  dht__id_add_pow2(&ff, 0, &out);
  ASSERT_EQ(out.b[DHT_ID_LEN - 1], 0);
  ASSERT_EQ(out.b[DHT_ID_LEN - 2], 1);
  /* Wrap: 0xff.. + 2^159 drops the carry out of the top bit. */
  dht_id_t top;
  memset(top.b, 0xff, sizeof(top.b));
  dht__id_add_pow2(&top, 159, &out);
  ASSERT_EQ(out.b[0], 0x7f);
  ASSERT_EQ(out.b[DHT_ID_LEN - 1], 0xff);
  /* Finger starts are strictly increasing around self. */
  dht_id_t self = id_of_byte(0xc0, 7), prev = self;
  for (int i = 0; i < 160; i++) {
    dht__id_add_pow2(&self, i, &out);
    ASSERT(dht__between(&out, &prev, &self) || i == 0);
    prev = out;
  }
}

static void test_top_bit(void) {
  dht_id_t base = id_of_byte(0xc0, 7), x;
  ASSERT_EQ(dht__id_top_bit(&base, &base), -1);
  for (int i = 0; i < 160; i++) {
    dht__id_add_pow2(&base, i, &x);
    ASSERT_EQ(dht__id_top_bit(&x, &base), i); /* start of finger i */
    dht_id_t y;
    dht__id_add_pow2(&x, 0, &y); /* one past it, still in [start_i, start_i+1) when i > 0 */
    if (i > 0) ASSERT_EQ(dht__id_top_bit(&y, &base), i);
  }
  /* Wrap-around: just below base is the farthest point of the ring. */
  dht_id_t below = base;
  below.b[DHT_ID_LEN - 1]--;
  ASSERT_EQ(dht__id_top_bit(&below, &base), 159);
}

static void test_hex_sha1(void) {
  dht_id_t id, back;
  char hex[DHT_ID_HEX];
  /* SHA-1("abc") from FIPS 180-1. */
  dht_id_of("abc", &id);
  dht_id_hex(&id, hex);
  ASSERT_STR_EQ(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
  ASSERT_OK(dht_id_parse(hex, &back));
  ASSERT(dht__id_eq(&id, &back));
  ASSERT_OK(dht_id_parse("A9993E364706816ABA3E25717850C26C9CD0D89D", &back));
  ASSERT(dht__id_eq(&id, &back));
  ASSERT(dht_id_parse("a9993e", &back) < 0);
  ASSERT(dht_id_parse("g9993e364706816aba3e25717850c26c9cd0d89d", &back) < 0);
  ASSERT(dht_id_parse("a9993e364706816aba3e25717850c26c9cd0d89d0", &back) < 0);
}

static void test_addr(void) {
  struct sockaddr_storage ss;
  char s[64];
  ASSERT_OK(dht_addr_parse("127.0.0.1:5060", &ss));
  dht_addr_str(&ss, s, sizeof(s));
  ASSERT_STR_EQ(s, "127.0.0.1:5060");
  ASSERT_OK(dht_addr_parse("[::1]:0", &ss));
  dht_addr_str(&ss, s, sizeof(s));
  ASSERT_STR_EQ(s, "[::1]:0");
  const char *bad[] = {"", "127.0.0.1", ":5060", "127.0.0.1:", "127.0.0.1:65536", "1.2.3:4",
                       "localhost:5060", "127.0.0.1:50x", "[::1:5060", "::1:5060"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
    if (dht_addr_parse(bad[i], &ss) == 0) {
      fprintf(stderr, "accepted bad address \"%s\"\n", bad[i]);
      ASSERT(0);
    }
  }
  /* Wire form round trip. */
  dht_node_t n, m;
  memset(&n, 0, sizeof(n));
  dht_id_of("x", &n.id);
  dht_addr_parse("[2001:db8::1]:7000", &n.addr);
  proto_node_t p;
  dht__node_to_proto(&n, &p);
  dht__node_from_proto(&p, &m);
  ASSERT(dht__node_eq(&n, &m));
  ASSERT(memcmp(&n.addr, &m.addr, sizeof(struct sockaddr_in6)) == 0);
}

int main(void) {
  test_between();
  test_add_pow2();
  test_top_bit();
  test_hex_sha1();
  test_addr();
  printf("test_id: ok\n");
  return 0;
}
