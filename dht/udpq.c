/*
 * udpq: see udpq.h.  One allocation holds the headers, the addresses and
 * the copied bytes; nothing is allocated per datagram.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dht/udpq.h"

struct udpq {
  int fd;
  unsigned n, max;
  size_t used, max_bytes;
  udpq_counts_t c;
  struct mmsghdr *msgs; /* these four point into the same block, after the struct */
  struct iovec *iov;
  struct sockaddr_storage *to;
  uint8_t *data;
};

udpq_t *udpq_new(int fd, unsigned max, size_t max_bytes) {
  max = max ? max : 1;
  /* Every part's size is a multiple of 8: each starts aligned. */
  size_t head = (sizeof(udpq_t) + 7) & ~(size_t)7;
  size_t per = sizeof(struct mmsghdr) + sizeof(struct iovec) + sizeof(struct sockaddr_storage);
  udpq_t *q = calloc(1, head + max * per + max_bytes);
  if (!q) return NULL;
  q->fd = fd, q->max = max, q->max_bytes = max_bytes;
  q->msgs = (struct mmsghdr *)((char *)q + head);
  q->iov = (struct iovec *)(q->msgs + max);
  q->to = (struct sockaddr_storage *)(q->iov + max);
  q->data = (uint8_t *)(q->to + max);
  return q;
}

/* An ICMP error for an earlier datagram (a port unreachable from a phone
 * gone) is kept on the socket and reported by its next send, which then
 * sends nothing (the error queue, which sofia reads, keeps it): that
 * datagram had no fault of its own and is tried once more. */
static int earlier_error(int e) {
  return e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EHOSTDOWN;
}

void udpq_flush(udpq_t *q) {
  if (!q) return;
  unsigned done = 0, retried = ~0u;
  while (done < q->n) {
    int k = sendmmsg(q->fd, q->msgs + done, q->n - done, MSG_DONTWAIT);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && earlier_error(errno) && retried != done) {
      retried = done;
      continue;
    }
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      q->c.dropped += q->n - done; /* the send buffer is full: so is the rest */
      break;
    }
    if (k <= 0) {
      /* The first datagram left failed (unreachable, too big): drop it and go on. */
      q->c.dropped++;
      done++;
      continue;
    }
    q->c.batches++, q->c.sent += (unsigned)k;
    done += (unsigned)k;
  }
  q->n = 0, q->used = 0;
}

void udpq_free(udpq_t *q) {
  udpq_flush(q);
  free(q);
}

int udpq_send(udpq_t *q, const void *p, size_t n, const struct sockaddr *to, socklen_t tolen) {
  if (tolen > sizeof(q->to[0])) return -EINVAL;
  if (n > q->max_bytes) {
    udpq_flush(q); /* keep the order */
    ssize_t r = sendto(q->fd, p, n, MSG_DONTWAIT, to, tolen);
    if (r < 0 && earlier_error(errno)) r = sendto(q->fd, p, n, MSG_DONTWAIT, to, tolen);
    if (r < 0) {
      q->c.dropped++;
      return -errno;
    }
    q->c.sent++;
    return 0;
  }
  if (q->n == q->max || q->used + n > q->max_bytes) udpq_flush(q);
  unsigned i = q->n++;
  uint8_t *d = q->data + q->used;
  memcpy(d, p, n);
  q->used += n;
  memcpy(&q->to[i], to, tolen);
  q->iov[i] = (struct iovec){.iov_base = d, .iov_len = n};
  q->msgs[i].msg_hdr = (struct msghdr){
      .msg_name = &q->to[i], .msg_namelen = tolen, .msg_iov = &q->iov[i], .msg_iovlen = 1};
  return 0;
}

const udpq_counts_t *udpq_counts(const udpq_t *q) { return &q->c; }
