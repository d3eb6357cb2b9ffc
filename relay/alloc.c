/*
 * relay/alloc: TURN allocations (RFC 8656 sections 7-12): Allocate,
 * Refresh, CreatePermission, ChannelBind, Send and Data indications,
 * ChannelData, expiry, quotas.
 *
 * Over UDP the 5-tuple of an allocation is fixed by the client's address,
 * since every client talks to the one TURN port: the table is a hash by
 * client address that grows with the number of allocations (nothing is
 * allocated up front).  Each allocation owns one UDP socket, its relayed
 * transport address, and small arrays of permissions and channels (capped
 * at RELAY_MAX_PERMS / RELAY_MAX_CHANS, grown on demand).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "dht/log.h"
#include "relay/relay_int.h"

/* The allocation table ----------------------------------------------------- */

static size_t addr_hash(const proto_stun_addr_t *a) {
  uint8_t port[2] = {(uint8_t)(a->port & 0xff), (uint8_t)(a->port >> 8)};
  return relay__fnv(relay__fnv(RELAY_FNV_BASIS, a->ip, a->family == 6 ? 16 : 4), port, 2);
}

/* Over TCP the connection is the 5-tuple and holds its allocation; over
 * UDP the client's address is, since every client talks to the one TURN
 * port.  TCP allocations sit in the hash too but never match a UDP
 * lookup (the same address and port over TCP is another 5-tuple). */
static relay_alloc_t *find_alloc(const relay_t *r, relay_conn_t *conn,
                                 const proto_stun_addr_t *client) {
  if (conn) return relay__conn_alloc(conn);
  if (!r->n_buckets) return NULL;
  relay_alloc_t *a = r->buckets[addr_hash(client) & (r->n_buckets - 1)];
  while (a && (a->conn || !relay__addr_eq(&a->client, client))) a = a->hnext;
  return a;
}

/* Our relayed addresses, for handing a packet from one allocation to
 * another in process (see handover).  Every allocation, over UDP or TCP,
 * has a UDP relayed address and sits in this table too. */
relay_alloc_t *relay__find_relayed(const relay_t *r, const proto_stun_addr_t *addr) {
  if (!r->n_buckets) return NULL;
  relay_alloc_t *a = r->rbuckets[addr_hash(addr) & (r->n_buckets - 1)];
  while (a && !relay__addr_eq(&a->relayed, addr)) a = a->rnext;
  return a;
}

/* Keep the load factor at most 1; both tables double from 16 buckets. */
static int table_grow(relay_t *r) {
  if (r->n_allocs < r->n_buckets) return 0;
  size_t nb = r->n_buckets ? r->n_buckets * 2 : 16;
  relay_alloc_t **b = calloc(nb, sizeof(*b)), **rb = calloc(nb, sizeof(*rb));
  if (!b || !rb) {
    free(b);
    free(rb);
    return -ENOMEM;
  }
  for (relay_alloc_t *a = r->allocs; a; a = a->next) {
    size_t h = addr_hash(&a->client) & (nb - 1), rh = addr_hash(&a->relayed) & (nb - 1);
    a->hnext = b[h], b[h] = a;
    a->rnext = rb[rh], rb[rh] = a;
  }
  free(r->buckets);
  free(r->rbuckets);
  r->buckets = b, r->rbuckets = rb, r->n_buckets = nb;
  return 0;
}

/* a->client and a->relayed must not change while a is in the tables. */
static void table_insert(relay_t *r, relay_alloc_t *a) {
  size_t h = addr_hash(&a->client) & (r->n_buckets - 1);
  a->hnext = r->buckets[h], r->buckets[h] = a;
  h = addr_hash(&a->relayed) & (r->n_buckets - 1);
  a->rnext = r->rbuckets[h], r->rbuckets[h] = a;
  a->next = r->allocs, a->prevp = &r->allocs;
  if (r->allocs) r->allocs->prevp = &a->next;
  r->allocs = a;
  r->n_allocs++;
}

static void table_remove(relay_t *r, relay_alloc_t *a) {
  relay_alloc_t **pp = &r->buckets[addr_hash(&a->client) & (r->n_buckets - 1)];
  while (*pp != a) pp = &(*pp)->hnext;
  *pp = a->hnext;
  pp = &r->rbuckets[addr_hash(&a->relayed) & (r->n_buckets - 1)];
  while (*pp != a) pp = &(*pp)->rnext;
  *pp = a->rnext;
  *a->prevp = a->next;
  if (a->next) a->next->prevp = a->prevp;
  r->n_allocs--;
}

static void on_sock_closed(uv_handle_t *h) {
  relay_alloc_t *a = h->data;
  relay_t *r = a->r;
  free(a->user);
  free(a->perms);
  free(a->chans);
  free(a);
  relay__handle_gone(r);
}

/* Unlink now (its quotas free at once); the memory goes when the socket's
 * close callback runs. */
