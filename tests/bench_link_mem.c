/* What one kept TLS link end costs in memory, in dht/rpc.c's set-up: the
 * context of dht_cert_tls_ctx(), one BIO per end that reads from the bytes
 * that arrived and writes into a buffer freed once sent (rpc.c's
 * tls_bio_*), a handshake and a frame each way.  -m models rpc.c before
 * that: two memory BIOs per end, swapped for fresh ones once drained as
 * its sweep did (tls_trim; -t skips the swap).  Two nodes (two contexts)
 * make N links.
 *
 *   bench_link_mem [-k p256|ed25519] [-n N] [-s SUITES] [-g GROUPS]
 *                  [-a SIGALGS] [-c TLS12LIST] [-p] [-m [-t]] [-v]
 *   bench_link_mem -C [-k p256|ed25519]
 *
 * By default OpenSSL's allocations are counted through
 * CRYPTO_set_mem_functions and attributed to the end that made them and
 * to OpenSSL's file:line (-v lists the sites); -p (plain) counts nothing
 * and reports malloc's own view instead (mallinfo2 in-use delta, with
 * chunk overhead), which is what the heap really pays.  -s/-g/-a/-c set ciphersuites, groups, signature algorithms and
 * the TLS 1.2 cipher list on both contexts, to try them.  -C instead
 * measures the cache of verified certificates: malloc's heap per entry
 * once DHT_CERT_CACHE certificates are in, then after a value's signature
 * was checked through each.  Nothing here is asserted: it prints numbers
 * for docs/BENCHMARKS.md. */
#include "dht/cert.h"

#include <malloc.h>
#include <openssl/buffer.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DAY (24 * 3600)

/* Counting allocator: every live block is on one list with its site and
 * owner (0: set-up, 1: client end, 2: server end). */
typedef struct blk {
  struct blk *prev, *next;
  const char *file;
  int line, owner;
  size_t n;
  size_t pad_;
} blk_t;
static blk_t live = {&live, &live, NULL, 0, 0, 0, 0};
static int owner;

static void *c_malloc(size_t n, const char *file, int line) {
  blk_t *b = malloc(sizeof(*b) + n);
  if (!b) return NULL;
  *b = (blk_t){live.prev, &live, file, line, owner, n, 0};
  live.prev->next = b;
  live.prev = b;
  return b + 1;
}

static void c_free(void *q, const char *file, int line) {
  if (!q) return;
  blk_t *b = (blk_t *)q - 1;
  b->prev->next = b->next;
  b->next->prev = b->prev;
  free(b);
}

static void *c_realloc(void *q, size_t n, const char *file, int line) {
  if (!q) return c_malloc(n, file, line);
  void *r = c_malloc(n, file, line);
  if (!r) return NULL;
  blk_t *b = (blk_t *)q - 1;
  ((blk_t *)r - 1)->owner = b->owner; /* a buffer grown stays its end's */
  memcpy(r, q, b->n < n ? b->n : n);
  c_free(q, file, line);
  return r;
}

static size_t owned(int who, size_t *blocks) {
  size_t sum = 0, k = 0;
  for (blk_t *b = live.next; b != &live; b = b->next)
    if (b->owner == who) sum += b->n, k++;
  if (blocks) *blocks = k;
  return sum;
}

typedef struct {
  const char *file;
  int line;
  size_t bytes, count;
} site_t;

static int by_bytes(const void *a, const void *b) {
  const site_t *x = a, *y = b;
  return x->bytes < y->bytes ? 1 : x->bytes > y->bytes ? -1 : 0;
}

static void sites(int who, int links) {
  static site_t s[4096];
  int ns = 0;
  for (blk_t *b = live.next; b != &live; b = b->next) {
    if (b->owner != who) continue;
    int i = 0;
    while (i < ns && !(s[i].line == b->line && strcmp(s[i].file, b->file) == 0)) i++;
    if (i == ns && ns < 4096) s[ns++] = (site_t){b->file, b->line, 0, 0};
    if (i < ns) s[i].bytes += b->n, s[i].count++;
  }
  qsort(s, ns, sizeof(s[0]), by_bytes);
  for (int i = 0; i < ns; i++)
    printf("    %7.1f B %5.2f blocks  %s:%d\n", (double)s[i].bytes / links,
           (double)s[i].count / links, s[i].file, s[i].line);
}

/* One end as dht/rpc.c makes it. */
typedef struct {
  SSL *ssl;
  BIO *rbio, *wbio; /* -m */
  uint8_t *inbuf; /* else: what the other end sent, */
  const uint8_t *in; /* and of it what this end has not read yet */
  size_t in_len;
  uint8_t *out; /* and what this end wrote, not carried yet */
  size_t out_len;
  int done;
} end_t;

