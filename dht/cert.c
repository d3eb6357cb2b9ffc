/* The overlay's certificates, TLS contexts and value signatures: see
 * cert.h for the formats. */
#include "dht/cert.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/asn1t.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* A verified certificate.  A cached one keeps its public key raw (32
 * bytes Ed25519, 65 P-256) and OpenSSL's form (EVP_PKEY: 0.7 KB Ed25519,
 * 2.3 KB P-256) only while it is among the DHT_CERT_LIVE keys that last
 * checked a signature: most cached certificates are peers' that only TLS
 * handshakes look up, and never check a value.  It keeps no DER either (a
 * value brings its certificate along), nor the overlay's name (its CA's):
 * 232 bytes, where a whole dht_cert_info_t is 400.  Our own certificate
 * is the first member of a dht_cert_creds_t, which keeps its description
 * whole, its key built and its DER, which goes out with our values. */
#define RAW_KEY_MAX DHT_CERT_MAX_RAW_KEY

struct dht_cert {
  dht_cert_ca_t *ca; /* the cache it is in; NULL: our own */
  EVP_PKEY *pub;     /* our own: always; cached: while live */
  uint64_t pub_used; /* the cache's clock when pub last served */
  /* dht_cert_info_t's fields but the overlay */
  int64_t not_before, not_after;
  uint8_t fp[DHT_CERT_FP_LEN];
  dht_id_t node;
  char user[DHT_CERT_MAX_USER + 1];
  uint8_t kind, keytype;
  uint8_t raw_len;
  uint8_t raw[RAW_KEY_MAX];
};

struct dht_cert_ca {
  X509 *x509;
  X509_STORE *store;
  dht_cert_info_t info;
  dht_cert_stats_t stats;
  struct {
    dht_cert_t *cert;
    uint64_t used; /* 0: free slot */
  } cache[DHT_CERT_CACHE];
  uint64_t clock;
  int lean;       /* the lean check may accept: the full one has accepted a leaf */
  int live;       /* cached certificates whose pub is built */
  EVP_PKEY *p256; /* P-256 parameters: what a cached P-256 key is built from */
  dht_cert_info_t view; /* dht_cert_info() of a cached certificate */
};

struct dht_cert_creds {
  dht_cert_t cert; /* first: dht_cert_info() and dht_cert_der() cast back */
  dht_cert_info_t info;
  uint8_t *der;
  size_t der_len;
  X509 *x509; /* for the TLS context */
  EVP_PKEY *key;
};

/* A description into a certificate's compact form, and back. */
static void cert_set_info(dht_cert_t *c, const dht_cert_info_t *i) {
  c->not_before = i->not_before, c->not_after = i->not_after;
  memcpy(c->fp, i->fp, DHT_CERT_FP_LEN);
  c->node = i->node;
  memcpy(c->user, i->user, sizeof(c->user));
  c->kind = (uint8_t)i->kind, c->keytype = (uint8_t)i->keytype;
}

static void cert_get_info(const dht_cert_t *c, const char *overlay, dht_cert_info_t *out) {
  memset(out, 0, sizeof(*out));
  out->kind = c->kind, out->keytype = c->keytype;
  out->not_before = c->not_before, out->not_after = c->not_after;
  memcpy(out->fp, c->fp, DHT_CERT_FP_LEN);
  out->node = c->node;
  memcpy(out->user, c->user, sizeof(out->user));
  snprintf(out->overlay, sizeof(out->overlay), "%s", overlay);
}

static const char TBS_CONTEXT[16] = "p2psip-value-v1";

/* Write one line into err and return code.  Also empties OpenSSL's error
 * queue: a stale entry there would make the caller's next SSL_get_error()
 * report a failure that belongs to this one. */
__attribute__((format(printf, 4, 5))) static int fail(char *err, size_t len, int code,
                                                       const char *fmt, ...) {
  ERR_clear_error();
  if (err && len) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
  }
  return code;
}

/* Names ---------------------------------------------------------------------- */

/* An overlay is a lowercase DNS name: labels of 1..63 letters, digits and
 * inner hyphens. */
static int valid_overlay(const char *s, size_t n) {
  if (n == 0 || n > DHT_CERT_MAX_OVERLAY) return 0;
  size_t label = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '.') {
      if (label == 0 || s[i - 1] == '-') return 0;
      label = 0;
    } else if (islower((unsigned char)c) || isdigit((unsigned char)c) ||
               (c == '-' && label > 0)) {
      if (++label > 63) return 0;
    } else {
      return 0;
    }
  }
  return label > 0 && s[n - 1] != '-';
}

/* A user part that is also a safe file name (p2psip-ca writes USER.crt):
 * letters, digits and "-._+", not starting with a dot. */
static int valid_user(const char *s, size_t n) {
  if (n == 0 || n > DHT_CERT_MAX_USER || s[0] == '.') return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)s[i]) && !strchr("-._+", s[i])) return 0;
  return 1;
}

/* Keys ---------------------------------------------------------------------------- */

static int keytype_of(EVP_PKEY *k) {
  char group[32];
  if (EVP_PKEY_get_id(k) == EVP_PKEY_ED25519) return DHT_CERT_ED25519;
  if (EVP_PKEY_get_id(k) == EVP_PKEY_EC &&
      EVP_PKEY_get_group_name(k, group, sizeof(group), NULL) &&
      OBJ_sn2nid(group) == NID_X9_62_prime256v1)
    return DHT_CERT_P256;
  return -1;
}

static EVP_PKEY *new_key(int keytype) {
  if (keytype == DHT_CERT_P256) return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  return keytype == DHT_CERT_ED25519 ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519") : NULL;
}

/* Ed25519 hashes the message itself (RFC 8032 PureEdDSA): no digest. */
static const EVP_MD *md_of(EVP_PKEY *k) {
  return keytype_of(k) == DHT_CERT_ED25519 ? NULL : EVP_sha256();
}

/* Describing a certificate ------------------------------------------------------ */

static int64_t asn1_unix(const ASN1_TIME *t) {
  struct tm tm;
  if (!t || !ASN1_TIME_to_tm(t, &tm)) return -1;
  return (int64_t)timegm(&tm);
}

/* "OVERLAY" after the '@' of a SAN URI into out. */
static int copy_overlay(const char *s, size_t n, dht_cert_info_t *out) {
  if (!valid_overlay(s, n)) return -1;
  memcpy(out->overlay, s, n);
  out->overlay[n] = '\0';
  return 0;
}

