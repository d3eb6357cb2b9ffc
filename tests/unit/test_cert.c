/* dht/cert: loading, verification, what certificates certify, value
 * signatures, access rules, TLS 1.3 between two nodes over memory BIOs, and
 * a small benchmark of the operations the store and the links will pay. */
#include "dht/cert.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/test.h"

#define DAY (24 * 3600)
#define OVERLAY "overlay.test"

static char err[256];
static int64_t now;
static int keytype; /* of the CAs made by make_ca() */
static const char *keyname;

/* OpenSSL's allocations, counted, to measure what an idle TLS link keeps. */
static size_t live_bytes;

static void *count_malloc(size_t n, const char *file, int line) {
  size_t *p = malloc(n + 16);
  if (!p) return NULL;
  *p = n;
  live_bytes += n;
  return (char *)p + 16;
}

static void count_free(void *q, const char *file, int line) {
  if (!q) return;
  size_t *p = (size_t *)((char *)q - 16);
  live_bytes -= *p;
  free(p);
}

static void *count_realloc(void *q, size_t n, const char *file, int line) {
  if (!q) return count_malloc(n, file, line);
  size_t *p = (size_t *)((char *)q - 16), old = *p;
  size_t *r = realloc(p, n + 16);
  if (!r) return NULL;
  *r = n;
  live_bytes += n - old;
  return (char *)r + 16;
}

static double mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* A CA, its key, and certificates it issues. */
typedef struct {
  dht_cert_ca_t *ca;
  EVP_PKEY *key;
} test_ca_t;

static test_ca_t make_ca(const char *overlay) {
  X509 *x;
  test_ca_t t;
  ASSERT_OK(dht_cert_ca_create(overlay, keytype, now - DAY, now + 3650 * DAY, &x, &t.key, err,
                               sizeof err));
  ASSERT_OK(dht_cert_ca_new(x, overlay, &t.ca, err, sizeof err));
  X509_free(x);
  return t;
}

static void free_ca(test_ca_t *t) {
  dht_cert_ca_free(t->ca);
  EVP_PKEY_free(t->key);
}

static dht_cert_info_t node_info(uint8_t fill, const char *overlay) {
  dht_cert_info_t w = {.kind = DHT_CERT_NODE, .not_before = now - DAY, .not_after = now + DAY};
  memset(w.node.b, fill, DHT_ID_LEN);
  snprintf(w.overlay, sizeof w.overlay, "%s", overlay);
  return w;
}

static dht_cert_info_t user_info(const char *user) {
  dht_cert_info_t w = {.kind = DHT_CERT_USER, .not_before = now - DAY, .not_after = now + DAY};
  snprintf(w.user, sizeof w.user, "%s", user);
  snprintf(w.overlay, sizeof w.overlay, "%s", OVERLAY);
  return w;
}

/* Issue a certificate; its DER into der (returns the length). */
static size_t issue(const test_ca_t *t, const dht_cert_info_t *w, X509 **x, EVP_PKEY **k,
                    uint8_t der[DHT_CERT_MAX_DER]) {
  ASSERT_OK(dht_cert_issue(t->ca, t->key, w, x, k, err, sizeof err));
  int n = i2d_X509(*x, NULL);
  ASSERT(n > 0 && n <= DHT_CERT_MAX_DER);
  uint8_t *p = der;
  ASSERT_EQ(i2d_X509(*x, &p), n);
  return (size_t)n;
}

/* A CA for overlay with t's key and subject name: one an operator must
 * never make.  Free only its .ca. */
static test_ca_t reuse_key(const test_ca_t *t, const char *overlay) {
  X509 *x;
  EVP_PKEY *unused;
  test_ca_t r = {NULL, t->key};
  ASSERT_OK(dht_cert_ca_create(overlay, keytype, now - DAY, now + DAY, &x, &unused, err,
                               sizeof err));
  const EVP_MD *md = keytype == DHT_CERT_ED25519 ? NULL : EVP_sha256();
  X509_NAME *name = X509_get_subject_name(dht_cert_ca_x509(t->ca));
  ASSERT(X509_set_subject_name(x, name) && X509_set_issuer_name(x, name));
  ASSERT(X509_set_pubkey(x, t->key) && X509_sign(x, t->key, md) > 0);
  ASSERT_OK(dht_cert_ca_new(x, NULL, &r.ca, err, sizeof err));
  X509_free(x);
  EVP_PKEY_free(unused);
  return r;
}

/* OpenSSL alone accepts x as issued by t's CA. */
static int chain_verifies(const test_ca_t *t, X509 *x) {
  X509_STORE *st = X509_STORE_new();
  X509_STORE_CTX *ctx = X509_STORE_CTX_new();
  ASSERT(st && ctx && X509_STORE_add_cert(st, dht_cert_ca_x509(t->ca)));
  ASSERT(X509_STORE_CTX_init(ctx, st, x, NULL));
  int ok = X509_verify_cert(ctx) == 1;
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(st);
  return ok;
}

static dht_cert_creds_t *creds_of(const test_ca_t *t, const dht_cert_info_t *w) {
  X509 *x;
  EVP_PKEY *k;
  uint8_t der[DHT_CERT_MAX_DER];
  issue(t, w, &x, &k, der);
  dht_cert_creds_t *c;
  ASSERT_OK(dht_cert_creds_new(t->ca, x, k, &c, err, sizeof err));
  X509_free(x);
  EVP_PKEY_free(k);
  return c;
}

static void write_pem(const char *path, X509 *x, EVP_PKEY *k) {
  FILE *f = fopen(path, "w");
  ASSERT(f);
  ASSERT(x ? PEM_write_X509(f, x) : PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL));
  fclose(f);
}

/* Expect a refusal whose message contains want. */
#define ASSERT_REFUSED(call, want)                                                               \
  do {                                                                                           \
    err[0] = '\0';                                                                               \
    ASSERT((call) < 0);                                                                          \
    if (!strstr(err, want)) {                                                                    \
      fprintf(stderr, "%s:%d: error \"%s\" lacks \"%s\"\n", __FILE__, __LINE__, err, want);     \
      exit(1);                                                                                   \
    }                                                                                            \
  } while (0)

