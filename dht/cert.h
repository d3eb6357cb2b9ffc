/*
 * cert: the overlay's certificates, TLS contexts and value signatures.
 *
 * Pure crypto on OpenSSL (libcrypto, libssl): no sockets, no loop.  An
 * overlay has one CA (made by p2psip-ca).  It certifies
 *   - nodes:  SAN URI "p2psip:NODEID@OVERLAY" (NODEID: 40 lowercase hex),
 *   - users:  SAN URI "sip:USER@OVERLAY",
 *   - itself: SAN DNS name "OVERLAY" on the self-signed CA certificate.
 * A certificate carries exactly one subject alternative name.  Keys are
 * Ed25519 or P-256, chosen when the CA is made; the CA issues keys of its
 * own type.  Either way a value's signature is 64 bytes.
 *
 * Node ids are chosen by the CA, never by the node: p2psip-ca draws 160
 * random bits (RAND_bytes) for each node.  An id derived from the public
 * key (SHA-1) would be as good while the CA makes the keys, but a node
 * that made its own key could grind keys until the id lands where it
 * wants on the ring; random ids stay safe if nodes ever send requests.
 *
 * Everything that reads bytes from the wire is bounded
 * (DHT_CERT_MAX_DER) and returns an error on garbage.  Functions return 0
 * or a negative errno-style code; those that take `char *err, size_t
 * errlen` also write one line (no newline) saying why.  Out-parameters are
 * written only on success.  Nothing here is thread-safe.
 */
#ifndef P2PSIP_DHT_CERT_H
#define P2PSIP_DHT_CERT_H

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdint.h>

#include "dht/dht.h"

#define DHT_CERT_MAX_DER 2048  /* larger certificates are refused unparsed */
#define DHT_CERT_FP_LEN 32     /* SHA-256 of the DER certificate */
#define DHT_CERT_SIG_LEN 64    /* Ed25519, or ECDSA P-256 as r and s (32 bytes each) */
#define DHT_CERT_MAX_USER 64   /* user part of sip:USER@OVERLAY */
#define DHT_CERT_MAX_OVERLAY 253
#define DHT_CERT_CACHE 96      /* verified certificates kept per CA (~0.25 KiB each) */
#define DHT_CERT_LIVE 8        /* of those, keys kept in OpenSSL's form (P-256: 2.3 KiB each) */

enum dht_cert_kind { DHT_CERT_CA = 1, DHT_CERT_NODE = 2, DHT_CERT_USER = 3 };
/* Key types.  Ed25519: deterministic signatures, node certificates of 416
 * bytes DER (users 325); P-256 (ECDSA with SHA-256): 481 (390), but
 * OpenSSL 3.0 verifies it about 1.6-3x faster (docs/BENCHMARKS.md). */
enum dht_cert_keytype { DHT_CERT_ED25519 = 1, DHT_CERT_P256 = 2 };

/* What a certificate certifies. */
typedef struct {
  int kind;                                 /* enum dht_cert_kind */
  dht_id_t node;                            /* DHT_CERT_NODE */
  char user[DHT_CERT_MAX_USER + 1];         /* DHT_CERT_USER: the user part */
  char overlay[DHT_CERT_MAX_OVERLAY + 1];   /* lowercase */
  int keytype;                              /* enum dht_cert_keytype */
  int64_t not_before, not_after;            /* unix seconds */
  uint8_t fp[DHT_CERT_FP_LEN];              /* SHA-256 of the DER */
} dht_cert_info_t;

typedef struct dht_cert_ca dht_cert_ca_t;       /* trust anchor + cache */
typedef struct dht_cert dht_cert_t;             /* a verified certificate */
typedef struct dht_cert_creds dht_cert_creds_t; /* our certificate and key */

/* The CA ----------------------------------------------------------------- */

/* Load the overlay CA certificate (PEM).  overlay: NULL takes the CA's, or
 * the name it must certify (case-insensitive).  Refuses a file that is not
 * a self-signed CA certificate of an overlay, or one that has expired. */
int dht_cert_ca_load(const char *path, const char *overlay, dht_cert_ca_t **out, char *err,
                     size_t errlen);
/* The same from a certificate in memory; takes a reference to cert. */
int dht_cert_ca_new(X509 *cert, const char *overlay, dht_cert_ca_t **out, char *err,
                    size_t errlen);
void dht_cert_ca_free(dht_cert_ca_t *ca);
const dht_cert_info_t *dht_cert_ca_info(const dht_cert_ca_t *ca);
X509 *dht_cert_ca_x509(const dht_cert_ca_t *ca); /* borrowed */

typedef struct {
  uint64_t verified; /* chains checked (the expensive part) */
  uint64_t cached;   /* answered from the cache */
  uint64_t rejected; /* refused: garbage, other CA, other overlay, expired */
  uint64_t entries;    /* certificates in the cache now (at most DHT_CERT_CACHE) */
  uint64_t live_keys;  /* of them, keys held in OpenSSL's form (at most DHT_CERT_LIVE) */
  uint64_t key_builds; /* keys made again from their raw form for a signature check */
  uint64_t full_checks; /* misses checked by OpenSSL's full path (d2i_X509, X509_verify_cert) */
} dht_cert_stats_t;
void dht_cert_ca_stats(const dht_cert_ca_t *ca, dht_cert_stats_t *out);