/* "p2psip:NODEID@OVERLAY" or "sip:USER@OVERLAY". */
static int parse_uri(const char *s, size_t n, dht_cert_info_t *out) {
  const char *at = memchr(s, '@', n);
  if (!at) return -1;
  size_t head = (size_t)(at - s), tail = n - head - 1;
  if (head > 7 && memcmp(s, "p2psip:", 7) == 0) {
    char hex[DHT_ID_HEX];
    if (head - 7 != DHT_ID_HEX - 1) return -1;
    memcpy(hex, s + 7, DHT_ID_HEX - 1);
    hex[DHT_ID_HEX - 1] = '\0';
    for (int i = 0; hex[i]; i++)
      if (isupper((unsigned char)hex[i])) return -1; /* one spelling per id */
    if (dht_id_parse(hex, &out->node)) return -1;
    out->kind = DHT_CERT_NODE;
    return copy_overlay(at + 1, tail, out);
  }
  if (head > 4 && memcmp(s, "sip:", 4) == 0) {
    if (!valid_user(s + 4, head - 4)) return -1;
    memcpy(out->user, s + 4, head - 4);
    out->user[head - 4] = '\0';
    out->kind = DHT_CERT_USER;
    return copy_overlay(at + 1, tail, out);
  }
  return -1;
}

/* The one subject alternative name among a certificate's extensions
 * (X509_get_ext_d2i() on an X509 is this on its extensions). */
static int parse_san(const STACK_OF(X509_EXTENSION) *exts, dht_cert_info_t *out, char *err,
                     size_t errlen) {
  /* NULL when there is none, and when there are two. */
  GENERAL_NAMES *names = X509V3_get_d2i(exts, NID_subject_alt_name, NULL, NULL);
  if (!names) return fail(err, errlen, -EINVAL, "no (or more than one) subjectAltName");
  int rc = -1;
  if (sk_GENERAL_NAME_num(names) == 1) {
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, 0);
    if (g->type == GEN_URI || g->type == GEN_DNS) {
      const ASN1_IA5STRING *s = g->type == GEN_URI ? g->d.uniformResourceIdentifier : g->d.dNSName;
      const char *p = (const char *)ASN1_STRING_get0_data(s);
      size_t n = (size_t)ASN1_STRING_length(s);
      if (g->type == GEN_URI) {
        rc = parse_uri(p, n, out);
      } else {
        out->kind = DHT_CERT_CA;
        rc = copy_overlay(p, n, out);
      }
    }
  }
  GENERAL_NAMES_free(names);
  if (rc) return fail(err, errlen, -EINVAL, "subjectAltName is not p2psip:NODEID@OVERLAY, "
                      "sip:USER@OVERLAY or an overlay CA's DNS name");
  return 0;
}

/* What a certificate's parts say (all but the fingerprint), for both
 * the full and the lean check. */
static int describe_parts(const STACK_OF(X509_EXTENSION) *exts, int is_ca, int keytype,
                          const ASN1_TIME *not_before, const ASN1_TIME *not_after,
                          dht_cert_info_t *out, char *err, size_t errlen) {
  dht_cert_info_t info;
  memset(&info, 0, sizeof(info));
  int rc = parse_san(exts, &info, err, errlen);
  if (rc) return rc;
  if (is_ca != (info.kind == DHT_CERT_CA))
    return fail(err, errlen, -EINVAL, is_ca ? "a CA certificate where a node or user was expected"
                                            : "an overlay CA certificate without the CA flag");
  info.keytype = keytype;
  if (info.keytype < 0) return fail(err, errlen, -EINVAL, "the key is neither Ed25519 nor P-256");
  info.not_before = asn1_unix(not_before);
  info.not_after = asn1_unix(not_after);
  if (info.not_before < 0 || info.not_after < 0)
    return fail(err, errlen, -EINVAL, "unreadable validity dates");
  *out = info;
  return 0;
}

int dht_cert_describe(X509 *x, dht_cert_info_t *out, char *err, size_t errlen) {
  dht_cert_info_t info;
  EVP_PKEY *pub = X509_get0_pubkey(x);
  int rc = describe_parts(X509_get0_extensions(x), X509_check_ca(x) != 0,
                          pub ? keytype_of(pub) : -1, X509_get0_notBefore(x),
                          X509_get0_notAfter(x), &info, err, errlen);
  if (rc) return rc;
  unsigned n = 0;
  if (!X509_digest(x, EVP_sha256(), info.fp, &n))
    return fail(err, errlen, -ENOMEM, "SHA-256 failed");
  *out = info;
  return 0;
}

/* The CA ----------------------------------------------------------------------------- */

int dht_cert_ca_new(X509 *cert, const char *overlay, dht_cert_ca_t **out, char *err,
                    size_t errlen) {
  dht_cert_info_t info;
  int rc = dht_cert_describe(cert, &info, err, errlen);
  if (rc) return rc;
  if (info.kind != DHT_CERT_CA) return fail(err, errlen, -EINVAL, "not an overlay CA certificate");
  if (X509_check_issued(cert, cert) != X509_V_OK)
    return fail(err, errlen, -EINVAL, "the CA certificate is not self-signed");
  if (overlay && strcasecmp(overlay, info.overlay) != 0)
    return fail(err, errlen, -EINVAL, "the CA is for overlay %s, not %s", info.overlay, overlay);
  if (info.not_after < time(NULL))
    return fail(err, errlen, -EINVAL, "the CA certificate has expired");
  dht_cert_ca_t *ca = calloc(1, sizeof(*ca));
  if (!ca || !(ca->store = X509_STORE_new()) || !X509_STORE_add_cert(ca->store, cert)) {
    if (ca) X509_STORE_free(ca->store);
    free(ca);
    return fail(err, errlen, -ENOMEM, "out of memory");
  }
  /* Leaves are issued by the CA itself: no intermediate certificates. */
  X509_STORE_set_depth(ca->store, 0);
  X509_up_ref(cert);
  ca->x509 = cert;
  ca->info = info;
  *out = ca;
  return 0;
}

/* PEM from a file: what PEM_read_X509 or PEM_read_PrivateKey return. */
static void *load_pem(const char *path, int is_key, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
    return NULL;
  }
  void *out = is_key ? (void *)PEM_read_PrivateKey(f, NULL, NULL, NULL)
                     : (void *)PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  if (!out) fail(err, errlen, -EINVAL, "%s: not a PEM %s", path, is_key ? "private key" : "certificate");
  return out;
}

X509 *dht_cert_load_x509(const char *path, char *err, size_t errlen) {
  return load_pem(path, 0, err, errlen);
}

EVP_PKEY *dht_cert_load_key(const char *path, char *err, size_t errlen) {
  return load_pem(path, 1, err, errlen);
}

/* Prefix err with the file name where the message does not have it. */
static int in_file(const char *path, int rc, char *err, size_t errlen) {
  if (rc && err && errlen) {
    char msg[256];
    snprintf(msg, sizeof(msg), "%s", err);
    snprintf(err, errlen, "%s: %s", path, msg);
  }
  return rc;
}

int dht_cert_ca_load(const char *path, const char *overlay, dht_cert_ca_t **out, char *err,
                     size_t errlen) {
  X509 *x = dht_cert_load_x509(path, err, errlen);
  if (!x) return -EINVAL;
  int rc = dht_cert_ca_new(x, overlay, out, err, errlen);
  X509_free(x);
  return in_file(path, rc, err, errlen);
}