static void test_load(void) {
  char dir[] = "/tmp/test_cert.XXXXXX", ca_path[64], crt[64], key[64], other_key[64];
  ASSERT(mkdtemp(dir));
  snprintf(ca_path, sizeof ca_path, "%s/ca.crt", dir);
  snprintf(crt, sizeof crt, "%s/n.crt", dir);
  snprintf(key, sizeof key, "%s/n.key", dir);
  snprintf(other_key, sizeof other_key, "%s/o.key", dir);
  test_ca_t t = make_ca(OVERLAY);
  write_pem(ca_path, dht_cert_ca_x509(t.ca), NULL);
  X509 *x, *x2;
  EVP_PKEY *k, *k2;
  uint8_t der[DHT_CERT_MAX_DER];
  dht_cert_info_t w = node_info(0x42, OVERLAY);
  issue(&t, &w, &x, &k, der);
  issue(&t, &w, &x2, &k2, der);
  write_pem(crt, x, NULL);
  write_pem(key, NULL, k);
  write_pem(other_key, NULL, k2);

  dht_cert_ca_t *ca;
  ASSERT_OK(dht_cert_ca_load(ca_path, NULL, &ca, err, sizeof err));
  ASSERT_STR_EQ(dht_cert_ca_info(ca)->overlay, OVERLAY);
  ASSERT_EQ(dht_cert_ca_info(ca)->kind, DHT_CERT_CA);
  dht_cert_ca_free(ca);
  ASSERT_OK(dht_cert_ca_load(ca_path, "OVERLAY.test", &ca, err, sizeof err));
  dht_cert_ca_free(ca);
  ASSERT_REFUSED(dht_cert_ca_load(ca_path, "other.test", &ca, err, sizeof err),
                 "is for overlay overlay.test, not other.test");
  ASSERT_REFUSED(dht_cert_ca_load("/nonexistent/ca.crt", NULL, &ca, err, sizeof err),
                 "/nonexistent/ca.crt: No such file");
  ASSERT_REFUSED(dht_cert_ca_load(key, NULL, &ca, err, sizeof err), "not a PEM certificate");
  /* A node certificate is no CA. */
  ASSERT_REFUSED(dht_cert_ca_load(crt, NULL, &ca, err, sizeof err), "not an overlay CA");

  dht_cert_creds_t *c;
  ASSERT_OK(dht_cert_creds_load(t.ca, crt, key, &c, err, sizeof err));
  const dht_cert_info_t *i = dht_cert_info(dht_cert_creds_cert(c));
  ASSERT_EQ(i->kind, DHT_CERT_NODE);
  ASSERT_MEM_EQ(i->node.b, w.node.b, DHT_ID_LEN);
  dht_cert_creds_free(c);
  ASSERT_REFUSED(dht_cert_creds_load(t.ca, crt, other_key, &c, err, sizeof err),
                 "key does not belong");
  ASSERT_REFUSED(dht_cert_creds_load(t.ca, crt, crt, &c, err, sizeof err), "not a PEM private key");
  ASSERT_REFUSED(dht_cert_creds_load(t.ca, key, key, &c, err, sizeof err), "not a PEM certificate");
  /* A certificate of another CA is refused at load, not at first use. */
  test_ca_t t2 = make_ca(OVERLAY);
  ASSERT_REFUSED(dht_cert_creds_load(t2.ca, crt, key, &c, err, sizeof err),
                 "n.crt: certificate refused");

  X509_free(x);
  X509_free(x2);
  EVP_PKEY_free(k);
  EVP_PKEY_free(k2);
  free_ca(&t);
  free_ca(&t2);
  unlink(ca_path), unlink(crt), unlink(key), unlink(other_key), rmdir(dir);
}

static void test_verify(void) {
  test_ca_t t = make_ca(OVERLAY), other = make_ca(OVERLAY);
  X509 *x;
  EVP_PKEY *k;
  uint8_t der[DHT_CERT_MAX_DER];
  const dht_cert_t *c;
  dht_cert_stats_t st;

  /* A node: its id and overlay; checked once, then from the cache. */
  dht_cert_info_t w = node_info(0x5a, OVERLAY);
  size_t n = issue(&t, &w, &x, &k, der);
  printf("%s node certificate: %zu bytes DER\n", keyname, n);
  ASSERT_OK(dht_cert_check(t.ca, der, n, &c, err, sizeof err));
  ASSERT_EQ(dht_cert_info(c)->kind, DHT_CERT_NODE);
  ASSERT_EQ(dht_cert_info(c)->keytype, keytype);
  ASSERT_MEM_EQ(dht_cert_info(c)->node.b, w.node.b, DHT_ID_LEN);
  ASSERT_STR_EQ(dht_cert_info(c)->overlay, OVERLAY);
  ASSERT_EQ(dht_cert_info(c)->not_after, w.not_after);
  const uint8_t *d;
  size_t dl;
  dht_cert_der(c, &d, &dl); /* the cache keeps no DER */
  ASSERT_EQ(dl, 0);
  ASSERT(d == NULL);
  uint8_t fp[DHT_CERT_FP_LEN];
  memcpy(fp, dht_cert_info(c)->fp, sizeof fp);
  ASSERT_OK(dht_cert_check(t.ca, der, n, &c, err, sizeof err));
  ASSERT_OK(dht_cert_find(t.ca, fp, &c));
  dht_cert_ca_stats(t.ca, &st);
  ASSERT_EQ(st.verified, 1);
  ASSERT_EQ(st.cached, 2);
  X509_free(x);
  EVP_PKEY_free(k);

  /* A user: the AOR's parts. */
  dht_cert_info_t u = user_info("alice.smith+1");
  n = issue(&t, &u, &x, &k, der);
  printf("%s user certificate: %zu bytes DER\n", keyname, n);
  ASSERT_OK(dht_cert_check(t.ca, der, n, &c, err, sizeof err));
  ASSERT_EQ(dht_cert_info(c)->kind, DHT_CERT_USER);
  ASSERT_STR_EQ(dht_cert_info(c)->user, "alice.smith+1");
  ASSERT_STR_EQ(dht_cert_info(c)->overlay, OVERLAY);
  X509_free(x);
  EVP_PKEY_free(k);

  /* Another CA of the same overlay (same subject name). */
  n = issue(&other, &w, &x, &k, der);
  ASSERT_REFUSED(dht_cert_check(t.ca, der, n, &c, err, sizeof err), "certificate refused");
  X509_free(x);
  EVP_PKEY_free(k);

  /* Our CA's key and name reused for another overlay: what that CA
   * issues verifies as a chain, and the overlay check is what refuses it. */
  test_ca_t reuse = reuse_key(&t, "other.test");
  dht_cert_info_t wo = node_info(0x11, "other.test");
  n = issue(&reuse, &wo, &x, &k, der);
  ASSERT(chain_verifies(&t, x));
  ASSERT_REFUSED(dht_cert_check(t.ca, der, n, &c, err, sizeof err),
                 "of overlay other.test, not overlay.test");
  ASSERT_OK(dht_cert_check(reuse.ca, der, n, &c, err, sizeof err));
  X509_free(x);
  EVP_PKEY_free(k);
  dht_cert_ca_free(reuse.ca);

  /* Expired, and not yet valid. */
  dht_cert_info_t we = node_info(0x22, OVERLAY);
  we.not_before = now - 2 * DAY, we.not_after = now - DAY;
  n = issue(&t, &we, &x, &k, der);
  ASSERT_REFUSED(dht_cert_check(t.ca, der, n, &c, err, sizeof err), "certificate has expired");
  dht_cert_creds_t *cr;
  ASSERT_REFUSED(dht_cert_creds_new(t.ca, x, k, &cr, err, sizeof err), "expired");
  X509_free(x);
  EVP_PKEY_free(k);
  we.not_before = now + DAY, we.not_after = now + 2 * DAY;
  n = issue(&t, &we, &x, &k, der);
  ASSERT_REFUSED(dht_cert_check(t.ca, der, n, &c, err, sizeof err), "not yet valid");
  X509_free(x);
  EVP_PKEY_free(k);

  /* The CA's own certificate is not a leaf. */
  uint8_t *p = der;
  n = (size_t)i2d_X509(dht_cert_ca_x509(t.ca), &p);
  ASSERT_REFUSED(dht_cert_check(t.ca, der, n, &c, err, sizeof err), "CA certificate");

  dht_cert_ca_stats(t.ca, &st);
  ASSERT_EQ(st.verified, 2);
  ASSERT_EQ(st.rejected, 5);
  free_ca(&t);
  free_ca(&other);
}

