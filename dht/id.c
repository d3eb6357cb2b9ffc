/* Identifier arithmetic on the 160-bit ring, SHA-1, and addresses. */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dht/internal.h"
#include "dht/log.h"

int dht__id_cmp(const dht_id_t *a, const dht_id_t *b) { return memcmp(a->b, b->b, DHT_ID_LEN); }

bool dht__id_eq(const dht_id_t *a, const dht_id_t *b) { return dht__id_cmp(a, b) == 0; }

bool dht__between(const dht_id_t *x, const dht_id_t *a, const dht_id_t *b) {
  int ab = dht__id_cmp(a, b);
  if (ab < 0) return dht__id_cmp(a, x) < 0 && dht__id_cmp(x, b) < 0;
  /* The interval wraps past zero (or, with a == b, spans the ring). */
  return dht__id_cmp(a, x) < 0 || dht__id_cmp(x, b) < 0 || (ab == 0 && !dht__id_eq(x, a));
}

bool dht__between_incl(const dht_id_t *x, const dht_id_t *a, const dht_id_t *b) {
  return dht__id_eq(x, b) || dht__between(x, a, b);
}

void dht__id_add_pow2(const dht_id_t *id, int bit, dht_id_t *out) {
  *out = *id;
  int byte = DHT_ID_LEN - 1 - bit / 8;
  unsigned carry = 1u << (bit % 8);
  for (int i = byte; i >= 0 && carry; i--) {
    unsigned sum = out->b[i] + carry;
    out->b[i] = (uint8_t)sum;
    carry = sum >> 8;
  }
}

int dht__id_top_bit(const dht_id_t *x, const dht_id_t *base) {
  uint8_t diff[DHT_ID_LEN];
  int borrow = 0;
  for (int i = DHT_ID_LEN - 1; i >= 0; i--) {
    int v = x->b[i] - base->b[i] - borrow;
    borrow = v < 0;
    diff[i] = (uint8_t)(v + (borrow ? 256 : 0));
  }
  for (int i = 0; i < DHT_ID_LEN; i++) {
    if (!diff[i]) continue;
    int bit = 7;
    while (!(diff[i] >> bit)) bit--;
    return (DHT_ID_LEN - 1 - i) * 8 + bit;
  }
  return -1;
}

bool dht__node_eq(const dht_node_t *a, const dht_node_t *b) { return dht__id_eq(&a->id, &b->id); }

/* A registration hashes four names: EVP_Digest() with EVP_sha1() fetched
 * the algorithm from the provider and made a context each time (three
 * allocations and 300 ns; fetched once and with the context kept, none
 * and 90 ns). */
void dht_id_of(const char *name, dht_id_t *out) {
  static _Thread_local EVP_MD *sha1;
  static _Thread_local EVP_MD_CTX *ctx;
  unsigned len = 0;
  if (!sha1 && !(sha1 = EVP_MD_fetch(NULL, "SHA1", NULL))) fatalx("SHA-1 unavailable");
  if (!ctx && !(ctx = EVP_MD_CTX_new())) fatalx("out of memory");
  if (!EVP_DigestInit_ex(ctx, sha1, NULL) || !EVP_DigestUpdate(ctx, name, strlen(name)) ||
      !EVP_DigestFinal_ex(ctx, out->b, &len) || len != DHT_ID_LEN)
    fatalx("SHA-1 failed");
}

void dht_id_hex(const dht_id_t *id, char out[DHT_ID_HEX]) {
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < DHT_ID_LEN; i++) {
    out[2 * i] = hex[id->b[i] >> 4];
    out[2 * i + 1] = hex[id->b[i] & 15];
  }
  out[DHT_ID_HEX - 1] = '\0';
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int dht_id_parse(const char *hex, dht_id_t *out) {
  dht_id_t v;
  if (strlen(hex) != 2 * DHT_ID_LEN) return -EINVAL;
  for (int i = 0; i < DHT_ID_LEN; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return -EINVAL;
    v.b[i] = (uint8_t)(hi << 4 | lo);
  }
  *out = v;
  return 0;
}

void dht_addr_str(const struct sockaddr_storage *ss, char *out, size_t len) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
    snprintf(out, len, "%s:%u", ip, ntohs(in->sin_port));
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
    snprintf(out, len, "[%s]:%u", ip, ntohs(in6->sin6_port));
  } else {
    snprintf(out, len, "?");
  }
}

bool dht_addr_eq(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return false;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
  return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

int dht_addr_parse(const char *s, struct sockaddr_storage *out) {
  char host[INET6_ADDRSTRLEN + 2];
  const char *colon = strrchr(s, ':');
  if (!colon || colon == s || (size_t)(colon - s) >= sizeof(host)) return -EINVAL;
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = '\0';
  char *end;
  errno = 0;
  long port = strtol(colon + 1, &end, 10);
  if (errno || *end || end == colon + 1 || port < 0 || port > 65535) return -EINVAL;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof(ss));
  size_t hl = strlen(host);
  if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
    host[hl - 1] = '\0';
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET6, host + 1, &in6->sin6_addr) != 1) return -EINVAL;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
  } else {
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    if (inet_pton(AF_INET, host, &in->sin_addr) != 1) return -EINVAL;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
  }
  *out = ss;
  return 0;
}

void dht__node_to_proto(const dht_node_t *n, proto_node_t *p) {
  memset(p, 0, sizeof(*p));
  memcpy(p->id, n->id.b, DHT_ID_LEN);
  if (n->addr.ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&n->addr;
    p->family = 6;
    memcpy(p->ip, &in6->sin6_addr, 16);
    p->port = ntohs(in6->sin6_port);
  } else {
    const struct sockaddr_in *in = (const struct sockaddr_in *)&n->addr;
    p->family = 4;
    memcpy(p->ip, &in->sin_addr, 4);
    p->port = ntohs(in->sin_port);
  }
}

void dht__node_from_proto(const proto_node_t *p, dht_node_t *n) {
  memset(n, 0, sizeof(*n));
  memcpy(n->id.b, p->id, DHT_ID_LEN);
  if (p->family == 6) {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&n->addr;
    in6->sin6_family = AF_INET6;
    memcpy(&in6->sin6_addr, p->ip, 16);
    in6->sin6_port = htons(p->port);
  } else {
    struct sockaddr_in *in = (struct sockaddr_in *)&n->addr;
    in->sin_family = AF_INET;
    memcpy(&in->sin_addr, p->ip, 4);
    in->sin_port = htons(p->port);
  }
}