static void alloc_free(relay_alloc_t *a) {
  table_remove(a->r, a);
  relay__quota_release(a->r, a);
  if (a->conn) relay__conn_set_alloc(a->conn, NULL);
  a->conn = NULL;
  uv_close((uv_handle_t *)&a->sock, on_sock_closed);
}

void relay__alloc_conn_gone(relay_conn_t *c) {
  relay_alloc_t *a = relay__conn_alloc(c);
  if (a) alloc_free(a);
}

void relay__free_all_allocs(relay_t *r) {
  while (r->allocs) alloc_free(r->allocs);
  relay__sweep_resv(r, 1);
}

/* Permissions and channels --------------------------------------------- */

static relay_perm_t *find_perm(relay_alloc_t *a, const proto_stun_addr_t *peer) {
  size_t n = peer->family == 6 ? 16 : 4;
  for (unsigned i = 0; i < a->n_perms; i++)
    if (a->perms[i].family == peer->family && memcmp(a->perms[i].ip, peer->ip, n) == 0)
      return &a->perms[i];
  return NULL;
}

static int perm_live(relay_alloc_t *a, const proto_stun_addr_t *peer, uint64_t now) {
  relay_perm_t *p = find_perm(a, peer);
  return p && p->expires > now;
}

/* Install or refresh (RFC 8656 section 9). */
static int perm_set(relay_alloc_t *a, const proto_stun_addr_t *peer, uint64_t now) {
  relay_perm_t *p = find_perm(a, peer);
  if (!p) {
    if (a->n_perms >= RELAY_MAX_PERMS) return -ENOSPC;
    relay_perm_t *np = realloc(a->perms, (a->n_perms + 1u) * sizeof(*np));
    if (!np) return -ENOMEM;
    a->perms = np;
    p = &a->perms[a->n_perms++];
    memset(p, 0, sizeof(*p));
    p->family = peer->family;
    memcpy(p->ip, peer->ip, 16);
  }
  p->expires = now + RELAY_PERM_LIFETIME * 1000ull;
  return 0;
}

static relay_chan_t *chan_by_num(relay_alloc_t *a, uint16_t num) {
  for (unsigned i = 0; i < a->n_chans; i++)
    if (a->chans[i].num == num) return &a->chans[i];
  return NULL;
}

static relay_chan_t *chan_by_peer(relay_alloc_t *a, const proto_stun_addr_t *peer) {
  for (unsigned i = 0; i < a->n_chans; i++)
    if (relay__addr_eq(&a->chans[i].peer, peer)) return &a->chans[i];
  return NULL;
}

/* Sending to peers ------------------------------------------------------ */

static void deliver(relay_alloc_t *a, const proto_stun_addr_t *peer, uint8_t *data, size_t n);

/* Room for data that did not arrive in r->rbuf (a TCP client's stream
 * buffer, where nothing guarantees headroom): RELAY_HEADROOM in front, a
 * message of at most RELAY_TCP_BUF bytes, 3 bytes of ChannelData padding. */
static uint8_t handover_buf[RELAY_HEADROOM + RELAY_TCP_BUF + 4];

/* The packet from allocation a's relayed address to b's relayed address,
 * handed to b in process instead of through two sockets on loopback (one
 * send on a's socket, one receive on b's: half of the datagram work when
 * both clients of a call use this relay, as with turnutils_uclient -y or
 * two UAs that picked the same relay agent peer, spec 3.2.1).
 *
 * Why this is correct: RFC 8656 specifies what each client sees at its
 * relayed transport address and says nothing about how a server moves a
 * datagram between two of its own.  b gets exactly what its socket would
 * have read: a datagram from a's relayed address, checked against b's
 * permissions and framed by b's channel or as a Data indication, sent down
 * b's client transport (deliver, the same code as on_peer_recv).  a's side
 * is checked before we get here, as for any peer: a has a live permission
 * for b's relayed address.  Permission rule: CreatePermission and
 * ChannelBind apply relay__forbidden_peer to our relayed addresses too;
 * they are on the node's own IP, where only the relayed address of a live
 * allocation is a peer (peers.c, rule 3), whatever range that IP is in,
 * since the packet never leaves the process; every other port of ours is
 * refused there, and per packet on the socket path (send_peer), because a
 * permission covers every port of an IP.  Lifetimes, quotas, counters
 * of a and b are untouched: b is found only while it is in the table
 * (alloc_free unlinks it first), to_peer and peer_in count the datagram as
 * the two sockets would have; relayed_internal counts the hand-overs.  The
 * only visible difference is that the datagram cannot be lost in a full
 * socket buffer on the way.
 *
 * deliver() writes a ChannelData header in front of the data and padding
 * behind it: data received on a UDP socket lies in r->rbuf with that room
 * and the message it came in is not read again, so it is used in place;
 * anything else is copied.  Returns -1 if it could not (the caller sends
 * through the sockets instead). */
