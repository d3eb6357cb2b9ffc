/*
 * The REGISTER socket: a second UDP socket on the node's SIP address and
 * port that the kernel hands every datagram starting "REGISTER ", so that
 * a backlog of registrations never sits in front of an OPTIONS, an ACK or
 * a call's requests in sofia's socket (issue 10, item 6: past the knee the
 * shared queue overflowed, and the kernel dropped those with the rest).
 *
 * How: sofia's socket joins an SO_REUSEPORT group once bound (Linux makes
 * the group when a second socket binds to the port), ours binds second,
 * and a classic BPF program attached to the group picks the socket by the
 * payload's first bytes: index 1 (ours) for "REGISTER ", 0 (sofia's) for
 * the rest.  Between our bind and the attach the kernel spreads datagrams
 * by hash; what reaches us then is handled as below, whatever it is.
 *
 * The socket only receives: answers leave from sofia's socket (same
 * address and port).  Datagrams are read in batches (recvmmsg) and handed
 * one by one to core.c (sip__regsock_take), which answers them as the peek
 * does and gives what it would leave to sofia to on_stateless().  Only a
 * process of the node's own user may join the group (the kernel checks
 * the uid), and one that does could read the node's memory as well.
 *
 * An ICMP error for a datagram sofia sent (a port unreachable from a
 * phone gone, which makes nta fail the branch at once instead of after
 * 32 s) comes back to the group, and the kernel picks the socket by hash,
 * without the program: half of them reach ours.  Ours takes them
 * (IP_RECVERR) and core.c reports them to sofia's UDP transport as its
 * own error queue would (sip__regsock_error).
 */
#include <errno.h>
#include <time.h> /* before linux/errqueue.h, which uses struct timespec */
#include <linux/errqueue.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sip/sip_int.h"

#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif

#define REGSOCK_BATCH 16 /* datagrams read per call */
#define REGSOCK_ROUNDS 4 /* calls per readiness event at most */

struct sip_regsock {
  uv_poll_t poll;
  int fd;
  sip_svc_t *s; /* NULL once closing */
  struct mmsghdr mm[REGSOCK_BATCH];
  struct iovec iov[REGSOCK_BATCH];
  struct sockaddr_storage from[REGSOCK_BATCH];
  char bytes[REGSOCK_BATCH][SIP_PEEK_BYTES];
};

/* Run by the kernel on each datagram's UDP payload: 1 for "REGISTER ",
 * else 0 (a load past a short datagram's end returns 0 as well). */
static struct sock_filter steer[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x52454749 /* "REGI" */, 0, 4),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 4),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x53544552 /* "STER" */, 0, 2),
    BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 8),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ' ', 1, 0),
    BPF_STMT(BPF_RET | BPF_K, 0),
    BPF_STMT(BPF_RET | BPF_K, 1),
};

/* The ICMP errors queued on the socket, each reported with the address
 * the failed datagram went to (at most a batch's worth a call). */
static void read_errors(sip_regsock_t *r)
{
  for (int i = 0; i < REGSOCK_BATCH && r->s; i++) {
    struct sockaddr_storage to;
    char control[512], data[64];
    struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
    struct msghdr m = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov,
                       .msg_iovlen = 1, .msg_control = control,
                       .msg_controllen = sizeof control};
    if (recvmsg(r->fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
      return;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
      if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR) ||
          (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
        const struct sock_extended_err *ee = (const void *)CMSG_DATA(c);
        if (m.msg_namelen > 0 && ee->ee_errno)
          sip__regsock_error(r->s, (int)ee->ee_errno, &to, m.msg_namelen);
      }
  }
}

/* One batch: the number of datagrams read and handed on.  A pending
 * error comes first (recvmmsg fails with it): the queued errors are read
 * and the batch tried again. */
