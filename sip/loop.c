/*
 * The sofia <-> libuv bridge: the only file that knows there are two event
 * loops (DESIGN.md, "Two event loops, one thread").
 *
 * sofia's su_root runs on an epoll port; an epoll fd is itself pollable, so
 * libuv watches it with a uv_poll and steps the root without blocking when
 * it is readable.  sofia's timers are mirrored by one uv_timer armed with
 * what su_root_step() returns.  A uv_prepare steps the root once per libuv
 * iteration as well, because code running in libuv callbacks (the DHT's)
 * calls nta, which may arm sofia timers that the uv_timer does not know of.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sip/sip_int.h"

struct sip_loop {
  su_root_t *root;
  int epfd;
  int handles; /* open uv handles; the struct goes when the last closes */
  int closing;
  uv_poll_t poll;
  uv_prepare_t prepare;
  uv_check_t check;
  uv_timer_t timer;
  uv_timer_t defer;
  void (*defer_fn)(void *);
  void *defer_arg;
  int (*before_fn)(void *); /* sip__loop_before_step */
  void *before_arg;
  void (*flush_fn)(void *); /* sip__loop_flush */
  void *flush_arg;
};

#define MAX_FDS 4096 /* fds looked at when searching for the epoll fd */

/* Marks in seen[] the fds the process has open now. */
static int fds_snapshot(unsigned char *seen, int max)
{
  DIR *d = opendir("/proc/self/fd");
  if (!d)
    return -errno;
  struct dirent *e;
  int self = dirfd(d); /* closed again below: its number may be reused */
  while ((e = readdir(d)) != NULL) {
    int fd = atoi(e->d_name);
    if (fd >= 0 && fd < max && fd != self && e->d_name[0] != '.')
      seen[fd] = 1;
  }
  closedir(d);
  return 0;
}

int sip__loop_find_fd(int (*match)(int fd, void *arg), void *arg)
{
  unsigned char *open_fds = calloc(1, MAX_FDS);
  int found = -1;
  if (open_fds && fds_snapshot(open_fds, MAX_FDS) == 0)
    for (int fd = 0; fd < MAX_FDS && found < 0; fd++)
      if (open_fds[fd] && match(fd, arg))
        found = fd;
  free(open_fds);
  return found;
}

static int fd_is_epoll(int fd)
{
  char path[64], target[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, target, sizeof target - 1);
  if (n <= 0)
    return 0;
  target[n] = '\0';
  return strcmp(target, "anon_inode:[eventpoll]") == 0;
}

/* sofia exports no call that returns its port's fd: create the root and
 * look for the epoll fd that appeared (measured in DESIGN.md). */
static int root_create(su_root_t **root, int *epfd)
{
  unsigned char *before = calloc(2, MAX_FDS);
  if (!before)
    return -ENOMEM;
  unsigned char *after = before + MAX_FDS;
  int rc = fds_snapshot(before, MAX_FDS);
  su_root_t *r = rc == 0 ? su_root_create(NULL) : NULL;
  if (r && fds_snapshot(after, MAX_FDS) == 0) {
    *epfd = -1;
    for (int fd = 0; fd < MAX_FDS && *epfd < 0; fd++)
      if (after[fd] && !before[fd] && fd_is_epoll(fd))
        *epfd = fd;
  }
  free(before);
  if (!r)
    return rc ? rc : -ENOMEM;
  if (*epfd < 0) { /* SU_PORT chose a port without an fd: not supported */
    su_root_destroy(r);
    return -ENOTSUP;
  }
  *root = r;
  return 0;
}

static void on_timer(uv_timer_t *h);

/* Runs sofia's ready events and expired timers, then mirrors its next
 * timer.  su_root_step() rounds "under 1 ms" down to 0; re-arming at 0
 * would spin, so the floor is 1 ms. */
/* One step of sofia's loop reads one datagram; while the hook says more
 * are queued, up to SIP_LOOP_BURST steps run in a row: at two a libuv
 * iteration, a backlog of SIP drained only as fast as the DHT's frames
 * came in, and under load its queue grew past what shedding allows. */