static int handover(relay_alloc_t *a, relay_alloc_t *b, const uint8_t *p, size_t n) {
  relay_t *r = a->r;
  uintptr_t lo = (uintptr_t)r->rbuf + RELAY_HEADROOM, hi = (uintptr_t)r->rbuf + RELAY_RBUF;
  uint8_t *d;
  if ((uintptr_t)p >= lo && (uintptr_t)p <= hi && n + 3 <= hi - (uintptr_t)p) {
    d = r->rbuf + ((uintptr_t)p - (uintptr_t)r->rbuf); /* the same bytes, writable */
  } else if (n <= sizeof(handover_buf) - RELAY_HEADROOM - 4) {
    d = handover_buf + RELAY_HEADROOM;
    memmove(d, p, n);
  } else {
    return -1;
  }
  r->c.to_peer++;
  a->to_peers++;
  r->c.bytes_out += n;
  r->c.relayed_internal++;
  deliver(b, &a->relayed, d, n);
  return 0;
}

static void send_peer(relay_alloc_t *a, const proto_stun_addr_t *peer, const uint8_t *p, size_t n) {
  relay_t *r = a->r;
  relay_alloc_t *b = relay__find_relayed(r, peer);
  if (b && handover(a, b, p, n) == 0) return;
  if (!b && relay__own_peer_denied(r, peer)) {
    r->c.dropped_peer_denied++; /* another port of this host (peers.c, rule 3) */
    return;
  }
  struct sockaddr_storage ss;
  relay__addr_to_sa(peer, &ss);
  uv_buf_t buf = uv_buf_init((char *)p, (unsigned)n);
  if (uv_udp_try_send(&a->sock, &buf, 1, (const struct sockaddr *)&ss) < 0) {
    r->c.send_errors++;
    return;
  }
  r->c.to_peer++;
  a->to_peers++;
  r->c.bytes_out += n;
}

/* proto_stun_chan_parse() with RFC 5766's wider range (see
 * RELAY_CHAN_MAX_LEGACY): 4-byte header, the declared length within the
 * datagram, at most padding to 4 after it. */
int relay__chan_parse(const uint8_t *p, size_t n, proto_stun_chan_t *out) {
  proto_cur_t c = {p, p + n}, data;
  uint16_t chan, len;
  if (proto_get_u16(&c, &chan) || proto_get_u16(&c, &len)) return PROTO_ETRUNC;
  if (chan < PROTO_STUN_CHAN_MIN || chan > RELAY_CHAN_MAX_LEGACY) return PROTO_EINVAL;
  if (proto_get_sub(&c, len, &data)) return PROTO_ETRUNC;
  if (n > ((PROTO_STUN_CHAN_HDR_LEN + (size_t)len + 3) & ~(size_t)3)) return PROTO_ETRAIL;
  out->chan = chan, out->len = len, out->data = data.p;
  return 0;
}

/* ChannelData from a client (RFC 8656 section 12.6). */
int relay__on_chandata(relay_t *r, relay_conn_t *conn, const proto_stun_addr_t *src,
                       const uint8_t *p, size_t n) {
  proto_stun_chan_t cd;
  if (relay__chan_parse(p, n, &cd) < 0) {
    r->c.dropped_malformed++;
    return -1;
  }
  r->c.chan_in++;
  relay_alloc_t *a = find_alloc(r, conn, src);
  if (!a) {
    r->c.dropped_no_alloc++;
    return 0;
  }
  uint64_t now = relay__now_ms(r);
  relay_chan_t *ch = chan_by_num(a, cd.chan);
  if (!ch || ch->expires <= now || !perm_live(a, &ch->peer, now)) {
    r->c.dropped_no_perm++;
    return 0;
  }
  send_peer(a, &ch->peer, cd.data, cd.len);
  return 0;
}

/* Send indication (RFC 8656 section 11.2): never answered; dropped when
 * anything is missing. */
void relay__on_indication(relay_t *r, relay_conn_t *conn, const proto_stun_msg_t *m,
                          const proto_stun_addr_t *src) {
  if (m->method != PROTO_STUN_SEND) {
    r->c.dropped_other++;
    return;
  }
  relay_alloc_t *a = find_alloc(r, conn, src);
  if (!a) {
    r->c.dropped_no_alloc++;
    return;
  }
  proto_stun_attr_t pa, da;
  proto_stun_addr_t peer;
  if (!proto_stun_find(m, PROTO_STUN_A_XOR_PEER_ADDRESS, &pa) ||
      !proto_stun_find(m, PROTO_STUN_A_DATA, &da) ||
      proto_stun_get_xaddr(&pa, m->txid, &peer) < 0) {
    r->c.dropped_malformed++;
    return;
  }
  if (!perm_live(a, &peer, relay__now_ms(r))) {
    /* No permission can exist for a denied peer: say which it was. */
    if (relay__forbidden_peer(r, &peer)) r->c.dropped_peer_denied++;
    else r->c.dropped_no_perm++;
    return;
  }
  send_peer(a, &peer, da.val, da.len);
}