static void cert_free(dht_cert_t *c) {
  if (c->ca && c->pub) c->ca->live--;
  EVP_PKEY_free(c->pub);
}

void dht_cert_ca_free(dht_cert_ca_t *ca) {
  if (!ca) return;
  for (int i = 0; i < DHT_CERT_CACHE; i++) {
    if (ca->cache[i].cert) cert_free(ca->cache[i].cert);
    free(ca->cache[i].cert);
  }
  X509_STORE_free(ca->store);
  X509_free(ca->x509);
  EVP_PKEY_free(ca->p256);
  free(ca);
}

const dht_cert_info_t *dht_cert_ca_info(const dht_cert_ca_t *ca) { return &ca->info; }
X509 *dht_cert_ca_x509(const dht_cert_ca_t *ca) { return ca->x509; }
void dht_cert_ca_stats(const dht_cert_ca_t *ca, dht_cert_stats_t *out) {
  *out = ca->stats;
  out->entries = 0;
  for (int i = 0; i < DHT_CERT_CACHE; i++) out->entries += ca->cache[i].cert != NULL;
  out->live_keys = (uint64_t)ca->live;
}

/* Verification ----------------------------------------------------------------------- */

/* x names a node or user of ca's overlay. */
static int leaf_of(const dht_cert_ca_t *ca, X509 *x, dht_cert_info_t *info, char *err,
                   size_t errlen) {
  int rc = dht_cert_describe(x, info, err, errlen);
  if (rc) return rc;
  if (info->kind == DHT_CERT_CA) return fail(err, errlen, -EINVAL, "a CA certificate");
  if (strcmp(info->overlay, ca->info.overlay) != 0)
    return fail(err, errlen, -EACCES, "certificate of overlay %s, not %s", info->overlay,
                ca->info.overlay);
  return 0;
}

/* ca signed x directly and x is valid now. */
static int verify_chain(const dht_cert_ca_t *ca, X509 *x, char *err, size_t errlen) {
  X509_STORE_CTX *sctx = X509_STORE_CTX_new();
  if (!sctx || !X509_STORE_CTX_init(sctx, ca->store, x, NULL)) {
    X509_STORE_CTX_free(sctx);
    return fail(err, errlen, -ENOMEM, "out of memory");
  }
  int ok = X509_verify_cert(sctx) == 1;
  int code = X509_STORE_CTX_get_error(sctx);
  X509_STORE_CTX_free(sctx);
  if (!ok)
    return fail(err, errlen, -EACCES, "certificate refused: %s",
                X509_verify_cert_error_string(code));
  return 0;
}

static int verify_leaf(const dht_cert_ca_t *ca, X509 *x, dht_cert_info_t *info, char *err,
                       size_t errlen) {
  int rc = leaf_of(ca, x, info, err, errlen);
  return rc ? rc : verify_chain(ca, x, err, errlen);
}

/* The cache slot holding fp that is still valid now, or -1 (an expired
 * one is dropped). */
static int cache_slot(dht_cert_ca_t *ca, const uint8_t fp[DHT_CERT_FP_LEN]) {
  int64_t now = time(NULL);
  for (int i = 0; i < DHT_CERT_CACHE; i++) {
    dht_cert_t *c = ca->cache[i].cert;
    if (!c || memcmp(c->fp, fp, DHT_CERT_FP_LEN) != 0) continue;
    if (now < c->not_before || now >= c->not_after) { /* as X509_cmp_time() */
      cert_free(c);
      free(c);
      ca->cache[i].cert = NULL;
      ca->cache[i].used = 0;
      return -1;
    }
    ca->cache[i].used = ++ca->clock;
    return i;
  }
  return -1;
}

/* Put c in the least recently used slot. */
static void cache_put(dht_cert_ca_t *ca, dht_cert_t *c) {
  int victim = 0;
  for (int i = 1; i < DHT_CERT_CACHE && ca->cache[victim].used; i++)
    if (ca->cache[i].used < ca->cache[victim].used) victim = i;
  if (ca->cache[victim].cert) {
    cert_free(ca->cache[victim].cert);
    free(ca->cache[victim].cert);
  }
  ca->cache[victim].cert = c;
  ca->cache[victim].used = ++ca->clock;
}

static EVP_PKEY *p256_params(void) {
  EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
  EVP_PKEY *k = NULL;
  if (!pc || EVP_PKEY_paramgen_init(pc) != 1 || EVP_PKEY_CTX_set_group_name(pc, "P-256") != 1 ||
      EVP_PKEY_paramgen(pc, &k) != 1)
    k = NULL;
  EVP_PKEY_CTX_free(pc);
  return k;
}

/* OpenSSL's form of a cached key.  Ed25519 takes 5 us; P-256 8 us from a
 * copy of the parameters (EVP_PKEY_fromdata takes 25 us, d2i of the DER
 * key 180), against 75-150 us for the signature check it is built for. */
static EVP_PKEY *key_build(dht_cert_ca_t *ca, const dht_cert_t *c) {
  if (c->keytype == DHT_CERT_ED25519)
    return EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", NULL, c->raw, c->raw_len);
  if (!ca->p256 && !(ca->p256 = p256_params())) return NULL;
  EVP_PKEY *k = EVP_PKEY_dup(ca->p256);
  if (k && EVP_PKEY_set1_encoded_public_key(k, c->raw, c->raw_len) != 1) {
    EVP_PKEY_free(k);
    k = NULL;
  }
  return k;
}

/* Drop the built key that served least recently, but keep's. */
static void key_drop_oldest(dht_cert_ca_t *ca, const dht_cert_t *keep) {
  dht_cert_t *old = NULL;
  for (int i = 0; i < DHT_CERT_CACHE; i++) {
    dht_cert_t *c = ca->cache[i].cert;
    if (c && c != keep && c->pub && (!old || c->pub_used < old->pub_used)) old = c;
  }
  if (!old) return;
  EVP_PKEY_free(old->pub);
  old->pub = NULL;
  ca->live--;
}

/* pub, built for c by the lean check, is kept live: the value that
 * brought c is checked with it next. */
static void key_keep(dht_cert_ca_t *ca, dht_cert_t *c, EVP_PKEY *pub) {
  c->pub = pub;
  c->pub_used = ++ca->clock;
  ca->stats.key_builds++;
  if (++ca->live > DHT_CERT_LIVE) key_drop_oldest(ca, c);
}

/* c's key for a signature check: our own's, or a cached certificate's,
 * built if need be; at most DHT_CERT_LIVE cached keys stay built.  NULL
 * if out of memory. */
static EVP_PKEY *key_of(const dht_cert_t *c) {
  dht_cert_ca_t *ca = c->ca;
  if (!ca) return c->pub;
  dht_cert_t *e = NULL; /* c, writable: the cache owns it */
  for (int i = 0; i < DHT_CERT_CACHE && !e; i++)
    if (ca->cache[i].cert == c) e = ca->cache[i].cert;
  if (!e) return NULL;
  if (!e->pub) {
    if (!(e->pub = key_build(ca, e))) return NULL;
    ca->stats.key_builds++;
    if (++ca->live > DHT_CERT_LIVE) key_drop_oldest(ca, e);
  }
  e->pub_used = ++ca->clock;
  return e->pub;
}

