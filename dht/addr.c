/*
 * IP address ranges: CIDR prefixes (parse, print, match) and the
 * special-purpose address registries, for every module that must decide
 * whether an address is one it may send to on someone else's behalf (the
 * TURN relay's peers; SIP targets).  Pure functions: no I/O, no state.
 * IP:PORT formatting and parsing are in id.c (dht_addr_str, dht_addr_parse).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dht/dht.h"

#define V4(a, b, c, d, bits) {AF_INET, bits, {a, b, c, d}}
#define V6(bits, ...) {AF_INET6, bits, {__VA_ARGS__}}

/* Not globally reachable, or not unicast, per the IANA IPv4 and IPv6
 * Special-Purpose Address Registries (RFC 6890 and its updates), which
 * is also what coturn's turnserver.conf recommends for denied-peer-ip.
 * A relay or proxy that sends there on a stranger's behalf reaches the
 * operator's own networks, or nothing. */
static const dht_cidr_t special_v4[] = {
    V4(0, 0, 0, 0, 8),          /* "this network" (RFC 791, RFC 1122 3.2.1.3) */
    V4(10, 0, 0, 0, 8),         /* private (RFC 1918) */
    V4(100, 64, 0, 0, 10),      /* shared address space, carrier-grade NAT (RFC 6598) */
    V4(127, 0, 0, 0, 8),        /* loopback (RFC 1122 3.2.1.3) */
    V4(169, 254, 0, 0, 16),     /* link local (RFC 3927) */
    V4(172, 16, 0, 0, 12),      /* private (RFC 1918) */
    V4(192, 0, 0, 0, 24),       /* IETF protocol assignments (RFC 6890 2.2.2) */
    V4(192, 0, 2, 0, 24),       /* documentation, TEST-NET-1 (RFC 5737) */
    V4(192, 88, 99, 0, 24),     /* 6to4 relay anycast, deprecated (RFC 7526) */
    V4(192, 168, 0, 0, 16),     /* private (RFC 1918) */
    V4(198, 18, 0, 0, 15),      /* benchmarking (RFC 2544) */
    V4(198, 51, 100, 0, 24),    /* documentation, TEST-NET-2 (RFC 5737) */
    V4(203, 0, 113, 0, 24),     /* documentation, TEST-NET-3 (RFC 5737) */
    V4(224, 0, 0, 0, 4),        /* multicast (RFC 5771) */
    V4(240, 0, 0, 0, 4),        /* reserved (RFC 1112 4) */
    V4(255, 255, 255, 255, 32), /* limited broadcast (RFC 919 7), inside 240/4 */
};

/* ::ffff:0:0/96 (IPv4-mapped, RFC 4291 2.5.5.2) and 2002::/16 (6to4,
 * RFC 3056) are not here: a packet to either reaches the IPv4 address
 * inside (through the host's IPv4 stack, or a 6to4 relay router), so that
 * address is what dht_addr_special checks (coturn's sample configuration
 * denies both whole). */
static const dht_cidr_t special_v6[] = {
    V6(128, 0),                                    /* ::/128 unspecified (RFC 4291 2.5.2) */
    V6(128, [15] = 1),                             /* ::1/128 loopback (RFC 4291 2.5.3) */
    V6(96, 0),                                     /* ::/96 IPv4-compatible, deprecated (RFC 4291
                                                      2.5.5.1), may be tunnelled: all of it */
    V6(96, 0, 0x64, 0xff, 0x9b),                   /* 64:ff9b::/96 NAT64 (RFC 6052) */
    V6(48, 0, 0x64, 0xff, 0x9b, 0, 1),             /* 64:ff9b:1::/48 local NAT64 (RFC 8215) */
    V6(64, 0x01, 0x00),                            /* 100::/64 discard-only (RFC 6666) */
    V6(23, 0x20, 0x01),                            /* 2001::/23 IETF protocol assignments (RFC 2928) */
    V6(32, 0x20, 0x01, 0x0d, 0xb8),                /* 2001:db8::/32 documentation (RFC 3849) */
    V6(20, 0x3f, 0xff),                            /* 3fff::/20 documentation (RFC 9637) */
    V6(16, 0x5f, 0x00),                            /* 5f00::/16 SRv6 SIDs (RFC 9602) */
    V6(7, 0xfc),                                   /* fc00::/7 unique local (RFC 4193) */
    V6(10, 0xfe, 0x80),                            /* fe80::/10 link local (RFC 4291 2.5.6) */
    V6(10, 0xfe, 0xc0),                            /* fec0::/10 site local, deprecated (RFC 3879) */
    V6(8, 0xff),                                   /* ff00::/8 multicast (RFC 4291 2.7) */
};