static int mem_bios; /* -m */

/* The direct BIO's model: reads take from e->in, writes grow e->out. */
static int d_write(BIO *b, const char *data, int len) {
  end_t *e = BIO_get_data(b);
  uint8_t *o = realloc(e->out, e->out_len + (size_t)len);
  if (!o) return -1;
  memcpy(o + e->out_len, data, (size_t)len);
  e->out = o;
  e->out_len += (size_t)len;
  return len;
}

static int d_read(BIO *b, char *buf, int len) {
  end_t *e = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (!e->in_len) {
    BIO_set_retry_read(b);
    return -1;
  }
  size_t n = (size_t)len < e->in_len ? (size_t)len : e->in_len;
  memcpy(buf, e->in, n);
  e->in += n, e->in_len -= n;
  return (int)n;
}

static long d_ctrl(BIO *b, int cmd, long num, void *ptr) { return cmd == BIO_CTRL_FLUSH; }

static int d_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static BIO_METHOD *direct;

static void end_new(end_t *e, SSL_CTX *ctx, int client) {
  owner = client ? 1 : 2;
  memset(e, 0, sizeof(*e));
  e->ssl = SSL_new(ctx);
  if (!e->ssl) abort();
  if (mem_bios) {
    e->rbio = BIO_new(BIO_s_mem());
    e->wbio = BIO_new(BIO_s_mem());
    if (!e->rbio || !e->wbio) abort();
    BIO_set_mem_eof_return(e->rbio, -1);
    SSL_set_bio(e->ssl, e->rbio, e->wbio);
  } else {
    BIO *b = BIO_new(direct);
    if (!b) abort();
    BIO_set_data(b, e);
    SSL_set_bio(e->ssl, b, b);
  }
  if (client) SSL_set_connect_state(e->ssl);
  else SSL_set_accept_state(e->ssl);
}

/* Bytes from one end's wire BIO into the other's read BIO; with the
 * direct BIO the other end reads them in place at its next drive(). */
static void carry(end_t *from, end_t *to) {
  static uint8_t buf[64 * 1024];
  int n;
  if (!mem_bios) {
    free(to->inbuf); /* read whole by the drive() before */
    to->in = to->inbuf = from->out;
    to->in_len = from->out_len;
    from->out = NULL, from->out_len = 0;
    return;
  }
  while ((n = BIO_read(from->wbio, buf, sizeof buf)) > 0)
    if (BIO_write(to->rbio, buf, n) != n) abort();
}

static void drive(end_t *e, int who) {
  owner = who;
  if (e->done) {
    uint8_t b[256];
    while (SSL_read(e->ssl, b, sizeof b) > 0) {
    }
    ERR_clear_error();
    return;
  }
  int r = SSL_do_handshake(e->ssl);
  if (r == 1) e->done = 1;
  else if (SSL_get_error(e->ssl, r) != SSL_ERROR_WANT_READ) e->done = -1;
  ERR_clear_error();
}

/* As tls_fresh_bio()/tls_trim() in dht/rpc.c. */
static BIO *fresh(BIO *b) {
  BUF_MEM *m;
  if (BIO_ctrl_pending(b) || BIO_get_mem_ptr(b, &m) != 1 || !m || m->max == 0) return NULL;
  BIO *nb = BIO_new(BIO_s_mem());
  if (nb) BIO_set_mem_eof_return(nb, -1);
  return nb;
}

static void trim(end_t *e, int who) {
  if (!mem_bios) return;
  owner = who;
  BIO *nb;
  if ((nb = fresh(e->rbio))) SSL_set0_rbio(e->ssl, nb), e->rbio = nb;
  if ((nb = fresh(e->wbio))) SSL_set0_wbio(e->ssl, nb), e->wbio = nb;
}

static void link_up(end_t *c, end_t *s, SSL_CTX *cc, SSL_CTX *sc, int do_trim) {
  end_new(c, cc, 1);
  end_new(s, sc, 0);
  for (int i = 0; i < 8; i++) {
    drive(c, 1);
    owner = 2;
    carry(c, s);
    drive(s, 2);
    owner = 1;
    carry(s, c);
  }
  dht_id_t id;
  if (c->done != 1 || s->done != 1 || dht_cert_peer_id(c->ssl, &id) ||
      dht_cert_peer_id(s->ssl, &id)) {
    fprintf(stderr, "handshake failed\n");
    ERR_print_errors_fp(stderr);
    exit(1);
  }
  /* A 60-byte frame each way, as a PING and its answer. */
  uint8_t frame[60] = {0};
  owner = 1;
  if (SSL_write(c->ssl, frame, sizeof frame) != sizeof frame) abort();
  owner = 2;
  carry(c, s);
  drive(s, 2);
  if (SSL_write(s->ssl, frame, sizeof frame) != sizeof frame) abort();
  owner = 1;
  carry(s, c);
  drive(c, 1);
  if (do_trim) {
    trim(c, 1);
    trim(s, 2);
  }
  free(c->inbuf), free(s->inbuf); /* rpc.c reads from libuv's one buffer */
  c->inbuf = s->inbuf = NULL;
  owner = 0;
}