int dht_cert_find(dht_cert_ca_t *ca, const uint8_t fp[DHT_CERT_FP_LEN], const dht_cert_t **out) {
  int i = cache_slot(ca, fp);
  if (i < 0) return -ENOENT;
  ca->stats.cached++;
  *out = ca->cache[i].cert;
  return 0;
}

/* A cache miss: the full check ------------------------------------------------------ */

/* x's public key in the raw form a cache entry keeps, as the certificate
 * carries it (the subjectPublicKey bits: the encoded point, or the
 * Ed25519 key's 32 bytes), so nothing is computed: reading it back out of
 * OpenSSL's form cost 8 us a certificate. */
static int raw_key(X509 *x, uint8_t raw[RAW_KEY_MAX], size_t *raw_len) {
  const ASN1_BIT_STRING *bits = X509_get0_pubkey_bitstr(x);
  int n = bits ? ASN1_STRING_length(bits) : 0;
  if (n <= 0 || n > RAW_KEY_MAX) return 0;
  memcpy(raw, ASN1_STRING_get0_data(bits), (size_t)n);
  *raw_len = (size_t)n;
  return 1;
}

int dht__cert_full(dht_cert_ca_t *ca, const uint8_t *der, size_t len, dht_cert_info_t *info,
                   uint8_t raw[RAW_KEY_MAX], size_t *raw_len, char *err, size_t errlen) {
  const uint8_t *p = der;
  X509 *x = d2i_X509(NULL, &p, (long)len);
  int rc = !x || p != der + len ? fail(err, errlen, -EINVAL, "not a DER certificate")
                                : verify_leaf(ca, x, info, err, errlen);
  if (!rc && !raw_key(x, raw, raw_len)) rc = fail(err, errlen, -EINVAL, "no public key");
  X509_free(x);
  return rc;
}

/* A cache miss: the lean check ---------------------------------------------------------
 *
 * OpenSSL 3.0's d2i_X509 decodes the subject's public key through its
 * provider decoders (x509_pubkey_ex_d2i_ex), 110-165 us of a ~0.3 ms
 * miss, and X509_verify_cert adds ~20 us to the CA signature's check.
 * The lean check reads the certificate with a template of X509's own
 * layout (crypto/x509/x_x509.c) in which the key stays {algorithm, bits}
 * and the issuer stays raw, checks what X509_verify_cert and
 * verify_leaf() check of a leaf issued directly by our CA, and verifies
 * the CA's signature over the TBSCertificate's bytes as received (what
 * X509_verify() signs over too).  It only ever accepts: anything it does
 * not expect (another extension, other encodings of the names, a
 * compressed point, a bad signature...) goes to the full check, which
 * decides and says why.  What depends on the CA alone (its extensions,
 * trust settings, the store's parameters) is left to the full check:
 * the lean one is used once the full one has accepted a leaf of this CA.
 * tests/fuzz/fuzz_cert_lean.c checks that whatever the lean check
 * accepts, the full one accepts with the same description and key. */
typedef struct {
  X509_ALGOR *alg;
  ASN1_BIT_STRING *key;
} LEAN_SPKI;

ASN1_SEQUENCE(LEAN_SPKI) = {
  ASN1_SIMPLE(LEAN_SPKI, alg, X509_ALGOR),
  ASN1_SIMPLE(LEAN_SPKI, key, ASN1_BIT_STRING),
} static_ASN1_SEQUENCE_END(LEAN_SPKI)

typedef struct {
  ASN1_INTEGER *version;
  ASN1_INTEGER *serial;
  X509_ALGOR *sig_alg;
  ASN1_TYPE *issuer; /* raw: compared with the CA's subject byte for byte */
  X509_VAL *validity;
  X509_NAME *subject;
  LEAN_SPKI *key;
  ASN1_BIT_STRING *issuer_uid, *subject_uid;
  STACK_OF(X509_EXTENSION) *exts;
  ASN1_ENCODING enc; /* the bytes as received, which the CA signed */
} LEAN_TBS;

ASN1_SEQUENCE_enc(LEAN_TBS, enc, 0) = {
  ASN1_EXP_OPT(LEAN_TBS, version, ASN1_INTEGER, 0),
  ASN1_SIMPLE(LEAN_TBS, serial, ASN1_INTEGER),
  ASN1_SIMPLE(LEAN_TBS, sig_alg, X509_ALGOR),
  ASN1_SIMPLE(LEAN_TBS, issuer, ASN1_ANY),
  ASN1_SIMPLE(LEAN_TBS, validity, X509_VAL),
  ASN1_SIMPLE(LEAN_TBS, subject, X509_NAME),
  ASN1_SIMPLE(LEAN_TBS, key, LEAN_SPKI),
  ASN1_IMP_OPT(LEAN_TBS, issuer_uid, ASN1_BIT_STRING, 1),
  ASN1_IMP_OPT(LEAN_TBS, subject_uid, ASN1_BIT_STRING, 2),
  ASN1_EXP_SEQUENCE_OF_OPT(LEAN_TBS, exts, X509_EXTENSION, 3),
} static_ASN1_SEQUENCE_END_ref(LEAN_TBS, LEAN_TBS)

typedef struct {
  LEAN_TBS *tbs;
  X509_ALGOR *sig_alg;
  ASN1_BIT_STRING *sig;
} LEAN_CERT;

ASN1_SEQUENCE(LEAN_CERT) = {
  ASN1_SIMPLE(LEAN_CERT, tbs, LEAN_TBS),
  ASN1_SIMPLE(LEAN_CERT, sig_alg, X509_ALGOR),
  ASN1_SIMPLE(LEAN_CERT, sig, ASN1_BIT_STRING),
} static_ASN1_SEQUENCE_END(LEAN_CERT)

/* lc as received is what OpenSSL would encode again: X509_digest()
 * hashes that encoding, so the fingerprints agree. */
static int lean_canonical(const LEAN_CERT *lc, const uint8_t *der, size_t len) {
  uint8_t *enc = NULL;
  int n = ASN1_item_i2d((const ASN1_VALUE *)lc, &enc, ASN1_ITEM_rptr(LEAN_CERT));
  int ok = n > 0 && (size_t)n == len && memcmp(enc, der, len) == 0;
  OPENSSL_free(enc);
  return ok;
}

/* alg is nid without parameters. */
static int lean_alg_is(const X509_ALGOR *alg, int nid) {
  int ptype;
  const ASN1_OBJECT *obj;
  X509_ALGOR_get0(&obj, &ptype, NULL, alg);
  return OBJ_obj2nid(obj) == nid && ptype == V_ASN1_UNDEF;
}

/* The only form X509_cmp_time() reads (RFC 5280): YYMMDDHHMMSSZ or
 * YYYYMMDDHHMMSSZ. */
