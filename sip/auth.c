/*
 * Digest authentication of this node's phones (RFC 3261 section 22 with
 * RFC 7616 / RFC 8760: MD5 for older phones, SHA-256).
 *
 * Credentials come from --users DIR, the directory `p2psip-ca user` fills:
 * DIR/USER.digest holds "USER:REALM:ALGORITHM:HA1" lines (node/ca.c), the
 * realm being the overlay; in the secured mode DIR/USER.crt and USER.key
 * are the user's certificate and key, with which the home node signs the
 * user's records.  A user is read when first needed and kept; its digest
 * file is looked at again (stat) at most every SIP_USERS_RECHECK_MS, so
 * users added, changed or removed take effect without a restart.  A file
 * that others than the daemon's user may read is refused (logged once).
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
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
#define MAX_DIGEST_FILE 4096

typedef struct sip_user sip_user_t;
struct sip_user {
  sip_user_t *next;                 /* hash chain */
  char name[DHT_CERT_MAX_USER + 1];
  char ha1_md5[33], ha1_sha256[65]; /* "" when the file has none */
  dht_cert_creds_t *creds;          /* secured mode, once loaded; kept until sip_free */
  uint64_t checked;                 /* uv_now() of the last look at the file */
  struct stat st;                   /* the file as last read */
  int gone;                         /* the file went away (kept for creds) */
};

struct sip_authdb {
  char *dir;
  const char *algs[2]; /* offered, in order of preference (RFC 8760 2.4) */
  int n_algs;
  dht_cert_ca_t *ca; /* NULL: the open mode, no user certificates */
  uint8_t key[NONCE_KEY_LEN];
  struct {
    uint64_t t;
    char hex[NONCE_HEX + 1]; /* "" while empty */
  } nonces[NONCE_CACHE];     /* by t / NONCE_STEP_MS */
  sip_user_t **tab;
  size_t nb, n;
};

/* The names p2psip-ca issues (letters, digits, "-._+", not starting with
 * a dot): safe as file names, so nothing else ever reaches the disk. */
static int user_name_ok(const char *u)
{
  size_t n = u ? strlen(u) : 0;
  if (n == 0 || n > DHT_CERT_MAX_USER || u[0] == '.')
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)u[i]) && !strchr("-._+", u[i]))
      return 0;
  return 1;
}

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

int sip__auth_new(sip_svc_t *s, const char *dir, const char *algs, dht_cert_ca_t *ca)
{
  struct stat st;
  if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
    log_warn("--users %s: not a directory", dir);
    return -ENOTDIR;
  }
  sip_authdb_t *a = calloc(1, sizeof *a);
  if (a && parse_algs(a, algs) < 0) {
    log_warn("--sip-digest %s: expected SHA-256, MD5 or both, comma-separated", algs);
    free(a);
    return -EINVAL;
  }
  if (!a || !(a->dir = strdup(dir)) || RAND_bytes(a->key, sizeof a->key) != 1) {
    if (a)
      free(a->dir);
    free(a);
    return -ENOMEM;
  }
  a->ca = ca;
  s->auth = a;
  return 0;
}

void sip__auth_free(sip_svc_t *s)
{
  sip_authdb_t *a = s->auth;
  if (!a)
    return;
  for (size_t i = 0; i < a->nb; i++)
    while (a->tab[i]) {
      sip_user_t *u = a->tab[i];
      a->tab[i] = u->next;
      dht_cert_creds_free(u->creds);
      free(u);
    }
  free(a->tab);
  OPENSSL_cleanse(a->key, sizeof a->key);
  free(a->dir);
  free(a);
  s->auth = NULL;
}

/* ---- the users' files ---------------------------------------------------- */

static sip_user_t **user_slot(sip_authdb_t *a, const char *name)
{
  return &a->tab[sip__fnv(SIP_FNV_INIT, name, 0) & (a->nb - 1)];
}

