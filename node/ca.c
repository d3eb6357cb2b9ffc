/*
 * p2psip-ca: the overlay's certificate authority (see dht/cert.h for what
 * the certificates say, and README.md "Security").
 *
 *   init CADIR --overlay FQDN   CADIR/ca.crt and CADIR/ca.key (0600)
 *   node CADIR OUT              OUT.crt, OUT.key (0600); prints the node id
 *   user CADIR USER --users DIR DIR/USER.crt, USER.key, USER.digest (0600)
 *   show FILE.crt               what a certificate certifies
 *
 * Node ids are 160 random bits drawn here (RAND_bytes), never chosen by the
 * node: see dht/cert.h.  Nothing is ever overwritten: every file is created
 * with O_EXCL, and a command that finds one of its files already there
 * writes none.  Errors are one line on stderr; exit 1, or 2 for bad usage.
 *
 * USER.digest holds the user's digest credentials for the SIP role, one
 * line per algorithm, in the manner of Apache's htdigest with the algorithm
 * added:
 *
 *   USER:REALM:ALGORITHM:HA1
 *
 * REALM is the overlay, ALGORITHM is "MD5" or "SHA-256" (the names of
 * RFC 8760's algorithm parameter) and HA1 is the lowercase hex digest of
 * "USER:REALM:PASSWORD" with that algorithm (RFC 7616 section 3.4.2).
 * The password itself is not stored.  A reader skips algorithms it does
 * not know and lines starting with '#'.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dht/cert.h"

#define DAY (24 * 3600)
#define SKEW 600 /* certificates start this early: clocks differ */
#define MAX_PASSWORD 256

typedef struct {
  const char *pos[2];
  int npos;
  const char *overlay, *users, *password, *key, *ca, *days, *node_id;
} args_t;

static void usage(FILE *f) {
  fprintf(f,
          "usage: p2psip-ca COMMAND ARGS\n\n"
          "  init CADIR --overlay FQDN [--key ed25519|p256] [--days N]\n"
          "      make the overlay's CA: CADIR/ca.crt and CADIR/ca.key (mode 0600);\n"
          "      --key is the key type of the CA and of everything it issues\n"
          "      (default p256: OpenSSL verifies it faster), --days its validity\n"
          "      (default 3650)\n"
          "  node CADIR OUT [--overlay FQDN] [--days N] [--node-id HEX40]\n"
          "      a node key and certificate, OUT.crt and OUT.key (0600), with a\n"
          "      node id the CA draws at random; prints the node id.  --node-id:\n"
          "      the CA's operator places the node (testbeds whose ring shape\n"
          "      matters); a node never chooses its own id\n"
          "  user CADIR USER --users DIR [--password PW|-] [--overlay FQDN] [--days N]\n"
          "      a certificate for sip:USER@OVERLAY and its digest credentials for\n"
          "      the user's home node: DIR/USER.crt, USER.key, USER.digest (0600);\n"
          "      --password - reads it from stdin; without --password one is\n"
          "      generated and printed once\n"
          "  show FILE.crt [--ca CA.crt]\n"
          "      what a certificate certifies; with --ca, whether that CA issued it\n\n"
          "--overlay on node and user: refuse unless the CA is for that overlay.\n"
          "Leaf certificates last --days (default 365) and never beyond the CA.\n"
          "Existing files are never overwritten.  Exit 0 ok, 1 error, 2 bad usage.\n");
}

__attribute__((format(printf, 2, 3), noreturn)) static void die(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("p2psip-ca: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(code);
}

/* Files --------------------------------------------------------------------- */

typedef struct {
  char path[4096];
  mode_t mode;
  X509 *cert;      /* one of these three */
  EVP_PKEY *key;
  const char *text;
} out_file_t;

static int write_one(const out_file_t *f) {
  int fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, f->mode);
  if (fd < 0) return -1;
  FILE *fp = fdopen(fd, "w");
  if (!fp) {
    close(fd);
    return -1;
  }
  int ok = f->cert ? PEM_write_X509(fp, f->cert)
           : f->key ? PEM_write_PrivateKey(fp, f->key, NULL, NULL, 0, NULL, NULL)
                    : fputs(f->text, fp) >= 0;
  return fclose(fp) == 0 && ok ? 0 : -1;
}

/* All the files or none: none may exist before, and if one cannot be
 * written the ones written before it are removed. */