static int lean_time_form(const ASN1_TIME *t) {
  int n = ASN1_STRING_length(t), type = ASN1_STRING_type(t);
  const uint8_t *d = ASN1_STRING_get0_data(t);
  if (!(type == V_ASN1_UTCTIME && n == 13) && !(type == V_ASN1_GENERALIZEDTIME && n == 15))
    return 0;
  for (int i = 0; i < n - 1; i++)
    if (!isdigit(d[i])) return 0;
  return d[n - 1] == 'Z';
}

/* A key of our two types, encoded as we issue it: Ed25519's 32 bytes, or
 * a named-curve P-256 uncompressed point (validated when it is built). */
static int lean_keytype(const LEAN_SPKI *k) {
  const ASN1_OBJECT *obj;
  const void *param;
  int ptype;
  X509_ALGOR_get0(&obj, &ptype, &param, k->alg);
  int n = ASN1_STRING_length(k->key), nid = OBJ_obj2nid(obj);
  if (k->key->flags & 0x07) return -1; /* unused bits */
  if (nid == NID_ED25519 && ptype == V_ASN1_UNDEF && n == 32) return DHT_CERT_ED25519;
  if (nid == NID_X9_62_id_ecPublicKey && ptype == V_ASN1_OBJECT &&
      OBJ_obj2nid(param) == NID_X9_62_prime256v1 && n == 65 &&
      ASN1_STRING_get0_data(k->key)[0] == POINT_CONVERSION_UNCOMPRESSED)
    return DHT_CERT_P256;
  return -1;
}

/* One extension we issue, well formed; 0 for any other.  basicConstraints
 * must say "not a CA" (so X509_check_ca() says 0), keyUsage must allow
 * signatures; the SAN is read by describe_parts(). */
static int lean_ext_ok(X509_EXTENSION *e, int nid) {
  void *v = X509V3_EXT_d2i(e);
  int ok = v != NULL;
  if (ok && nid == NID_basic_constraints) {
    BASIC_CONSTRAINTS *bc = v;
    ok = !bc->ca && !bc->pathlen;
  } else if (ok && nid == NID_key_usage) {
    ok = ASN1_BIT_STRING_get_bit(v, 0); /* digitalSignature */
  }
  if (nid == NID_basic_constraints) BASIC_CONSTRAINTS_free(v);
  else if (nid == NID_key_usage) ASN1_BIT_STRING_free(v);
  else if (nid == NID_subject_alt_name) GENERAL_NAMES_free(v);
  else EXTENDED_KEY_USAGE_free(v);
  return ok;
}

/* Extensions: only those we issue, each at most once, basicConstraints
 * present.  All four are ones X509_verify_cert() knows, critical or not. */
static int lean_exts(const STACK_OF(X509_EXTENSION) *exts) {
  static const int known[] = {NID_basic_constraints, NID_key_usage, NID_subject_alt_name,
                              NID_ext_key_usage};
  int seen[4] = {0};
  for (int i = 0; i < sk_X509_EXTENSION_num(exts); i++) {
    X509_EXTENSION *e = sk_X509_EXTENSION_value(exts, i);
    int nid = OBJ_obj2nid(X509_EXTENSION_get_object(e)), k = 0;
    while (k < 4 && known[k] != nid) k++;
    if (k == 4 || seen[k]++ || !lean_ext_ok(e, nid)) return 0;
  }
  return seen[0] == 1;
}

/* The TBSCertificate says what a leaf of ca, valid now, must say. */
static int lean_tbs(const dht_cert_ca_t *ca, const LEAN_TBS *t, int64_t now) {
  const uint8_t *ca_name, *subject;
  size_t ca_name_len, subject_len;
  if (!t->version || ASN1_INTEGER_get(t->version) != 2 || t->issuer_uid || t->subject_uid ||
      !X509_NAME_get0_der(X509_get_subject_name(ca->x509), &ca_name, &ca_name_len) ||
      !X509_NAME_get0_der(t->subject, &subject, &subject_len))
    return 0;
  /* Issued by the CA's name exactly; a leaf named as its issuer would be
   * taken for self-signed. */
  if (t->issuer->type != V_ASN1_SEQUENCE) return 0;
  const ASN1_STRING *issuer = t->issuer->value.sequence; /* the whole SEQUENCE */
  if ((size_t)issuer->length != ca_name_len || memcmp(issuer->data, ca_name, ca_name_len) != 0 ||
      (subject_len == ca_name_len && memcmp(subject, ca_name, ca_name_len) == 0))
    return 0;
  return lean_time_form(t->validity->notBefore) && lean_time_form(t->validity->notAfter) &&
         ca->info.not_before <= now && now < ca->info.not_after && lean_exts(t->exts);
}

/* The CA signed tbs (the bytes as received) with sig. */
static int lean_signed(const dht_cert_ca_t *ca, const LEAN_TBS *tbs, const ASN1_BIT_STRING *sig) {
  EVP_PKEY *k = X509_get0_pubkey(ca->x509);
  EVP_MD_CTX *m = EVP_MD_CTX_new();
  int ok = k && m && !(sig->flags & 0x07) &&
           EVP_DigestVerifyInit(m, NULL, md_of(k), NULL, k) == 1 &&
           EVP_DigestVerify(m, sig->data, (size_t)sig->length, tbs->enc.enc,
                            (size_t)tbs->enc.len) == 1;
  EVP_MD_CTX_free(m);
  return ok;
}

static int lean_check(dht_cert_ca_t *ca, const LEAN_CERT *lc, const uint8_t *der, size_t len,
                      dht_cert_info_t *info, dht_cert_t *c, EVP_PKEY **pub) {
  const LEAN_TBS *t = lc->tbs;
  int sig_nid = ca->info.keytype == DHT_CERT_ED25519 ? NID_ED25519 : NID_ecdsa_with_SHA256;
  int64_t now = time(NULL);
  if (!lean_alg_is(lc->sig_alg, sig_nid) || !lean_alg_is(t->sig_alg, sig_nid) ||
      !lean_tbs(ca, t, now) || !lean_canonical(lc, der, len))
    return 0;
  dht_cert_info_t i;
  if (describe_parts(t->exts, 0, lean_keytype(t->key), t->validity->notBefore,
                     t->validity->notAfter, &i, NULL, 0) ||
      strcmp(i.overlay, ca->info.overlay) != 0 || i.not_before > now || now >= i.not_after ||
      !EVP_Digest(der, len, i.fp, NULL, EVP_sha256(), NULL))
    return 0;
  c->keytype = (uint8_t)i.keytype;
  c->raw_len = (uint8_t)t->key->key->length; /* 32 or 65: lean_keytype() */
  memcpy(c->raw, t->key->key->data, c->raw_len);
  EVP_PKEY *k = key_build(ca, c);
  if (!k || !lean_signed(ca, t, lc->sig)) {
    EVP_PKEY_free(k);
    return 0;
  }
  *info = i;
  *pub = k;
  return 1;
}

