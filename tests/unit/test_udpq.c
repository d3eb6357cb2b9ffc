/* The send queue (dht/udpq.c) on real loopback sockets: nothing leaves
 * before a flush, then everything in order; a full queue sends itself; a
 * datagram too big to queue goes after what waits; a refused datagram is
 * dropped and counted without losing the ones behind it; an ICMP error
 * left on the socket by an earlier datagram costs the next one nothing. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dht/udpq.h"
#include "tests/unit/test.h"

static int udp_bound(struct sockaddr_in *sa) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  ASSERT(fd >= 0);
  memset(sa, 0, sizeof(*sa));
  sa->sin_family = AF_INET, sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(*sa);
  ASSERT_OK(bind(fd, (struct sockaddr *)sa, sizeof(*sa)));
  ASSERT_OK(getsockname(fd, (struct sockaddr *)sa, &len));
  return fd;
}

/* The next datagram on fd, or -1 when none waits. */
static ssize_t next(int fd, char *buf, size_t len) {
  ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
  if (n >= 0) buf[n < (ssize_t)len ? n : (ssize_t)len - 1] = 0;
  return n;
}

static void send_str(udpq_t *q, const char *s, const struct sockaddr_in *to) {
  ASSERT_OK(udpq_send(q, s, strlen(s), (const struct sockaddr *)to, sizeof(*to)));
}

static void test_order_and_flush(int out, int in, const struct sockaddr_in *to) {
  udpq_t *q = udpq_new(out, 4, 64);
  char buf[256];
  ASSERT(q);
  send_str(q, "one", to), send_str(q, "two", to), send_str(q, "three", to);
  ASSERT_EQ(next(in, buf, sizeof buf), -1); /* held until the flush */
  udpq_flush(q);
  ASSERT_EQ(next(in, buf, sizeof buf), 3);
  ASSERT(!strcmp(buf, "one"));
  ASSERT_EQ(next(in, buf, sizeof buf), 3);
  ASSERT(!strcmp(buf, "two"));
  ASSERT_EQ(next(in, buf, sizeof buf), 5);
  ASSERT(!strcmp(buf, "three"));
  ASSERT_EQ(next(in, buf, sizeof buf), -1);
  ASSERT_UINT_EQ(udpq_counts(q)->batches, 1);
  ASSERT_UINT_EQ(udpq_counts(q)->sent, 3);

  /* Four fit; the fifth sends the four first. */
  for (int i = 0; i < 5; i++) {
    char s[8];
    snprintf(s, sizeof s, "d%d", i);
    send_str(q, s, to);
  }
  for (int i = 0; i < 4; i++) {
    char s[8];
    snprintf(s, sizeof s, "d%d", i);
    ASSERT_EQ(next(in, buf, sizeof buf), 2);
    ASSERT(!strcmp(buf, s));
  }
  ASSERT_EQ(next(in, buf, sizeof buf), -1);
  /* Bytes: 64 hold "d4" and 60 more, not 61; then one larger than the
   * queue goes at once, after the others. */
  char big[100];
  memset(big, 'b', sizeof big);
  ASSERT_OK(udpq_send(q, big, 60, (const struct sockaddr *)to, sizeof(*to)));
  ASSERT_EQ(next(in, buf, sizeof buf), -1);
  ASSERT_OK(udpq_send(q, big, 61, (const struct sockaddr *)to, sizeof(*to)));
  ASSERT_EQ(next(in, buf, sizeof buf), 2);
  ASSERT(!strcmp(buf, "d4"));
  ASSERT_EQ(next(in, buf, sizeof buf), 60);
  ASSERT_EQ(next(in, buf, sizeof buf), -1);
  ASSERT_OK(udpq_send(q, big, sizeof big, (const struct sockaddr *)to, sizeof(*to)));
  ASSERT_EQ(next(in, buf, sizeof buf), 61);
  ASSERT_EQ(next(in, buf, sizeof buf), 100);
  ASSERT_UINT_EQ(udpq_counts(q)->sent, 3 + 5 + 3);
  ASSERT_UINT_EQ(udpq_counts(q)->dropped, 0);
  udpq_free(q);
}

static void test_refused(int out, int in, const struct sockaddr_in *to) {
  udpq_t *q = udpq_new(out, 8, 1024);
  char buf[64];
  /* An IPv6 address on an IPv4 socket: the kernel refuses that one. */
  struct sockaddr_in6 six;
  memset(&six, 0, sizeof six);
  six.sin6_family = AF_INET6, six.sin6_port = to->sin_port, six.sin6_addr = in6addr_loopback;
  send_str(q, "before", to);
  ASSERT_OK(udpq_send(q, "lost", 4, (const struct sockaddr *)&six, sizeof six));
  send_str(q, "after", to);
  ASSERT_EQ(udpq_send(q, "x", 1, (const struct sockaddr *)to, 1000), -EINVAL);
  /* Sent when freed. */
  udpq_free(q);
  ASSERT_EQ(next(in, buf, sizeof buf), 6);
  ASSERT(!strcmp(buf, "before"));
  ASSERT_EQ(next(in, buf, sizeof buf), 5);
  ASSERT(!strcmp(buf, "after"));
  ASSERT_EQ(next(in, buf, sizeof buf), -1);
}

static void test_refused_counted(int out, const struct sockaddr_in *to) {
  udpq_t *q = udpq_new(out, 8, 1024);
  struct sockaddr_in6 six;
  memset(&six, 0, sizeof six);
  six.sin6_family = AF_INET6, six.sin6_addr = in6addr_loopback;
  ASSERT_OK(udpq_send(q, "lost", 4, (const struct sockaddr *)&six, sizeof six));
  send_str(q, "kept", to);
  udpq_flush(q);
  ASSERT_UINT_EQ(udpq_counts(q)->dropped, 1);
  ASSERT_UINT_EQ(udpq_counts(q)->sent, 1);
  udpq_free(q);
}

/* A port unreachable for an earlier datagram (on loopback it is back
 * before sendto() returns) is reported by the next send on the socket. */
static void test_earlier_error(int in, const struct sockaddr_in *to) {
  struct sockaddr_in gone, from;
  int out = udp_bound(&from), one = 1;
  close(udp_bound(&gone));
  ASSERT_OK(setsockopt(out, IPPROTO_IP, IP_RECVERR, &one, sizeof one));
  char buf[64];
  while (next(in, buf, sizeof buf) >= 0) {
  }
  for (int big = 0; big < 2; big++) {
    udpq_t *q = udpq_new(out, 8, 16);
    ASSERT_EQ(sendto(out, "x", 1, 0, (struct sockaddr *)&gone, sizeof gone), 1);
    if (big) {
      /* Larger than the queue: sent at once. */
      ASSERT_OK(udpq_send(q, "answered-at-once", 16 + 1, (const struct sockaddr *)to, sizeof(*to)));
    } else {
      send_str(q, "answered", to);
      udpq_flush(q);
    }
    ASSERT_EQ(next(in, buf, sizeof buf), (big ? 17 : 8));
    ASSERT_UINT_EQ(udpq_counts(q)->dropped, 0);
    ASSERT_UINT_EQ(udpq_counts(q)->sent, 1);
    udpq_free(q);
  }
  close(out);
}

int main(void) {
  struct sockaddr_in from, to;
  int out = udp_bound(&from), in = udp_bound(&to);
  char buf[16];
  test_order_and_flush(out, in, &to);
  test_refused(out, in, &to);
  test_refused_counted(out, &to);
  test_earlier_error(in, &to);
  while (next(in, buf, sizeof buf) >= 0) {
  }
  close(out), close(in);
  return 0;
}