/* A datagram from a peer to a's relayed address (RFC 8656 section 11.3):
 * ChannelData if a channel is bound to the peer, else a Data indication,
 * and nothing without a permission.  The data has RELAY_HEADROOM bytes
 * free in front, where the header is written, and 3 behind (padding). */
static void deliver(relay_alloc_t *a, const proto_stun_addr_t *peer, uint8_t *data, size_t n) {
  relay_t *r = a->r;
  r->c.peer_in++;
  r->c.bytes_in += n;
  uint64_t now = relay__now_ms(r);
  if (!perm_live(a, peer, now)) {
    r->c.dropped_no_perm++;
    return;
  }
  relay_chan_t *ch = chan_by_peer(a, peer);
  if (ch && ch->expires > now) {
    uint8_t *hdr = data - PROTO_STUN_CHAN_HDR_LEN;
    proto_stun_chan_header(hdr, ch->num, (uint16_t)n);
    size_t len = n + PROTO_STUN_CHAN_HDR_LEN;
    /* Over TCP, ChannelData is padded to 4 (RFC 8656 section 12.5). */
    while (a->conn && len % 4) hdr[len++] = 0;
    if (relay__send_client(r, a->conn, &a->client, hdr, len) == 0) r->c.to_client++, a->to_client++;
    return;
  }
  /* A Data indication needs the data padded inside the message, so it is
   * built in a second buffer; this path is the slow one by design (clients
   * that care bind channels). */
  static uint8_t out[PROTO_STUN_MAX_MSG];
  uint8_t txid[PROTO_STUN_TXID_LEN];
  /* Transaction ids must not be guessable (RFC 8489 section 6). */
  if (RAND_bytes(txid, sizeof(txid)) != 1) {
    r->c.dropped_other++;
    return;
  }
  proto_stun_builder_t b;
  proto_stun_begin(&b, out, sizeof(out), proto_stun_type(PROTO_STUN_DATA, PROTO_STUN_INDICATION),
                   txid);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_PEER_ADDRESS, peer);
  proto_stun_add(&b, PROTO_STUN_A_DATA, data, n);
  long len = proto_stun_finish(&b);
  if (len < 0) {
    r->c.dropped_other++; /* a datagram too big to wrap */
    return;
  }
  if (relay__send_client(r, a->conn, &a->client, out, (size_t)len) == 0) r->c.to_client++, a->to_client++;
}

/* A datagram on a relayed socket, read into r->rbuf after RELAY_HEADROOM
 * bytes, with room behind it (RELAY_RBUF). */
static void on_peer_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                         const struct sockaddr *from, unsigned flags) {
  relay_alloc_t *a = h->data;
  if (nread < 0 || !from || (flags & UV_UDP_PARTIAL)) return;
  proto_stun_addr_t peer;
  relay__addr_from_sa(from, &peer);
  if (relay__own_peer_denied(a->r, &peer)) {
    a->r->c.dropped_peer_denied++; /* a service of this host, not a peer */
    return;
  }
  deliver(a, &peer, (uint8_t *)buf->base, (size_t)nread);
}

static void on_peer_alloc_buf(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  relay_alloc_t *a = h->data;
  buf->base = (char *)a->r->rbuf + RELAY_HEADROOM;
  buf->len = RELAY_RBUF - RELAY_HEADROOM;
}

/* Requests ------------------------------------------------------------- */

/* Comprehension-required attributes we understand in requests; anything
 * else below 0x8000 gets 420 (RFC 8489 section 6.3.1). */
static int known_attr(uint16_t t) {
  switch (t) {
  case PROTO_STUN_A_USERNAME:
  case PROTO_STUN_A_MESSAGE_INTEGRITY:
  case PROTO_STUN_A_MESSAGE_INTEGRITY_SHA256:
  case PROTO_STUN_A_REALM:
  case PROTO_STUN_A_NONCE:
  case PROTO_STUN_A_XOR_PEER_ADDRESS:
  case PROTO_STUN_A_DATA:
  case PROTO_STUN_A_CHANNEL_NUMBER:
  case PROTO_STUN_A_LIFETIME:
  case PROTO_STUN_A_REQUESTED_TRANSPORT:
  case PROTO_STUN_A_DONT_FRAGMENT:
  case PROTO_STUN_A_EVEN_PORT:
  case PROTO_STUN_A_RESERVATION_TOKEN:
  case PROTO_STUN_A_REQUESTED_ADDRESS_FAMILY:
  case PROTO_STUN_A_PRIORITY:
  case PROTO_STUN_A_USE_CANDIDATE:
  case 0x0003: /* CHANGE-REQUEST (RFC 5780); checked in relay__on_request */
    return 1;
  default:
    return !PROTO_STUN_COMPREHENSION_REQUIRED(t);
  }
}