int dht__cert_lean(dht_cert_ca_t *ca, const uint8_t *der, size_t len, dht_cert_info_t *info,
                   uint8_t raw[RAW_KEY_MAX], size_t *raw_len, EVP_PKEY **pub) {
  ERR_set_mark();
  const uint8_t *p = der;
  LEAN_CERT *lc = (LEAN_CERT *)ASN1_item_d2i(NULL, &p, (long)len, ASN1_ITEM_rptr(LEAN_CERT));
  dht_cert_t c = {0};
  int ok = lc && p == der + len && lean_check(ca, lc, der, len, info, &c, pub);
  if (ok) {
    memcpy(raw, c.raw, c.raw_len);
    *raw_len = c.raw_len;
  }
  ASN1_item_free((ASN1_VALUE *)lc, ASN1_ITEM_rptr(LEAN_CERT));
  ERR_pop_to_mark(); /* a refusal here is no error: the full check decides */
  return ok;
}

/* The cache -------------------------------------------------------------------------------- */

int dht_cert_check(dht_cert_ca_t *ca, const uint8_t *der, size_t len, const dht_cert_t **out,
                   char *err, size_t errlen) {
  uint8_t fp[DHT_CERT_FP_LEN];
  unsigned n = 0;
  if (len == 0 || len > DHT_CERT_MAX_DER) {
    ca->stats.rejected++;
    return fail(err, errlen, -EMSGSIZE, "certificate of %zu bytes (1..%d)", len,
                DHT_CERT_MAX_DER);
  }
  if (!EVP_Digest(der, len, fp, &n, EVP_sha256(), NULL))
    return fail(err, errlen, -ENOMEM, "SHA-256 failed");
  if (dht_cert_find(ca, fp, out) == 0) return 0;

  dht_cert_t *c = calloc(1, sizeof(*c));
  if (!c) return fail(err, errlen, -ENOMEM, "out of memory");
  EVP_PKEY *pub = NULL;
  dht_cert_info_t info;
  size_t raw_len = 0;
  int rc = 0;
  if (!ca->lean || !dht__cert_lean(ca, der, len, &info, c->raw, &raw_len, &pub)) {
    ca->stats.full_checks++;
    rc = dht__cert_full(ca, der, len, &info, c->raw, &raw_len, err, errlen);
    ca->lean |= rc == 0;
  }
  if (rc) {
    free(c);
    ca->stats.rejected += rc != -ENOMEM;
    return rc;
  }
  ca->stats.verified++;
  cert_set_info(c, &info);
  c->raw_len = (uint8_t)raw_len;
  c->ca = ca;
  cache_put(ca, c);
  if (pub) key_keep(ca, c, pub);
  *out = c;
  return 0;
}

const dht_cert_info_t *dht_cert_info(const dht_cert_t *c) {
  if (!c->ca) return &((const dht_cert_creds_t *)c)->info;
  cert_get_info(c, c->ca->info.overlay, &c->ca->view);
  return &c->ca->view;
}

void dht_cert_der(const dht_cert_t *c, const uint8_t **der, size_t *len) {
  const dht_cert_creds_t *own = c->ca ? NULL : (const dht_cert_creds_t *)c;
  *der = own ? own->der : NULL;
  *len = own ? own->der_len : 0;
}

/* Our own certificate and key ---------------------------------------------------------- */

int dht_cert_creds_new(const dht_cert_ca_t *ca, X509 *cert, EVP_PKEY *key,
                       dht_cert_creds_t **out, char *err, size_t errlen) {
  dht_cert_info_t info;
  int rc = verify_leaf(ca, cert, &info, err, errlen);
  if (rc) return rc;
  if (X509_check_private_key(cert, key) != 1)
    return fail(err, errlen, -EINVAL, "the key does not belong to the certificate");
  dht_cert_creds_t *c = calloc(1, sizeof(*c));
  uint8_t *der = NULL;
  int n = i2d_X509(cert, &der);
  if (!c || n <= 0) {
    free(c);
    OPENSSL_free(der);
    return fail(err, errlen, -ENOMEM, "out of memory");
  }
  c->der = der;
  c->cert.pub = X509_get_pubkey(cert);
  if (!c->cert.pub) {
    OPENSSL_free(c->der);
    free(c);
    return fail(err, errlen, -ENOMEM, "out of memory");
  }
  X509_up_ref(cert);
  EVP_PKEY_up_ref(key);
  c->x509 = cert;
  c->info = info;
  cert_set_info(&c->cert, &info);
  c->der_len = (size_t)n;
  c->key = key;
  *out = c;
  return 0;
}

int dht_cert_creds_load(const dht_cert_ca_t *ca, const char *cert_path, const char *key_path,
                        dht_cert_creds_t **out, char *err, size_t errlen) {
  X509 *x = dht_cert_load_x509(cert_path, err, errlen);
  EVP_PKEY *key = x ? dht_cert_load_key(key_path, err, errlen) : NULL;
  int rc = key ? in_file(cert_path, dht_cert_creds_new(ca, x, key, out, err, errlen), err, errlen)
               : -EINVAL;
  X509_free(x);
  EVP_PKEY_free(key);
  return rc;
}

void dht_cert_creds_free(dht_cert_creds_t *c) {
  if (!c) return;
  cert_free(&c->cert);
  OPENSSL_free(c->der);
  X509_free(c->x509);
  EVP_PKEY_free(c->key);
  free(c);
}

const dht_cert_t *dht_cert_creds_cert(const dht_cert_creds_t *c) { return &c->cert; }

/* TLS ------------------------------------------------------------------------------------ */

/* Replaces libssl's chain check: the chain must end at our CA in one step
 * and the peer must be a node of our overlay. */
/* A peer's certificate goes through the cache of verified certificates
 * (dht_cert_check): one seen before is found by its fingerprint, and its
 * CA signature is not checked again on every handshake (a signature check
 * is a third of a handshake's CPU here); a new one is checked and cached.
 * What that refuses is verified again by libssl's chain check, so the
 * refusal says why. */
static int tls_verify(X509_STORE_CTX *sctx, void *arg) {
  dht_cert_ca_t *ca = arg;
  X509 *x = X509_STORE_CTX_get0_cert(sctx);
  unsigned char *der = NULL;
  int len = x ? i2d_X509(x, &der) : -1;
  const dht_cert_t *c;
  int ok = len > 0 && dht_cert_check(ca, der, (size_t)len, &c, NULL, 0) == 0 &&
           c->kind == DHT_CERT_NODE;
  if (!ok) {
    X509_STORE_CTX_set_depth(sctx, 0);
    dht_cert_info_t info;
    ok = X509_verify_cert(sctx) == 1;
    if (ok && (leaf_of(ca, x, &info, NULL, 0) || info.kind != DHT_CERT_NODE)) {
      X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
      ok = 0;
    }
  }
  OPENSSL_free(der);
  return ok;
}

