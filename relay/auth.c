/*
 * relay/auth: long-term credentials (RFC 8489 section 9.2) with the
 * overlay's shared secret in the time-limited username scheme, and the
 * server's nonces.
 *
 * A nonce is stateless: 8 hex digits of its expiry (Unix time) and 16 hex
 * digits of HMAC-SHA1(nonce_key, expiry || client IP), so the relay keeps
 * nothing per client before one authenticates, and a nonce given to one
 * address is no good from another.  It never starts with the "obMatJos2"
 * cookie of RFC 8489 section 9.2, since we offer no security features.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "relay/relay_int.h"

#define NONCE_LEN 24
/* How long a nonce is good for; a test may shorten it. */
unsigned relay__nonce_ttl = 600;

static void nonce_mac(const relay_t *r, uint32_t expiry, const proto_stun_addr_t *src,
                      uint8_t mac[20]) {
  uint8_t in[4 + 16];
  in[0] = expiry >> 24, in[1] = expiry >> 16, in[2] = expiry >> 8, in[3] = (uint8_t)expiry;
  size_t iplen = src->family == 6 ? 16 : 4;
  memcpy(in + 4, src->ip, iplen);
  unsigned ml = 20;
  HMAC(EVP_sha1(), r->nonce_key, sizeof(r->nonce_key), in, 4 + iplen, mac, &ml);
}

static void make_nonce(const relay_t *r, const proto_stun_addr_t *src, char out[NONCE_LEN + 1]) {
  uint32_t expiry = (uint32_t)(time(NULL) + relay__nonce_ttl);
  uint8_t mac[20];
  nonce_mac(r, expiry, src, mac);
  int n = snprintf(out, NONCE_LEN + 1, "%08x", expiry);
  for (int i = 0; i < 8; i++) n += snprintf(out + n, NONCE_LEN + 1 - n, "%02x", mac[i]);
}

void relay__add_nonce(relay_t *r, proto_stun_builder_t *b, const proto_stun_addr_t *src) {
  char nonce[NONCE_LEN + 1];
  make_nonce(r, src, nonce);
  proto_stun_add(b, PROTO_STUN_A_NONCE, nonce, NONCE_LEN);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* 1: ours and live; 0: ours but expired (438); -1: not ours. */
static int check_nonce(const relay_t *r, const proto_stun_addr_t *src, const char *s, size_t len) {
  if (len != NONCE_LEN) return -1;
  uint8_t got[12];
  for (int i = 0; i < 12; i++) {
    int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return -1;
    got[i] = (uint8_t)(hi << 4 | lo);
  }
  uint32_t expiry = (uint32_t)got[0] << 24 | got[1] << 16 | got[2] << 8 | got[3];
  uint8_t mac[20];
  nonce_mac(r, expiry, src, mac);
  if (CRYPTO_memcmp(mac, got + 4, 8) != 0) return -1;
  return (uint64_t)time(NULL) <= expiry ? 1 : 0;
}

/* The credential's EXPIRY against the clock: 0 if live and no further
 * away than max_cred_ttl (+ RELAY_CRED_SKEW), else -1, counted.  The far
 * side is what bounds a credential handed to a UA: anyone with the
 * overlay's secret can mint one that expires in 2100, and a relay that
 * took it would honour a leaked credential for ever. */
static int check_expiry(relay_t *r, const char *user, size_t ulen) {
  uint64_t expiry, now = (uint64_t)time(NULL);
  if (proto_stun_rest_expiry(user, ulen, &expiry) < 0) return -1; /* cannot happen: keyed */
  if (expiry < now) {
    r->c.cred_expired++;
    return -1;
  }
  if (expiry - now > (uint64_t)r->max_cred_ttl + RELAY_CRED_SKEW) {
    r->c.cred_too_long++;
    return -1;
  }
  return 0;
}

/* RFC 8489 section 9.2.4, in its order: missing attributes 400; a bad
 * username or MESSAGE-INTEGRITY 401; then a stale nonce 438.  The key is
 * derived whatever the credential's EXPIRY (now 0 below), so that an
 * expired or too distant EXPIRY is counted only for a request that proves
 * the credential: its 401 comes after the MESSAGE-INTEGRITY check. */
int relay__authenticate(relay_req_t *q) {
  relay_t *r = q->r;
  const proto_stun_msg_t *m = q->m;
  if (!m->mi_off) {
    relay__reply_error(q, 401, NULL);
    return -1;
  }
  proto_stun_attr_t ua, ra, na;
  const char *user, *realm, *nonce;
  size_t ulen, rlen, nlen;
  if (!proto_stun_find(m, PROTO_STUN_A_USERNAME, &ua) ||
      !proto_stun_find(m, PROTO_STUN_A_REALM, &ra) ||
      !proto_stun_find(m, PROTO_STUN_A_NONCE, &na) ||
      proto_stun_get_text(&ua, &user, &ulen) < 0 || proto_stun_get_text(&ra, &realm, &rlen) < 0 ||
      proto_stun_get_text(&na, &nonce, &nlen) < 0) {
    relay__reply_error(q, 400, NULL);
    return -1;
  }
  uint8_t *key = q->keybuf;
  int nonce_ok = check_nonce(r, &q->src, nonce, nlen);
  if (nonce_ok < 0 || rlen != strlen(r->realm) || memcmp(realm, r->realm, rlen) != 0 ||
      proto_stun_rest_key(user, ulen, r->realm, rlen, (const uint8_t *)r->secret, r->secret_len, 0,
                          key) < 0 ||
      proto_stun_check_integrity(m, key, PROTO_STUN_KEY_LEN) < 0 || check_expiry(r, user, ulen) < 0) {
    r->c.auth_failures++;
    relay__reply_error(q, 401, NULL);
    return -1;
  }
  if (nonce_ok == 0) {
    r->c.stale_nonces++;
    relay__reply_error(q, 438, NULL);
    return -1;
  }
  q->key = key, q->user = user, q->ulen = ulen;
  return 0;
}

int relay_mint_credentials(const char *secret, const char *realm, const char *user, unsigned ttl,
                           json_t **out) {
  *out = NULL;
  if (!secret || !secret[0] || !realm || !user || ttl == 0 || ttl > 86400u * 30) return -EINVAL;
  size_t nlen = strlen(user);
  /* The name must not make the username ambiguous or over-long. */
  if (nlen > 256 || strchr(user, ':')) return -EINVAL;
  char uname[300], pass[PROTO_STUN_REST_PASS_LEN + 1];
  long n = proto_stun_rest_mint(uname, sizeof(uname), (uint64_t)time(NULL) + ttl, user, nlen,
                                (const uint8_t *)secret, strlen(secret), pass);
  if (n < 0) return -EINVAL;
  *out = json_pack("{ss ss ss si}", "username", uname, "password", pass, "realm", realm, "ttl",
                   (json_int_t)ttl);
  return *out ? 0 : -ENOMEM;
}