static int check_unknown(relay_req_t *q) {
  uint16_t unknown[8];
  size_t n = 0;
  proto_stun_iter_t it;
  proto_stun_attr_t at;
  proto_stun_iter_init(&it, q->m);
  while (proto_stun_next(&it, &at) == 1) {
    int bad = !known_attr(at.type);
    /* We cannot answer from another address or port. */
    if (at.type == 0x0003 && at.len == 4 && (at.val[3] & 0x06)) bad = 1;
    if (bad && n < 8) unknown[n++] = at.type;
  }
  if (!n) return 0;
  uint8_t buf[512];
  proto_stun_builder_t b;
  q->r->c.errors_sent++;
  relay__reply_begin(q, &b, buf, sizeof(buf), PROTO_STUN_ERROR);
  proto_stun_add_error(&b, 420, "Unknown Attribute", 17);
  proto_stun_add_unknown(&b, unknown, n);
  relay__reply_send(q, &b);
  return -1;
}

static uint32_t granted_lifetime(const proto_stun_msg_t *m) {
  proto_stun_attr_t la;
  uint32_t want = RELAY_DEFAULT_LIFETIME;
  if (proto_stun_find(m, PROTO_STUN_A_LIFETIME, &la) && proto_stun_get_u32(&la, &want) == 0) {
    if (want == 0) return 0;
    if (want < RELAY_DEFAULT_LIFETIME) want = RELAY_DEFAULT_LIFETIME;
    if (want > RELAY_MAX_LIFETIME) want = RELAY_MAX_LIFETIME;
  }
  return want;
}

/* Reservations (RFC 8656 section 7.2, EVEN-PORT with R and
 * RESERVATION-TOKEN): the port after an even relayed port, held open for
 * RELAY_RESV_LIFETIME s for the client's RTCP allocation. */
struct relay_resv {
  relay_resv_t *next;
  uint8_t token[PROTO_STUN_TOKEN_LEN];
  int fd;
  proto_stun_addr_t addr;
  uint64_t expires;
};

static int bind_port(relay_t *r, uint16_t port, int *fd, proto_stun_addr_t *addr) {
  *addr = r->listen;
  addr->port = port;
  struct sockaddr_storage ss;
  relay__addr_to_sa(addr, &ss);
  return relay__bind_socket(&ss, fd);
}

/* Find a free port (an even one with a free successor if reserve), trying
 * at most RELAY_PORT_TRIES ports from where the last search stopped. */
static int find_port(relay_t *r, int even, int reserve, int *fd, proto_stun_addr_t *addr,
                     int *fd2, proto_stun_addr_t *addr2) {
  for (int i = 0; i < RELAY_PORT_TRIES; i++) {
    uint16_t port = r->port_next;
    r->port_next = port >= r->port_max ? r->port_min : (uint16_t)(port + 1);
    if ((even || reserve) && (port & 1)) continue;
    if (reserve && port >= r->port_max) continue;
    if (bind_port(r, port, fd, addr) < 0) continue;
    if (!reserve) return 0;
    if (bind_port(r, (uint16_t)(port + 1), fd2, addr2) == 0) return 0;
    close(*fd);
  }
  return -EADDRINUSE;
}

static int open_relayed(relay_t *r, relay_alloc_t *a, int fd, const proto_stun_addr_t *addr) {
  uv_udp_init(r->loop, &a->sock);
  a->sock.data = a;
  r->open_handles++;
  if (uv_udp_open(&a->sock, fd) < 0 ||
      uv_udp_recv_start(&a->sock, on_peer_alloc_buf, on_peer_recv) < 0) {
    close(fd);
    return -EIO; /* the handle is open: the caller closes it */
  }
  a->relayed = *addr;
  return 0;
}

static relay_resv_t *take_resv(relay_t *r, const uint8_t token[PROTO_STUN_TOKEN_LEN]) {
  for (relay_resv_t **pp = &r->resv; *pp; pp = &(*pp)->next) {
    relay_resv_t *v = *pp;
    if (memcmp(v->token, token, PROTO_STUN_TOKEN_LEN) == 0 && v->expires > relay__now_ms(r)) {
      *pp = v->next;
      return v;
    }
  }
  return NULL;
}

static int add_resv(relay_t *r, int fd, const proto_stun_addr_t *addr, uint8_t *token) {
  relay_resv_t *v = calloc(1, sizeof(*v));
  if (!v || RAND_bytes(v->token, PROTO_STUN_TOKEN_LEN) != 1) {
    free(v);
    close(fd);
    return -ENOMEM;
  }
  v->fd = fd, v->addr = *addr, v->expires = relay__now_ms(r) + RELAY_RESV_LIFETIME * 1000ull;
  v->next = r->resv, r->resv = v;
  memcpy(token, v->token, PROTO_STUN_TOKEN_LEN);
  return 0;
}

