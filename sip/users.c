/*
 * The phones' credentials: --users DIR, the directory `p2psip-ca user`
 * fills (node/ca.c).  DIR/USER.digest holds "USER:REALM:ALGORITHM:HA1"
 * lines, the realm being the overlay; in the secured mode DIR/USER.crt and
 * USER.key are the user's certificate and key, with which the home node
 * signs the user's records.  A digest file that others than the daemon's
 * user may read is refused (logged once).
 *
 * Every digest file is read once, a chunk per loop turn after the start
 * (the node serves meanwhile; past SIP_USERS_MAX users the others are
 * read when first seen), and kept; inotify names the files that
 * change later, and those are read again.  A REGISTER then costs no
 * system call for its user (an open, a read and a close were 9% of a busy
 * registrar's time), a made-up user name costs none either, and a
 * password changed or a user removed takes effect at once.
 *
 * Without the watch (inotify unavailable, or the directory moved) a kept
 * user's file is looked at again (stat) at most every
 * SIP_USERS_RECHECK_MS, and a name not kept costs an open().  The same
 * holds from an overflow of inotify's queue (events lost) until the
 * directory has been read again.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "sip/sip_int.h"

#define MAX_DIGEST_FILE 4096
#define SCAN_CHUNK 256 /* directory entries read per loop turn */
#define SUFFIX ".digest"

typedef struct sip_user sip_user_t;
struct sip_user {
  sip_user_t *next;        /* hash chain */
  dht_cert_creds_t *creds; /* secured mode, once loaded; kept until sip_free */
  uint64_t checked;        /* uv_now() of the last look at the file */
  /* The file as last read: a look without the watch compares these. */
  ino_t ino;
  off_t size;
  struct timespec mtime;
  mode_t mode;
  sip_ha1_t ha1;
  uint8_t stale; /* inotify said the file changed: read it again */
  uint8_t gone;  /* the file went away (kept for creds) */
  char name[]; /* at most DHT_CERT_MAX_USER */
};

struct sip_users {
  sip_svc_t *svc;
  char *dir;
  dht_cert_ca_t *ca; /* NULL: the open mode, no user certificates */
  sip_user_t **tab;
  size_t nb, n;
  uint64_t reads;   /* digest files read */
  uint64_t changes; /* inotify events for them */
  int fd;         /* inotify, or -1 */
  uv_poll_t poll;
  DIR *scan;      /* the directory being read in the background, or NULL */
  uv_idle_t idle; /* drives scan */
  uint64_t scan_start;
  int complete;   /* every user is kept and the watch is live: a miss is no user */
  int lost;       /* events were lost while scan ran: its end is not complete */
  int handles;    /* open: a is freed when the last closes after sip__users_free() */
  int freeing;
};

/* The names p2psip-ca issues (letters, digits, "-._+", not starting with
 * a dot): safe as file names, so nothing else ever reaches the disk. */
static int user_name_ok(const char *u, size_t n)
{
  if (n == 0 || n > DHT_CERT_MAX_USER || u[0] == '.')
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)u[i]) && !strchr("-._+", u[i]))
      return 0;
  return 1;
}

/* ---- the table ------------------------------------------------------------ */

static sip_user_t **user_slot(sip_users_t *a, const char *name)
{
  return &a->tab[sip__fnv(SIP_FNV_INIT, name, 0) & (a->nb - 1)];
}

static sip_user_t *user_find(sip_users_t *a, const char *name)
{
  sip_user_t *u = NULL;
  if (a->nb)
    for (u = *user_slot(a, name); u && strcmp(u->name, name) != 0; u = u->next)
      ;
  return u;
}

static void users_grow(sip_users_t *a)
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

static sip_user_t *user_add(sip_users_t *a, const sip_user_t *tmp, const char *name)
{
  size_t len = strlen(name);
  sip_user_t *u;
  if (a->n >= a->nb)
    users_grow(a);
  if (!a->nb || !(u = malloc(sizeof *u + len + 1)))
    return NULL;
  *u = *tmp;
  memcpy(u->name, name, len + 1);
  sip_user_t **slot = user_slot(a, name);
  u->next = *slot, *slot = u;
  a->n++;
  return u;
}

/* A user whose file went away.  One whose certificate signed values is
 * kept, marked gone: the DHT may re-store those values yet. */