/* x signed again by t's CA key, after a change; its DER into der. */
static size_t resign(const test_ca_t *t, X509 *x, uint8_t der[DHT_CERT_MAX_DER]) {
  const EVP_MD *md = keytype == DHT_CERT_ED25519 ? NULL : EVP_sha256();
  ASSERT(X509_sign(x, t->key, md) > 0);
  uint8_t *p = der;
  int n = i2d_X509(x, &p);
  ASSERT(n > 0 && n <= DHT_CERT_MAX_DER);
  return (size_t)n;
}

/* An extension nid (or, nid 0, OID 1.2.3.4 holding a NULL) added to x. */
static void add_ext(X509 *x, int nid, int critical, const char *value) {
  X509_EXTENSION *e;
  if (nid) {
    e = X509V3_EXT_conf_nid(NULL, NULL, nid, value);
  } else {
    ASN1_OCTET_STRING *null = ASN1_OCTET_STRING_new();
    ASSERT(null && ASN1_OCTET_STRING_set(null, (const uint8_t *)"\x05\x00", 2));
    ASN1_OBJECT *oid = OBJ_txt2obj("1.2.3.4", 1);
    e = X509_EXTENSION_create_by_OBJ(NULL, oid, critical, null);
    ASN1_OBJECT_free(oid);
    ASN1_OCTET_STRING_free(null);
  }
  ASSERT(e && X509_EXTENSION_set_critical(e, critical) && X509_add_ext(x, e, -1));
  X509_EXTENSION_free(e);
}

/* The lean check of a miss does not accept der; dht_cert_check refuses it
 * with want, through the full check. */
static void lean_refuses(test_ca_t *t, const uint8_t *der, size_t n, const char *want) {
  dht_cert_info_t info;
  uint8_t raw[DHT_CERT_MAX_RAW_KEY];
  size_t raw_len;
  EVP_PKEY *pub = NULL;
  dht_cert_stats_t before, after;
  const dht_cert_t *c;
  ASSERT_EQ(dht__cert_lean(t->ca, der, n, &info, raw, &raw_len, &pub), 0);
  ASSERT(pub == NULL);
  dht_cert_ca_stats(t->ca, &before);
  ASSERT_REFUSED(dht_cert_check(t->ca, der, n, &c, err, sizeof err), want);
  dht_cert_ca_stats(t->ca, &after);
  ASSERT_EQ(after.full_checks, before.full_checks + 1);
  ASSERT_EQ(after.rejected, before.rejected + 1);
}

/* The lean check of a miss: what it accepts (with what the full check
 * says of it), what it refuses, and what it leaves to the full check. */