/* Drop expired reservations, or all of them. */
void relay__sweep_resv(relay_t *r, int all) {
  uint64_t now = relay__now_ms(r);
  for (relay_resv_t **pp = &r->resv; *pp;) {
    relay_resv_t *v = *pp;
    if (all || v->expires <= now) {
      *pp = v->next;
      close(v->fd);
      free(v);
    } else {
      pp = &v->next;
    }
  }
}

/* The relayed socket for a new allocation: from a reservation, or a fresh
 * port (reserving the next one if asked; *token then says which). */
static int bind_relayed(relay_t *r, relay_alloc_t *a, const relay_want_t *w, uint8_t *token,
                        int *has_token) {
  int fd, fd2 = -1;
  proto_stun_addr_t addr, addr2;
  *has_token = 0;
  if (w->token) {
    relay_resv_t *v = take_resv(r, w->token_val);
    if (!v) return -EADDRINUSE;
    fd = v->fd, addr = v->addr;
    free(v);
  } else if (find_port(r, w->even, w->reserve, &fd, &addr, &fd2, &addr2) < 0) {
    return -EADDRINUSE;
  }
  if (fd2 >= 0 && add_resv(r, fd2, &addr2, token) == 0) *has_token = 1;
  return open_relayed(r, a, fd, &addr);
}

static void reply_allocated(relay_req_t *q, relay_alloc_t *a, const uint8_t *token) {
  uint8_t buf[512];
  proto_stun_builder_t b;
  uint64_t now = relay__now_ms(q->r);
  uint32_t left = a->expires > now ? (uint32_t)((a->expires - now) / 1000) : 0;
  relay__reply_begin(q, &b, buf, sizeof(buf), PROTO_STUN_SUCCESS);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_RELAYED_ADDRESS, &a->relayed);
  proto_stun_add_u32(&b, PROTO_STUN_A_LIFETIME, left);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_MAPPED_ADDRESS, &q->src);
  if (token) proto_stun_add(&b, PROTO_STUN_A_RESERVATION_TOKEN, token, PROTO_STUN_TOKEN_LEN);
  relay__reply_send(q, &b);
}

/* The checks of RFC 8656 section 7.2 that need no allocation yet; returns
 * an error code or 0. */
static int allocate_checks(relay_req_t *q, relay_want_t *w) {
  const proto_stun_msg_t *m = q->m;
  proto_stun_attr_t at;
  uint8_t proto, fam;
  if (!proto_stun_find(m, PROTO_STUN_A_REQUESTED_TRANSPORT, &at) ||
      proto_stun_get_transport(&at, &proto) < 0)
    return 400;
  if (proto != PROTO_STUN_PROTO_UDP) return 442;
  w->even = proto_stun_find(m, PROTO_STUN_A_EVEN_PORT, &at);
  if (w->even && proto_stun_get_even_port(&at, &w->reserve) < 0) return 400;
  if (proto_stun_find(m, PROTO_STUN_A_RESERVATION_TOKEN, &at)) {
    if (w->even || proto_stun_get_token(&at, w->token_val) < 0) return 400;
    w->token = 1;
  }
  if (proto_stun_find(m, PROTO_STUN_A_REQUESTED_ADDRESS_FAMILY, &at)) {
    if (w->token || proto_stun_get_family(&at, &fam) < 0) return 400;
    if (fam != q->r->listen.family) return 440;
  }
  if (proto_stun_find(m, PROTO_STUN_A_ADDITIONAL_ADDRESS_FAMILY, &at)) return 440;
  return 0;
}

static void on_allocate(relay_req_t *q) {
  relay_t *r = q->r;
  relay_alloc_t *old = find_alloc(r, q->conn, &q->src);
  if (old) {
    /* A retransmitted Allocate gets the same answer (RFC 8656 7.2). */
    if (memcmp(old->txid, q->m->txid, PROTO_STUN_TXID_LEN) == 0) reply_allocated(q, old, NULL);
    else relay__reply_error(q, 437, NULL);
    return;
  }
  relay_want_t w = {0};
  int code = allocate_checks(q, &w);
  if (code) {
    relay__reply_error(q, (uint16_t)code, NULL);
    return;
  }
  if ((code = relay__quota_check(r, q->user, q->ulen, &q->src)) != 0) {
    relay__reply_error(q, (uint16_t)code, NULL);
    return;
  }
  relay_alloc_t *a = calloc(1, sizeof(*a));
  if (a) a->r = r, a->client = q->src, a->conn = q->conn;
  if (!a || table_grow(r) < 0 || !(a->user = strndup(q->user, q->ulen)) ||
      relay__quota_take(r, a) < 0) {
    if (a) free(a->user);
    free(a);
    relay__reply_error(q, 500, NULL);
    return;
  }
  uint8_t token[PROTO_STUN_TOKEN_LEN];
  int has_token;
  int rc = bind_relayed(r, a, &w, token, &has_token);
  if (rc < 0) {
    if (rc == -EIO) {
      table_insert(r, a);
      alloc_free(a); /* closes the handle, releases the quotas */
    } else {
      relay__quota_release(r, a);
      free(a->user);
      free(a);
    }
    relay__reply_error(q, 508, NULL);
    return;
  }
  memcpy(a->key, q->key, PROTO_STUN_KEY_LEN);
  memcpy(a->txid, q->m->txid, PROTO_STUN_TXID_LEN);
  a->lifetime = granted_lifetime(q->m);
  if (!a->lifetime) a->lifetime = RELAY_DEFAULT_LIFETIME;
  a->expires = relay__now_ms(r) + a->lifetime * 1000ull;
  table_insert(r, a);
  if (a->conn) relay__conn_set_alloc(a->conn, a);
  r->c.allocs_made++;
  reply_allocated(q, a, has_token ? token : NULL);
}

