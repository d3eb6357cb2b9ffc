/* Address ranges (dht/addr.c): CIDR parsing and printing, matching with
 * IPv4-mapped addresses, and the special-purpose set, edge by edge. */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include "dht/dht.h"
#include "tests/unit/test.h"

static struct sockaddr_storage ip(const char *s) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof(ss));
  struct sockaddr_in *in = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, s, &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
  } else {
    ASSERT(inet_pton(AF_INET6, s, &in6->sin6_addr) == 1);
    in6->sin6_family = AF_INET6;
  }
  return ss;
}

static int special(const char *s) {
  struct sockaddr_storage ss = ip(s);
  return dht_addr_special(&ss);
}

static void test_parse(void) {
  dht_cidr_t c;
  char out[DHT_CIDR_STRLEN];
  const char *good[] = {"10.0.0.0/8", "0.0.0.0/0", "192.0.2.7/32", "fc00::/7", "::/0", "::1/128",
                        "2001:db8::/32", "64:ff9b::/96"};
  for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++) {
    ASSERT_OK(dht_cidr_parse(good[i], &c));
    dht_cidr_str(&c, out, sizeof(out));
    ASSERT_STR_EQ(out, good[i]); /* round trip */
  }
  ASSERT_OK(dht_cidr_parse("192.0.2.7", &c)); /* a bare address is a host route */
  ASSERT_EQ(c.bits, 32);
  ASSERT_OK(dht_cidr_parse("fe80::1", &c));
  ASSERT_EQ(c.bits, 128);
  ASSERT_EQ(c.family, AF_INET6);
  const char *bad[] = {"", "/8", "10.0.0.0/", "10.0.0.0/33", "fc00::/129", "10.1.2.3/8",
                       "fc00::1/7", "10.0.0.0/8x", "10.0.0.0/-1", "10.0.0/8", "host/8",
                       "10.0.0.0/ 8", "10.0.0.0/+8"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
    if (dht_cidr_parse(bad[i], &c) != -EINVAL) {
      fprintf(stderr, "accepted \"%s\"\n", bad[i]);
      ASSERT(0);
    }
  }
  dht_cidr_t list[3];
  int n = 0;
  ASSERT_OK(dht_cidr_parse_list("10.1.0.0/16,fd00::/8", list, &n, 3));
  ASSERT_EQ(n, 2);
  ASSERT_EQ(dht_cidr_parse_list("1.2.3.4,5.6.7.8", list, &n, 3), -E2BIG);
  ASSERT_EQ(n, 2); /* unchanged on failure */
  ASSERT_EQ(dht_cidr_parse_list("1.2.3.4,", list, &n, 3), -EINVAL);
  ASSERT_EQ(dht_cidr_parse_list(",1.2.3.4", list, &n, 3), -EINVAL);
  ASSERT_EQ(dht_cidr_parse_list("1.2.3.4,,5.6.7.8", list, &n, 3), -EINVAL);
  ASSERT_OK(dht_cidr_parse_list("1.2.3.4", list, &n, 3));
  ASSERT_EQ(n, 3);
}

static void test_match(void) {
  dht_cidr_t c;
  ASSERT_OK(dht_cidr_parse("172.16.0.0/12", &c));
  struct sockaddr_storage a = ip("172.16.0.0"), b = ip("172.31.255.255"), o = ip("172.32.0.0"),
                          m = ip("::ffff:172.20.1.1"), v6 = ip("fc00::1");
  ASSERT(dht_cidr_match(&c, &a));
  ASSERT(dht_cidr_match(&c, &b));
  ASSERT(!dht_cidr_match(&c, &o));
  ASSERT(dht_cidr_match(&c, &m)); /* mapped: its IPv4 address */
  ASSERT(!dht_cidr_match(&c, &v6));
  ASSERT_OK(dht_cidr_parse("::ffff:0:0/96", &c));
  ASSERT(dht_cidr_match(&c, &m)); /* ... and itself to an IPv6 range */
  ASSERT(!dht_cidr_match(&c, &a));
  ASSERT_OK(dht_cidr_parse("0.0.0.0/0", &c));
  ASSERT(dht_cidr_match(&c, &o));
  ASSERT(!dht_cidr_match(&c, &v6));
  ASSERT_OK(dht_cidr_parse("fc00::/7", &c));
  struct sockaddr_storage fd = ip("fdff:ffff::1"), fe = ip("fe00::1");
  ASSERT(dht_cidr_match(&c, &fd));
  ASSERT(!dht_cidr_match(&c, &fe));
  dht_cidr_t list[2];
  int n = 0;
  ASSERT_OK(dht_cidr_parse_list("10.0.0.0/8,fc00::/7", list, &n, 2));
  struct sockaddr_storage ten = ip("10.9.9.9");
  ASSERT(dht_cidr_list_match(list, n, &ten));
  ASSERT(dht_cidr_list_match(list, n, &fd));
  ASSERT(!dht_cidr_list_match(list, n, &o));
  ASSERT(!dht_cidr_list_match(list, 0, &ten));
  struct sockaddr_storage none;
  memset(&none, 0, sizeof(none));
  ASSERT(!dht_cidr_list_match(list, n, &none));
  ASSERT(dht_addr_special(&none)); /* no family: never a peer */
}