static void test_lean(void) {
  test_ca_t t = make_ca(OVERLAY), other = make_ca(OVERLAY);
  X509 *x;
  EVP_PKEY *k;
  uint8_t der[DHT_CERT_MAX_DER], raw[DHT_CERT_MAX_RAW_KEY], raw2[DHT_CERT_MAX_RAW_KEY];
  size_t raw_len, raw2_len;
  const dht_cert_t *c;
  dht_cert_stats_t st;
  dht_cert_info_t lean, full;
  EVP_PKEY *pub;

  /* A new CA's first miss goes to the full check; later ones do not. */
  dht_cert_info_t w = node_info(0x61, OVERLAY), u = user_info("bob");
  size_t n = issue(&t, &w, &x, &k, der);
  ASSERT_OK(dht_cert_check(t.ca, der, n, &c, err, sizeof err));
  uint8_t node_fp[DHT_CERT_FP_LEN];
  memcpy(node_fp, dht_cert_info(c)->fp, DHT_CERT_FP_LEN);
  X509_free(x);
  EVP_PKEY_free(k);
  n = issue(&t, &u, &x, &k, der);
  ASSERT_OK(dht_cert_check(t.ca, der, n, &c, err, sizeof err));
  ASSERT_STR_EQ(dht_cert_info(c)->user, "bob");
  /* Cached entries are compact: each description is whole again. */
  const dht_cert_t *cn;
  ASSERT_OK(dht_cert_find(t.ca, node_fp, &cn));
  ASSERT_EQ(dht_cert_info(cn)->kind, DHT_CERT_NODE);
  ASSERT_MEM_EQ(dht_cert_info(cn)->node.b, w.node.b, DHT_ID_LEN);
  ASSERT_STR_EQ(dht_cert_info(cn)->user, "");
  ASSERT_STR_EQ(dht_cert_info(cn)->overlay, OVERLAY);
  ASSERT_EQ(dht_cert_info(c)->kind, DHT_CERT_USER);
  ASSERT_STR_EQ(dht_cert_info(c)->overlay, OVERLAY);
  dht_cert_ca_stats(t.ca, &st);
  ASSERT_EQ(st.verified, 2);
  ASSERT_EQ(st.full_checks, 1);
  ASSERT_EQ(st.live_keys, 1); /* the key the lean check built is kept */
  ASSERT_EQ(dht__cert_lean(t.ca, der, n, &lean, raw, &raw_len, &pub), 1);
  ASSERT_OK(dht__cert_full(t.ca, der, n, &full, raw2, &raw2_len, err, sizeof err));
  ASSERT_EQ(lean.kind, DHT_CERT_USER);
  ASSERT_STR_EQ(lean.user, full.user);
  ASSERT_STR_EQ(lean.overlay, full.overlay);
  ASSERT_EQ(lean.keytype, full.keytype);
  ASSERT_EQ(lean.not_before, full.not_before);
  ASSERT_EQ(lean.not_after, full.not_after);
  ASSERT_MEM_EQ(lean.fp, full.fp, DHT_CERT_FP_LEN);
  ASSERT_EQ(raw_len, raw2_len);
  ASSERT_MEM_EQ(raw, raw2, raw_len);
  EVP_PKEY_free(pub);

  /* The same certificate tampered with: its signature, then a byte the CA
   * signed (the user name: bob becomes boc). */
  der[n - 1] ^= 0x01;
  lean_refuses(&t, der, n, "certificate refused");
  der[n - 1] ^= 0x01;
  uint8_t *o = memmem(der, n, "sip:bob@", 8);
  ASSERT(o);
  o[6] ^= 0x01;
  lean_refuses(&t, der, n, "certificate refused");
  X509_free(x);
  EVP_PKEY_free(k);

  /* Another CA of the same overlay and name. */
  n = issue(&other, &w, &x, &k, der);
  lean_refuses(&t, der, n, "certificate refused");
  X509_free(x);
  EVP_PKEY_free(k);

  /* Expired, not yet valid. */
  dht_cert_info_t we = node_info(0x62, OVERLAY);
  we.not_before = now - 2 * DAY, we.not_after = now - DAY;
  n = issue(&t, &we, &x, &k, der);
  lean_refuses(&t, der, n, "certificate has expired");
  X509_free(x);
  EVP_PKEY_free(k);
  we.not_before = now + DAY, we.not_after = now + 2 * DAY;
  n = issue(&t, &we, &x, &k, der);
  lean_refuses(&t, der, n, "not yet valid");
  X509_free(x);
  EVP_PKEY_free(k);

  /* The CA's own certificate. */
  uint8_t *p = der;
  n = (size_t)i2d_X509(dht_cert_ca_x509(t.ca), &p);
  lean_refuses(&t, der, n, "CA certificate");

  /* Another overlay, from a CA with our CA's key and name. */
  test_ca_t reuse = reuse_key(&t, "other.test");
  dht_cert_info_t wo = node_info(0x63, "other.test");
  n = issue(&reuse, &wo, &x, &k, der);
  lean_refuses(&t, der, n, "of overlay other.test, not overlay.test");
  X509_free(x);
  EVP_PKEY_free(k);
  dht_cert_ca_free(reuse.ca);

  /* Signed by our CA, with what we never issue: a second SAN extension,
   * a second name in the SAN, an unknown critical extension. */
  dht_cert_info_t w2 = node_info(0x64, OVERLAY);
  issue(&t, &w2, &x, &k, der);
  add_ext(x, NID_subject_alt_name, 0, "URI:sip:bob@" OVERLAY);
  lean_refuses(&t, der, resign(&t, x, der), "more than one");
  X509_free(x);
  EVP_PKEY_free(k);
  issue(&t, &w2, &x, &k, der);
  X509_EXTENSION_free(X509_delete_ext(x, X509_get_ext_by_NID(x, NID_subject_alt_name, -1)));
  add_ext(x, NID_subject_alt_name, 0, "URI:p2psip:6464646464646464646464646464646464646464@" OVERLAY
          ",URI:sip:bob@" OVERLAY);
  lean_refuses(&t, der, resign(&t, x, der), "subjectAltName is not");
  X509_free(x);
  EVP_PKEY_free(k);
  issue(&t, &w2, &x, &k, der);
  add_ext(x, 0, 1, NULL);
  lean_refuses(&t, der, resign(&t, x, der), "unhandled critical extension");
  X509_free(x);
  EVP_PKEY_free(k);

  /* What the full check accepts and the lean one leaves to it: an unknown
   * extension that is not critical. */
  issue(&t, &w2, &x, &k, der);
  add_ext(x, 0, 0, NULL);
  n = resign(&t, x, der);
  ASSERT_EQ(dht__cert_lean(t.ca, der, n, &lean, raw, &raw_len, &pub), 0);
  dht_cert_ca_stats(t.ca, &st);
  ASSERT_OK(dht_cert_check(t.ca, der, n, &c, err, sizeof err));
  uint64_t full_checks = st.full_checks;
  dht_cert_ca_stats(t.ca, &st);
  ASSERT_EQ(st.full_checks, full_checks + 1);
  X509_free(x);
  EVP_PKEY_free(k);
  free_ca(&t);
  free_ca(&other);
}

/* Garbage of every shape is refused without a crash: every prefix of a
 * good certificate, every single-byte change of it, oversized, random. */
static void test_garbage(void) {
  test_ca_t t = make_ca(OVERLAY);
  X509 *x;
  EVP_PKEY *k;
  uint8_t der[DHT_CERT_MAX_DER + 1];
  const dht_cert_t *c;
  dht_cert_info_t w = node_info(0x33, OVERLAY);
  size_t n = issue(&t, &w, &x, &k, der);
  for (size_t i = 0; i < n; i++) ASSERT((dht_cert_check(t.ca, der, i, &c, err, sizeof err)) < 0);
  int accepted = 0;
  for (size_t i = 0; i < n; i++) {
    der[i] ^= 0x01;
    accepted += dht_cert_check(t.ca, der, n, &c, err, sizeof err) == 0;
    der[i] ^= 0x01;
  }
  /* A flip may land in a field no one signs (the outer signature
   * algorithm's encoding is checked; nothing else is outside). */
  ASSERT_EQ(accepted, 0);
  ASSERT_OK(dht_cert_check(t.ca, der, n, &c, err, sizeof err));
  ASSERT_EQ(dht_cert_check(t.ca, der, DHT_CERT_MAX_DER + 1, &c, err, sizeof err), -EMSGSIZE);
  /* Trailing bytes after a valid certificate. */
  der[n] = 0;
  ASSERT_EQ(dht_cert_check(t.ca, der, n + 1, &c, err, sizeof err), -EINVAL);
  srand(7);
  for (int r = 0; r < 2000; r++) {
    size_t len = 1 + (size_t)rand() % DHT_CERT_MAX_DER;
    for (size_t i = 0; i < len; i++) der[i] = (uint8_t)rand();
    if (r % 2) der[0] = 0x30; /* a SEQUENCE, to get past the first byte */
    ASSERT(dht_cert_check(t.ca, der, len, &c, err, sizeof err) < 0);
  }
  ASSERT_EQ(ERR_peek_error(), 0); /* refusals leave no stale errors behind */
  X509_free(x);
  EVP_PKEY_free(k);
  free_ca(&t);
}

/* The to-be-signed layout of cert.h, byte for byte. */
static void test_tbs_layout(void) {
  uint8_t tbs[DHT_CERT_TBS_MAX];
  dht_cert_value_t v = {.vid = (const uint8_t *)"ab", .vid_len = 2, .kind = 2, .flags = 1,
                        .seq = 0x0102030405060708, .expires = 0x1112131415161718,
                        .body = (const uint8_t *)"abc", .body_len = 3};
  memset(v.key.b, 0xee, DHT_ID_LEN);
  ASSERT_EQ(dht_cert_tbs(&v, tbs), 16 + 20 + 1 + 2 + 1 + 1 + 8 + 8 + 4 + 32);
  ASSERT_MEM_EQ(tbs, "p2psip-value-v1\0", 16);
  ASSERT_MEM_EQ(tbs + 16, v.key.b, 20);
  static const uint8_t mid[] = {2,    'a',  'b',  2,    1,    1,    2,    3,   4,  5,  6,    7,
                                8,    0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0, 0, 0, 3};
  ASSERT_MEM_EQ(tbs + 36, mid, sizeof mid);
  /* SHA-256("abc"), FIPS 180-2 appendix B.1. */
  static const uint8_t abc[] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
  ASSERT_MEM_EQ(tbs + 36 + sizeof mid, abc, 32);
  v.vid_len = 0;
  ASSERT_EQ(dht_cert_tbs(&v, tbs), -EINVAL);
  v.vid_len = 256;
  ASSERT_EQ(dht_cert_tbs(&v, tbs), -EINVAL);
}