static void users_grow(sip_authdb_t *a)
{
  size_t nb = a->nb ? a->nb * 2 : 256;
  sip_user_t **tab = calloc(nb, sizeof *tab);
  if (!tab)
    return; /* longer chains are slower, not wrong */
  sip_user_t **old = a->tab;
  size_t onb = a->nb;
  a->tab = tab, a->nb = nb;
  for (size_t i = 0; i < onb; i++)
    while (old[i]) {
      sip_user_t *u = old[i];
      old[i] = u->next;
      sip_user_t **slot = user_slot(a, u->name);
      u->next = *slot, *slot = u;
    }
  free(old);
}

/* Reads DIR/NAME.digest into u; 0, or -errno (-ENOENT: no such user). */
static int read_digest(sip_svc_t *s, sip_user_t *u, const char *name)
{
  char path[4200], buf[MAX_DIGEST_FILE + 1];
  snprintf(path, sizeof path, "%s/%s.digest", s->auth->dir, name);
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  struct stat st;
  ssize_t len = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? read(fd, buf, MAX_DIGEST_FILE) : -1;
  close(fd);
  if (len < 0)
    return -EINVAL;
  if (st.st_mode & 077) {
    if (u->st.st_ino != st.st_ino || u->st.st_mtime != st.st_mtime)
      log_warn("%s: readable by others than the daemon's user (chmod 600); refused", path);
    u->st = st;
    return -EPERM;
  }
  buf[len] = '\0';
  u->ha1_md5[0] = u->ha1_sha256[0] = '\0';
  char *save = NULL;
  for (char *line = strtok_r(buf, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save)) {
    char user[80], realm[260], alg[16], ha1[80];
    if (line[0] == '#' || sscanf(line, "%79[^:]:%259[^:]:%15[^:]:%79s", user, realm, alg, ha1) != 4 ||
        strcmp(user, name) != 0 || strcasecmp(realm, s->overlay) != 0)
      continue;
    size_t hl = strlen(ha1);
    if (strcmp(alg, "MD5") == 0 && hl == 32 && strspn(ha1, "0123456789abcdef") == hl)
      memcpy(u->ha1_md5, ha1, 33);
    else if (strcmp(alg, "SHA-256") == 0 && hl == 64 && strspn(ha1, "0123456789abcdef") == hl)
      memcpy(u->ha1_sha256, ha1, 65);
  }
  u->st = st;
  return u->ha1_md5[0] || u->ha1_sha256[0] ? 0 : -ENOENT;
}

/* A user whose file went away.  One whose certificate signed values is
 * kept, marked gone: the DHT may re-store those values yet. */
static void user_drop(sip_authdb_t *a, sip_user_t *u)
{
  u->ha1_md5[0] = u->ha1_sha256[0] = '\0';
  if (u->creds) {
    u->gone = 1;
    return;
  }
  for (sip_user_t **pp = user_slot(a, u->name); *pp; pp = &(*pp)->next)
    if (*pp == u) {
      *pp = u->next;
      a->n--;
      break;
    }
  free(u);
}

/* The user's entry, its file read or looked at again if it is older than
 * SIP_USERS_RECHECK_MS; NULL when there is no such user here. */
static sip_user_t *user_get(sip_svc_t *s, const char *name)
{
  sip_authdb_t *a = s->auth;
  if (!a || !user_name_ok(name))
    return NULL;
  uint64_t now = sip__now_ms(s);
  sip_user_t *u = NULL;
  if (a->nb)
    for (u = *user_slot(a, name); u && strcmp(u->name, name) != 0; u = u->next)
      ;
  if (u && now - u->checked < SIP_USERS_RECHECK_MS)
    return u->gone ? NULL : u;
  if (u) {
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s.digest", a->dir, name);
    u->checked = now;
    if (stat(path, &st) == 0 && st.st_ino == u->st.st_ino && st.st_mtime == u->st.st_mtime &&
        st.st_size == u->st.st_size && st.st_mode == u->st.st_mode && !u->gone)
      return u;
    if (read_digest(s, u, name) == 0) {
      u->gone = 0;
      return u;
    }
    user_drop(a, u);
    return NULL;
  }
  sip_user_t tmp = {0};
  if (read_digest(s, &tmp, name) < 0)
    return NULL; /* not cached: a stranger's made-up names cost one open() each */
  if (a->n >= a->nb)
    users_grow(a);
  if (!a->nb || !(u = malloc(sizeof *u)))
    return NULL;
  *u = tmp;
  snprintf(u->name, sizeof u->name, "%s", name);
  u->checked = now;
  sip_user_t **slot = user_slot(a, name);
  u->next = *slot, *slot = u;
  a->n++;
  return u;
}