static void step(sip_loop_t *l)
{
  su_duration_t next = 0;
  int more = 1;
  for (int i = 0; i < SIP_LOOP_BURST && more; i++) {
    more = l->before_fn ? l->before_fn(l->before_arg) : 0;
    if (more == SIP_LOOP_TOOK && i + 1 < SIP_LOOP_BURST)
      continue; /* the hook did this step's read; the last one is sofia's */
    next = su_root_step(l->root, 0);
  }
  if (next < 0) {
    uv_timer_stop(&l->timer);
    return;
  }
  uv_timer_start(&l->timer, on_timer, next < 1 ? 1 : (uint64_t)next, 0);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
  step(h->data);
}

static void flush(sip_loop_t *l)
{
  if (l->flush_fn && !l->closing)
    l->flush_fn(l->flush_arg);
}

/* What the turn's timers and this step queued leaves before the poll,
 * which may block. */
static void on_prepare(uv_prepare_t *h)
{
  step(h->data);
  flush(h->data);
}

static void on_timer(uv_timer_t *h)
{
  step(h->data);
}

/* What the poll's I/O callbacks queued. */
static void on_check(uv_check_t *h)
{
  flush(h->data);
}

int sip__loop_new(uv_loop_t *uv, sip_loop_t **out)
{
  *out = NULL;
  sip_loop_t *l = calloc(1, sizeof *l);
  if (!l)
    return -ENOMEM;
  int rc = root_create(&l->root, &l->epfd);
  if (rc < 0) {
    free(l);
    return rc;
  }
  uv_poll_init(uv, &l->poll, l->epfd);
  uv_prepare_init(uv, &l->prepare);
  uv_check_init(uv, &l->check);
  uv_timer_init(uv, &l->timer);
  uv_timer_init(uv, &l->defer);
  l->poll.data = l->prepare.data = l->check.data = l->timer.data = l->defer.data = l;
  l->handles = 5;
  uv_poll_start(&l->poll, UV_READABLE, on_poll);
  uv_prepare_start(&l->prepare, on_prepare);
  uv_check_start(&l->check, on_check);
  uv_timer_start(&l->timer, on_timer, 1, 0);
  *out = l;
  return 0;
}

void sip__loop_before_step(sip_loop_t *l, int (*fn)(void *), void *arg)
{
  l->before_fn = fn, l->before_arg = arg;
}

void sip__loop_flush(sip_loop_t *l, void (*fn)(void *), void *arg)
{
  l->flush_fn = fn, l->flush_arg = arg;
}

su_root_t *sip__loop_root(sip_loop_t *l)
{
  return l->root;
}

static void on_closed(uv_handle_t *h)
{
  sip_loop_t *l = h->data;
  if (--l->handles == 0)
    free(l);
}

static void on_defer(uv_timer_t *h)
{
  sip_loop_t *l = h->data;
  void (*fn)(void *) = l->defer_fn;
  l->defer_fn = NULL;
  if (fn && !l->closing)
    fn(l->defer_arg);
}

/* Code called back from inside su_root_step() must not destroy the root
 * (sofia would go on using its timers): callbacks out of sip/ go through
 * here and run from libuv instead.  One call may be pending at a time. */
int sip__loop_defer(sip_loop_t *l, void (*fn)(void *), void *arg)
{
  if (l->defer_fn && (l->defer_fn != fn || l->defer_arg != arg))
    return -EBUSY;
  l->defer_fn = fn, l->defer_arg = arg;
  return uv_timer_start(&l->defer, on_defer, 0, 0);
}

void sip__loop_free(sip_loop_t *l)
{
  if (!l)
    return;
  l->closing = 1;
  /* Stop watching the epoll fd before sofia closes it. */
  uv_close((uv_handle_t *)&l->poll, on_closed);
  uv_close((uv_handle_t *)&l->prepare, on_closed);
  uv_close((uv_handle_t *)&l->check, on_closed);
  uv_close((uv_handle_t *)&l->timer, on_closed);
  uv_close((uv_handle_t *)&l->defer, on_closed);
  su_root_destroy(l->root);
  l->root = NULL;
}