static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static int prefix_eq(const uint8_t *a, const uint8_t *b, unsigned bits) {
  unsigned whole = bits / 8, rest = bits % 8;
  if (memcmp(a, b, whole) != 0) return 0;
  if (!rest) return 1;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

/* The family and bytes of an address; an IPv4-mapped IPv6 address comes
 * out as IPv4 in *v4 (NULL if it is not one). */
static int addr_bytes(const struct sockaddr_storage *ss, const uint8_t **ip, const uint8_t **v4) {
  *v4 = NULL;
  if (ss->ss_family == AF_INET) {
    *ip = (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr;
    *v4 = *ip;
    return AF_INET;
  }
  if (ss->ss_family != AF_INET6) return -1;
  *ip = (const uint8_t *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
  if (memcmp(*ip, mapped_prefix, sizeof(mapped_prefix)) == 0) *v4 = *ip + 12;
  return AF_INET6;
}

static int cidr_holds(const dht_cidr_t *c, int family, const uint8_t *ip, const uint8_t *v4) {
  if (c->family == AF_INET) return v4 && prefix_eq(c->ip, v4, c->bits);
  return family == AF_INET6 && prefix_eq(c->ip, ip, c->bits);
}

int dht_cidr_match(const dht_cidr_t *c, const struct sockaddr_storage *ss) {
  const uint8_t *ip, *v4;
  int family = addr_bytes(ss, &ip, &v4);
  return family > 0 && cidr_holds(c, family, ip, v4);
}

int dht_cidr_list_match(const dht_cidr_t *list, int n, const struct sockaddr_storage *ss) {
  const uint8_t *ip, *v4;
  int family = addr_bytes(ss, &ip, &v4);
  for (int i = 0; family > 0 && i < n; i++)
    if (cidr_holds(&list[i], family, ip, v4)) return 1;
  return 0;
}

int dht_addr_same_net(const struct sockaddr_storage *a, const struct sockaddr_storage *b, unsigned v4_bits,
                      unsigned v6_bits) {
  const uint8_t *ia, *va, *ib, *vb;
  int fa = addr_bytes(a, &ia, &va), fb = addr_bytes(b, &ib, &vb);
  if (fa < 0 || fb < 0) return 0;
  if (va || vb) return va && vb && prefix_eq(va, vb, v4_bits);
  return prefix_eq(ia, ib, v6_bits);
}

static int v4_special(const uint8_t *v4) {
  for (size_t i = 0; i < sizeof(special_v4) / sizeof(*special_v4); i++)
    if (prefix_eq(special_v4[i].ip, v4, special_v4[i].bits)) return 1;
  return 0;
}

int dht_addr_special(const struct sockaddr_storage *ss) {
  const uint8_t *ip, *v4;
  int family = addr_bytes(ss, &ip, &v4);
  if (family < 0) return 1;
  if (v4) return v4_special(v4);
  if (ip[0] == 0x20 && ip[1] == 0x02) return v4_special(ip + 2); /* 2002:V4ADDR::/48 */
  for (size_t i = 0; i < sizeof(special_v6) / sizeof(*special_v6); i++)
    if (prefix_eq(special_v6[i].ip, ip, special_v6[i].bits)) return 1;
  return 0;
}

int dht_addr_loopback(const struct sockaddr_storage *ss) {
  static const dht_cidr_t lo[] = {V4(127, 0, 0, 0, 8), V6(128, [15] = 1)};
  return dht_cidr_list_match(lo, 2, ss);
}

int dht_cidr_parse(const char *s, dht_cidr_t *out) {
  char host[INET6_ADDRSTRLEN];
  const char *slash = strchr(s, '/');
  size_t hl = slash ? (size_t)(slash - s) : strlen(s);
  if (hl == 0 || hl >= sizeof(host)) return -EINVAL;
  memcpy(host, s, hl);
  host[hl] = '\0';
  dht_cidr_t c = {0};
  unsigned max;
  if (inet_pton(AF_INET, host, c.ip) == 1) c.family = AF_INET, max = 32;
  else if (inet_pton(AF_INET6, host, c.ip) == 1) c.family = AF_INET6, max = 128;
  else return -EINVAL;
  unsigned long bits = max;
  if (slash) {
    char *end;
    if (slash[1] < '0' || slash[1] > '9') return -EINVAL;
    bits = strtoul(slash + 1, &end, 10);
    if (*end || bits > max) return -EINVAL;
  }
  c.bits = (uint8_t)bits;
  /* Host bits set ("10.1.2.3/8") would make the range ambiguous to a
   * reader: refuse rather than guess. */
  dht_cidr_t net = c;
  memset(net.ip, 0, sizeof(net.ip));
  for (unsigned i = 0; i < c.bits; i++) net.ip[i / 8] |= (uint8_t)(c.ip[i / 8] & (0x80 >> (i % 8)));
  if (memcmp(net.ip, c.ip, sizeof(c.ip)) != 0) return -EINVAL;
  *out = c;
  return 0;
}

int dht_cidr_parse_list(const char *s, dht_cidr_t *out, int *n, int max) {
  int k = *n;
  const char *p = s;
  for (;;) {
    char one[INET6_ADDRSTRLEN + 5];
    size_t len = strcspn(p, ",");
    if (len == 0 || len >= sizeof(one)) return -EINVAL;
    memcpy(one, p, len);
    one[len] = '\0';
    if (k >= max) return -E2BIG;
    if (dht_cidr_parse(one, &out[k]) < 0) return -EINVAL;
    k++;
    if (!p[len]) break;
    p += len + 1;
  }
  *n = k;
  return 0;
}

void dht_cidr_str(const dht_cidr_t *c, char *out, size_t len) {
  char ip[INET6_ADDRSTRLEN] = "?";
  inet_ntop(c->family == AF_INET ? AF_INET : AF_INET6, c->ip, ip, sizeof(ip));
  snprintf(out, len, "%s/%u", ip, c->bits);
}