int sip__auth_has_user(sip_svc_t *s, const char *user)
{
  return user_get(s, user) != NULL;
}

const dht_cert_creds_t *sip__auth_creds(sip_svc_t *s, const char *user)
{
  sip_user_t *u = user_get(s, user);
  sip_authdb_t *a = s->auth;
  if (!u || !a->ca)
    return NULL;
  if (u->creds)
    return u->creds;
  char crt[4200], key[4200], err[256];
  snprintf(crt, sizeof crt, "%s/%s.crt", a->dir, user);
  snprintf(key, sizeof key, "%s/%s.key", a->dir, user);
  dht_cert_creds_t *c;
  if (dht_cert_creds_load(a->ca, crt, key, &c, err, sizeof err) < 0) {
    log_warn("user %s: %s", user, err);
    return NULL;
  }
  const dht_cert_info_t *i = dht_cert_info(dht_cert_creds_cert(c));
  if (i->kind != DHT_CERT_USER || strcmp(i->user, user) != 0) {
    log_warn("user %s: %s is not sip:%s@%s's certificate", user, crt, user, s->overlay);
    dht_cert_creds_free(c);
    return NULL;
  }
  u->creds = c;
  return c;
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
  su_home_t home[1];
  su_home_init(home);
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
  sip_user_t *u = ar->ar_username && offered(s->auth, alg) ? user_get(s, ar->ar_username) : NULL;
  const char *ha1 = !u                               ? NULL
                    : strcasecmp(alg, "MD5") == 0     ? u->ha1_md5
                    : strcasecmp(alg, "SHA-256") == 0 ? u->ha1_sha256
                                                      : NULL;
  if (!ha1 || !ha1[0] || !ar->ar_response || !ar->ar_nonce)
    return SIP_AUTH_BAD;
  int fresh = nonce_check(s, ar->ar_nonce);
  if (fresh == -EINVAL || !uri_matches(ar->ar_uri, sip->sip_request->rq_url))
    return SIP_AUTH_BAD;
  const char *qop = ar->ar_qop;
  if (qop && (strcasecmp(qop, "auth") != 0 || !ar->ar_nc || !ar->ar_cnonce))
    return SIP_AUTH_BAD;
  char want[EVP_MAX_MD_SIZE * 2 + 1];
  if (sip__digest(alg, ha1, ar->ar_nonce, ar->ar_nc, ar->ar_cnonce, qop,
                  sip->sip_request->rq_method_name, ar->ar_uri, want, sizeof want) < 0 ||
      strlen(ar->ar_response) != strlen(want) ||
      CRYPTO_memcmp(want, ar->ar_response, strlen(want)) != 0)
    return SIP_AUTH_BAD;
  if (fresh == -ESTALE)
    return SIP_AUTH_STALE; /* right password, old nonce: challenge again */
  snprintf(user, DHT_CERT_MAX_USER + 1, "%s", u->name);
  return SIP_AUTH_OK;
}

int sip__auth_check(sip_svc_t *s, const sip_t *sip, int proxy, char user[DHT_CERT_MAX_USER + 1])
{
  const msg_auth_t *au = proxy ? sip->sip_proxy_authorization : sip->sip_authorization;
  int n = 0, result = SIP_AUTH_NONE;
  for (; au && n < 8 && result == SIP_AUTH_NONE; au = au->au_next, n++) {
    if (!au->au_scheme || !su_casematch(au->au_scheme, "Digest"))
      continue;
    su_home_t home[1];
    su_home_init(home);
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
