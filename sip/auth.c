/*
 * Digest authentication of this node's phones (RFC 3261 section 22 with
 * RFC 7616 / RFC 8760: MD5 for older phones, SHA-256).
 *
 * Credentials come from --users DIR (users.c).
 *
 * sofia-sip parses the credentials (auth_digest_response_get); it computes
 * MD5 digests only, so the response (RFC 7616 3.4.1) is computed once for
 * both algorithms with OpenSSL's EVP (digest.c).  Nonces are stateless: the time
 * they were made (to the second) and an HMAC-SHA256 of it under a key drawn at start, good
 * for SIP_NONCE_TTL_S (then "stale").  Nonce counts are not tracked: a
 * captured response can be replayed until its nonce expires, for the same
 * method and Request-URI only (both are under the digest, and the URI is
 * checked against the request's).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sofia-sip/auth_digest.h>
#include <sofia-sip/sip_tag.h>
#include <sofia-sip/su_string.h>

#include "sip/sip_int.h"

#define NONCE_KEY_LEN 32
#define NONCE_MAC_LEN 16
#define NONCE_HEX (2 * (8 + NONCE_MAC_LEN))
/* Challenges made within one step share a nonce, and the nonces of the
 * last NONCE_CACHE steps are kept: an HMAC for each challenge and each
 * check was 6% of a registrar's CPU.  Nonces are not tracked per client
 * anyway (see above), so sharing one gives a replayer nothing. */
#define NONCE_STEP_MS 1000
#define NONCE_CACHE 8

struct sip_authdb {
  const char *algs[2]; /* offered, in order of preference (RFC 8760 2.4) */
  int n_algs;
  uint8_t key[NONCE_KEY_LEN];
  struct {
    uint64_t t;
    char hex[NONCE_HEX + 1]; /* "" while empty */
  } nonces[NONCE_CACHE];     /* by t / NONCE_STEP_MS */
};

/* "SHA-256,MD5" and the like: 0, or -EINVAL. */
static int parse_algs(sip_authdb_t *a, const char *list)
{
  char buf[64];
  snprintf(buf, sizeof buf, "%s", list && list[0] ? list : "SHA-256,MD5");
  char *save = NULL;
  for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    const char *alg = strcasecmp(t, "MD5") == 0 ? "MD5" : strcasecmp(t, "SHA-256") == 0 ? "SHA-256" : NULL;
    if (!alg || a->n_algs == 2 || (a->n_algs == 1 && a->algs[0] == alg))
      return -EINVAL;
    a->algs[a->n_algs++] = alg;
  }
  return a->n_algs ? 0 : -EINVAL;
}

int sip__auth_new(sip_svc_t *s, const char *algs)
{
  sip_authdb_t *a = calloc(1, sizeof *a);
  if (a && parse_algs(a, algs) < 0) {
    log_warn("--sip-digest %s: expected SHA-256, MD5 or both, comma-separated", algs);
    free(a);
    return -EINVAL;
  }
  if (!a || RAND_bytes(a->key, sizeof a->key) != 1) {
    free(a);
    return -ENOMEM;
  }
  s->auth = a;
  return 0;
}

void sip__auth_free(sip_svc_t *s)
{
  sip_authdb_t *a = s->auth;
  if (!a)
    return;
  OPENSSL_cleanse(a->key, sizeof a->key);
  free(a);
  s->auth = NULL;
}

/* ---- nonces ---------------------------------------------------------------
 * 8 bytes of uv_now() milliseconds (big-endian, a multiple of
 * NONCE_STEP_MS) and the first NONCE_MAC_LEN bytes of their HMAC-SHA256,
 * hex. */

static void nonce_compute(sip_svc_t *s, uint64_t t, char out[NONCE_HEX + 1])
{
  uint8_t raw[8 + EVP_MAX_MD_SIZE];
  unsigned ml = 0;
  for (int i = 0; i < 8; i++)
    raw[i] = (uint8_t)(t >> (56 - 8 * i));
  HMAC(EVP_sha256(), s->auth->key, NONCE_KEY_LEN, raw, 8, raw + 8, &ml);
  sip__hex(raw, 8 + NONCE_MAC_LEN, out);
}

/* The nonce of time t, from the cache when it is there; kept there when
 * keep (ours: not a time a stranger made up, which would evict ours). */
static const char *nonce_of(sip_svc_t *s, uint64_t t, int keep, char buf[NONCE_HEX + 1])
{
  sip_authdb_t *a = s->auth;
  size_t i = (size_t)(t / NONCE_STEP_MS % NONCE_CACHE);
  if (a->nonces[i].hex[0] && a->nonces[i].t == t)
    return a->nonces[i].hex;
  nonce_compute(s, t, buf);
  if (keep) {
    a->nonces[i].t = t;
    memcpy(a->nonces[i].hex, buf, NONCE_HEX + 1);
  }
  return buf;
}

static const char *nonce_make(sip_svc_t *s, char buf[NONCE_HEX + 1])
{
  uint64_t now = sip__now_ms(s);
  return nonce_of(s, now - now % NONCE_STEP_MS, 1, buf);
}

/* 0 fresh, -ESTALE too old, -EINVAL not ours. */
static int nonce_check(sip_svc_t *s, const char *nonce)
{
  char buf[NONCE_HEX + 1];
  if (!nonce || strlen(nonce) != NONCE_HEX)
    return -EINVAL;
  uint64_t t = 0;
  for (int i = 0; i < 16; i++) {
    int c = nonce[i];
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (v < 0)
      return -EINVAL;
    t = t << 4 | (uint64_t)v;
  }
  if (CRYPTO_memcmp(nonce_of(s, t, 0, buf), nonce, NONCE_HEX) != 0)
    return -EINVAL;
  uint64_t now = sip__now_ms(s);
  return t > now || now - t > (uint64_t)SIP_NONCE_TTL_S * 1000 ? -ESTALE : 0;
}

