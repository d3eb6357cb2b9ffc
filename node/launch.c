/*
 * p2psipd --launcher: a fork server for testbeds that run hundreds of nodes
 * on one machine.
 *
 * Every node process loads and initialises OpenSSL the same way: the
 * load-time relocations of libcrypto and libssl (their .data.rel.ro and
 * .got, ~460 KiB, different in each process because each maps the
 * libraries at its own ASLR address) and the ~0.36 MiB of heap that
 * OpenSSL's initialisation allocates (providers, the DRBG, method tables,
 * error strings).  The launcher does that once, then forks one child per
 * request: the children share those pages copy-on-write, as Apache prefork
 * and Android's zygote share theirs.
 *
 * The children share the launcher's address space layout, so one node's
 * leaked pointer tells where everything is in its siblings: for testbeds on
 * one machine, not for nodes facing the Internet.
 *
 * Protocol on stdin/stdout, one JSON object a line each way:
 *   {"argv":["--overlay","o.test",...],"log":"node7.log","cwd":"/run"}
 *       -> {"pid":N} or {"error":"..."}; the child runs the daemon with
 *          argv (argv[0] implied) as if exec'd, stdout and stderr appended
 *          to log (relative to cwd; default /dev/null), stdin /dev/null,
 *          in a session of its own.
 *   {"cmd":"wait"}
 *       -> {"exited":[{"pid":N,"code":C} or {"pid":N,"signal":S},...],
 *           "dropped":D}: the children reaped since the last wait (at most
 *          LAUNCH_EXITS_MAX kept; D more were reaped but not kept).
 * At EOF on stdin the launcher exits 0 and leaves its children running.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "node/node.h"

#define LAUNCH_LINE_MAX 65536 /* bytes in one request line */
#define LAUNCH_ARGS_MAX 256   /* arguments in one request */
#define LAUNCH_ARG_MAX 4096   /* bytes in one argument or path */
#define LAUNCH_EXITS_MAX 4096 /* exits kept between two waits */

static struct {
  pid_t pid;
  int status;
} exits[LAUNCH_EXITS_MAX];
static size_t n_exits, n_dropped;

/* What every node does before its event loop and that comes out the same
 * in each: run it here once so the pages are shared.  A secured node
 * fetches the TLS 1.3 method tables, SHA-256, and P-256 or Ed25519 keys
 * and signatures; fetched algorithms stay cached in the default library
 * context. */
static void warm_up(void) {
  OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
  unsigned char b[32];
  RAND_bytes(b, sizeof(b)); /* instantiates the providers' DRBGs */
  SSL_CTX_free(SSL_CTX_new(TLS_method()));
  EVP_PKEY *keys[] = {EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"),
                      EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")};
  for (size_t i = 0; i < sizeof(keys) / sizeof(*keys); i++) {
    unsigned char sig[128];
    size_t len = sizeof(sig);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    if (m && keys[i] && EVP_DigestSignInit(m, NULL, i ? NULL : EVP_sha256(), NULL, keys[i]) == 1)
      EVP_DigestSign(m, sig, &len, b, sizeof(b));
    EVP_MD_CTX_free(m);
    EVP_PKEY_free(keys[i]);
  }
}

static void on_sigchld(int sig) { (void)sig; } /* only wakes ppoll */

static void reap(void) {
  int st;
  pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
    if (n_exits == LAUNCH_EXITS_MAX) {
      n_dropped++;
      continue;
    }
    exits[n_exits].pid = pid;
    exits[n_exits++].status = st;
  }
}

/* Write one reply line (and take over resp).  A reader gone is fatal to
 * the launcher only; its children run on. */
static void reply(json_t *resp) {
  char *s = json_dumps(resp, JSON_COMPACT);
  json_decref(resp);
  if (!s) return;
  size_t len = strlen(s), off = 0;
  s[len++] = '\n'; /* json_dumps leaves room: we replace the NUL */
  while (off < len) {
    ssize_t w = write(STDOUT_FILENO, s + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) exit(1);
    off += (size_t)w;
  }
  free(s);
}