static void user_drop(sip_users_t *a, sip_user_t *u)
{
  memset(&u->ha1, 0, sizeof u->ha1);
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

/* ---- a user's file ---------------------------------------------------------- */

/* n bytes from 2n hex digits (checked by the caller). */
static int unhex(const char *h, uint8_t *out, size_t n)
{
  size_t len = 0;
  return OPENSSL_hexstr2buf_ex(out, n, &len, h, '\0') == 1 && len == n ? 0 : -1;
}

/* One "USER:REALM:ALGORITHM:HA1" line for name into h, if it is one. */
static void parse_line(const char *overlay, const char *name, const char *line, sip_ha1_t *h)
{
  char user[80], realm[260], alg[16], ha1[80];
  if (line[0] == '#' || sscanf(line, "%79[^:]:%259[^:]:%15[^:]:%79s", user, realm, alg, ha1) != 4 ||
      strcmp(user, name) != 0 || strcasecmp(realm, overlay) != 0)
    return;
  size_t hl = strlen(ha1);
  if (strspn(ha1, "0123456789abcdef") != hl)
    return;
  if (strcmp(alg, "MD5") == 0 && hl == 32 && unhex(ha1, h->md5, 16) == 0)
    h->has_md5 = 1;
  else if (strcmp(alg, "SHA-256") == 0 && hl == 64 && unhex(ha1, h->sha256, 32) == 0)
    h->has_sha256 = 1;
}

int sip__users_parse(const char *overlay, const char *name, char *text, sip_ha1_t *h)
{
  char *save = NULL;
  memset(h, 0, sizeof *h);
  for (char *line = strtok_r(text, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save))
    parse_line(overlay, name, line, h);
  return h->has_md5 || h->has_sha256 ? 0 : -ENOENT;
}

static void keep_stat(sip_user_t *u, const struct stat *st)
{
  u->ino = st->st_ino, u->size = st->st_size, u->mtime = st->st_mtim, u->mode = st->st_mode;
}

static int same_stat(const sip_user_t *u, const struct stat *st)
{
  return u->ino == st->st_ino && u->size == st->st_size && u->mode == st->st_mode &&
         u->mtime.tv_sec == st->st_mtim.tv_sec && u->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

/* Reads DIR/NAME.digest into u; 0, or -errno (-ENOENT: no such user). */
static int read_digest(sip_svc_t *s, sip_user_t *u, const char *name)
{
  sip_users_t *a = s->users;
  char path[4200], buf[MAX_DIGEST_FILE + 1];
  snprintf(path, sizeof path, "%s/%s" SUFFIX, a->dir, name);
  a->reads++;
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  struct stat st;
  ssize_t len = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? read(fd, buf, MAX_DIGEST_FILE) : -1;
  close(fd);
  if (len < 0)
    return -EINVAL;
  if (st.st_mode & 077) {
    if (!same_stat(u, &st))
      log_warn("%s: readable by others than the daemon's user (chmod 600); refused", path);
    keep_stat(u, &st);
    return -EPERM;
  }
  buf[len] = '\0';
  int rc = sip__users_parse(s->overlay, name, buf, &u->ha1);
  OPENSSL_cleanse(buf, (size_t)len);
  keep_stat(u, &st);
  u->checked = sip__now_ms(s);
  u->stale = 0;
  return rc;
}

/* Reads name's file into its entry, made or dropped as the file says: the
 * entry, or NULL when there is no such user. */
static sip_user_t *user_load(sip_svc_t *s, sip_user_t *u, const char *name)
{
  sip_users_t *a = s->users;
  if (u) {
    if (read_digest(s, u, name) == 0) {
      u->gone = 0;
      return u;
    }
    user_drop(a, u);
    return NULL;
  }
  sip_user_t tmp = {0};
  return read_digest(s, &tmp, name) == 0 ? user_add(a, &tmp, name) : NULL;
}

/* The user's entry, read again if inotify said it changed, or (without
 * the watch) if it is older than SIP_USERS_RECHECK_MS and stat says so;
 * NULL when there is no such user here. */
static sip_user_t *user_get(sip_svc_t *s, const char *name)
{
  sip_users_t *a = s->users;
  if (!a || !name || !user_name_ok(name, strlen(name)))
    return NULL;
  sip_user_t *u = user_find(a, name);
  if (!u)
    return a->complete ? NULL : user_load(s, NULL, name);
  uint64_t now = sip__now_ms(s);
  if (!u->stale && (a->fd >= 0 || now - u->checked < SIP_USERS_RECHECK_MS))
    return u->gone ? NULL : u;
  if (!u->stale) {
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s" SUFFIX, a->dir, name);
    u->checked = now;
    if (stat(path, &st) == 0 && same_stat(u, &st) && !u->gone)
      return u;
  }
  return user_load(s, u, name);
}

/* ---- inotify and the background read ------------------------------------- */

/* The user whose digest file is named file, into name: 0, or -1 when
 * file is none. */
static int user_of_file(const char *file, char name[DHT_CERT_MAX_USER + 1])
{
  size_t len = strlen(file), sl = strlen(SUFFIX);
  if (len <= sl || strcmp(file + len - sl, SUFFIX) != 0 || !user_name_ok(file, len - sl))
    return -1;
  memcpy(name, file, len - sl);
  name[len - sl] = '\0';
  return 0;
}

/* A change to DIR/NAME: a kept user is read again when next needed, a
 * new one now (a miss costs nothing while complete). */
static void on_change(sip_svc_t *s, const char *file)
{
  sip_users_t *a = s->users;
  char name[DHT_CERT_MAX_USER + 1];
  if (user_of_file(file, name) < 0)
    return;
  a->changes++;
  sip_user_t *u = user_find(a, name);
  if (u)
    u->stale = 1;
  else
    user_load(s, NULL, name);
}

static void mark_all_stale(sip_users_t *a)
{
  for (size_t i = 0; i < a->nb; i++)
    for (sip_user_t *u = a->tab[i]; u; u = u->next)
      u->stale = 1;
}

static void scan_start(sip_svc_t *s);

static void on_closed(uv_handle_t *h)
{
  sip_users_t *a = h->data;
  if (--a->handles == 0 && a->freeing)
    free(a);
}

static void watch_stop(sip_users_t *a)
{
  if (a->fd < 0)
    return;
  uv_close((uv_handle_t *)&a->poll, on_closed);
  close(a->fd);
  a->fd = -1;
}

/* Events lost (the queue overflowed) or the watch gone: nothing kept can
 * be trusted until it is read again. */
static void watch_lost(sip_svc_t *s, int overflow)
{
  sip_users_t *a = s->users;
  mark_all_stale(a);
  a->complete = 0;
  a->lost = 1;
  if (!overflow) {
    log_warn("users: %s moved or removed; its files are looked at again every %d s", a->dir,
             SIP_USERS_RECHECK_MS / 1000);
    watch_stop(a);
    return;
  }
  log_warn("users: inotify lost events for %s; reading it again", a->dir);
  scan_start(s);
}

static void on_inotify(uv_poll_t *p, int status, int events)
{
  sip_users_t *a = p->data;
  sip_svc_t *s = a->svc;
  char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
  (void)events;
  for (int round = 0; status == 0 && round < 16 && a->fd >= 0; round++) {
    ssize_t n = read(a->fd, buf, sizeof buf);
    if (n <= 0)
      break;
    for (char *p2 = buf; p2 < buf + n;) {
      const struct inotify_event *e = (const struct inotify_event *)p2;
      p2 += sizeof *e + e->len;
      if (e->mask & IN_Q_OVERFLOW)
        watch_lost(s, 1);
      else if (e->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED))
        watch_lost(s, 0);
      else if (e->len)
        on_change(s, e->name);
      if (a->fd < 0)
        break;
    }
  }
}

static int watch_start(sip_svc_t *s)
{
  sip_users_t *a = s->users;
  a->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (a->fd < 0)
    return -errno;
  uint32_t mask = IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE |
                  IN_DELETE_SELF | IN_MOVE_SELF;
  int rc = inotify_add_watch(a->fd, a->dir, mask) < 0 ? -errno : 0;
  if (rc == 0)
    rc = uv_poll_init(s->uv, &a->poll, a->fd);
  if (rc < 0) {
    close(a->fd);
    a->fd = -1;
    return rc;
  }
  a->poll.data = a;
  a->handles++;
  uv_poll_start(&a->poll, UV_READABLE, on_inotify);
  return 0;
}

static void scan_end(sip_svc_t *s)
{
  sip_users_t *a = s->users;
  closedir(a->scan);
  a->scan = NULL;
  uv_idle_stop(&a->idle);
  a->complete = a->fd >= 0 && !a->lost && a->n < SIP_USERS_MAX;
  if (a->n >= SIP_USERS_MAX)
    log_warn("users: %s holds more than %d users; the others are read when first seen", a->dir,
             SIP_USERS_MAX);
  log_info("users: %zu kept from %s in %llu ms%s", a->n, a->dir,
           (unsigned long long)(sip__now_ms(s) - a->scan_start),
           a->complete ? ", watched for changes" : "");
}

/* SCAN_CHUNK entries of the directory: each user's file not kept (or kept
 * but changed) is read. */
static void on_scan(uv_idle_t *h)
{
  sip_users_t *a = h->data;
  sip_svc_t *s = a->svc;
  for (int i = 0; i < SCAN_CHUNK; i++) {
    errno = 0;
    const struct dirent *d = readdir(a->scan);
    if (!d || a->n >= SIP_USERS_MAX) {
      a->lost |= !d && errno != 0; /* a directory not read to its end */
      scan_end(s);
      return;
    }
    sip_user_t *u;
    char name[DHT_CERT_MAX_USER + 1];
    if (user_of_file(d->d_name, name) < 0)
      continue;
    if (!(u = user_find(a, name)) || u->stale)
      user_load(s, u, name);
  }
}

/* Reads the directory in the background, from its start. */
static void scan_start(sip_svc_t *s)
{
  sip_users_t *a = s->users;
  if (a->scan)
    rewinddir(a->scan);
  else if (!(a->scan = opendir(a->dir)))
    return; /* users are read when needed instead */
  a->lost = 0;
  a->scan_start = sip__now_ms(s);
  uv_idle_start(&a->idle, on_scan);
}

/* ---- the interface ----------------------------------------------------------- */

int sip__users_new(sip_svc_t *s, const char *dir, dht_cert_ca_t *ca)
{
  struct stat st;
  if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
    log_warn("--users %s: not a directory", dir);
    return -ENOTDIR;
  }
  sip_users_t *a = calloc(1, sizeof *a);
  if (!a || !(a->dir = strdup(dir))) {
    free(a);
    return -ENOMEM;
  }
  a->svc = s, a->ca = ca, a->fd = -1;
  s->users = a;
  uv_idle_init(s->uv, &a->idle);
  a->idle.data = a;
  a->handles = 1;
  int rc = watch_start(s);
  if (rc < 0)
    log_warn("users: cannot watch %s (%s); its files are looked at again every %d s", dir,
             strerror(-rc), SIP_USERS_RECHECK_MS / 1000);
  scan_start(s);
  return 0;
}