static void write_all(out_file_t *f, int n) {
  struct stat st;
  for (int i = 0; i < n; i++)
    if (lstat(f[i].path, &st) == 0) die(1, "%s exists; not overwriting it", f[i].path);
  for (int i = 0; i < n; i++) {
    if (write_one(&f[i]) == 0) continue;
    int e = errno;
    for (int j = 0; j <= i; j++)
      if (j < i || e != EEXIST) unlink(f[j].path);
    die(1, "%s: %s", f[i].path, strerror(e));
  }
}

static void make_dir(const char *dir) {
  struct stat st;
  if (mkdir(dir, 0700) == 0) return;
  if (errno != EEXIST) die(1, "%s: %s", dir, strerror(errno));
  if (stat(dir, &st) || !S_ISDIR(st.st_mode)) die(1, "%s is not a directory", dir);
}

static void join(char *out, size_t len, const char *dir, const char *name, const char *ext) {
  if ((size_t)snprintf(out, len, "%s%s%s%s", dir, dir[0] ? "/" : "", name, ext) >= len)
    die(1, "path too long: %s/%s%s", dir, name, ext);
}

/* The CA in cadir, its key, and the overlay the caller insists on. */
static dht_cert_ca_t *load_ca(const char *cadir, const char *overlay, EVP_PKEY **key) {
  char crt[4096], keypath[4096], err[512];
  struct stat st;
  if (stat(cadir, &st) || !S_ISDIR(st.st_mode)) die(1, "%s: no such CA directory", cadir);
  join(crt, sizeof(crt), cadir, "ca", ".crt");
  join(keypath, sizeof(keypath), cadir, "ca", ".key");
  dht_cert_ca_t *ca;
  if (dht_cert_ca_load(crt, overlay, &ca, err, sizeof(err))) die(1, "%s", err);
  if (!(*key = dht_cert_load_key(keypath, err, sizeof(err)))) die(1, "%s", err);
  if (X509_check_private_key(dht_cert_ca_x509(ca), *key) != 1)
    die(1, "%s is not the key of %s", keypath, crt);
  return ca;
}

/* Validity: from a little before now, for days, and never past the CA. */
static void validity(dht_cert_info_t *w, const dht_cert_ca_t *ca, const char *days, int deflt) {
  char *end;
  long d = days ? strtol(days, &end, 10) : deflt;
  if (days && (*end || d < 1 || d > 36500)) die(2, "--days: a number of days, 1..36500");
  int64_t now = time(NULL);
  w->not_before = now - SKEW;
  w->not_after = now + d * DAY;
  if (ca && w->not_after > dht_cert_ca_info(ca)->not_after)
    w->not_after = dht_cert_ca_info(ca)->not_after;
}

/* Commands ----------------------------------------------------------------- */

static int cmd_init(const args_t *a) {
  if (!a->overlay) die(2, "init needs --overlay FQDN");
  int keytype = a->key && strcmp(a->key, "ed25519") == 0 ? DHT_CERT_ED25519
                : !a->key || strcmp(a->key, "p256") == 0   ? DHT_CERT_P256
                                                           : 0;
  if (!keytype) die(2, "--key: ed25519 or p256");
  char overlay[DHT_CERT_MAX_OVERLAY + 2], err[512];
  snprintf(overlay, sizeof(overlay), "%s", a->overlay);
  for (char *p = overlay; *p; p++) *p = (char)tolower((unsigned char)*p);
  dht_cert_info_t w;
  validity(&w, NULL, a->days, 3650);
  X509 *x;
  EVP_PKEY *k;
  if (dht_cert_ca_create(overlay, keytype, w.not_before, w.not_after, &x, &k, err, sizeof(err)))
    die(1, "%s", err);
  make_dir(a->pos[0]);
  out_file_t f[2] = {{.mode = 0600, .key = k}, {.mode = 0644, .cert = x}};
  join(f[0].path, sizeof(f[0].path), a->pos[0], "ca", ".key");
  join(f[1].path, sizeof(f[1].path), a->pos[0], "ca", ".crt");
  write_all(f, 2);
  printf("CA for overlay %s: %s\n", overlay, f[1].path);
  X509_free(x);
  EVP_PKEY_free(k);
  return 0;
}

/* Issue what (a node or a user) and write DIR/NAME.crt, .key and, if
 * extra is given, .digest.  DIR "" means none; else it is made if missing. */
