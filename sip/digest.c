/*
 * The digest response of RFC 7616 section 3.4.1 (SIP: RFC 3261 22.4, RFC
 * 8760), for MD5 and SHA-256 alike, with OpenSSL's EVP: sofia-sip 1.12.11
 * computes MD5 only.  No I/O, and no state but the two algorithms fetched
 * once (tests/unit/test_sip_digest.c checks it against RFC 7616's
 * examples).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "sip/sip_int.h"

void sip__hex(const uint8_t *in, size_t n, char *out)
{
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

static int hex_digest(const EVP_MD *md, const char *const parts[], size_t n, char *out,
                      size_t outlen)
{
  /* Kept, as the algorithms are: a new context per digest was two of a
   * registration's allocations. */
  static _Thread_local EVP_MD_CTX *ctx;
  uint8_t h[EVP_MAX_MD_SIZE];
  unsigned hl = 0;
  if (!ctx)
    ctx = EVP_MD_CTX_new();
  int ok = ctx && EVP_DigestInit_ex(ctx, md, NULL);
  for (size_t i = 0; ok && i < n; i++)
    ok = EVP_DigestUpdate(ctx, parts[i], strlen(parts[i])) &&
         (i + 1 == n || EVP_DigestUpdate(ctx, ":", 1));
  ok = ok && EVP_DigestFinal_ex(ctx, h, &hl) && outlen > 2 * hl;
  if (!ok)
    return -EINVAL;
  sip__hex(h, hl, out);
  return 0;
}

int sip__digest(const char *alg, const char *ha1, const char *nonce, const char *nc,
                const char *cnonce, const char *qop, const char *method, const char *uri,
                char *out, size_t outlen)
{
  /* Fetched once: EVP_md5() makes OpenSSL 3 fetch the algorithm again
   * at every EVP_DigestInit_ex (3 % of a registrar under load).  Kept for
   * the life of the process. */
  static EVP_MD *md5, *sha256;
  if (!md5)
    md5 = EVP_MD_fetch(NULL, "MD5", NULL);
  if (!sha256)
    sha256 = EVP_MD_fetch(NULL, "SHA-256", NULL);
  const EVP_MD *md = strcasecmp(alg, "MD5") == 0       ? md5
                     : strcasecmp(alg, "SHA-256") == 0 ? sha256
                                                       : NULL;
  char ha2[EVP_MAX_MD_SIZE * 2 + 1];
  const char *a2[] = {method, uri};
  if (!md || hex_digest(md, a2, 2, ha2, sizeof ha2) < 0)
    return -EINVAL;
  if (qop) {
    const char *kd[] = {ha1, nonce, nc, cnonce, qop, ha2};
    return hex_digest(md, kd, 6, out, outlen);
  }
  const char *kd[] = {ha1, nonce, ha2};
  return hex_digest(md, kd, 3, out, outlen);
}