/* A value whose every field can be changed in place. */
typedef struct {
  dht_cert_value_t v;
  uint8_t vid[8];
  uint8_t body[40];
} test_value_t;

static void value_init(test_value_t *t) {
  memset(t, 0, sizeof *t);
  dht_id_of("sip:alice@" OVERLAY, &t->v.key);
  memcpy(t->vid, "vid-0001", 8);
  for (int i = 0; i < 40; i++) t->body[i] = (uint8_t)(i * 7);
  t->v.vid = t->vid, t->v.vid_len = 8;
  t->v.kind = DHT_KIND_USER, t->v.flags = 0;
  t->v.seq = 77, t->v.expires = (uint64_t)now + 600;
  t->v.body = t->body, t->v.body_len = 40;
}

/* Every byte of every signed field, and of the signature, matters. */
static void test_sign(void) {
  test_ca_t t = make_ca(OVERLAY);
  dht_cert_info_t ui = user_info("alice");
  dht_cert_creds_t *alice = creds_of(&t, &ui);
  ui = user_info("bob");
  dht_cert_creds_t *bob = creds_of(&t, &ui);
  const dht_cert_t *ac = dht_cert_creds_cert(alice);
  test_value_t tv;
  value_init(&tv);
  dht_cert_value_t *v = &tv.v;
  uint8_t sig[DHT_CERT_SIG_LEN], sig2[DHT_CERT_SIG_LEN];
  ASSERT_OK(dht_cert_sign(alice, v, sig));
  ASSERT_OK(dht_cert_verify(ac, v, sig, sizeof sig));
  /* Ed25519 is deterministic; ECDSA is not, and verifies all the same. */
  ASSERT_OK(dht_cert_sign(alice, v, sig2));
  if (keytype == DHT_CERT_ED25519) ASSERT_MEM_EQ(sig, sig2, sizeof sig);
  ASSERT_OK(dht_cert_verify(ac, v, sig2, sizeof sig2));
  ASSERT_EQ(dht_cert_verify(dht_cert_creds_cert(bob), v, sig, sizeof sig), -EBADMSG);
  ASSERT_EQ(dht_cert_verify(ac, v, sig, sizeof sig - 1), -EINVAL);

  struct {
    uint8_t *p;
    size_t n;
  } fields[] = {{tv.v.key.b, DHT_ID_LEN}, {tv.vid, 8},  {&tv.v.kind, 1}, {&tv.v.flags, 1},
                {(uint8_t *)&tv.v.seq, 8}, {(uint8_t *)&tv.v.expires, 8}, {tv.body, 40},
                {sig, sizeof sig}};
  int flips = 0;
  for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
    for (size_t i = 0; i < fields[f].n; i++) {
      for (int bit = 0; bit < 8; bit += 7) {
        fields[f].p[i] ^= (uint8_t)(1 << bit);
        ASSERT_EQ(dht_cert_verify(ac, v, sig, sizeof sig), -EBADMSG);
        fields[f].p[i] ^= (uint8_t)(1 << bit);
        flips++;
      }
    }
  }
  ASSERT_EQ(flips, 2 * (20 + 8 + 1 + 1 + 8 + 8 + 40 + 64));
  /* The lengths too. */
  tv.v.vid_len = 7;
  ASSERT_EQ(dht_cert_verify(ac, v, sig, sizeof sig), -EBADMSG);
  tv.v.vid_len = 8, tv.v.body_len = 39;
  ASSERT_EQ(dht_cert_verify(ac, v, sig, sizeof sig), -EBADMSG);
  tv.v.body_len = 40;
  ASSERT_OK(dht_cert_verify(ac, v, sig, sizeof sig));
  memset(sig2, 0, sizeof sig2);
  ASSERT_EQ(dht_cert_verify(ac, v, sig2, sizeof sig2), -EBADMSG);
  memset(sig2, 0xff, sizeof sig2);
  ASSERT_EQ(dht_cert_verify(ac, v, sig2, sizeof sig2), -EBADMSG);
  /* A signature by a key of the other type. */
  int mine = keytype;
  keytype = mine == DHT_CERT_ED25519 ? DHT_CERT_P256 : DHT_CERT_ED25519;
  test_ca_t t2 = make_ca(OVERLAY);
  keytype = mine;
  ui = user_info("alice");
  dht_cert_creds_t *alice2 = creds_of(&t2, &ui);
  ASSERT_OK(dht_cert_sign(alice2, v, sig2));
  ASSERT_EQ(dht_cert_verify(ac, v, sig2, sizeof sig2), -EBADMSG);
  ASSERT_OK(dht_cert_verify(dht_cert_creds_cert(alice2), v, sig2, sizeof sig2));
  dht_cert_creds_free(alice2);
  free_ca(&t2);
  ASSERT_EQ(ERR_peek_error(), 0);
  dht_cert_creds_free(alice);
  dht_cert_creds_free(bob);
  free_ca(&t);
}

/* Signers' certificates as the store sees them: DER from the wire into
 * the cache, then a value's signature checked through the cached entry,
 * whose key the cache keeps raw and builds for the check. */
typedef struct {
  dht_cert_creds_t *creds;
  uint8_t sig[DHT_CERT_SIG_LEN];
} signer_t;

static const dht_cert_t *cached(dht_cert_ca_t *ca, const signer_t *s) {
  const uint8_t *der;
  size_t len;
  const dht_cert_t *c;
  dht_cert_der(dht_cert_creds_cert(s->creds), &der, &len);
  ASSERT_OK(dht_cert_check(ca, der, len, &c, err, sizeof err));
  return c;
}