static void issue(const dht_cert_ca_t *ca, EVP_PKEY *ca_key, dht_cert_info_t *what,
                  const char *dir, const char *name, const char *extra) {
  char err[512];
  X509 *x;
  EVP_PKEY *k;
  snprintf(what->overlay, sizeof(what->overlay), "%s", dht_cert_ca_info(ca)->overlay);
  if (dht_cert_issue(ca, ca_key, what, &x, &k, err, sizeof(err))) die(1, "%s", err);
  if (dir[0]) make_dir(dir);
  out_file_t f[3] = {{.mode = 0600, .key = k}, {.mode = 0644, .cert = x},
                     {.mode = 0600, .text = extra}};
  join(f[0].path, sizeof(f[0].path), dir, name, ".key");
  join(f[1].path, sizeof(f[1].path), dir, name, ".crt");
  join(f[2].path, sizeof(f[2].path), dir, name, ".digest");
  write_all(f, extra ? 3 : 2);
  X509_free(x);
  EVP_PKEY_free(k);
}

static int cmd_node(const args_t *a) {
  EVP_PKEY *ca_key;
  dht_cert_ca_t *ca = load_ca(a->pos[0], a->overlay, &ca_key);
  dht_cert_info_t w = {.kind = DHT_CERT_NODE};
  validity(&w, ca, a->days, 365);
  if (a->node_id) {
    if (dht_id_parse(a->node_id, &w.node)) die(2, "--node-id: 40 hex digits");
  } else if (RAND_bytes(w.node.b, DHT_ID_LEN) != 1) {
    die(1, "no random bytes");
  }
  issue(ca, ca_key, &w, "", a->pos[1], NULL);
  char hex[DHT_ID_HEX];
  dht_id_hex(&w.node, hex);
  printf("%s\n", hex);
  dht_cert_ca_free(ca);
  EVP_PKEY_free(ca_key);
  return 0;
}