__attribute__((format(printf, 1, 2))) static void reply_error(const char *fmt, ...) {
  char msg[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  reply(json_pack("{ss}", "error", msg));
}

static void reply_exits(void) {
  json_t *list = json_array();
  for (size_t i = 0; i < n_exits; i++) {
    int st = exits[i].status;
    json_array_append_new(list, json_pack("{sisi}", "pid", (int)exits[i].pid,
                                          WIFEXITED(st) ? "code" : "signal",
                                          WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st)));
  }
  reply(json_pack("{sosI}", "exited", list, "dropped", (json_int_t)n_dropped));
  n_exits = n_dropped = 0;
}

/* A string field: absent (NULL, 0), a bounded string (0), or -1. */
static int opt_string(json_t *req, const char *key, const char **out) {
  json_t *v = json_object_get(req, key);
  *out = v ? json_string_value(v) : NULL;
  return v && (!*out || !**out || strlen(*out) > LAUNCH_ARG_MAX) ? -1 : 0;
}

/* The child: become the node that argv asks for.  Never returns. */
static void child(int (*node_main)(int, char **), const char *argv0, json_t *args, int logfd,
                  int dirfd) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGCHLD, SIG_DFL);
  setsid(); /* the node outlives the launcher and its terminal's signals */
  int null = open("/dev/null", O_RDONLY);
  if (dirfd >= 0 && fchdir(dirfd)) _exit(127);
  if (null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(logfd, STDOUT_FILENO) < 0 ||
      dup2(logfd, STDERR_FILENO) < 0)
    _exit(127);
  close(null);
  close(logfd);
  if (dirfd >= 0) close(dirfd);
  size_t n = json_array_size(args);
  char **argv = calloc(n + 2, sizeof(*argv));
  if (!argv) _exit(127);
  argv[0] = (char *)argv0;
  for (size_t i = 0; i < n; i++) argv[i + 1] = strdup(json_string_value(json_array_get(args, i)));
  /* OpenSSL 3's DRBGs notice the fork (their fork id, the pid, changed)
   * and reseed from the OS before the next output, so siblings draw
   * different random bytes: test_launch checks that two relays' nonce
   * keys differ. */
  exit(node_main((int)n + 1, argv));
}