static dht_cert_creds_t *node(dht_cert_ca_t *ca, EVP_PKEY *cakey, uint8_t fill) {
  char err[256];
  int64_t now = time(NULL);
  dht_cert_info_t w = {.kind = DHT_CERT_NODE, .not_before = now - DAY, .not_after = now + DAY};
  memset(w.node.b, fill, DHT_ID_LEN);
  snprintf(w.overlay, sizeof w.overlay, "overlay.test");
  X509 *x;
  EVP_PKEY *k;
  dht_cert_creds_t *c;
  if (dht_cert_issue(ca, cakey, &w, &x, &k, err, sizeof err) ||
      dht_cert_creds_new(ca, x, k, &c, err, sizeof err)) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  X509_free(x);
  EVP_PKEY_free(k);
  return c;
}

static SSL_CTX *ctx_of(dht_cert_ca_t *ca, dht_cert_creds_t *self, const char *suites,
                       const char *groups, const char *sigalgs, const char *list12) {
  char err[256];
  SSL_CTX *ctx;
  if (dht_cert_tls_ctx(ca, self, &ctx, err, sizeof err)) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  if ((suites && !SSL_CTX_set_ciphersuites(ctx, suites)) ||
      (groups && !SSL_CTX_set1_groups_list(ctx, groups)) ||
      (sigalgs && !SSL_CTX_set1_sigalgs_list(ctx, sigalgs)) ||
      (list12 && !SSL_CTX_set_cipher_list(ctx, list12))) {
    ERR_print_errors_fp(stderr);
    exit(1);
  }
  return ctx;
}

/* A CA of keytype for overlay.test, valid a day either side of now. */
static int new_ca(int keytype, X509 **cax, EVP_PKEY **cakey, dht_cert_ca_t **ca) {
  char err[256];
  int64_t now = time(NULL);
  if (dht_cert_ca_create("overlay.test", keytype, now - DAY, now + DAY, cax, cakey, err,
                         sizeof err) ||
      dht_cert_ca_new(*cax, NULL, ca, err, sizeof err)) {
    fprintf(stderr, "%s\n", err);
    return -1;
  }
  return 0;
}

/* The cache of verified certificates, filled: heap per entry. */
static int cache_bench(int keytype) {
  char err[256];
  X509 *cax;
  EVP_PKEY *cakey;
  dht_cert_ca_t *ca;
  if (new_ca(keytype, &cax, &cakey, &ca)) return 1;
  enum { N = DHT_CERT_CACHE };
  static uint8_t der[N][DHT_CERT_MAX_DER];
  static size_t len[N];
  static uint8_t sig[N][DHT_CERT_SIG_LEN];
  dht_cert_value_t v = {.vid = (const uint8_t *)"v", .vid_len = 1, .kind = 1, .seq = 1};
  for (int i = 0; i < N; i++) {
    dht_cert_creds_t *c = node(ca, cakey, (uint8_t)i);
    const uint8_t *d;
    dht_cert_der(dht_cert_creds_cert(c), &d, &len[i]);
    memcpy(der[i], d, len[i]);
    if (dht_cert_sign(c, &v, sig[i])) return 1;
    dht_cert_creds_free(c);
  }
  const dht_cert_t *out;
  /* One in and out first: the lazy set-up is not an entry's. */
  if (dht_cert_check(ca, der[0], len[0], &out, err, sizeof err) ||
      dht_cert_verify(out, &v, sig[0], DHT_CERT_SIG_LEN))
    return 1;
  malloc_trim(0);
  size_t h0 = mallinfo2().uordblks;
  for (int i = 1; i < N; i++)
    if (dht_cert_check(ca, der[i], len[i], &out, err, sizeof err)) return 1;
  size_t h1 = mallinfo2().uordblks;
  for (int i = 1; i < N; i++)
    if (dht_cert_check(ca, der[i], len[i], &out, err, sizeof err) ||
        dht_cert_verify(out, &v, sig[i], DHT_CERT_SIG_LEN))
      return 1;
  size_t h2 = mallinfo2().uordblks;
  printf("%s, %d cached certificates: heap per entry %.0f B once checked, %.0f B after a "
         "signature check through each (%.0f KB in all)\n",
         keytype == DHT_CERT_P256 ? "P-256" : "Ed25519", N, (double)(h1 - h0) / (N - 1),
         (double)(h2 - h0) / (N - 1), (double)(h2 - h0) / 1024);
  dht_cert_ca_free(ca);
  X509_free(cax);
  EVP_PKEY_free(cakey);
  return 0;
}