/* 120 random bits as 20 characters of base64url. */
static void random_password(char out[21]) {
  uint8_t r[15];
  char b64[21];
  if (RAND_bytes(r, sizeof(r)) != 1) die(1, "no random bytes");
  EVP_EncodeBlock((uint8_t *)b64, r, sizeof(r));
  for (int i = 0; i < 20; i++) out[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
  out[20] = '\0';
}

static void ha1_hex(const EVP_MD *md, const char *user, const char *realm, const char *pw,
                    char *out) {
  char in[DHT_CERT_MAX_USER + DHT_CERT_MAX_OVERLAY + MAX_PASSWORD + 4];
  uint8_t h[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  int len = snprintf(in, sizeof(in), "%s:%s:%s", user, realm, pw);
  if (!EVP_Digest(in, (size_t)len, h, &n, md, NULL)) die(1, "digest failed");
  for (unsigned i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", h[i]);
  OPENSSL_cleanse(in, sizeof(in));
}

static void read_password(char out[MAX_PASSWORD + 2]) {
  if (!fgets(out, MAX_PASSWORD + 2, stdin)) die(1, "--password -: nothing on stdin");
  out[strcspn(out, "\r\n")] = '\0';
}

static int cmd_user(const args_t *a) {
  if (!a->users) die(2, "user needs --users DIR");
  char pw[MAX_PASSWORD + 2], text[1024], md5[33], sha256[65];
  EVP_PKEY *ca_key;
  dht_cert_ca_t *ca = load_ca(a->pos[0], a->overlay, &ca_key);
  const char *realm = dht_cert_ca_info(ca)->overlay;
  if (!a->password) random_password(pw);
  else if (strcmp(a->password, "-") == 0) read_password(pw);
  else snprintf(pw, sizeof(pw), "%s", a->password);
  if (!pw[0] || strlen(pw) > MAX_PASSWORD) die(1, "the password must be 1..%d bytes", MAX_PASSWORD);
  for (const char *p = pw; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) die(1, "the password has a control character");
  dht_cert_info_t w = {.kind = DHT_CERT_USER};
  snprintf(w.user, sizeof(w.user), "%s", a->pos[1]);
  if (strlen(a->pos[1]) >= sizeof(w.user)) die(1, "user name longer than %d", DHT_CERT_MAX_USER);
  validity(&w, ca, a->days, 365);
  ha1_hex(EVP_md5(), w.user, realm, pw, md5);
  ha1_hex(EVP_sha256(), w.user, realm, pw, sha256);
  snprintf(text, sizeof(text), "%s:%s:MD5:%s\n%s:%s:SHA-256:%s\n", w.user, realm, md5, w.user,
           realm, sha256);
  issue(ca, ca_key, &w, a->users, w.user, text);
  printf("sip:%s@%s\n", w.user, realm);
  if (!a->password) printf("password: %s\n", pw);
  OPENSSL_cleanse(pw, sizeof(pw));
  dht_cert_ca_free(ca);
  EVP_PKEY_free(ca_key);
  return 0;
}

static void print_time(const char *label, int64_t t) {
  char buf[32];
  time_t tt = (time_t)t;
  struct tm tm;
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&tt, &tm));
  printf("%s: %s\n", label, buf);
}

/* Whether the CA in ca_path issued x and x is valid now. */
static void verify_with(const char *ca_path, X509 *x, const char *name) {
  char err[512];
  dht_cert_ca_t *ca;
  const dht_cert_t *c;
  uint8_t *der = NULL;
  int n = i2d_X509(x, &der);
  if (dht_cert_ca_load(ca_path, NULL, &ca, err, sizeof(err))) die(1, "%s", err);
  if (n <= 0 || dht_cert_check(ca, der, (size_t)n, &c, err, sizeof(err))) die(1, "%s: %s", name, err);
  OPENSSL_free(der);
  dht_cert_ca_free(ca);
}

static int cmd_show(const args_t *a) {
  char err[512], hex[DHT_ID_HEX];
  X509 *x = dht_cert_load_x509(a->pos[0], err, sizeof(err));
  dht_cert_info_t i;
  if (!x) die(1, "%s", err);
  if (dht_cert_describe(x, &i, err, sizeof(err))) die(1, "%s: %s", a->pos[0], err);
  if (a->ca) verify_with(a->ca, x, a->pos[0]);
  static const char *const kinds[] = {"", "CA", "node", "user"};
  printf("kind: %s\n", kinds[i.kind]);
  if (i.kind == DHT_CERT_NODE) dht_id_hex(&i.node, hex), printf("node-id: %s\n", hex);
  if (i.kind == DHT_CERT_USER) printf("user: sip:%s@%s\n", i.user, i.overlay);
  printf("overlay: %s\nkey: %s\n", i.overlay, i.keytype == DHT_CERT_P256 ? "P-256" : "Ed25519");
  print_time("not-before", i.not_before);
  print_time("not-after", i.not_after);
  printf("sha256: ");
  for (int k = 0; k < DHT_CERT_FP_LEN; k++) printf("%02x", i.fp[k]);
  printf("\n");
  if (a->ca) printf("issued-by: %s (verified now)\n", a->ca);
  X509_free(x);
  return 0;
}

/* Command line ------------------------------------------------------------------ */

typedef struct {
  const char *name;
  int npos;
  const char *options; /* the ones it takes, space-separated */
  int (*run)(const args_t *a);
} command_t;

static const command_t commands[] = {
    {"init", 1, " --overlay --key --days ", cmd_init},
    {"node", 2, " --overlay --days --node-id ", cmd_node},
    {"user", 2, " --overlay --days --users --password ", cmd_user},
    {"show", 1, " --ca ", cmd_show},
};

static const char **option_slot(args_t *a, const char *name) {
  static const char *const names[] = {"--overlay", "--users", "--password", "--key", "--ca",
                                      "--days", "--node-id"};
  const char **slots[] = {&a->overlay, &a->users, &a->password, &a->key, &a->ca, &a->days,
                          &a->node_id};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (strcmp(name, names[i]) == 0) return slots[i];
  return NULL;
}

int main(int argc, char **argv) {
  if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    usage(stdout);
    return 0;
  }
  if (argc < 2) die(2, "no command (see --help)");
  const command_t *cmd = NULL;
  for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
    if (strcmp(argv[1], commands[i].name) == 0) cmd = &commands[i];
  if (!cmd) die(2, "unknown command %s (see --help)", argv[1]);
  args_t a = {0};
  for (int i = 2; i < argc; i++) {
    char word[32];
    snprintf(word, sizeof(word), " %s ", argv[i]);
    if (strncmp(argv[i], "--", 2) != 0) {
      if (a.npos == cmd->npos) die(2, "%s: unexpected argument %s", cmd->name, argv[i]);
      a.pos[a.npos++] = argv[i];
    } else if (strcmp(argv[i], "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (!strstr(cmd->options, word) || strlen(argv[i]) > 20) {
      die(2, "%s does not take %s (see --help)", cmd->name, argv[i]);
    } else if (i + 1 == argc) {
      die(2, "%s needs a value", argv[i]);
    } else {
      *option_slot(&a, argv[i]) = argv[i + 1];
      i++;
    }
  }
  if (a.npos < cmd->npos) die(2, "%s: missing arguments (see --help)", cmd->name);
  return cmd->run(&a);
}