static void test_cache_keys(void) {
  enum { N = DHT_CERT_LIVE + 3 };
  test_ca_t t = make_ca(OVERLAY);
  test_value_t tv;
  value_init(&tv);
  tv.v.kind = DHT_KIND_USER;
  signer_t s[N];
  dht_cert_stats_t st;
  for (int i = 0; i < N; i++) {
    dht_cert_info_t w = node_info((uint8_t)(0x30 + i), OVERLAY);
    s[i].creds = creds_of(&t, &w);
    ASSERT_OK(dht_cert_sign(s[i].creds, &tv.v, s[i].sig));
  }
  /* A TLS peer's or a value's certificate enters the cache with no key
   * built; the first check builds it. */
  const dht_cert_t *c = cached(t.ca, &s[0]);
  dht_cert_ca_stats(t.ca, &st);
  ASSERT_EQ(st.entries, 1);
  ASSERT_EQ(st.live_keys, 0);
  ASSERT_OK(dht_cert_verify(c, &tv.v, s[0].sig, DHT_CERT_SIG_LEN));
  dht_cert_ca_stats(t.ca, &st);
  ASSERT_EQ(st.live_keys, 1);
  ASSERT_EQ(st.key_builds, 1);
  /* Round trip: every signer's value verifies through its cached entry,
   * and no other signer's key passes it. */
  for (int i = 0; i < N; i++) {
    ASSERT_OK(dht_cert_verify(cached(t.ca, &s[i]), &tv.v, s[i].sig, DHT_CERT_SIG_LEN));
    int j = (i + 1) % N;
    ASSERT_EQ(dht_cert_verify(cached(t.ca, &s[j]), &tv.v, s[i].sig, DHT_CERT_SIG_LEN), -EBADMSG);
  }
  /* The live keys are the DHT_CERT_LIVE that served last; the others
   * were dropped and are built again when needed. */
  dht_cert_ca_stats(t.ca, &st);
  ASSERT_EQ(st.entries, N);
  ASSERT_EQ(st.live_keys, DHT_CERT_LIVE);
  uint64_t builds = st.key_builds;
  ASSERT_OK(dht_cert_verify(cached(t.ca, &s[N - 1]), &tv.v, s[N - 1].sig, DHT_CERT_SIG_LEN));
  dht_cert_ca_stats(t.ca, &st);
  ASSERT_EQ(st.key_builds, builds); /* live: not built again */
  ASSERT_OK(dht_cert_verify(cached(t.ca, &s[1]), &tv.v, s[1].sig, DHT_CERT_SIG_LEN));
  tv.body[0] ^= 1;
  ASSERT_EQ(dht_cert_verify(cached(t.ca, &s[1]), &tv.v, s[1].sig, DHT_CERT_SIG_LEN), -EBADMSG);
  tv.body[0] ^= 1;
  dht_cert_ca_stats(t.ca, &st);
  ASSERT_EQ(st.key_builds, builds + 1);
  ASSERT_EQ(st.live_keys, DHT_CERT_LIVE);
  /* Entries with built keys leave the cache like the others: fill it
   * past DHT_CERT_CACHE and the count of live keys stays true. */
  for (int i = 0; i < DHT_CERT_CACHE; i++) {
    dht_cert_info_t w = node_info((uint8_t)(0x80 + i), OVERLAY);
    signer_t f = {creds_of(&t, &w), {0}};
    ASSERT_OK(dht_cert_sign(f.creds, &tv.v, f.sig));
    ASSERT_OK(dht_cert_verify(cached(t.ca, &f), &tv.v, f.sig, DHT_CERT_SIG_LEN));
    dht_cert_creds_free(f.creds);
  }
  dht_cert_ca_stats(t.ca, &st);
  ASSERT_EQ(st.entries, DHT_CERT_CACHE);
  ASSERT_EQ(st.live_keys, DHT_CERT_LIVE);
  ASSERT_OK(dht_cert_verify(cached(t.ca, &s[0]), &tv.v, s[0].sig, DHT_CERT_SIG_LEN));
  ASSERT_EQ(ERR_peek_error(), 0);
  for (int i = 0; i < N; i++) dht_cert_creds_free(s[i].creds);
  free_ca(&t);
}

static void test_rules(void) {
  test_ca_t t = make_ca(OVERLAY);
  dht_cert_info_t ui = user_info("alice"), ni = node_info(0xab, OVERLAY);
  dht_cert_creds_t *alice = creds_of(&t, &ui), *node = creds_of(&t, &ni);
  const dht_cert_info_t *a = dht_cert_info(dht_cert_creds_cert(alice));
  const dht_cert_info_t *n = dht_cert_info(dht_cert_creds_cert(node));
  test_value_t tv;
  value_init(&tv); /* kind USER under sip:alice@overlay.test */
  ASSERT_EQ(dht_cert_rule(a, &tv.v), DHT_CERT_RULE_USER);
  ASSERT_EQ(dht_cert_rule(n, &tv.v), -EPERM); /* USER-MATCH: nodes do not sign user records */
  dht_id_of("sip:bob@" OVERLAY, &tv.v.key);
  ASSERT_EQ(dht_cert_rule(a, &tv.v), -EPERM); /* another user's record */
  dht_id_of("sip:alice@" OVERLAY, &tv.v.key);
  tv.v.kind = DHT_KIND_JSON;
  ASSERT_EQ(dht_cert_rule(a, &tv.v), -EPERM); /* users write user records only */

  char hex[DHT_ID_HEX];
  dht_id_hex(&n->node, hex);
  const char *keys[] = {"sip:" OVERLAY, "turn:" OVERLAY};
  for (int i = 0; i < 2; i++) {
    dht_id_of(keys[i], &tv.v.key);
    tv.v.kind = i ? DHT_KIND_RELAY : DHT_KIND_PROXY;
    tv.v.vid = (const uint8_t *)hex, tv.v.vid_len = DHT_ID_HEX - 1;
    ASSERT_EQ(dht_cert_rule(n, &tv.v), DHT_CERT_RULE_NODE);
    ASSERT_EQ(dht_cert_rule(a, &tv.v), -EPERM);
    hex[0] ^= 1; /* NODE-MATCH: another node's value id */
    ASSERT_EQ(dht_cert_rule(n, &tv.v), -EPERM);
    hex[0] ^= 1;
  }
  dht_id_of("anything", &tv.v.key);
  tv.v.kind = DHT_KIND_JSON;
  ASSERT_EQ(dht_cert_rule(n, &tv.v), DHT_CERT_RULE_FIRST);
  ASSERT_EQ(dht_cert_rule(a, &tv.v), -EPERM);
  dht_cert_creds_free(alice);
  dht_cert_creds_free(node);
  free_ca(&t);
}

/* TLS ------------------------------------------------------------------------- */

typedef struct {
  SSL *c, *s;
  int c_done, s_done; /* 1 completed, -1 failed */
} tls_pair_t;

static void pair_new(tls_pair_t *p, SSL_CTX *cctx, SSL_CTX *sctx) {
  BIO *cb, *sb;
  ASSERT(BIO_new_bio_pair(&cb, 0, &sb, 0));
  p->c = SSL_new(cctx);
  p->s = SSL_new(sctx);
  ASSERT(p->c && p->s);
  SSL_set_bio(p->c, cb, cb);
  SSL_set_bio(p->s, sb, sb);
  SSL_set_connect_state(p->c);
  SSL_set_accept_state(p->s);
  p->c_done = p->s_done = 0;
}