int main(int argc, char **argv) {
  int keytype = DHT_CERT_P256, n = 50, plain = 0, do_trim = 1, verbose = 0, cache = 0, opt;
  const char *suites = NULL, *groups = NULL, *sigalgs = NULL, *list12 = NULL;
  while ((opt = getopt(argc, argv, "k:n:s:g:a:c:pmtvC")) != -1) {
    switch (opt) {
    case 'k': keytype = strcmp(optarg, "ed25519") == 0 ? DHT_CERT_ED25519 : DHT_CERT_P256; break;
    case 'n': n = atoi(optarg); break;
    case 's': suites = optarg; break;
    case 'g': groups = optarg; break;
    case 'a': sigalgs = optarg; break;
    case 'c': list12 = optarg; break;
    case 'p': plain = 1; break;
    case 't': do_trim = 0; break;
    case 'm': mem_bios = 1; break;
    case 'v': verbose = 1; break;
    case 'C': cache = 1; break;
    default: return 2;
    }
  }
  if (n < 1 || n > 10000) return 2;
  if (cache) return cache_bench(keytype);
  if (!plain && !CRYPTO_set_mem_functions(c_malloc, c_realloc, c_free)) return 1;
  direct = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "direct");
  if (!direct || !BIO_meth_set_write(direct, d_write) || !BIO_meth_set_read(direct, d_read) ||
      !BIO_meth_set_ctrl(direct, d_ctrl) || !BIO_meth_set_create(direct, d_create))
    return 1;

  X509 *cax;
  EVP_PKEY *cakey;
  dht_cert_ca_t *ca;
  if (new_ca(keytype, &cax, &cakey, &ca)) return 1;
  dht_cert_creds_t *a = node(ca, cakey, 0xa1), *b = node(ca, cakey, 0xb2);
  SSL_CTX *ca_ = ctx_of(ca, a, suites, groups, sigalgs, list12);
  SSL_CTX *cb = ctx_of(ca, b, suites, groups, sigalgs, list12);
  end_t *c = calloc((size_t)n, sizeof(*c)), *s = calloc((size_t)n, sizeof(*s));
  /* One link first: lazy set-up (provider caches, the verified
   * certificates' cache) is not a link's. */
  link_up(&c[0], &s[0], ca_, cb, do_trim);

  malloc_trim(0);
  size_t heap0 = mallinfo2().uordblks;
  size_t c0 = owned(1, NULL), s0 = owned(2, NULL);
  for (int i = 1; i < n; i++) link_up(&c[i], &s[i], ca_, cb, do_trim);
  size_t heap1 = mallinfo2().uordblks;
  int k = n - 1;
  printf("%s, %d links, %s%s%s%s: ", keytype == DHT_CERT_P256 ? "P-256" : "Ed25519", k,
         mem_bios ? "memory BIOs" : "direct BIO", mem_bios && !do_trim ? ", untrimmed" : "", suites ? ", suites " : "", suites ? suites : "");
  printf("%s %s", SSL_get_cipher_name(c[1 % n].ssl), SSL_get_version(c[1 % n].ssl));
  printf("\n  heap in use per link end (mallinfo2%s): %.0f B\n",
         plain ? "" : ", incl. the counter's 48 B per block", (double)(heap1 - heap0) / k / 2);
  if (!plain) {
    size_t cb_, sb_;
    size_t cl = owned(1, &cb_) - c0, sl = owned(2, &sb_) - s0;
    printf("  OpenSSL's bytes per end: client %.0f B, server %.0f B (blocks: %.1f, %.1f)\n",
           (double)cl / k, (double)sl / k, (double)cb_ / n, (double)sb_ / n);
    if (verbose) {
      printf("  client end's sites (per link):\n");
      sites(1, n);
      printf("  server end's sites (per link):\n");
      sites(2, n);
    }
  }
  for (int i = 0; i < n; i++) SSL_free(c[i].ssl), SSL_free(s[i].ssl);
  free(c);
  free(s);
  SSL_CTX_free(ca_);
  SSL_CTX_free(cb);
  dht_cert_creds_free(a);
  dht_cert_creds_free(b);
  dht_cert_ca_free(ca);
  X509_free(cax);
  EVP_PKEY_free(cakey);
  return 0;
}