/* The allocation a request acts on, for the same user (437, 441). */
static relay_alloc_t *own_alloc(relay_req_t *q) {
  relay_alloc_t *a = find_alloc(q->r, q->conn, &q->src);
  if (!a) {
    relay__reply_error(q, 437, NULL);
    return NULL;
  }
  if (strlen(a->user) != q->ulen || memcmp(a->user, q->user, q->ulen) != 0) {
    relay__reply_error(q, 441, NULL);
    return NULL;
  }
  return a;
}

static void reply_empty(relay_req_t *q) {
  uint8_t buf[256];
  proto_stun_builder_t b;
  relay__reply_begin(q, &b, buf, sizeof(buf), PROTO_STUN_SUCCESS);
  relay__reply_send(q, &b);
}

/* Refresh (RFC 8656 section 8); lifetime 0 deletes. */
static void on_refresh(relay_req_t *q) {
  relay_alloc_t *a = own_alloc(q);
  if (!a) return;
  proto_stun_attr_t at;
  uint8_t fam;
  if (proto_stun_find(q->m, PROTO_STUN_A_REQUESTED_ADDRESS_FAMILY, &at) &&
      (proto_stun_get_family(&at, &fam) < 0 || fam != a->relayed.family)) {
    relay__reply_error(q, 443, NULL);
    return;
  }
  uint32_t life = granted_lifetime(q->m);
  uint8_t buf[256];
  proto_stun_builder_t b;
  relay__reply_begin(q, &b, buf, sizeof(buf), PROTO_STUN_SUCCESS);
  proto_stun_add_u32(&b, PROTO_STUN_A_LIFETIME, life);
  if (life == 0) {
    alloc_free(a);
  } else {
    a->lifetime = life;
    a->expires = relay__now_ms(q->r) + life * 1000ull;
  }
  relay__reply_send(q, &b);
}

/* The peer of a CreatePermission or ChannelBind: 400, 443, 403 or 0. */
static int peer_check(relay_req_t *q, relay_alloc_t *a, const proto_stun_attr_t *at,
                      proto_stun_addr_t *peer) {
  if (proto_stun_get_xaddr(at, q->m->txid, peer) < 0) return 400;
  if (peer->family != a->relayed.family) return 443;
  if (relay__forbidden_peer(q->r, peer)) {
    q->r->c.peers_denied++;
    return 403;
  }
  return 0;
}

/* CreatePermission (RFC 8656 section 10): all peers or none. */
static void on_permission(relay_req_t *q) {
  relay_alloc_t *a = own_alloc(q);
  if (!a) return;
  proto_stun_iter_t it;
  proto_stun_attr_t at;
  proto_stun_addr_t peers[RELAY_MAX_PERMS];
  unsigned n = 0;
  int code = 0;
  proto_stun_iter_init(&it, q->m);
  while (!code && proto_stun_next(&it, &at) == 1) {
    if (at.type != PROTO_STUN_A_XOR_PEER_ADDRESS) continue;
    if (n >= RELAY_MAX_PERMS) code = 508;
    else code = peer_check(q, a, &at, &peers[n++]);
  }
  if (!code && !n) code = 400;
  uint64_t now = relay__now_ms(q->r);
  for (unsigned i = 0; !code && i < n; i++)
    if (perm_set(a, &peers[i], now) < 0) code = 508;
  if (code) relay__reply_error(q, (uint16_t)code, NULL);
  else reply_empty(q);
}