/* ---- checking a request ---------------------------------------------------- */

/* The digest uri must be the Request-URI (RFC 3261 22.4 leaves it to the
 * server): a response captured for one target is no good for another. */
static int uri_matches(const char *duri, const url_t *ruri)
{
  SIP_SCRATCH_HOME(home, 1024);
  url_t *u = duri ? url_make(home, duri) : NULL;
  int ok = u && url_cmp_all(u, ruri) == 0;
  su_home_deinit(home);
  return ok;
}

static int offered(const sip_authdb_t *a, const char *alg)
{
  for (int i = 0; i < a->n_algs; i++)
    if (strcasecmp(a->algs[i], alg) == 0)
      return 1;
  return 0;
}

static int check_one(sip_svc_t *s, const sip_t *sip, const auth_response_t *ar,
                     char user[DHT_CERT_MAX_USER + 1])
{
  const char *alg = ar->ar_algorithm ? ar->ar_algorithm : "MD5";
  const char *qop = ar->ar_qop;
  if (!ar->ar_username || !offered(s->auth, alg) || !ar->ar_response || !ar->ar_nonce)
    return SIP_AUTH_BAD;
  int fresh = nonce_check(s, ar->ar_nonce);
  if (fresh == -EINVAL || !uri_matches(ar->ar_uri, sip->sip_request->rq_url))
    return SIP_AUTH_BAD;
  if (qop && (strcasecmp(qop, "auth") != 0 || !ar->ar_nc || !ar->ar_cnonce))
    return SIP_AUTH_BAD;
  char ha1[65], want[EVP_MAX_MD_SIZE * 2 + 1];
  if (sip__users_ha1(s, ar->ar_username, alg, ha1) < 0)
    return SIP_AUTH_BAD;
  int rc = sip__digest(alg, ha1, ar->ar_nonce, ar->ar_nc, ar->ar_cnonce, qop,
                       sip->sip_request->rq_method_name, ar->ar_uri, want, sizeof want);
  OPENSSL_cleanse(ha1, sizeof ha1);
  if (rc < 0 || strlen(ar->ar_response) != strlen(want) ||
      CRYPTO_memcmp(want, ar->ar_response, strlen(want)) != 0)
    return SIP_AUTH_BAD;
  if (fresh == -ESTALE)
    return SIP_AUTH_STALE; /* right password, old nonce: challenge again */
  snprintf(user, DHT_CERT_MAX_USER + 1, "%s", ar->ar_username);
  return SIP_AUTH_OK;
}

int sip__auth_check(sip_svc_t *s, const sip_t *sip, int proxy, char user[DHT_CERT_MAX_USER + 1])
{
  const msg_auth_t *au = proxy ? sip->sip_proxy_authorization : sip->sip_authorization;
  int n = 0, result = SIP_AUTH_NONE;
  for (; au && n < 8 && result == SIP_AUTH_NONE; au = au->au_next, n++) {
    if (!au->au_scheme || !su_casematch(au->au_scheme, "Digest"))
      continue;
    SIP_SCRATCH_HOME(home, 2048);
    auth_response_t ar[1];
    memset(ar, 0, sizeof ar);
    ar->ar_size = sizeof ar;
    /* Credentials for other realms (a public domain's, on their way
     * through a proxy peer) are not ours to judge. */
    if (auth_digest_response_get(home, ar, au->au_params) >= 0 && ar->ar_realm &&
        strcasecmp(ar->ar_realm, s->overlay) == 0)
      result = check_one(s, sip, ar, user);
    su_home_deinit(home);
  }
  s->c.auth_ok += result == SIP_AUTH_OK;
  s->c.auth_failed += result == SIP_AUTH_BAD;
  return result;
}

int sip__auth_challenge_lines(sip_svc_t *s, int proxy, int stale, char *buf, size_t len)
{
  const sip_authdb_t *a = s->auth;
  char nb[NONCE_HEX + 1];
  const char *nonce = nonce_make(s, nb);
  size_t o = 0;
  /* RFC 8760 2.4: one challenge per algorithm, the preferred first. */
  for (int i = 0; i < a->n_algs; i++) {
    int n = snprintf(buf + o, len - o,
                     "%s: Digest realm=\"%s\", nonce=\"%s\", qop=\"auth\", algorithm=%s%s\r\n",
                     proxy ? "Proxy-Authenticate" : "WWW-Authenticate", s->overlay, nonce,
                     a->algs[i], stale ? ", stale=true" : "");
    if (n < 0 || (size_t)n >= len - o)
      return -ENOSPC;
    o += (size_t)n;
  }
  return (int)o;
}

void sip__auth_challenge(sip_svc_t *s, msg_t *msg, sip_t *sip, int proxy, int stale)
{
  char lines[SIP_AUTH_LINES];
  if (sip__auth_challenge_lines(s, proxy, stale, lines, sizeof lines) < 0) {
    sip__reply_stateless(s, msg, sip, SIP_500_INTERNAL_SERVER_ERROR, TAG_END());
    return;
  }
  s->c.auth_challenges++;
  if (proxy)
    sip__reply_stateless(s, msg, sip, SIP_407_PROXY_AUTH_REQUIRED, SIPTAG_HEADER_STR(lines),
                         TAG_END());
  else
    sip__reply_stateless(s, msg, sip, SIP_401_UNAUTHORIZED, SIPTAG_HEADER_STR(lines), TAG_END());
}