/* Certificates ----------------------------------------------------------- */

/* Check a DER certificate from the wire: at most DHT_CERT_MAX_DER bytes, a
 * node or user certificate issued directly by the CA, for its overlay,
 * valid now.  Verified certificates are cached by fingerprint (up to
 * DHT_CERT_CACHE, least recently used dropped first), so a certificate seen
 * again costs a SHA-256 and a lookup.  The cache keeps what the
 * certificate certifies and its public key in raw form; OpenSSL's form of
 * the key is made when a signature is checked with it and kept for the
 * DHT_CERT_LIVE keys that checked one last (making it again costs 5-8 us,
 * a few percent of the check).  *out is borrowed from the cache and
 * stays valid until the next dht_cert_check() or dht_cert_ca_free().
 *
 * A miss is checked without OpenSSL's X509 where it can be: in OpenSSL
 * 3.0, d2i_X509 decodes the public key through the provider decoders
 * (110-165 us, more than the CA signature's check) and X509_verify_cert
 * adds ~20 us.  The lean check reads the DER with a template of X509's
 * layout that keeps the key raw, checks what the full check would of a
 * leaf issued directly by the CA, and verifies the CA's signature over
 * the TBSCertificate as received: 0.12 ms a miss for P-256 instead of
 * 0.31 (docs/BENCHMARKS.md).  It only accepts certificates shaped as
 * p2psip-ca issues them; anything else, and every refusal, goes to the
 * full check (d2i_X509, dht_cert_describe, X509_verify_cert), which
 * decides and says why (stats: full_checks).  The first miss of a CA
 * always goes there: what depends on the CA alone is proven once by it. */
int dht_cert_check(dht_cert_ca_t *ca, const uint8_t *der, size_t len, const dht_cert_t **out,
                   char *err, size_t errlen);
/* A cached certificate by fingerprint, for values that carry only the
 * reference; -ENOENT if it is not cached (or no longer valid).  Same
 * lifetime as dht_cert_check()'s. */
int dht_cert_find(dht_cert_ca_t *ca, const uint8_t fp[DHT_CERT_FP_LEN], const dht_cert_t **out);

/* What c certifies.  Our own certificate's (dht_cert_creds_cert) lives as
 * long as its creds.  A cached certificate keeps it compact (without the
 * overlay's name, which is its CA's): it is written out into its CA's one
 * copy, valid until the next dht_cert_info() of a cached certificate of
 * that CA (or what ends c's own lifetime). */
const dht_cert_info_t *dht_cert_info(const dht_cert_t *c);
/* The DER encoding of our own certificate (dht_cert_creds_cert), to send
 * with a value; borrowed.  A cached certificate keeps none (the value that
 * brought it carries it): *der NULL, *len 0. */
void dht_cert_der(const dht_cert_t *c, const uint8_t **der, size_t *len);

/* A PEM certificate, or a PEM private key, from a file; NULL with err set
 * if it cannot be read.  Free with X509_free() / EVP_PKEY_free(). */
X509 *dht_cert_load_x509(const char *path, char *err, size_t errlen);
EVP_PKEY *dht_cert_load_key(const char *path, char *err, size_t errlen);

/* What x claims to certify, without checking who signed it (for display
 * and for the checks above).  Refuses anything but exactly one SAN of the
 * forms above, a CA flag that does not match the kind, and keys that are
 * neither Ed25519 nor P-256. */
int dht_cert_describe(X509 *x, dht_cert_info_t *out, char *err, size_t errlen);

/* Our own certificate and key ---------------------------------------------- */

/* Load a certificate and its private key (PEM files), check that the CA
 * issued the certificate, that it is valid now and that the key is its. */
int dht_cert_creds_load(const dht_cert_ca_t *ca, const char *cert_path, const char *key_path,
                        dht_cert_creds_t **out, char *err, size_t errlen);
/* The same from memory; takes references to cert and key. */
int dht_cert_creds_new(const dht_cert_ca_t *ca, X509 *cert, EVP_PKEY *key,
                       dht_cert_creds_t **out, char *err, size_t errlen);
void dht_cert_creds_free(dht_cert_creds_t *c);
const dht_cert_t *dht_cert_creds_cert(const dht_cert_creds_t *c);

/* TLS between nodes --------------------------------------------------------- */

/* A TLS 1.3-only context for both ends of a peer link: presents self (a
 * node certificate), demands the peer's, accepts only node certificates of
 * ca's overlay issued directly by ca.  SSL_MODE_RELEASE_BUFFERS, no session
 * tickets, no session cache.  ca must outlive the context.  Free with
 * SSL_CTX_free().  In TLS 1.3 a client's handshake completes before the
 * server has checked the client's certificate: a client learns of a
 * refusal on its first read. */