/* Every range: its first and last address are special, the addresses just
 * outside it are not (unless a neighbouring range holds them). */
static void test_special(void) {
  const char *in[] = {
      "0.0.0.0", "0.255.255.255", "10.0.0.0", "10.255.255.255", "100.64.0.0", "100.127.255.255",
      "127.0.0.1", "127.255.255.255", "169.254.0.0", "169.254.255.255", "172.16.0.0",
      "172.31.255.255", "192.0.0.0", "192.0.0.255", "192.0.2.0", "192.0.2.255", "192.88.99.1",
      "192.168.0.0", "192.168.255.255", "198.18.0.0", "198.19.255.255", "198.51.100.7",
      "203.0.113.9", "224.0.0.1", "239.255.255.255", "240.0.0.1", "255.255.255.255",
      "::", "::1", "::2", "::8.8.8.8", "::ffff:10.1.1.1", "::ffff:127.0.0.1", "64:ff9b::8.8.8.8", "64:ff9b:1::1",
      "100::1", "100::ffff:ffff:ffff:ffff", "2001::1", "2001:1ff:ffff::1", "2001:db8::1",
      "2001:db8:ffff::1", "3fff::1", "3fff:fff::1", "5f00::1", "fc00::1", "fdff::1", "fe80::1",
      "febf::1", "fec0::1", "feff::1", "ff02::1", "ffff::1",
      "2002:0a00:0001::1",   /* 6to4 around 10.0.0.1 */
      "2002:c0a8:0101::1",   /* ... around 192.168.1.1 */
      "2002:7f00:0001::1",   /* ... around 127.0.0.1 */
  };
  const char *out[] = {
      "1.0.0.0", "9.255.255.255", "11.0.0.0", "100.63.255.255", "100.128.0.0", "126.255.255.255",
      "128.0.0.0", "169.253.255.255", "169.255.0.0", "172.15.255.255", "172.32.0.0",
      "191.255.255.255", "192.0.1.0", "192.0.3.0", "192.88.98.255", "192.88.100.0",
      "192.167.255.255", "192.169.0.0", "198.17.255.255", "198.20.0.0", "198.51.99.255",
      "198.51.101.0", "203.0.112.255", "203.0.114.0", "223.255.255.255", "8.8.8.8",
      "::1:0:0", "::ffff:8.8.8.8", "64:ff9a:ffff::1", "64:ff9b:0:0:1::", "64:ff9b:2::1", "100:0:0:1::",
      "2001:200::1", "2001:db7:ffff::1", "2001:db9::1", "3fff:1000::1", "4000::1", "5f01::1",
      "fbff::1", "fe00::1", "2a00:1450::1", "2400:cb00::1",
      "2002:0808:0808::1", /* 6to4 around 8.8.8.8: reachable */
  };
  for (size_t i = 0; i < sizeof(in) / sizeof(*in); i++) {
    if (!special(in[i])) {
      fprintf(stderr, "%s should be special\n", in[i]);
      ASSERT(0);
    }
  }
  for (size_t i = 0; i < sizeof(out) / sizeof(*out); i++) {
    if (special(out[i])) {
      fprintf(stderr, "%s should not be special\n", out[i]);
      ASSERT(0);
    }
  }
  struct sockaddr_storage a = ip("127.3.2.1"), b = ip("::1"), c = ip("::ffff:127.0.0.1"),
                          d = ip("128.0.0.1"), e = ip("::2");
  ASSERT(dht_addr_loopback(&a) && dht_addr_loopback(&b) && dht_addr_loopback(&c));
  ASSERT(!dht_addr_loopback(&d) && !dht_addr_loopback(&e));
}

int main(void) {
  test_parse();
  test_match();
  test_special();
  printf("addr: ok\n");
  return 0;
}