static int step(SSL *ssl, int *done) {
  if (*done) return 0;
  int r = SSL_do_handshake(ssl);
  if (r == 1) return *done = 1;
  int e = SSL_get_error(ssl, r);
  if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) *done = -1;
  return 0;
}

/* Run both ends until neither moves (bounded: a handshake is 2-3 flights). */
static void pair_run(tls_pair_t *p) {
  for (int i = 0; i < 16 && !(p->c_done && p->s_done); i++) {
    step(p->c, &p->c_done);
    step(p->s, &p->s_done);
  }
  ERR_clear_error();
}

static void pair_free(tls_pair_t *p) {
  SSL_free(p->c);
  SSL_free(p->s);
}

/* After a completed handshake: data flows, one byte each way. */
static void pair_talk(tls_pair_t *p) {
  uint8_t b = 0;
  ASSERT_EQ(SSL_write(p->c, "x", 1), 1);
  ASSERT_EQ(SSL_read(p->s, &b, 1), 1);
  ASSERT_EQ(SSL_write(p->s, "y", 1), 1);
  ASSERT_EQ(SSL_read(p->c, &b, 1), 1);
  ASSERT_EQ(b, 'y');
}

/* A client context that presents any certificate, as an attacker's would. */
static SSL_CTX *raw_ctx(const test_ca_t *t, const dht_cert_info_t *w) {
  X509 *x;
  EVP_PKEY *k;
  uint8_t der[DHT_CERT_MAX_DER];
  issue(t, w, &x, &k, der);
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  ASSERT(ctx && SSL_CTX_use_certificate(ctx, x) == 1 && SSL_CTX_use_PrivateKey(ctx, k) == 1);
  X509_free(x);
  EVP_PKEY_free(k);
  return ctx;
}

/* A server of our overlay refuses the client for the reason want (an
 * X509_V_ERR_*); the client learns on its first read (TLS 1.3). */
static void refused_by_server(SSL_CTX *client, SSL_CTX *server, long want) {
  tls_pair_t p;
  dht_id_t id;
  uint8_t byte;
  pair_new(&p, client, server);
  pair_run(&p);
  ASSERT_EQ(p.s_done, -1);
  ASSERT_EQ(SSL_get_verify_result(p.s), want);
  ASSERT_EQ(dht_cert_peer_id(p.s, &id), -EACCES);
  ASSERT(SSL_read(p.c, &byte, 1) <= 0);
  ERR_clear_error();
  pair_free(&p);
}

static SSL_CTX *ctx_of(test_ca_t *t, dht_cert_creds_t *self) {
  SSL_CTX *ctx;
  ASSERT_OK(dht_cert_tls_ctx(t->ca, self, &ctx, err, sizeof err));
  return ctx;
}

static void test_tls(void) {
  test_ca_t t = make_ca(OVERLAY), other = make_ca(OVERLAY);
  dht_cert_info_t ia = node_info(0xa1, OVERLAY), ib = node_info(0xb2, OVERLAY);
  dht_cert_creds_t *a = creds_of(&t, &ia), *b = creds_of(&t, &ib), *m = creds_of(&other, &ia);
  SSL_CTX *ca_ = ctx_of(&t, a), *cb = ctx_of(&t, b), *cm = ctx_of(&other, m);
  tls_pair_t p;
  dht_id_t id;

  /* Two nodes of one CA: each learns the other's certified id. */
  pair_new(&p, ca_, cb);
  ASSERT_EQ(dht_cert_peer_id(p.c, &id), -EACCES); /* not yet */
  pair_run(&p);
  ASSERT_EQ(p.c_done, 1);
  ASSERT_EQ(p.s_done, 1);
  ASSERT_EQ(SSL_version(p.c), TLS1_3_VERSION);
  ASSERT_OK(dht_cert_peer_id(p.c, &id));
  ASSERT_MEM_EQ(id.b, ib.node.b, DHT_ID_LEN);
  ASSERT_OK(dht_cert_peer_id(p.s, &id));
  ASSERT_MEM_EQ(id.b, ia.node.b, DHT_ID_LEN);
  ASSERT_STR_EQ(SSL_get_cipher_name(p.c), "TLS_CHACHA20_POLY1305_SHA256");
  pair_talk(&p);
  pair_free(&p);

  /* ChaCha20-Poly1305 (the smallest state per link end), also with a
   * node of an older version, which offers OpenSSL's default order; one
   * that offers only AES-256-GCM still gets a session. */
  SSL_CTX *older = ctx_of(&t, a);
  ASSERT(SSL_CTX_set_ciphersuites(older, TLS_DEFAULT_CIPHERSUITES));
  pair_new(&p, older, cb);
  pair_run(&p);
  ASSERT(p.c_done == 1 && p.s_done == 1);
  ASSERT_STR_EQ(SSL_get_cipher_name(p.s), "TLS_CHACHA20_POLY1305_SHA256");
  pair_free(&p);
  ASSERT(SSL_CTX_set_ciphersuites(older, "TLS_AES_256_GCM_SHA384"));
  pair_new(&p, older, cb);
  pair_run(&p);
  ASSERT(p.c_done == 1 && p.s_done == 1);
  ASSERT_STR_EQ(SSL_get_cipher_name(p.s), "TLS_AES_256_GCM_SHA384");
  pair_talk(&p);
  pair_free(&p);
  SSL_CTX_free(older);

  /* Clients the server refuses (clients that do not check the server, so
   * the server's check is the one that fails): a node of another CA; a
   * node of another overlay whose CA reused our CA's key and name; a user
   * of our overlay; no certificate at all. */
  test_ca_t reuse = reuse_key(&t, "other.test");
  dht_cert_info_t io = node_info(0xc3, "other.test"), iu = user_info("mallory");
  SSL_CTX *raw[] = {raw_ctx(&other, &ia), raw_ctx(&reuse, &io), raw_ctx(&t, &iu),
                    SSL_CTX_new(TLS_method())};
  /* The second and third pass OpenSSL's chain check; ours refuses them. */
  long why[] = {X509_V_ERR_CERT_SIGNATURE_FAILURE, X509_V_ERR_APPLICATION_VERIFICATION,
                X509_V_ERR_APPLICATION_VERIFICATION, X509_V_OK};
  for (int i = 0; i < 4; i++) {
    refused_by_server(raw[i], cb, why[i]);
    SSL_CTX_free(raw[i]);
  }
  dht_cert_ca_free(reuse.ca);

  /* A server of another CA: the client refuses it. */
  pair_new(&p, ca_, cm);
  pair_run(&p);
  ASSERT_EQ(p.c_done, -1);
  ASSERT_EQ(SSL_get_verify_result(p.c), X509_V_ERR_CERT_SIGNATURE_FAILURE);
  ASSERT_EQ(dht_cert_peer_id(p.c, &id), -EACCES);
  pair_free(&p);

  /* A user certificate cannot make a peer link context. */
  dht_cert_info_t ui = user_info("alice");
  dht_cert_creds_t *u = creds_of(&t, &ui);
  SSL_CTX *cu;
  ASSERT_REFUSED(dht_cert_tls_ctx(t.ca, u, &cu, err, sizeof err), "node certificate");

  SSL_CTX_free(ca_);
  SSL_CTX_free(cb);
  SSL_CTX_free(cm);
  dht_cert_creds_free(a);
  dht_cert_creds_free(b);
  dht_cert_creds_free(m);
  dht_cert_creds_free(u);
  free_ca(&t);
  free_ca(&other);
}

