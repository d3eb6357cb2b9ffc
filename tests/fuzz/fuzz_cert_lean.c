/*
 * Differential libFuzzer target for dht/cert's lean check of a cache miss:
 * whatever the lean check accepts, OpenSSL's full check (d2i_X509,
 * X509_verify_cert, the leaf's description) must accept too, with the same
 * description (kind, node, user, overlay, key type, validity, fingerprint)
 * and the same raw key.  The lean check may send anything it likes to the
 * full one; it may never accept alone.
 *
 * Input: one byte (bit 0: the Ed25519 or the P-256 CA of overlay
 * fuzz.test, from fuzz_cert_ca.h; bit 1: what follows is a TBSCertificate
 * to be signed here with that CA's key, else a whole certificate), then
 * the DER.  Signing here lets the fuzzer reach what a CA might sign:
 * without it almost every change fails the signature, and the checks
 * behind it are never compared.  The corpus (corpus/cert_lean) comes from
 * gen_cert_seeds.py: node, user, CA, other-CA, expired, not-yet-valid,
 * other-overlay certificates and ones with extensions we do not issue.
 */
#include <openssl/err.h>
#include <openssl/pem.h>

#include "dht/cert.h"
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/fuzz_cert_ca.h"

static struct {
  dht_cert_ca_t *ca;
  EVP_PKEY *key;
} cas[2];

static void *from_pem(const char *pem, int is_key) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  void *out = !b ? NULL : is_key ? (void *)PEM_read_bio_PrivateKey(b, NULL, NULL, NULL)
                                 : (void *)PEM_read_bio_X509(b, NULL, NULL, NULL);
  BIO_free(b);
  CHECK(out);
  return out;
}

static void load(int i, const char *crt, const char *key) {
  X509 *x = from_pem(crt, 0);
  CHECK(dht_cert_ca_new(x, "fuzz.test", &cas[i].ca, NULL, 0) == 0);
  X509_free(x);
  cas[i].key = from_pem(key, 1);
}

/* A DER length at p; returns its size. */
static size_t put_len(uint8_t *p, size_t n) {
  if (n < 0x80) return p[0] = (uint8_t)n, 1;
  if (n < 0x100) return p[0] = 0x81, p[1] = (uint8_t)n, 2;
  return p[0] = 0x82, p[1] = (uint8_t)(n >> 8), p[2] = (uint8_t)n, 3;
}

/* Certificate ::= SEQUENCE { tbs, the CA's signature algorithm, BIT
 * STRING of the CA's signature over tbs } into out (at least len + 200
 * bytes); its length, or 0. */
static size_t sign_tbs(EVP_PKEY *key, const uint8_t *tbs, size_t len, uint8_t *out) {
  static const uint8_t ed25519[] = {0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70};
  static const uint8_t ecdsa_sha256[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86,
                                         0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
  int ed = EVP_PKEY_get_id(key) == EVP_PKEY_ED25519;
  uint8_t sig[80];
  size_t sig_len = sizeof(sig);
  EVP_MD_CTX *m = EVP_MD_CTX_new();
  int ok = m && EVP_DigestSignInit(m, NULL, ed ? NULL : EVP_sha256(), NULL, key) == 1 &&
           EVP_DigestSign(m, sig, &sig_len, tbs, len) == 1;
  EVP_MD_CTX_free(m);
  if (!ok) return 0;
  const uint8_t *alg = ed ? ed25519 : ecdsa_sha256;
  size_t alg_len = ed ? sizeof(ed25519) : sizeof(ecdsa_sha256);
  size_t body = len + alg_len + 1 + 1 + 1 + sig_len; /* BIT STRING: tag, length, unused bits */
  uint8_t *p = out;
  *p++ = 0x30;
  p += put_len(p, body);
  memcpy(p, tbs, len), p += len;
  memcpy(p, alg, alg_len), p += alg_len;
  *p++ = 0x03, *p++ = (uint8_t)(sig_len + 1), *p++ = 0;
  memcpy(p, sig, sig_len), p += sig_len;
  return (size_t)(p - out);
}

static void compare(dht_cert_ca_t *ca, const uint8_t *der, size_t len) {
  dht_cert_info_t lean, full;
  uint8_t lean_raw[DHT_CERT_MAX_RAW_KEY], full_raw[DHT_CERT_MAX_RAW_KEY];
  size_t lean_len = 0, full_len = 0;
  EVP_PKEY *pub = NULL;
  memset(&lean, 0, sizeof(lean));
  memset(&full, 0, sizeof(full));
  int ok = dht__cert_lean(ca, der, len, &lean, lean_raw, &lean_len, &pub);
  CHECK(ok == 0 || ok == 1);
  CHECK(ERR_peek_error() == 0);
  if (!ok) return;
  CHECK(pub != NULL);
  EVP_PKEY_free(pub);
  CHECK(dht__cert_full(ca, der, len, &full, full_raw, &full_len, NULL, 0) == 0);
  /* Field by field: the structs' padding is not compared. */
  CHECK(lean.kind == full.kind && lean.keytype == full.keytype);
  CHECK(memcmp(lean.node.b, full.node.b, DHT_ID_LEN) == 0);
  CHECK(strcmp(lean.user, full.user) == 0 && strcmp(lean.overlay, full.overlay) == 0);
  CHECK(lean.not_before == full.not_before && lean.not_after == full.not_after);
  CHECK(memcmp(lean.fp, full.fp, DHT_CERT_FP_LEN) == 0);
  CHECK(lean_len == full_len && memcmp(lean_raw, full_raw, lean_len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!cas[0].ca) {
    load(0, FUZZ_CERT_CA_ED25519, FUZZ_CERT_CA_ED25519_KEY);
    load(1, FUZZ_CERT_CA_P256, FUZZ_CERT_CA_P256_KEY);
  }
  if (size < 1 || size > 1 + DHT_CERT_MAX_DER) return 0;
  int i = data[0] & 1;
  if (data[0] & 2) {
    uint8_t der[DHT_CERT_MAX_DER + 200];
    size_t n = sign_tbs(cas[i].key, data + 1, size - 1, der);
    if (n) compare(cas[i].ca, der, n);
  } else {
    compare(cas[i].ca, data + 1, size - 1);
  }
  ERR_clear_error(); /* the full check's refusals leave OpenSSL's errors */
  return 0;
}
