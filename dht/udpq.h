/*
 * udpq: datagrams to send on one UDP socket, copied and gathered until the
 * owner's loop has run its I/O callbacks, then sent with one sendmmsg().
 * On loopback and on a NIC alike a sendto() pays a system call and, when
 * the receiver sleeps, its wake-up; one call per loop turn pays them once
 * (docs/BENCHMARKS.md: ~10 % less CPU per relayed packet).  It lives in
 * dht/ with log for the same reason: the lowest layer that does I/O, under
 * both relay/ and sip/.
 *
 * The owner calls udpq_flush() at least once a loop turn after its I/O
 * callbacks (a uv_check), wherever else a send must not wait for the
 * next turn, and before closing the socket.  A datagram the kernel refuses
 * (EAGAIN: the send buffer is full) is dropped and counted, as a
 * non-blocking sendto() would have dropped it.
 */
#ifndef P2PSIP_UDPQ_H
#define P2PSIP_UDPQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct udpq udpq_t;

typedef struct udpq_counts {
  uint64_t batches; /* sendmmsg() calls that sent something */
  uint64_t sent;    /* datagrams they sent, and those sent on their own */
  uint64_t dropped; /* datagrams the kernel refused */
} udpq_counts_t;

/* A queue for fd of up to max datagrams and max_bytes of their bytes
 * (a datagram larger than max_bytes goes out at once, in order). */
udpq_t *udpq_new(int fd, unsigned max, size_t max_bytes);
void udpq_free(udpq_t *q); /* sends what waits first */

/* Queue n bytes for to (sent at once when the queue is full); 0, or
 * -errno when a datagram sent at once failed. */
int udpq_send(udpq_t *q, const void *p, size_t n, const struct sockaddr *to, socklen_t tolen);
void udpq_flush(udpq_t *q);
const udpq_counts_t *udpq_counts(const udpq_t *q);

#endif