/* ChannelBind (RFC 8656 section 12.2). */
static int bind_channel(relay_req_t *q, relay_alloc_t *a) {
  proto_stun_attr_t ca, pa;
  uint16_t num;
  proto_stun_addr_t peer;
  if (!proto_stun_find(q->m, PROTO_STUN_A_CHANNEL_NUMBER, &ca) ||
      !proto_stun_find(q->m, PROTO_STUN_A_XOR_PEER_ADDRESS, &pa) ||
      proto_stun_get_channel(&ca, &num) < 0 || num < PROTO_STUN_CHAN_MIN ||
      num > RELAY_CHAN_MAX_LEGACY)
    return 400;
  int code = peer_check(q, a, &pa, &peer);
  if (code) return code;
  relay_chan_t *by_num = chan_by_num(a, num), *by_peer = chan_by_peer(a, &peer);
  if (by_num != by_peer) return 400; /* either is bound to something else */
  uint64_t now = relay__now_ms(q->r);
  if (!by_num) {
    if (a->n_chans >= RELAY_MAX_CHANS) return 508;
    relay_chan_t *nc = realloc(a->chans, (a->n_chans + 1u) * sizeof(*nc));
    if (!nc) return 500;
    a->chans = nc;
    by_num = &a->chans[a->n_chans++];
    by_num->num = num, by_num->peer = peer;
  }
  if (perm_set(a, &peer, now) < 0) return 508;
  by_num->expires = now + RELAY_CHAN_LIFETIME * 1000ull;
  return 0;
}

static void on_channel_bind(relay_req_t *q) {
  relay_alloc_t *a = own_alloc(q);
  if (!a) return;
  int code = bind_channel(q, a);
  if (code) relay__reply_error(q, (uint16_t)code, NULL);
  else reply_empty(q);
}

void relay__on_request(relay_req_t *q) {
  if (check_unknown(q) < 0) return;
  switch (q->m->method) {
  case PROTO_STUN_ALLOCATE:
  case PROTO_STUN_REFRESH:
  case PROTO_STUN_CREATE_PERMISSION:
  case PROTO_STUN_CHANNEL_BIND:
    break;
  default:
    relay__reply_error(q, 400, "Unknown method");
    return;
  }
  if (relay__authenticate(q) < 0) return;
  switch (q->m->method) {
  case PROTO_STUN_ALLOCATE: on_allocate(q); break;
  case PROTO_STUN_REFRESH: on_refresh(q); break;
  case PROTO_STUN_CREATE_PERMISSION: on_permission(q); break;
  default: on_channel_bind(q); break;
  }
}

/* Expiry --------------------------------------------------------------- */

/* Drop expired permissions and channels in place. */
static void sweep(relay_alloc_t *a, uint64_t now) {
  unsigned k = 0;
  for (unsigned i = 0; i < a->n_perms; i++)
    if (a->perms[i].expires > now) a->perms[k++] = a->perms[i];
  a->n_perms = (uint16_t)k;
  k = 0;
  for (unsigned i = 0; i < a->n_chans; i++)
    if (a->chans[i].expires > now) a->chans[k++] = a->chans[i];
  a->n_chans = (uint16_t)k;
}

void relay__tick(uv_timer_t *t) {
  relay_t *r = t->data;
  uint64_t now = relay__now_ms(r);
  relay__sweep_resv(r, 0);
  relay__tcp_sweep(r, now);
  for (relay_alloc_t *a = r->allocs, *next; a; a = next) {
    next = a->next;
    if (a->expires <= now) {
      r->c.allocs_expired++;
      alloc_free(a);
    } else {
      sweep(a, now);
    }
  }
}

/* One allocation in the stats: whose, where, and what it relayed. */
static json_t *alloc_json(const relay_alloc_t *a) {
  char client[64], relayed[64];
  struct sockaddr_storage ss;
  relay__addr_to_sa(&a->client, &ss);
  dht_addr_str(&ss, client, sizeof(client));
  relay__addr_to_sa(&a->relayed, &ss);
  dht_addr_str(&ss, relayed, sizeof(relayed));
  /* The name passed the credential check, so a node minted it from admin
   * JSON (UTF-8); an odd one still gets a line. */
  json_t *user = json_string(a->user);
  return json_pack("{so ss ss ss sI sI sI sI}", "user", user ? user : json_string("(not UTF-8)"),
                   "client", client, "transport", a->conn ? "tcp" : "udp", "relayed", relayed,
                   "to_peers", (json_int_t)a->to_peers, "to_client", (json_int_t)a->to_client,
                   "permissions", (json_int_t)a->n_perms, "channels", (json_int_t)a->n_chans);
}

json_t *relay__alloc_stats(const relay_t *r) {
  size_t perms = 0, chans = 0;
  json_t *list = json_array();
  for (const relay_alloc_t *a = r->allocs; a; a = a->next) {
    perms += a->n_perms, chans += a->n_chans;
    /* The answer stays small on a busy relay: the first ones only. */
    if (json_array_size(list) < RELAY_STATS_ALLOCS) json_array_append_new(list, alloc_json(a));
  }
  json_t *j = json_pack("{sI sI sI so}", "allocations", (json_int_t)r->n_allocs, "permissions",
                        (json_int_t)perms, "channels", (json_int_t)chans, "allocation_list", list);
  relay__quota_stats(r, j);
  return j;
}
