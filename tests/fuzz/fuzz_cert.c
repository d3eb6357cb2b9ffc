/*
 * libFuzzer target for dht/cert: the certificate and signature checks a
 * node runs on bytes from the wire.  Builds with clang -fsanitize=fuzzer,
 * or with replay.c for plain builds (no main() here).
 *
 * Input: one byte choosing the CA (bit 0: Ed25519 or P-256 CA of overlay
 * fuzz.test, from fuzz_cert_ca.h), a 2-byte big-endian certificate length,
 * the DER certificate, then a value:
 *   vid_len(1) vid kind(1) flags(1) seq(8) expires(8) key(20) sig(64) body...
 * For each input: check the certificate against the CA (and again from the
 * cache); if it passes, check the value's signature and access rule; then
 * describe whatever parses as a certificate, and check the whole input as a
 * certificate.  A broken invariant aborts.  The corpus (corpus/cert) and
 * fuzz_cert_ca.h come from gen_cert_seeds.py.
 */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>

#include "dht/cert.h"
#include "tests/fuzz/fuzz_cert_ca.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                 \
  do {                                                                                           \
    if (!(x)) abort();                                                                           \
  } while (0)

static dht_cert_ca_t *cas[2];

static dht_cert_ca_t *ca_from_pem(const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  dht_cert_ca_t *ca = NULL;
  CHECK(x && dht_cert_ca_new(x, "fuzz.test", &ca, NULL, 0) == 0);
  X509_free(x);
  BIO_free(b);
  return ca;
}

static uint64_t get_be(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = v << 8 | p[i];
  return v;
}

/* The value after the certificate; 0 if there is not enough of it. */
static int parse_value(const uint8_t *p, size_t n, dht_cert_value_t *v, const uint8_t **sig) {
  if (n < 1 || n < 1u + p[0] + 1 + 1 + 8 + 8 + DHT_ID_LEN + DHT_CERT_SIG_LEN) return 0;
  v->vid_len = p[0];
  v->vid = p + 1;
  p += 1 + v->vid_len, n -= 1 + v->vid_len;
  v->kind = p[0], v->flags = p[1];
  v->seq = get_be(p + 2, 8);
  v->expires = get_be(p + 10, 8);
  memcpy(v->key.b, p + 18, DHT_ID_LEN);
  *sig = p + 18 + DHT_ID_LEN;
  p += 18 + DHT_ID_LEN + DHT_CERT_SIG_LEN, n -= 18 + DHT_ID_LEN + DHT_CERT_SIG_LEN;
  v->body = p, v->body_len = n;
  return 1;
}

static void fuzz_signed(dht_cert_ca_t *ca, const uint8_t *data, size_t size) {
  if (size < 3) return;
  size_t len = (size_t)data[1] << 8 | data[2];
  if (len > size - 3) return;
  const uint8_t *der = data + 3;
  const dht_cert_t *c, *again;
  if (dht_cert_check(ca, der, len, &c, NULL, 0)) return;
  const dht_cert_info_t *i = dht_cert_info(c);
  CHECK(i->kind == DHT_CERT_NODE || i->kind == DHT_CERT_USER);
  CHECK(strcmp(i->overlay, "fuzz.test") == 0);
  CHECK(dht_cert_check(ca, der, len, &again, NULL, 0) == 0 && again == c);
  CHECK(dht_cert_find(ca, i->fp, &again) == 0 && again == c);

  dht_cert_value_t v;
  const uint8_t *sig;
  if (!parse_value(der + len, size - 3 - len, &v, &sig)) return;
  int ok = dht_cert_verify(c, &v, sig, DHT_CERT_SIG_LEN);
  CHECK(ok == 0 || ok == -EBADMSG || ok == -EINVAL);
  int rule = dht_cert_rule(i, &v);
  CHECK(rule == -EPERM || (rule >= DHT_CERT_RULE_USER && rule <= DHT_CERT_RULE_FIRST));
  if (i->kind == DHT_CERT_USER) CHECK(rule == -EPERM || rule == DHT_CERT_RULE_USER);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!cas[0]) {
    cas[0] = ca_from_pem(FUZZ_CERT_CA_ED25519);
    cas[1] = ca_from_pem(FUZZ_CERT_CA_P256);
  }
  if (size < 1) return 0;
  dht_cert_ca_t *ca = cas[data[0] & 1];
  fuzz_signed(ca, data, size);

  /* Any certificate in the input, described without a chain check. */
  const dht_cert_t *c;
  dht_cert_info_t info;
  for (size_t off = 0; off < 4 && off < size; off += 3) {
    const uint8_t *p = data + off;
    X509 *x = d2i_X509(NULL, &p, (long)(size - off));
    if (x && dht_cert_describe(x, &info, NULL, 0) == 0)
      CHECK(info.kind >= DHT_CERT_CA && info.kind <= DHT_CERT_USER && info.overlay[0]);
    X509_free(x);
  }
  if (dht_cert_check(ca, data, size, &c, NULL, 0) == 0)
    CHECK(dht_cert_info(c)->kind != DHT_CERT_CA);
  ERR_clear_error(); /* d2i_X509 above leaves its own errors */
  return 0;
}