/* ChaCha20-Poly1305 first: a link end holds its two AEAD contexts and two
 * SHA-256 states (not SHA-384) for as long as it is kept, 0.5 KB less
 * than AES-256-GCM's; it seals our small frames faster here too (64
 * bytes: 470 against 115 MB/s; a 16 KB record: 1.8 against 3.3 GB/s).
 * The others stay for nodes of older versions, which prefer AES-256-GCM;
 * the server's order decides.  Signature algorithms: only our two key
 * types, which also makes the lists a session keeps shorter. */
#define TLS_SUITES "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"
#define TLS_SIGALGS "ECDSA+SHA256:ed25519"

int dht_cert_tls_ctx(dht_cert_ca_t *ca, const dht_cert_creds_t *self, SSL_CTX **out, char *err,
                     size_t errlen) {
  if (self->info.kind != DHT_CERT_NODE)
    return fail(err, errlen, -EINVAL, "a peer link needs a node certificate");
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (!ctx) return fail(err, errlen, -ENOMEM, "out of memory");
  /* No session resumption: links are long-lived, and a ticket or cache
   * entry per link is memory for nothing. */
  int ok = SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) &&
           SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
           SSL_CTX_use_certificate(ctx, self->x509) == 1 &&
           SSL_CTX_use_PrivateKey(ctx, self->key) == 1 &&
           SSL_CTX_set1_verify_cert_store(ctx, ca->store) && SSL_CTX_set_num_tickets(ctx, 0) &&
           SSL_CTX_set_ciphersuites(ctx, TLS_SUITES) && SSL_CTX_set1_sigalgs_list(ctx, TLS_SIGALGS);
  if (!ok) {
    SSL_CTX_free(ctx);
    return fail(err, errlen, -EINVAL, "cannot set up TLS: %s", ERR_reason_error_string(ERR_peek_error()));
  }
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  /* Send only our own certificate: the peer has the CA. */
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  SSL_CTX_set_cert_verify_callback(ctx, tls_verify, ca);
  *out = ctx;
  return 0;
}

int dht_cert_peer_id(const SSL *ssl, dht_id_t *out) {
  X509 *x = SSL_get0_peer_certificate(ssl);
  dht_cert_info_t info;
  /* The verify result alone says OK before (and without) a certificate. */
  if (!x || !SSL_is_init_finished(ssl) || SSL_get_verify_result(ssl) != X509_V_OK ||
      dht_cert_describe(x, &info, NULL, 0) || info.kind != DHT_CERT_NODE)
    return -EACCES;
  *out = info.node;
  return 0;
}

/* Signed values ------------------------------------------------------------------------------ */

static uint8_t *put_be(uint8_t *p, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; i--) *p++ = (uint8_t)(v >> (8 * i));
  return p;
}

int dht_cert_tbs(const dht_cert_value_t *v, uint8_t out[DHT_CERT_TBS_MAX]) {
  if (v->vid_len < 1 || v->vid_len > 255 || v->body_len > UINT32_MAX || (!v->body && v->body_len))
    return -EINVAL;
  uint8_t *p = out;
  memcpy(p, TBS_CONTEXT, sizeof(TBS_CONTEXT));
  p += sizeof(TBS_CONTEXT);
  memcpy(p, v->key.b, DHT_ID_LEN);
  p += DHT_ID_LEN;
  *p++ = (uint8_t)v->vid_len;
  memcpy(p, v->vid, v->vid_len);
  p += v->vid_len;
  *p++ = v->kind;
  *p++ = v->flags;
  p = put_be(p, v->seq, 8);
  p = put_be(p, v->expires, 8);
  p = put_be(p, v->body_len, 4);
  unsigned n = 0;
  if (!EVP_Digest(v->body ? v->body : (const uint8_t *)"", v->body_len, p, &n, EVP_sha256(), NULL))
    return -ENOMEM;
  return (int)(p + n - out);
}

/* ECDSA signatures travel as r and s, 32 bytes each, so every signature
 * has the same size; OpenSSL speaks DER (at most 72 bytes for P-256). */
static int ecdsa_to_raw(const uint8_t *der, size_t len, uint8_t sig[DHT_CERT_SIG_LEN]) {
  const uint8_t *p = der;
  ECDSA_SIG *e = d2i_ECDSA_SIG(NULL, &p, (long)len);
  const BIGNUM *r, *s;
  if (e) ECDSA_SIG_get0(e, &r, &s);
  int ok = e && BN_bn2binpad(r, sig, 32) == 32 && BN_bn2binpad(s, sig + 32, 32) == 32;
  ECDSA_SIG_free(e);
  return ok;
}

static int ecdsa_to_der(const uint8_t sig[DHT_CERT_SIG_LEN], uint8_t der[80], size_t *len) {
  ECDSA_SIG *e = ECDSA_SIG_new();
  BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
  int ok = e && r && s && ECDSA_SIG_set0(e, r, s);
  if (!ok) BN_free(r), BN_free(s);
  uint8_t *p = der; /* two 32-byte integers: at most 72 bytes of DER */
  int n = ok ? i2d_ECDSA_SIG(e, &p) : -1;
  ECDSA_SIG_free(e);
  *len = n > 0 ? (size_t)n : 0;
  return n > 0;
}

int dht_cert_sign(const dht_cert_creds_t *c, const dht_cert_value_t *v,
                  uint8_t sig[DHT_CERT_SIG_LEN]) {
  uint8_t tbs[DHT_CERT_TBS_MAX], out[80];
  int n = dht_cert_tbs(v, tbs);
  if (n < 0) return n;
  EVP_MD_CTX *m = EVP_MD_CTX_new();
  size_t len = sizeof(out);
  int ok = m && EVP_DigestSignInit(m, NULL, md_of(c->key), NULL, c->key) == 1 &&
           EVP_DigestSign(m, out, &len, tbs, (size_t)n) == 1;
  EVP_MD_CTX_free(m);
  if (ok && md_of(c->key)) ok = ecdsa_to_raw(out, len, sig);
  else if (ok && len == DHT_CERT_SIG_LEN) memcpy(sig, out, len);
  else ok = 0;
  return ok ? 0 : fail(NULL, 0, -EINVAL, "sign");
}

int dht_cert_verify(const dht_cert_t *c, const dht_cert_value_t *v, const uint8_t *sig,
                    size_t sig_len) {
  uint8_t tbs[DHT_CERT_TBS_MAX], der[80];
  int n = dht_cert_tbs(v, tbs);
  if (n < 0) return n;
  if (sig_len != DHT_CERT_SIG_LEN) return -EINVAL;
  EVP_PKEY *pub = key_of(c);
  if (!pub) return fail(NULL, 0, -ENOMEM, "verify");
  size_t len = sig_len;
  if (md_of(pub) && !ecdsa_to_der(sig, der, &len)) return fail(NULL, 0, -EBADMSG, "verify");
  EVP_MD_CTX *m = EVP_MD_CTX_new();
  int ok = m && EVP_DigestVerifyInit(m, NULL, md_of(pub), NULL, pub) == 1 &&
           EVP_DigestVerify(m, md_of(pub) ? der : sig, len, tbs, (size_t)n) == 1;
  EVP_MD_CTX_free(m);
  return ok ? 0 : fail(NULL, 0, -EBADMSG, "verify");
}

