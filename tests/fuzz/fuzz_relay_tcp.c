/* libFuzzer target for TURN over TCP (relay/tcp.c): a stream of STUN
 * messages and ChannelData back to back, read into a buffer of
 * RELAY_TCP_BUF bytes in pieces of any size.
 *
 * The first four input bytes seed the piece sizes; the rest is the
 * stream.  It is read the way drain() reads it: append a piece, hand every
 * complete message at the front to the relay (here: parse it), keep a
 * partial one, close on an error.  Checked: the buffer always has room for
 * the next read (a message that would fill it is complete, a longer one
 * closes); the messages and the outcome are the same whatever the piece
 * sizes, namely those of framing the whole stream at once; and a message
 * framed has the length its header declares. */
#include <stdlib.h>
#include <string.h>

#include "relay/relay_int.h"
#include "tests/fuzz/fuzz.h"

#define MAX_MSGS 4096

typedef struct {
  size_t off[MAX_MSGS], len[MAX_MSGS];
  size_t n;
  int closed; /* 1: an error closed the connection */
} outcome_t;

/* One complete message: the framer's length is the one declared, and the
 * relay would parse it as it parses a datagram. */
static void take(outcome_t *o, const uint8_t *p, size_t off, size_t m) {
  size_t body = (size_t)p[2] << 8 | p[3];
  if (p[0] < 0x40) {
    CHECK(m == PROTO_STUN_HDR_LEN + body);
    proto_stun_msg_t msg;
    if (proto_stun_parse(p, m, &msg) == 0) CHECK(msg.len == m);
  } else {
    CHECK(m == ((PROTO_STUN_CHAN_HDR_LEN + body + 3) & ~(size_t)3) && m % 4 == 0);
  }
  if (o->n < MAX_MSGS) o->off[o->n] = off, o->len[o->n] = m;
  o->n++;
}

/* The whole stream at once: what the buffer can hold from each message's
 * start is all there is to see. */
static void at_once(const uint8_t *s, size_t n, outcome_t *o) {
  size_t off = 0;
  while (off < n) {
    size_t have = n - off < RELAY_TCP_BUF ? n - off : RELAY_TCP_BUF;
    long m = relay__tcp_frame(s + off, have);
    if (m == PROTO_NEED_MORE) return;
    if (m < 0) {
      o->closed = 1;
      return;
    }
    CHECK((size_t)m <= have);
    take(o, s + off, off, (size_t)m);
    off += (size_t)m;
  }
}

static uint32_t next_piece(uint32_t *seed) {
  *seed = *seed * 1103515245u + 12345u;
  uint32_t r = *seed >> 16;
  /* Mostly small pieces, sometimes a large one. */
  return r % 8 == 0 ? 1 + r % (2 * RELAY_TCP_BUF) : 1 + r % 64;
}

static uint8_t buf[RELAY_TCP_BUF];

static void in_pieces(const uint8_t *s, size_t n, uint32_t seed, outcome_t *o) {
  size_t len = 0, consumed = 0, read = 0;
  while (read < n) {
    CHECK(len < RELAY_TCP_BUF); /* on_conn_buf never offers an empty buffer */
    size_t k = next_piece(&seed);
    if (k > RELAY_TCP_BUF - len) k = RELAY_TCP_BUF - len;
    if (k > n - read) k = n - read;
    memcpy(buf + len, s + read, k);
    len += k, read += k;
    size_t off = 0;
    while (off < len) {
      long m = relay__tcp_frame(buf + off, len - off);
      if (m == PROTO_NEED_MORE) break;
      if (m < 0) {
        o->closed = 1;
        return;
      }
      CHECK((size_t)m <= len - off);
      CHECK(memcmp(buf + off, s + consumed, (size_t)m) == 0);
      take(o, buf + off, consumed, (size_t)m);
      off += (size_t)m, consumed += (size_t)m;
    }
    memmove(buf, buf + off, len - off);
    len -= off;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 4) return 0;
  uint32_t seed = (uint32_t)data[0] << 24 | (uint32_t)data[1] << 16 | (uint32_t)data[2] << 8 | data[3];
  static outcome_t whole, pieces;
  memset(&whole, 0, sizeof(whole));
  memset(&pieces, 0, sizeof(pieces));
  at_once(data + 4, size - 4, &whole);
  in_pieces(data + 4, size - 4, seed, &pieces);
  CHECK(whole.closed == pieces.closed && whole.n == pieces.n);
  for (size_t i = 0; i < whole.n && i < MAX_MSGS; i++)
    CHECK(whole.off[i] == pieces.off[i] && whole.len[i] == pieces.len[i]);
  return 0;
}