int dht_cert_tls_ctx(dht_cert_ca_t *ca, const dht_cert_creds_t *self, SSL_CTX **out, char *err,
                     size_t errlen);
/* The certified node id of the peer of a completed handshake on a context
 * made above; -EACCES if the peer is not (or not yet) authenticated. */
int dht_cert_peer_id(const SSL *ssl, dht_id_t *out);

/* Signed values -------------------------------------------------------------
 *
 * A signature covers this byte string ("to be signed"), integers big-endian:
 *
 *   16  "p2psip-value-v1" and a NUL (context, so no other signature made
 *        with these keys can pass for a value's)
 *   20  key (the resource name's SHA-1)
 *    1  value id length n (1..255)
 *    n  value id
 *    1  kind (enum dht_kind)
 *    1  flags (PROTO_VF_TOMBSTONE for a removal)
 *    8  sequence number
 *    8  expiry, absolute unix seconds
 *    4  body length
 *   32  SHA-256 of the body
 *
 * The body enters through its hash so the string is bounded
 * (DHT_CERT_TBS_MAX) and signing needs no copy of a large body.  The
 * overlay is not in it: the signer's certificate names it. */
#define DHT_CERT_TBS_MAX (16 + 20 + 1 + 255 + 1 + 1 + 8 + 8 + 4 + 32)

typedef struct {
  dht_id_t key;
  const uint8_t *vid;
  size_t vid_len; /* 1..255 */
  uint8_t kind, flags;
  uint64_t seq;
  uint64_t expires; /* absolute unix seconds */
  const uint8_t *body;
  size_t body_len; /* < 2^32 */
} dht_cert_value_t;

/* Write the to-be-signed string; returns its length, or -EINVAL. */
int dht_cert_tbs(const dht_cert_value_t *v, uint8_t out[DHT_CERT_TBS_MAX]);
int dht_cert_sign(const dht_cert_creds_t *c, const dht_cert_value_t *v,
                  uint8_t sig[DHT_CERT_SIG_LEN]);
/* 0 if sig is c's signature over v, else -EBADMSG (or -EINVAL). */
int dht_cert_verify(const dht_cert_t *c, const dht_cert_value_t *v, const uint8_t *sig,
                    size_t sig_len);

/* Access rules: which rule governs v and whether signer may write it.
 * Returns the rule (> 0) when the signer satisfies it, else -EPERM:
 *   USER  kind DHT_KIND_USER, and anything a user signs: only a user
 *         certificate whose sip:USER@OVERLAY hashes to the key;
 *   NODE  keys sip:OVERLAY and turn:OVERLAY: only a node certificate whose
 *         node id, in lowercase hex, is the value id;
 *   FIRST any other key: a node certificate; the store must still check
 *         that the value id is new under the key or was first stored by
 *         this node. */
enum { DHT_CERT_RULE_USER = 1, DHT_CERT_RULE_NODE = 2, DHT_CERT_RULE_FIRST = 3 };
int dht_cert_rule(const dht_cert_info_t *signer, const dht_cert_value_t *v);

/* Issuing (p2psip-ca and tests) --------------------------------------------- */

/* A new CA key of keytype and a self-signed certificate for overlay. */
int dht_cert_ca_create(const char *overlay, int keytype, int64_t not_before, int64_t not_after,
                       X509 **cert, EVP_PKEY **key, char *err, size_t errlen);
/* A new key of the CA's type and a certificate signed by ca_key (the key of ca's
 * certificate) for what->kind (NODE: what->node; USER: what->user),
 * what->overlay, valid from what->not_before to what->not_after.  The
 * overlay is taken as given (p2psip-ca passes the CA's), so tests can make
 * the certificates an operator must never issue. */
int dht_cert_issue(const dht_cert_ca_t *ca, EVP_PKEY *ca_key, const dht_cert_info_t *what,
                   X509 **cert, EVP_PKEY **key, char *err, size_t errlen);

/* For tests: the two checks of a cache miss (dht_cert_check), without
 * the cache ------------------------------------------------------------------ */

#define DHT_CERT_MAX_RAW_KEY 65 /* an uncompressed P-256 point */

/* OpenSSL's full check: d2i_X509, the leaf's description, X509_verify_cert.
 * 0 with *info and the raw key (the subjectPublicKey bits), or a negative
 * code and err. */
int dht__cert_full(dht_cert_ca_t *ca, const uint8_t *der, size_t len, dht_cert_info_t *info,
                   uint8_t raw[DHT_CERT_MAX_RAW_KEY], size_t *raw_len, char *err, size_t errlen);
/* The lean check (see dht_cert_check): 1 if it accepts, with *info, the
 * raw key and *pub, OpenSSL's form of that key (the caller frees it); 0
 * if it is not sure, and then the full check decides.  It never accepts
 * what the full check refuses. */
int dht__cert_lean(dht_cert_ca_t *ca, const uint8_t *der, size_t len, dht_cert_info_t *info,
                   uint8_t raw[DHT_CERT_MAX_RAW_KEY], size_t *raw_len, EVP_PKEY **pub);

#endif