/* Costs per operation, printed for docs/BENCHMARKS.md; nothing asserted. */
static void bench(void) {
  test_ca_t t = make_ca(OVERLAY);
  dht_cert_info_t w = node_info(0x77, OVERLAY);
  dht_cert_creds_t *c = creds_of(&t, &w);
  test_value_t tv;
  value_init(&tv);
  uint8_t sig[DHT_CERT_SIG_LEN];
  enum { N = 2000, NC = 300, NT = 20 };

  double t0 = mono_us();
  for (int i = 0; i < N; i++) ASSERT_OK(dht_cert_sign(c, &tv.v, sig));
  double t1 = mono_us();
  for (int i = 0; i < N; i++) ASSERT_OK(dht_cert_verify(dht_cert_creds_cert(c), &tv.v, sig, 64));
  double t2 = mono_us();

  /* Chain checks: a cache of one CA per round so every check is a miss. */
  const uint8_t *der;
  size_t len;
  const dht_cert_t *out;
  dht_cert_der(dht_cert_creds_cert(c), &der, &len);
  double tc = 0;
  for (int i = 0; i < NC; i++) {
    dht_cert_ca_t *ca;
    ASSERT_OK(dht_cert_ca_new(dht_cert_ca_x509(t.ca), NULL, &ca, err, sizeof err));
    double a = mono_us();
    ASSERT_OK(dht_cert_check(ca, der, len, &out, err, sizeof err));
    tc += mono_us() - a;
    dht_cert_ca_free(ca);
  }
  double t3 = mono_us();
  for (int i = 0; i < N; i++) ASSERT_OK(dht_cert_check(t.ca, der, len, &out, err, sizeof err));
  double t4 = mono_us();
  /* A miss's parts: OpenSSL's decoding alone, its full check, the lean one. */
  double td = 0, tf = 0, tn = 0;
  for (int i = 0; i < NC; i++) {
    dht_cert_info_t info;
    uint8_t raw[DHT_CERT_MAX_RAW_KEY];
    size_t raw_len;
    EVP_PKEY *pub = NULL;
    const uint8_t *p = der;
    double a = mono_us();
    X509 *x = d2i_X509(NULL, &p, (long)len);
    double b = mono_us();
    ASSERT_OK(dht__cert_full(t.ca, der, len, &info, raw, &raw_len, err, sizeof err));
    double d = mono_us();
    ASSERT_EQ(dht__cert_lean(t.ca, der, len, &info, raw, &raw_len, &pub), 1);
    double e = mono_us();
    td += b - a, tf += d - b, tn += e - d;
    X509_free(x);
    EVP_PKEY_free(pub);
  }
  printf("%s: a miss: d2i_X509 %.1f us, full check %.1f us, lean check %.1f us (with the key "
         "built)\n", keyname, td / NC, tf / NC, tn / NC);

  /* Signatures checked through cached entries: the same signer's (key
   * live), then DHT_CERT_LIVE + 1 signers in turn, so that every check
   * builds its key again (the worst case). */
  enum { NS = DHT_CERT_LIVE + 1 };
  signer_t sg[NS];
  for (int i = 0; i < NS; i++) {
    dht_cert_info_t wi = node_info((uint8_t)(0x40 + i), OVERLAY);
    sg[i].creds = creds_of(&t, &wi);
    ASSERT_OK(dht_cert_sign(sg[i].creds, &tv.v, sg[i].sig));
  }
  double tl = 0, tb = 0;
  for (int i = 0; i < N; i++) {
    const signer_t *one = &sg[i % NS];
    const dht_cert_t *e = cached(t.ca, one);
    double a = mono_us();
    ASSERT_OK(dht_cert_verify(e, &tv.v, one->sig, DHT_CERT_SIG_LEN));
    tb += mono_us() - a;
    e = cached(t.ca, &sg[0]);
    a = mono_us();
    ASSERT_OK(dht_cert_verify(e, &tv.v, sg[0].sig, DHT_CERT_SIG_LEN));
    tl += mono_us() - a;
  }
  for (int i = 0; i < NS; i++) dht_cert_creds_free(sg[i].creds);

  SSL_CTX *ctx = ctx_of(&t, c);
  tls_pair_t p[NT];
  double t5 = mono_us();
  for (int i = 0; i < NT; i++) {
    pair_new(&p[i], ctx, ctx);
    pair_run(&p[i]);
    ASSERT(p[i].c_done == 1 && p[i].s_done == 1);
  }
  double t6 = mono_us();
  /* Memory of an idle link: NT of them held, each having carried a byte
   * both ways, less the BIO pair's own buffers. */
  size_t before = live_bytes;
  BIO *b1, *b2;
  ASSERT(BIO_new_bio_pair(&b1, 0, &b2, 0));
  size_t bio = live_bytes - before;
  BIO_free(b1);
  BIO_free(b2);
  for (int i = 0; i < NT; i++) pair_talk(&p[i]);
  before = live_bytes;
  for (int i = 0; i < NT; i++) pair_free(&p[i]);
  printf("%s: idle TLS link, one end: %zu bytes held by OpenSSL\n", keyname,
         ((before - live_bytes) / NT - bio) / 2);
  printf("%s: verify through the cache: key live %.1f us, key built for the check %.1f us\n",
         keyname, tl / N, tb / N);
  printf("%s: sign %.1f us, verify %.1f us, certificate check %.1f us (cached %.2f us), "
         "TLS handshake (both ends) %.0f us; certificate %zu bytes\n",
         keyname, (t1 - t0) / N, (t2 - t1) / N, tc / NC, (t4 - t3) / N, (t6 - t5) / NT, len);
  SSL_CTX_free(ctx);
  dht_cert_creds_free(c);
  free_ca(&t);
}

int main(void) {
  ASSERT(CRYPTO_set_mem_functions(count_malloc, count_realloc, count_free));
  now = time(NULL);
  test_tbs_layout();
  static const struct {
    int type;
    const char *name;
  } types[] = {{DHT_CERT_ED25519, "Ed25519"}, {DHT_CERT_P256, "P-256"}};
  for (int i = 0; i < 2; i++) {
    keytype = types[i].type, keyname = types[i].name;
    test_load();
    test_verify();
    test_garbage();
    test_lean();
    test_sign();
    test_cache_keys();
    test_rules();
    test_tls();
    bench();
  }
  return 0;
}