/* v's key is the SHA-1 of "SCHEME:OVERLAY" (or "SCHEME:USER@OVERLAY"). */
static int key_is(const dht_cert_value_t *v, const char *scheme, const char *user,
                  const char *overlay) {
  char name[8 + DHT_CERT_MAX_USER + 1 + DHT_CERT_MAX_OVERLAY + 1];
  snprintf(name, sizeof(name), "%s:%s%s%s", scheme, user ? user : "", user ? "@" : "", overlay);
  dht_id_t k;
  dht_id_of(name, &k);
  return memcmp(k.b, v->key.b, DHT_ID_LEN) == 0;
}

int dht_cert_rule(const dht_cert_info_t *s, const dht_cert_value_t *v) {
  if (s->kind == DHT_CERT_USER || v->kind == DHT_KIND_USER) {
    int ok = s->kind == DHT_CERT_USER && v->kind == DHT_KIND_USER &&
             key_is(v, "sip", s->user, s->overlay);
    return ok ? DHT_CERT_RULE_USER : -EPERM;
  }
  if (s->kind != DHT_CERT_NODE) return -EPERM;
  if (key_is(v, "sip", NULL, s->overlay) || key_is(v, "turn", NULL, s->overlay)) {
    char hex[DHT_ID_HEX];
    dht_id_hex(&s->node, hex);
    int ok = v->vid_len == DHT_ID_HEX - 1 && memcmp(v->vid, hex, DHT_ID_HEX - 1) == 0;
    return ok ? DHT_CERT_RULE_NODE : -EPERM;
  }
  return DHT_CERT_RULE_FIRST;
}

/* Issuing ----------------------------------------------------------------------------------- */

/* A positive random 128-bit serial number (RFC 5280 allows up to 20 bytes). */
static int set_serial(X509 *x) {
  uint8_t r[16];
  if (RAND_bytes(r, sizeof(r)) != 1) return 0;
  r[0] &= 0x7f;
  BIGNUM *bn = BN_bin2bn(r, sizeof(r), NULL);
  int ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
  BN_free(bn);
  return ok;
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
  X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
  int ok = e && X509_add_ext(x, e, -1);
  X509_EXTENSION_free(e);
  return ok;
}

/* A certificate for pub named cn with n extensions (nids[i] = values[i]),
 * signed by issuer_key; issuer NULL: self-signed. */
static X509 *make_cert(EVP_PKEY *pub, const char *cn, int64_t nb, int64_t na, X509 *issuer,
                       EVP_PKEY *issuer_key, const int *nids, const char *const *values, int n) {
  X509 *x = X509_new();
  X509_NAME *name = X509_NAME_new();
  int ok = x && name && X509_set_version(x, X509_VERSION_3) && set_serial(x) &&
           X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const uint8_t *)cn, -1, -1, 0) &&
           X509_set_subject_name(x, name) &&
           X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name) &&
           ASN1_TIME_set(X509_getm_notBefore(x), (time_t)nb) &&
           ASN1_TIME_set(X509_getm_notAfter(x), (time_t)na) && X509_set_pubkey(x, pub);
  for (int i = 0; ok && i < n; i++) ok = add_ext(x, issuer ? issuer : x, nids[i], values[i]);
  ok = ok && X509_sign(x, issuer_key, md_of(issuer_key)) > 0;
  X509_NAME_free(name);
  if (!ok) {
    X509_free(x);
    return NULL;
  }
  return x;
}

int dht_cert_ca_create(const char *overlay, int keytype, int64_t not_before, int64_t not_after,
                       X509 **cert, EVP_PKEY **key, char *err, size_t errlen) {
  if (!valid_overlay(overlay, strlen(overlay)))
    return fail(err, errlen, -EINVAL, "overlay %s is not a lowercase DNS name", overlay);
  char cn[64], san[8 + DHT_CERT_MAX_OVERLAY];
  snprintf(cn, sizeof(cn), "p2psip CA %.50s", overlay);
  snprintf(san, sizeof(san), "DNS:%s", overlay);
  static const int nids[] = {NID_basic_constraints, NID_key_usage, NID_subject_alt_name};
  const char *values[] = {"critical,CA:TRUE", "critical,keyCertSign,cRLSign", san};
  EVP_PKEY *k = new_key(keytype);
  X509 *x = k ? make_cert(k, cn, not_before, not_after, NULL, k, nids, values, 3) : NULL;
  if (!x) {
    EVP_PKEY_free(k);
    return fail(err, errlen, -ENOMEM, "cannot make the CA certificate");
  }
  *cert = x;
  *key = k;
  return 0;
}

int dht_cert_issue(const dht_cert_ca_t *ca, EVP_PKEY *ca_key, const dht_cert_info_t *what,
                   X509 **cert, EVP_PKEY **key, char *err, size_t errlen) {
  char cn[DHT_CERT_MAX_USER + 1], san[16 + DHT_CERT_MAX_USER + DHT_CERT_MAX_OVERLAY];
  const char *o = what->overlay;
  if (!valid_overlay(o, strlen(o)))
    return fail(err, errlen, -EINVAL, "overlay %s is not a lowercase DNS name", o);
  if (what->kind == DHT_CERT_NODE) {
    dht_id_hex(&what->node, cn);
    snprintf(san, sizeof(san), "URI:p2psip:%s@%s", cn, o);
  } else if (what->kind == DHT_CERT_USER) {
    if (!valid_user(what->user, strlen(what->user)))
      return fail(err, errlen, -EINVAL, "bad user name %s (1..%d of letters, digits, \"-._+\")",
                  what->user, DHT_CERT_MAX_USER);
    snprintf(cn, sizeof(cn), "%s", what->user);
    snprintf(san, sizeof(san), "URI:sip:%s@%s", cn, o);
  } else {
    return fail(err, errlen, -EINVAL, "only node and user certificates are issued");
  }
  /* Nodes authenticate both ends of TLS links; users only sign values, so
   * their certificates stop before the last (extended key usage). */
  static const int nids[] = {NID_basic_constraints, NID_key_usage, NID_subject_alt_name,
                             NID_ext_key_usage};
  const char *values[] = {"critical,CA:FALSE", "critical,digitalSignature", san,
                          "serverAuth,clientAuth"};
  int n = what->kind == DHT_CERT_NODE ? 4 : 3;
  EVP_PKEY *k = new_key(keytype_of(ca_key));
  X509 *x = k ? make_cert(k, cn, what->not_before, what->not_after, ca->x509, ca_key, nids, values,
                         n)
              : NULL;
  if (!x) {
    EVP_PKEY_free(k);
    return fail(err, errlen, -EINVAL, "cannot issue the certificate (is the key the CA's?)");
  }
  *cert = x;
  *key = k;
  return 0;
}
