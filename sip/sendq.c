/*
 * A thread that sends the UDP answers core.c builds itself (the 401s,
 * 503s and registrar answers of the peek, sip__lines_reply()).
 *
 * Why a thread where the rest of the node has one (DESIGN.md: "no threads
 * unless a measured need appears"): a UDP sendto() on the host of its
 * receiver does the receiver's work too (the kernel's receive path, the
 * wake-up of the phone or sipp), and perf put 13 % of a registrar's one
 * thread in it at 6,000 REGISTERs/s (docs/BENCHMARKS.md, session 13).
 * That thread is what limits REGISTER/s, while the second core had time.
 * Handed to a second thread, a datagram costs the loop a copy and, when
 * the sender sleeps, one wake-up.
 *
 * Only a busy node starts the thread: the first time the answers come
 * faster than SIP_SENDQ_START a second.  Below that (hundreds of testbed
 * nodes, a home node with a few phones) every answer goes out at once, as
 * before, and no thread or ring exists.  A full ring sends directly too:
 * nothing is dropped here that sendto() would not drop.
 *
 * The loop thread is the only producer, the sender the only consumer: the
 * mutex guards the two indexes and the sleeping flag, never a system call.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "sip/sip_int.h"

typedef struct {
  struct sockaddr_storage to;
  socklen_t tolen;
  size_t len;
  char bytes[SIP_PEEK_BYTES];
} slot_t;

struct sip_sendq {
  int fd;
  pthread_t thread;
  int running;          /* the thread exists (loop thread only) */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned head, tail;  /* slots [head, tail) wait; under mu */
  int sleeping, stop;   /* under mu */
  slot_t *ring;
  uint64_t win_start;   /* the rate window (ms), loop thread only */
  unsigned win_count;
  uint64_t queued, direct, full; /* loop thread only */
};

sip_sendq_t *sip__sendq_new(int fd)
{
  sip_sendq_t *q = calloc(1, sizeof *q);
  if (!q)
    return NULL;
  q->fd = fd;
  if (pthread_mutex_init(&q->mu, NULL) != 0) {
    free(q);
    return NULL;
  }
  if (pthread_cond_init(&q->cv, NULL) != 0) {
    pthread_mutex_destroy(&q->mu);
    free(q);
    return NULL;
  }
  return q;
}

/* Sends slots [from, to) of the ring, SIP_SENDQ_BATCH per system call. */
static void send_slots(sip_sendq_t *q, unsigned from, unsigned to)
{
  struct mmsghdr mm[SIP_SENDQ_BATCH];
  struct iovec iov[SIP_SENDQ_BATCH];
  while (from != to) {
    unsigned n = 0;
    for (; n < SIP_SENDQ_BATCH && from + n != to; n++) {
      slot_t *sl = &q->ring[(from + n) % SIP_SENDQ_SLOTS];
      iov[n] = (struct iovec){sl->bytes, sl->len};
      mm[n] = (struct mmsghdr){.msg_hdr = {.msg_name = &sl->to, .msg_namelen = sl->tolen,
                                           .msg_iov = &iov[n], .msg_iovlen = 1}};
    }
    /* As the loop's sendto(): a datagram the socket will not take now is
     * lost like one lost on the way, and the phone retransmits. */
    int sent = sendmmsg(q->fd, mm, n, MSG_DONTWAIT);
    from += sent > 0 ? (unsigned)sent : 1;
  }
}

static void *run(void *arg)
{
  sip_sendq_t *q = arg;
  pthread_mutex_lock(&q->mu);
  for (;;) {
    while (q->head == q->tail && !q->stop) {
      q->sleeping = 1;
      pthread_cond_wait(&q->cv, &q->mu);
      q->sleeping = 0;
    }
    unsigned from = q->head, to = q->tail;
    if (from == to)
      break; /* stopped, and nothing left */
    pthread_mutex_unlock(&q->mu);
    send_slots(q, from, to);
    pthread_mutex_lock(&q->mu);
    q->head = to;
  }
  pthread_mutex_unlock(&q->mu);
  return NULL;
}

/* The ring and the thread, with every signal blocked in it: they are the
 * loop's to take.  0, or an errno (the answers then go out directly). */
static int start(sip_sendq_t *q)
{
  sigset_t all, old;
  q->ring = malloc(SIP_SENDQ_SLOTS * sizeof *q->ring);
  if (!q->ring)
    return ENOMEM;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&q->thread, NULL, run, q);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    free(q->ring);
    q->ring = NULL;
    return rc;
  }
  q->running = 1;
  log_info("sip: answers come at %u/s or more: a sender thread sends them from now on",
           SIP_SENDQ_START);
  return 0;
}

/* Whether the thread should start: SIP_SENDQ_START answers within a
 * second. */
static int busy(sip_sendq_t *q, uint64_t now_ms)
{
  if (now_ms - q->win_start >= 1000)
    q->win_start = now_ms, q->win_count = 0;
  return ++q->win_count >= SIP_SENDQ_START;
}

void sip__sendq_to(sip_sendq_t *q, uint64_t now_ms, const void *buf, size_t len,
                   const struct sockaddr *to, socklen_t tolen)
{
  if (!q->running && !q->ring && busy(q, now_ms)) {
    int rc = start(q);
    if (rc)
      log_warn("sip: no sender thread (%s): answers go out from the loop", strerror(rc));
    q->win_count = 0; /* once per failure per window at most */
  }
  if (!q->running || len > SIP_PEEK_BYTES || tolen > sizeof(struct sockaddr_storage)) {
    sendto(q->fd, buf, len, MSG_DONTWAIT, to, tolen);
    q->direct++;
    return;
  }
  pthread_mutex_lock(&q->mu);
  if (q->tail - q->head == SIP_SENDQ_SLOTS) {
    pthread_mutex_unlock(&q->mu);
    sendto(q->fd, buf, len, MSG_DONTWAIT, to, tolen);
    q->full++;
    return;
  }
  slot_t *sl = &q->ring[q->tail % SIP_SENDQ_SLOTS];
  memcpy(&sl->to, to, tolen);
  sl->tolen = tolen;
  memcpy(sl->bytes, buf, len);
  sl->len = len;
  q->tail++;
  int wake = q->sleeping;
  pthread_mutex_unlock(&q->mu);
  /* Outside the lock, or the sender would wake only to wait for it. */
  if (wake)
    pthread_cond_signal(&q->cv);
  q->queued++;
}

void sip__sendq_free(sip_sendq_t *q)
{
  if (!q)
    return;
  if (q->running) {
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    pthread_join(q->thread, NULL); /* after it sent what was queued */
  }
  pthread_cond_destroy(&q->cv);
  pthread_mutex_destroy(&q->mu);
  free(q->ring);
  free(q);
}

json_t *sip__sendq_json(const sip_sendq_t *q)
{
  return json_pack("{s:b, s:I, s:I, s:I}", "thread", q && q->running, "queued",
                   (json_int_t)(q ? q->queued : 0), "direct", (json_int_t)(q ? q->direct : 0),
                   "ring_full", (json_int_t)(q ? q->full : 0));
}