void sip__users_free(sip_svc_t *s)
{
  sip_users_t *a = s->users;
  if (!a)
    return;
  watch_stop(a);
  if (a->scan)
    closedir(a->scan);
  a->freeing = 1;
  uv_close((uv_handle_t *)&a->idle, on_closed);
  for (size_t i = 0; i < a->nb; i++)
    while (a->tab[i]) {
      sip_user_t *u = a->tab[i];
      a->tab[i] = u->next;
      dht_cert_creds_free(u->creds);
      free(u);
    }
  free(a->tab);
  free(a->dir);
  s->users = NULL; /* a itself goes when its handles have closed */
}

int sip__users_ha1(sip_svc_t *s, const char *user, const char *alg, char out[65])
{
  const sip_user_t *u = user_get(s, user);
  if (u && u->ha1.has_md5 && strcasecmp(alg, "MD5") == 0)
    sip__hex(u->ha1.md5, sizeof u->ha1.md5, out);
  else if (u && u->ha1.has_sha256 && strcasecmp(alg, "SHA-256") == 0)
    sip__hex(u->ha1.sha256, sizeof u->ha1.sha256, out);
  else
    return -ENOENT;
  return 0;
}

int sip__users_has(sip_svc_t *s, const char *user)
{
  return user_get(s, user) != NULL;
}

const dht_cert_creds_t *sip__users_creds(sip_svc_t *s, const char *user)
{
  sip_user_t *u = user_get(s, user);
  sip_users_t *a = s->users;
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

json_t *sip__users_json(const sip_svc_t *s)
{
  const sip_users_t *a = s->users;
  if (!a)
    return json_null();
  return json_pack("{s:I, s:I, s:I, s:b, s:b, s:b}", "known", (json_int_t)a->n, "files_read",
                   (json_int_t)a->reads, "changes", (json_int_t)a->changes, "watched", a->fd >= 0,
                   "reading", a->scan != NULL, "complete", a->complete);
}