/* Check a spawn request, open its log and directory, fork. */
static void spawn(json_t *req, int (*node_main)(int, char **), const char *argv0) {
  json_t *args = json_object_get(req, "argv");
  const char *log, *cwd;
  size_t i;
  json_t *a;
  if (!json_is_array(args) || json_array_size(args) > LAUNCH_ARGS_MAX)
    return reply_error("\"argv\": expected an array of at most %d strings", LAUNCH_ARGS_MAX);
  json_array_foreach(args, i, a) {
    const char *s = json_string_value(a);
    if (!s || strlen(s) > LAUNCH_ARG_MAX)
      return reply_error("\"argv\": argument %zu is not a string of at most %d bytes", i, LAUNCH_ARG_MAX);
  }
  if (opt_string(req, "log", &log) || opt_string(req, "cwd", &cwd))
    return reply_error("\"log\" and \"cwd\": expected file names of at most %d bytes", LAUNCH_ARG_MAX);
  const char *key;
  json_t *v;
  json_object_foreach(req, key, v) {
    if (strcmp(key, "argv") && strcmp(key, "log") && strcmp(key, "cwd"))
      return reply_error("unknown key \"%.100s\"", key);
  }
  int dirfd = cwd ? open(cwd, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
  if (cwd && dirfd < 0) return reply_error("cwd: %s", strerror(errno));
  int logfd = openat(dirfd >= 0 ? dirfd : AT_FDCWD, log ? log : "/dev/null",
                     O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (logfd < 0) {
    if (dirfd >= 0) close(dirfd);
    return reply_error("log: %s", strerror(errno));
  }
  pid_t pid = fork();
  if (pid == 0) child(node_main, argv0, args, logfd, dirfd);
  close(logfd);
  if (dirfd >= 0) close(dirfd);
  if (pid < 0) return reply_error("fork: %s", strerror(errno));
  reply(json_pack("{si}", "pid", (int)pid));
}

static void handle_line(const char *line, size_t len, int (*node_main)(int, char **),
                        const char *argv0) {
  json_error_t je;
  json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
  if (!json_is_object(req)) {
    reply_error("expected a JSON object: %s", req ? "not an object" : je.text);
  } else if (json_object_get(req, "cmd")) {
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    if (cmd && strcmp(cmd, "wait") == 0 && json_object_size(req) == 1) {
      reap(); /* a child seen dead (a zombie) before this request is in the answer */
      reply_exits();
    }
    else reply_error("unknown command (there is {\"cmd\":\"wait\"})");
  } else {
    spawn(req, node_main, argv0);
  }
  json_decref(req);
}

/* Read lines from stdin until EOF, reaping children between reads. */
static void serve(int (*node_main)(int, char **), const char *argv0) {
  static char buf[LAUNCH_LINE_MAX];
  size_t have = 0;
  bool skipping = false; /* the rest of an overlong line */
  sigset_t chld, waiting;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, &waiting);
  sigdelset(&waiting, SIGCHLD);
  struct sigaction sa = {.sa_handler = on_sigchld};
  sigaction(SIGCHLD, &sa, NULL);
  for (;;) {
    reap();
    struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
    /* SIGCHLD is let in only while we sleep here: no exit is missed
     * between the reap above and the wait. */
    if (ppoll(&p, 1, NULL, &waiting) < 0) continue;
    ssize_t r = read(STDIN_FILENO, buf + have, sizeof(buf) - have);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      if (have && !skipping) handle_line(buf, have, node_main, argv0);
      return;
    }
    have += (size_t)r;
    char *nl;
    while ((nl = memchr(buf, '\n', have))) {
      size_t len = (size_t)(nl - buf);
      if (!skipping && len) handle_line(buf, len, node_main, argv0);
      skipping = false;
      memmove(buf, nl + 1, have - len - 1);
      have -= len + 1;
    }
    if (have == sizeof(buf)) {
      if (!skipping) reply_error("request line longer than %d bytes", LAUNCH_LINE_MAX);
      skipping = true;
      have = 0;
    }
  }
}

/* glibc's per-thread cache keeps up to 7 freed blocks of each of 64 sizes
 * (up to 1 KiB) for reuse, out of reach of malloc_trim and scattered among
 * live blocks: without it a secured node at N = 500 holds ~0.11 MiB less
 * (docs/BENCHMARKS.md, branch pss2).  glibc reads the setting only when a
 * process starts and has no mallopt() for it, so the launcher starts
 * itself again with the tunable set; its children inherit the allocator
 * as it is.  An operator's own tcache_count is left alone. */
static void exec_without_tcache(const char *argv0) {
  const char *was = getenv("GLIBC_TUNABLES");
  /* A set-user-id start drops tunables: exec'ing again would never end. */
  if (getauxval(AT_SECURE) || (was && strstr(was, "glibc.malloc.tcache_count="))) return;
  char *t = NULL;
  if (asprintf(&t, "%s%sglibc.malloc.tcache_count=0", was ? was : "", was ? ":" : "") < 0) return;
  char *saved = was ? strdup(was) : NULL;
  if (was && !saved) {
    free(t);
    return;
  }
  setenv("GLIBC_TUNABLES", t, 1);
  free(t);
  /* The binary by its own name, not /proc/self/exe: the process name
   * (ps, top, pkill) comes from the file name exec'd. */
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = 0;
    char *argv[] = {(char *)argv0, "--launcher", NULL};
    execv(self, argv);
  }
  /* No exec (no /proc, or the binary was replaced): run on as we are. */
  if (saved) setenv("GLIBC_TUNABLES", saved, 1);
  else unsetenv("GLIBC_TUNABLES");
  free(saved);
}

int node_launch_run(const char *argv0, int (*node_main)(int argc, char **argv)) {
  exec_without_tcache(argv0);
  signal(SIGPIPE, SIG_IGN);
  warm_up();
  serve(node_main, argv0);
  return 0;
}