static int read_batch(sip_regsock_t *r)
{
  for (int i = 0; i < REGSOCK_BATCH; i++) {
    r->iov[i] = (struct iovec){.iov_base = r->bytes[i], .iov_len = sizeof r->bytes[i]};
    r->mm[i].msg_hdr = (struct msghdr){.msg_name = &r->from[i],
                                       .msg_namelen = sizeof r->from[i],
                                       .msg_iov = &r->iov[i],
                                       .msg_iovlen = 1};
  }
  int n = recvmmsg(r->fd, r->mm, REGSOCK_BATCH, MSG_DONTWAIT, NULL);
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    read_errors(r);
    n = r->s ? recvmmsg(r->fd, r->mm, REGSOCK_BATCH, MSG_DONTWAIT, NULL) : -1;
  }
  for (int i = 0; i < n && r->s; i++)
    sip__regsock_take(r->s, r->bytes[i], r->mm[i].msg_len,
                      (r->mm[i].msg_hdr.msg_flags & MSG_TRUNC) != 0, &r->from[i],
                      r->mm[i].msg_hdr.msg_namelen);
  return n;
}

/* Up to REGSOCK_ROUNDS batches, then back to the loop (the DHT's replies,
 * sofia's socket, the admin).  The DHT frames the registrations make are
 * written once per loop iteration and link (dht/rpc.c): the more taken
 * per iteration, the fewer writes (each wakes the holder, on loopback in
 * our time). */
static void on_readable(uv_poll_t *h, int status, int events)
{
  sip_regsock_t *r = h->data;
  (void)events;
  if (!r->s)
    return;
  /* On EPOLLERR (an ICMP error queued) libuv stops the handle and says
   * UV_EBADF: the errors are read and the handle started again. */
  if (status < 0) {
    read_errors(r);
    if (!r->s || uv_poll_start(&r->poll, UV_READABLE, on_readable) < 0)
      return;
  }
  for (int i = 0; i < REGSOCK_ROUNDS && r->s; i++)
    if (read_batch(r) < REGSOCK_BATCH)
      break;
}

/* Our socket, bound beside sofia's (udp_fd, which has joined the group),
 * with the steering program; -errno on failure. */
static int bind_beside(int udp_fd)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int one = 1, v6only = 0, rcvbuf = SIP_REG_RCVBUF;
  socklen_t vlen = sizeof v6only;
  if (getsockname(udp_fd, (struct sockaddr *)&ss, &len) < 0)
    return -errno;
  if (ss.ss_family == AF_INET6 &&
      getsockopt(udp_fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &vlen) < 0)
    return -errno;
  int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  struct sock_fprog prog = {.len = sizeof steer / sizeof *steer, .filter = steer};
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
      setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof one) < 0 ||
      (ss.ss_family == AF_INET6 &&
       (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0 ||
        setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &one, sizeof one) < 0)) ||
      (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0 &&
       setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) < 0) ||
      bind(fd, (struct sockaddr *)&ss, len) < 0 ||
      setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog) < 0) {
    int err = -errno;
    close(fd);
    return err;
  }
  return fd;
}

int sip__regsock_open(sip_svc_t *s, uv_loop_t *uv, sip_regsock_t **out)
{
  int one = 1, zero = 0;
  *out = NULL;
  if (setsockopt(s->udp_fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
    return -errno;
  sip_regsock_t *r = malloc(sizeof *r);
  int fd = r ? bind_beside(s->udp_fd) : -ENOMEM;
  if (fd < 0 || uv_poll_init(uv, &r->poll, fd) < 0) {
    /* Nobody else may join sofia's socket now. */
    setsockopt(s->udp_fd, SOL_SOCKET, SO_REUSEPORT, &zero, sizeof zero);
    if (fd >= 0)
      close(fd);
    free(r);
    return fd < 0 ? fd : -EINVAL;
  }
  r->fd = fd, r->s = s, r->poll.data = r;
  uv_poll_start(&r->poll, UV_READABLE, on_readable);
  *out = r;
  return 0;
}

int sip__regsock_fd(const sip_regsock_t *r)
{
  return r ? r->fd : -1;
}

static void on_closed(uv_handle_t *h)
{
  sip_regsock_t *r = h->data;
  close(r->fd);
  free(r);
}

void sip__regsock_close(sip_regsock_t *r)
{
  if (!r)
    return;
  r->s = NULL;
  uv_poll_stop(&r->poll);
  uv_close((uv_handle_t *)&r->poll, on_closed);
}
