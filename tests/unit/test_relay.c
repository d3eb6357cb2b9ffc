/*
 * relay/: a TURN server on a private loop, driven by plain UDP sockets in
 * the same process (a client, a second client and a peer), all on
 * 127.0.0.1.  No DHT: relay_new(loop, NULL, ...) publishes nothing.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proto/stun.h"
#include "relay/relay.h"
#include "relay/relay_int.h"
#include "tests/unit/test.h"

extern unsigned relay__nonce_ttl;

static uv_loop_t loop;
static relay_t *relay;
static struct sockaddr_in relay_sa;
static const char *SECRET = "overlay-secret";
static const char *REALM = "overlay.test";

/* A UDP socket on ip (127.0.0.0/8: every address is this host's). */
static int udp_socket_at(const char *ip, struct sockaddr_in *bound) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  ASSERT(fd >= 0);
  struct sockaddr_in sa = {.sin_family = AF_INET};
  ASSERT(inet_pton(AF_INET, ip, &sa.sin_addr) == 1);
  ASSERT_OK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)));
  socklen_t sl = sizeof(*bound);
  getsockname(fd, (struct sockaddr *)bound, &sl);
  return fd;
}

static int udp_socket(struct sockaddr_in *bound) { return udp_socket_at("127.0.0.1", bound); }

/* Run the relay's loop until fd has a datagram (or 1 s passes). */
static ssize_t wait_recv(int fd, uint8_t *buf, size_t size, struct sockaddr_in *from) {
  for (int i = 0; i < 200; i++) {
    uv_run(&loop, UV_RUN_NOWAIT);
    socklen_t sl = sizeof(*from);
    ssize_t n = recvfrom(fd, buf, size, 0, (struct sockaddr *)from, &sl);
    if (n >= 0) return n;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    poll(&p, 1, 5);
  }
  return -1;
}

static void send_to(int fd, const void *p, size_t n, const struct sockaddr_in *to) {
  ASSERT_EQ(sendto(fd, p, n, 0, (const struct sockaddr *)to, sizeof(*to)), (ssize_t)n);
}

/* A request with long-term credentials. */
typedef struct {
  char user[128], pass[40];
  char nonce[64];
  uint8_t key[PROTO_STUN_KEY_LEN];
} cred_t;

static void cred_make(cred_t *c, const char *name, int64_t valid_for, const char *secret) {
  uint64_t expiry = (uint64_t)((int64_t)time(NULL) + valid_for);
  ASSERT(proto_stun_rest_mint(c->user, sizeof(c->user), expiry, name, strlen(name),
                              (const uint8_t *)secret, strlen(secret), c->pass) > 0);
  proto_stun_lt_key(c->user, strlen(c->user), REALM, strlen(REALM), c->pass, strlen(c->pass),
                    c->key);
  c->nonce[0] = '\0';
}

static uint8_t txid_ctr;

static void begin(proto_stun_builder_t *b, uint8_t *buf, size_t size, uint16_t method, uint8_t cls) {
  uint8_t txid[PROTO_STUN_TXID_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ++txid_ctr};
  proto_stun_begin(b, buf, size, proto_stun_type(method, cls), txid);
}

static void sign(proto_stun_builder_t *b, const cred_t *c) {
  proto_stun_add(b, PROTO_STUN_A_USERNAME, c->user, strlen(c->user));
  proto_stun_add(b, PROTO_STUN_A_REALM, REALM, strlen(REALM));
  proto_stun_add(b, PROTO_STUN_A_NONCE, c->nonce, strlen(c->nonce));
  proto_stun_add_integrity(b, c->key, PROTO_STUN_KEY_LEN);
  proto_stun_add_fingerprint(b);
}

/* Send, wait for the answer, parse it; returns its ERROR-CODE or 0. */
static int exchange(int fd, proto_stun_builder_t *b, uint8_t *rbuf, size_t rsize,
                    proto_stun_msg_t *m) {
  long n = proto_stun_finish(b);
  ASSERT(n > 0);
  send_to(fd, b->start, (size_t)n, &relay_sa);
  struct sockaddr_in from;
  ssize_t got = wait_recv(fd, rbuf, rsize, &from);
  ASSERT(got > 0);
  ASSERT_OK(proto_stun_parse(rbuf, (size_t)got, m));
  ASSERT_MEM_EQ(m->txid, b->txid, PROTO_STUN_TXID_LEN);
  proto_stun_attr_t a;
  proto_stun_error_t e;
  if (m->cls == PROTO_STUN_ERROR) {
    ASSERT(proto_stun_find(m, PROTO_STUN_A_ERROR_CODE, &a));
    ASSERT_OK(proto_stun_get_error(&a, &e));
    return e.code;
  }
  ASSERT_EQ(m->cls, PROTO_STUN_SUCCESS);
  return 0;
}

/* Allocate, answering the 401 challenge; returns the final error or 0. */
static int allocate(int fd, cred_t *c, proto_stun_addr_t *relayed) {
  uint8_t buf[512], rbuf[1024];
  proto_stun_builder_t b;
  proto_stun_msg_t m;
  proto_stun_attr_t a;
  if (!c->nonce[0]) {
    begin(&b, buf, sizeof(buf), PROTO_STUN_ALLOCATE, PROTO_STUN_REQUEST);
    proto_stun_add_transport(&b, PROTO_STUN_PROTO_UDP);
    ASSERT_EQ(exchange(fd, &b, rbuf, sizeof(rbuf), &m), 401);
    ASSERT(proto_stun_find(&m, PROTO_STUN_A_REALM, &a));
    ASSERT_EQ(a.len, strlen(REALM));
    ASSERT(proto_stun_find(&m, PROTO_STUN_A_NONCE, &a));
    ASSERT(a.len < sizeof(c->nonce));
    memcpy(c->nonce, a.val, a.len);
    c->nonce[a.len] = '\0';
    ASSERT_EQ(m.mi_off, 0); /* a challenge is not signed */
  }
  begin(&b, buf, sizeof(buf), PROTO_STUN_ALLOCATE, PROTO_STUN_REQUEST);
  proto_stun_add_transport(&b, PROTO_STUN_PROTO_UDP);
  sign(&b, c);
  int code = exchange(fd, &b, rbuf, sizeof(rbuf), &m);
  if (code) return code;
  ASSERT_OK(proto_stun_check_integrity(&m, c->key, PROTO_STUN_KEY_LEN));
  ASSERT_OK(proto_stun_check_fingerprint(&m));
  ASSERT(proto_stun_find(&m, PROTO_STUN_A_XOR_RELAYED_ADDRESS, &a));
  ASSERT_OK(proto_stun_get_xaddr(&a, m.txid, relayed));
  ASSERT(proto_stun_find(&m, PROTO_STUN_A_LIFETIME, &a));
  uint32_t life;
  ASSERT_OK(proto_stun_get_u32(&a, &life));
  ASSERT_EQ(life, RELAY_DEFAULT_LIFETIME);
  return 0;
}

static void peer_of(const struct sockaddr_in *sa, proto_stun_addr_t *out) {
  relay__addr_from_sa((const struct sockaddr *)sa, out);
}

static int permission(int fd, cred_t *c, const proto_stun_addr_t *peer) {
  uint8_t buf[512], rbuf[512];
  proto_stun_builder_t b;
  proto_stun_msg_t m;
  begin(&b, buf, sizeof(buf), PROTO_STUN_CREATE_PERMISSION, PROTO_STUN_REQUEST);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_PEER_ADDRESS, peer);
  sign(&b, c);
  return exchange(fd, &b, rbuf, sizeof(rbuf), &m);
}

static int channel_bind(int fd, cred_t *c, uint16_t chan, const proto_stun_addr_t *peer) {
  uint8_t buf[512], rbuf[512];
  proto_stun_builder_t b;
  proto_stun_msg_t m;
  begin(&b, buf, sizeof(buf), PROTO_STUN_CHANNEL_BIND, PROTO_STUN_REQUEST);
  proto_stun_add_channel(&b, chan);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_PEER_ADDRESS, peer);
  sign(&b, c);
  return exchange(fd, &b, rbuf, sizeof(rbuf), &m);
}

static void send_indication(int fd, const proto_stun_addr_t *peer, const char *data) {
  uint8_t buf[512];
  proto_stun_builder_t b;
  begin(&b, buf, sizeof(buf), PROTO_STUN_SEND, PROTO_STUN_INDICATION);
  proto_stun_add_xaddr(&b, PROTO_STUN_A_XOR_PEER_ADDRESS, peer);
  proto_stun_add(&b, PROTO_STUN_A_DATA, data, strlen(data));
  long n = proto_stun_finish(&b);
  send_to(fd, buf, (size_t)n, &relay_sa);
}

/* A relay on 127.0.0.1 with cfg's policy and quotas. */
static void start_relay_cfg(relay_config_t cfg) {
  cfg.overlay = "overlay.test", cfg.secret = SECRET, cfg.port_min = 42000, cfg.port_max = 42999;
  struct sockaddr_in *sa = (struct sockaddr_in *)&cfg.listen;
  sa->sin_family = AF_INET, sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_OK(relay_new(&loop, NULL, &cfg, &relay));
  char a[64];
  relay_addr(relay, a, sizeof(a));
  ASSERT(strncmp(a, "127.0.0.1:", 10) == 0);
  relay_sa.sin_family = AF_INET;
  relay_sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  relay_sa.sin_port = htons((uint16_t)atoi(a + 10));
  ASSERT(relay_sa.sin_port != 0);
  ASSERT_OK(relay_start(relay));

  /* A second relay on the same port fails cleanly, with nothing to close. */
  relay_t *other = (relay_t *)1;
  struct sockaddr_in *osa = (struct sockaddr_in *)&cfg.listen;
  osa->sin_port = relay_sa.sin_port;
  ASSERT_EQ(relay_new(&loop, NULL, &cfg, &other), -EADDRINUSE);
  ASSERT(other == NULL);
}

static void start_relay(unsigned quota_user, int allow_loopback) {
  start_relay_cfg((relay_config_t){.allow_loopback_peers = allow_loopback,
                                   .quota_per_user = quota_user, .quota_total = 50});
}

static int stopped;
static void on_stopped(relay_t *r, void *arg) { stopped++; }

static void stop_relay(void) {
  relay_stop(relay, on_stopped, NULL);
  ASSERT_EQ(stopped, 0); /* never from inside the call */
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(stopped, 1);
  relay_free(relay);
  stopped = 0;
}

static json_int_t counter(const char *group, const char *name) {
  json_t *j = relay_stats_json(relay);
  json_t *g = group ? json_object_get(j, group) : j;
  json_int_t v = json_integer_value(json_object_get(g, name));
  json_decref(j);
  return v;
}

static void test_binding(int fd, const struct sockaddr_in *self) {
  uint8_t buf[128], rbuf[512];
  proto_stun_builder_t b;
  proto_stun_msg_t m;
  proto_stun_attr_t a;
  proto_stun_addr_t mapped, want;
  begin(&b, buf, sizeof(buf), PROTO_STUN_BINDING, PROTO_STUN_REQUEST);
  proto_stun_add_fingerprint(&b);
  ASSERT_EQ(exchange(fd, &b, rbuf, sizeof(rbuf), &m), 0);
  ASSERT(proto_stun_find(&m, PROTO_STUN_A_XOR_MAPPED_ADDRESS, &a));
  ASSERT_OK(proto_stun_get_xaddr(&a, m.txid, &mapped));
  peer_of(self, &want);
  ASSERT(relay__addr_eq(&mapped, &want));
  ASSERT_OK(proto_stun_check_fingerprint(&m));
}

static void test_bad_input(int fd) {
  uint8_t rbuf[256];
  struct sockaddr_in from;
  json_int_t before = counter("dropped", "malformed");
  const uint8_t garbage[] = "hello, this is not STUN at all";
  send_to(fd, garbage, sizeof(garbage), &relay_sa);
  /* A STUN header whose length runs past the datagram. */
  uint8_t trunc[20 + 8] = {0x00, 0x01, 0x00, 0x40, 0x21, 0x12, 0xA4, 0x42};
  send_to(fd, trunc, sizeof(trunc), &relay_sa);
  /* An attribute whose length runs past the message. */
  uint8_t badattr[28] = {0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42};
  badattr[20] = 0x00, badattr[21] = 0x06, badattr[22] = 0x00, badattr[23] = 0x40;
  send_to(fd, badattr, sizeof(badattr), &relay_sa);
  /* ChannelData declaring more data than it carries. */
  uint8_t chan[8] = {0x40, 0x01, 0x00, 0x40, 1, 2, 3, 4};
  send_to(fd, chan, sizeof(chan), &relay_sa);
  /* A Binding request with a wrong FINGERPRINT. */
  uint8_t buf[128];
  proto_stun_builder_t b;
  begin(&b, buf, sizeof(buf), PROTO_STUN_BINDING, PROTO_STUN_REQUEST);
  proto_stun_add_fingerprint(&b);
  long n = proto_stun_finish(&b);
  buf[n - 1] ^= 1;
  send_to(fd, buf, (size_t)n, &relay_sa);
  ASSERT_EQ(wait_recv(fd, rbuf, sizeof(rbuf), &from), -1); /* none answered */
  ASSERT_EQ(counter("dropped", "malformed") - before, 5);
}

static void test_unknown_attr(int fd, cred_t *c) {
  uint8_t buf[512], rbuf[512];
  proto_stun_builder_t b;
  proto_stun_msg_t m;
  proto_stun_attr_t a;
  begin(&b, buf, sizeof(buf), PROTO_STUN_ALLOCATE, PROTO_STUN_REQUEST);
  proto_stun_add_transport(&b, PROTO_STUN_PROTO_UDP);
  proto_stun_add(&b, 0x7777, "abcd", 4);
  sign(&b, c);
  ASSERT_EQ(exchange(fd, &b, rbuf, sizeof(rbuf), &m), 420);
  uint16_t types[4];
  size_t nt;
  ASSERT(proto_stun_find(&m, PROTO_STUN_A_UNKNOWN_ATTRIBUTES, &a));
  ASSERT_OK(proto_stun_get_unknown(&a, types, 4, &nt));
  ASSERT_EQ(nt, 1);
  ASSERT_HEX_EQ(types[0], 0x7777);
}

static void test_auth(int fd) {
  uint8_t buf[512], rbuf[512];
  proto_stun_builder_t b;
  proto_stun_msg_t m;
  proto_stun_addr_t relayed;
  cred_t c;
  /* Wrong secret, then an expired credential: 401. */
  cred_make(&c, "mallory", 600, "not-the-secret");
  ASSERT_EQ(allocate(fd, &c, &relayed), 401);
  cred_make(&c, "alice", -10, SECRET);
  ASSERT_EQ(allocate(fd, &c, &relayed), 401);
  /* MI present but no NONCE: 400. */
  cred_make(&c, "alice", 600, SECRET);
  begin(&b, buf, sizeof(buf), PROTO_STUN_ALLOCATE, PROTO_STUN_REQUEST);
  proto_stun_add_transport(&b, PROTO_STUN_PROTO_UDP);
  proto_stun_add(&b, PROTO_STUN_A_USERNAME, c.user, strlen(c.user));
  proto_stun_add_integrity(&b, c.key, PROTO_STUN_KEY_LEN);
  ASSERT_EQ(exchange(fd, &b, rbuf, sizeof(rbuf), &m), 400);
  /* A nonce minted already expired: valid MI, 438 with a fresh nonce. */
  unsigned saved = relay__nonce_ttl;
  begin(&b, buf, sizeof(buf), PROTO_STUN_ALLOCATE, PROTO_STUN_REQUEST);
  proto_stun_add_transport(&b, PROTO_STUN_PROTO_UDP);
  relay__nonce_ttl = (unsigned)-5; /* the expiry wraps to 5 s ago */
  ASSERT_EQ(exchange(fd, &b, rbuf, sizeof(rbuf), &m), 401);
  relay__nonce_ttl = saved;
  proto_stun_attr_t a;
  ASSERT(proto_stun_find(&m, PROTO_STUN_A_NONCE, &a));
  memcpy(c.nonce, a.val, a.len);
  c.nonce[a.len] = '\0';
  json_int_t stale = counter("requests", "stale_nonces");
  ASSERT_EQ(allocate(fd, &c, &relayed), 438);
  ASSERT_EQ(counter("requests", "stale_nonces"), stale + 1);
  ASSERT(counter("requests", "auth_failures") >= 2);
}

static void expect_nothing(int fd) {
  uint8_t rbuf[256];
  struct sockaddr_in from;
  for (int i = 0; i < 20; i++) uv_run(&loop, UV_RUN_NOWAIT), usleep(2000);
  socklen_t sl = sizeof(from);
  ASSERT_EQ(recvfrom(fd, rbuf, sizeof(rbuf), 0, (struct sockaddr *)&from, &sl), -1);
}

static void test_relaying(int cfd, int pfd, const struct sockaddr_in *peer_sa) {
  cred_t c;
  proto_stun_addr_t relayed, peer;
  uint8_t rbuf[1024];
  struct sockaddr_in from;
  proto_stun_msg_t m;
  proto_stun_attr_t a;
  cred_make(&c, "alice", 600, SECRET);
  ASSERT_EQ(allocate(cfd, &c, &relayed), 0);
  ASSERT(relayed.port >= 42000 && relayed.port <= 42999);
  /* The same 5-tuple again (a new transaction): 437. */
  ASSERT_EQ(allocate(cfd, &c, &relayed), 437);
  peer_of(peer_sa, &peer);

  /* No permission yet: Send is dropped. */
  send_indication(cfd, &peer, "early");
  expect_nothing(pfd);
  ASSERT_EQ(permission(cfd, &c, &peer), 0);
  send_indication(cfd, &peer, "hello peer");
  ssize_t n = wait_recv(pfd, rbuf, sizeof(rbuf), &from);
  ASSERT_EQ(n, 10);
  ASSERT_MEM_EQ(rbuf, "hello peer", 10);
  ASSERT_EQ(ntohs(from.sin_port), relayed.port); /* from the relayed address */

  /* The peer answers: a Data indication. */
  struct sockaddr_storage rel_ss;
  relay__addr_to_sa(&relayed, &rel_ss);
  struct sockaddr_in rel_sa;
  memcpy(&rel_sa, &rel_ss, sizeof(rel_sa));
  send_to(pfd, "hi client", 9, &rel_sa);
  n = wait_recv(cfd, rbuf, sizeof(rbuf), &from);
  ASSERT(n > 0);
  ASSERT_OK(proto_stun_parse(rbuf, (size_t)n, &m));
  ASSERT_EQ(m.method, PROTO_STUN_DATA);
  ASSERT_EQ(m.cls, PROTO_STUN_INDICATION);
  proto_stun_addr_t got;
  ASSERT(proto_stun_find(&m, PROTO_STUN_A_XOR_PEER_ADDRESS, &a));
  ASSERT_OK(proto_stun_get_xaddr(&a, m.txid, &got));
  ASSERT(relay__addr_eq(&got, &peer));
  ASSERT(proto_stun_find(&m, PROTO_STUN_A_DATA, &a));
  ASSERT_EQ(a.len, 9);
  ASSERT_MEM_EQ(a.val, "hi client", 9);

  /* Channels: bad numbers 400, then 0x4001 both ways. */
  ASSERT_EQ(channel_bind(cfd, &c, 0x3FFF, &peer), 400);
  ASSERT_EQ(channel_bind(cfd, &c, 0x8000, &peer), 400);
  ASSERT_EQ(channel_bind(cfd, &c, 0x4001, &peer), 0);
  ASSERT_EQ(channel_bind(cfd, &c, 0x4001, &peer), 0); /* refresh */
  ASSERT_EQ(channel_bind(cfd, &c, 0x4002, &peer), 400); /* peer already bound */
  uint8_t cd[64];
  long cn = proto_stun_chan_build(cd, sizeof(cd), 0x4001, "via channel", 11, 0);
  send_to(cfd, cd, (size_t)cn, &relay_sa);
  n = wait_recv(pfd, rbuf, sizeof(rbuf), &from);
  ASSERT_EQ(n, 11);
  ASSERT_MEM_EQ(rbuf, "via channel", 11);
  send_to(pfd, "back", 4, &rel_sa);
  n = wait_recv(cfd, rbuf, sizeof(rbuf), &from);
  ASSERT_EQ(n, 8);
  proto_stun_chan_t ch;
  ASSERT_OK(proto_stun_chan_parse(rbuf, (size_t)n, &ch));
  ASSERT_HEX_EQ(ch.chan, 0x4001);
  ASSERT_MEM_EQ(ch.data, "back", 4);
  /* An unbound channel is dropped. */
  cn = proto_stun_chan_build(cd, sizeof(cd), 0x4003, "nope", 4, 0);
  send_to(cfd, cd, (size_t)cn, &relay_sa);
  expect_nothing(pfd);
  ASSERT_EQ(counter(NULL, "channels"), 1);
  ASSERT_EQ(counter(NULL, "permissions"), 1);

  /* Refresh with lifetime 0 deletes the allocation. */
  json_int_t allocs = counter(NULL, "allocations");
  uint8_t buf[256];
  proto_stun_builder_t b;
  begin(&b, buf, sizeof(buf), PROTO_STUN_REFRESH, PROTO_STUN_REQUEST);
  proto_stun_add_u32(&b, PROTO_STUN_A_LIFETIME, 0);
  sign(&b, &c);
  ASSERT_EQ(exchange(cfd, &b, rbuf, sizeof(rbuf), &m), 0);
  ASSERT_OK(proto_stun_check_integrity(&m, c.key, PROTO_STUN_KEY_LEN));
  ASSERT_EQ(counter(NULL, "allocations"), allocs - 1);
  ASSERT_EQ(permission(cfd, &c, &peer), 437);
  send_to(pfd, "too late", 8, &rel_sa);
  expect_nothing(cfd);
}

static void test_quota(void) {
  struct sockaddr_in sa;
  int fds[3];
  proto_stun_addr_t relayed;
  cred_t c;
  cred_make(&c, "bob", 600, SECRET);
  json_int_t before = counter(NULL, "allocations");
  for (int i = 0; i < 3; i++) {
    fds[i] = udp_socket(&sa);
    c.nonce[0] = '\0';
    ASSERT_EQ(allocate(fds[i], &c, &relayed), i < 2 ? 0 : 486);
  }
  ASSERT_EQ(counter("requests", "quota_refusals"), 1);
  ASSERT_EQ(counter("refused", "quota_user"), 1);
  ASSERT_EQ(counter(NULL, "allocations"), before + 2);
  /* Minting again for the same name (another EXPIRY) does not evade it. */
  cred_make(&c, "bob", 900, SECRET);
  ASSERT_EQ(allocate(fds[2], &c, &relayed), 486);
  ASSERT_EQ(counter("refused", "quota_user"), 2);
  for (int i = 0; i < 3; i++) close(fds[i]);
}

static proto_stun_addr_t addr_of(const char *ip, uint16_t port) {
  proto_stun_addr_t a = {.port = port};
  if (inet_pton(AF_INET, ip, a.ip) == 1) {
    a.family = 4;
  } else {
    ASSERT(inet_pton(AF_INET6, ip, a.ip) == 1);
    a.family = 6;
  }
  return a;
}

static int forbidden(const relay_t *r, const char *ip) {
  proto_stun_addr_t a = addr_of(ip, 5000);
  return relay__forbidden_peer(r, &a);
}

/* The peer rules of relay/peers.c, in their order, without sockets. */
static void test_forbidden(void) {
  relay_t r = {0};
  const char *denied[] = {"127.0.0.1", "0.0.0.0", "169.254.1.1", "224.0.0.1", "255.255.255.255",
                          "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "198.18.0.1",
                          "192.0.0.1", "192.0.2.7", "::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
                          "fc00::1", "fec0::1", "64:ff9b::102:304", "fe80::1", "ff02::1",
                          "2002:c0a8:0101::1"};
  for (size_t i = 0; i < sizeof(denied) / sizeof(*denied); i++) {
    if (!forbidden(&r, denied[i])) {
      fprintf(stderr, "%s allowed\n", denied[i]);
      ASSERT(0);
    }
  }
  ASSERT(!forbidden(&r, "8.8.8.8"));
  ASSERT(!forbidden(&r, "2001:4860::8888"));
  ASSERT(!forbidden(&r, "::ffff:8.8.8.8"));
  /* --allow-loopback-peers: 127/8 and ::1, nothing else. */
  r.allow_loopback = 1;
  ASSERT(!forbidden(&r, "127.0.0.1") && !forbidden(&r, "127.9.9.9") && !forbidden(&r, "::1"));
  ASSERT(forbidden(&r, "10.0.0.1") && forbidden(&r, "::2") && forbidden(&r, "fe80::1"));
  /* Allow punches a hole, deny wins over allow and over loopback. */
  int n = 0;
  ASSERT_OK(dht_cidr_parse_list("10.1.0.0/16,fd00::/8", r.allow, &n, RELAY_MAX_PEER_RANGES));
  r.n_allow = n, n = 0;
  ASSERT_OK(dht_cidr_parse_list("10.1.2.0/24,127.0.0.5,8.8.0.0/16", r.deny, &n,
                                RELAY_MAX_PEER_RANGES));
  r.n_deny = n;
  ASSERT(!forbidden(&r, "10.1.3.4") && !forbidden(&r, "fd12::1"));
  ASSERT(forbidden(&r, "10.1.2.3") && forbidden(&r, "10.2.0.1") && forbidden(&r, "fc00::1"));
  ASSERT(forbidden(&r, "127.0.0.5") && !forbidden(&r, "127.0.0.6"));
  ASSERT(forbidden(&r, "8.8.8.8") && !forbidden(&r, "8.9.8.8")); /* deny: any range */
  /* The node's own IPs (public ones here): no port of them is a peer
   * unless it is the relayed address of a live allocation (none here)... */
  relay_config_t cfg = {0};
  struct sockaddr_storage other_own;
  ASSERT_OK(dht_addr_parse("8.9.9.9:3478", &cfg.listen));
  ASSERT_OK(dht_addr_parse("8.9.9.7:7000", &other_own));
  cfg.own_addrs = &other_own, cfg.n_own_addrs = 1;
  relay_t o = {0};
  ASSERT_OK(relay__peers_config(&o, &cfg));
  ASSERT(forbidden(&o, "8.9.9.9") && forbidden(&o, "::ffff:8.9.9.9") && forbidden(&o, "8.9.9.7"));
  proto_stun_addr_t self = addr_of("8.9.9.9", 3478), other = addr_of("8.9.9.8", 3478);
  ASSERT(relay__own_peer_denied(&o, &self) && !relay__own_peer_denied(&o, &other));
  /* ... unless explicitly allowed, and an explicit deny holds per packet. */
  dht_cidr_t one;
  ASSERT_OK(dht_cidr_parse("8.9.9.9", &one));
  cfg.allow_peers = &one, cfg.n_allow_peers = 1;
  relay_t o2 = {0};
  ASSERT_OK(relay__peers_config(&o2, &cfg));
  ASSERT(!forbidden(&o2, "8.9.9.9") && !relay__own_peer_denied(&o2, &self));
  cfg.deny_peers = &one, cfg.n_deny_peers = 1;
  relay_t o3 = {0};
  ASSERT_OK(relay__peers_config(&o3, &cfg));
  ASSERT(forbidden(&o3, "8.9.9.9") && relay__own_peer_denied(&o3, &self));
  /* Too many ranges or own addresses: refused. */
  cfg.n_allow_peers = RELAY_MAX_PEER_RANGES + 1;
  ASSERT_EQ(relay__peers_config(&o3, &cfg), -EINVAL);
}

static void test_loopback_refused(int fd) {
  cred_t c;
  proto_stun_addr_t relayed, peer = {.family = 4, .port = 9, .ip = {127, 0, 0, 1}};
  cred_make(&c, "carol", 600, SECRET);
  ASSERT_EQ(allocate(fd, &c, &relayed), 0);
  ASSERT_EQ(permission(fd, &c, &peer), 403);
  ASSERT_EQ(channel_bind(fd, &c, 0x4000, &peer), 403);
}

/* Live state for the tests below: a client socket per allocation. */
typedef struct {
  int fd;
  struct sockaddr_in sa;
  cred_t c;
  proto_stun_addr_t relayed;
} client_t;

static int client_alloc(client_t *cl, const char *ip, const char *name, int64_t valid_for) {
  cl->fd = udp_socket_at(ip, &cl->sa);
  cred_make(&cl->c, name, valid_for, SECRET);
  return allocate(cl->fd, &cl->c, &cl->relayed);
}

static void refresh_zero(client_t *cl) {
  uint8_t buf[256], rbuf[512];
  proto_stun_builder_t b;
  proto_stun_msg_t m;
  begin(&b, buf, sizeof(buf), PROTO_STUN_REFRESH, PROTO_STUN_REQUEST);
  proto_stun_add_u32(&b, PROTO_STUN_A_LIFETIME, 0);
  sign(&b, &cl->c);
  ASSERT_EQ(exchange(cl->fd, &b, rbuf, sizeof(rbuf), &m), 0);
}

static struct sockaddr_in sa_of(const proto_stun_addr_t *a) {
  struct sockaddr_storage ss;
  struct sockaddr_in sa;
  relay__addr_to_sa(a, &ss);
  memcpy(&sa, &ss, sizeof(sa));
  return sa;
}

/* Special-purpose peers, --relay-allow/deny-peers and the node's own IP on
 * a relay without --allow-loopback-peers, while two honest clients relay
 * to each other through it (in process: their relayed addresses are ours). */
static void test_peers_live(void) {
  dht_cidr_t allow[1], deny[1];
  ASSERT_OK(dht_cidr_parse("10.1.0.0/16", &allow[0]));
  ASSERT_OK(dht_cidr_parse("10.1.2.0/24", &deny[0]));
  start_relay_cfg((relay_config_t){.allow_peers = allow, .n_allow_peers = 1, .deny_peers = deny,
                                   .n_deny_peers = 1});
  client_t a, b;
  ASSERT_EQ(client_alloc(&a, "127.0.0.1", "alice", 600), 0);
  ASSERT_EQ(client_alloc(&b, "127.0.0.1", "bob", 600), 0);
  struct sockaddr_in psa;
  int pfd = udp_socket(&psa); /* a service of this host on 127.0.0.1 */
  uint8_t rbuf[512];
  struct sockaddr_in from;
  /* The ranges of issue 10, one CreatePermission each, and a ChannelBind. */
  const char *bad[] = {"10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "198.18.0.1",
                       "192.0.0.1", "127.0.0.2", "10.1.2.3"};
  for (int round = 0; round < 2; round++) { /* repeated: still refused, still counted */
    json_int_t before = counter("refused", "peer_denied");
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
      proto_stun_addr_t p = addr_of(bad[i], 9);
      ASSERT_EQ(permission(a.fd, &a.c, &p), 403);
    }
    proto_stun_addr_t ten = addr_of("10.0.0.1", 9), self = addr_of("127.0.0.1", 9);
    ASSERT_EQ(channel_bind(a.fd, &a.c, 0x4000, &ten), 403);
    ASSERT_EQ(channel_bind(a.fd, &a.c, 0x4000, &self), 403); /* our IP, not a relayed address */
    ASSERT_EQ(counter("refused", "peer_denied") - before, 10);
  }
  proto_stun_addr_t allowed = addr_of("10.1.3.4", 9);
  ASSERT_EQ(permission(a.fd, &a.c, &allowed), 0); /* the hole --relay-allow-peers punched */
  /* Each other's relayed addresses, on our loopback IP: allowed (rule 3). */
  ASSERT_EQ(permission(a.fd, &a.c, &b.relayed), 0);
  ASSERT_EQ(permission(b.fd, &b.c, &a.relayed), 0);
  proto_stun_addr_t svc;
  peer_of(&psa, &svc);
  ASSERT_EQ(permission(a.fd, &a.c, &svc), 403);
  /* A's permission covers 127.0.0.1, every port: only relayed addresses
   * are served; the host's service gets nothing, counted. */
  json_int_t dropped = counter("dropped", "peer_denied");
  send_indication(a.fd, &svc, "to a local service");
  proto_stun_addr_t ten = addr_of("10.0.0.1", 9);
  send_indication(a.fd, &ten, "to a private network");
  expect_nothing(pfd);
  ASSERT_EQ(counter("dropped", "peer_denied") - dropped, 2);
  /* ... nor can the service reach A through its relayed address. */
  struct sockaddr_in arel = sa_of(&a.relayed);
  send_to(pfd, "from a local service", 20, &arel);
  expect_nothing(a.fd);
  ASSERT_EQ(counter("dropped", "peer_denied") - dropped, 3);
  /* Meanwhile A and B relay to each other. */
  json_int_t internal = counter(NULL, "relayed_internal");
  for (int i = 0; i < 20; i++) {
    send_indication(a.fd, &b.relayed, "honest");
    ssize_t n = wait_recv(b.fd, rbuf, sizeof(rbuf), &from);
    ASSERT(n > 0);
    proto_stun_msg_t m;
    proto_stun_attr_t at;
    ASSERT_OK(proto_stun_parse(rbuf, (size_t)n, &m));
    ASSERT(proto_stun_find(&m, PROTO_STUN_A_DATA, &at));
    ASSERT(at.len == 6 && memcmp(at.val, "honest", 6) == 0);
  }
  ASSERT_EQ(counter(NULL, "relayed_internal") - internal, 20);
  json_t *j = relay_stats_json(relay);
  /* Per allocation: A sent the 20 (the dropped ones do not count), B's
   * phone got them. */
  json_t *list = json_object_get(j, "allocation_list"), *e;
  size_t i, seen = 0;
  ASSERT_EQ(json_array_size(list), 2);
  json_array_foreach(list, i, e) {
    const char *user = strchr(json_string_value(json_object_get(e, "user")), ':') + 1;
    int is_a = strcmp(user, "alice") == 0;
    ASSERT(is_a || strcmp(user, "bob") == 0);
    ASSERT_EQ(json_integer_value(json_object_get(e, "to_peers")), is_a ? 20 : 0);
    ASSERT_EQ(json_integer_value(json_object_get(e, "to_client")), is_a ? 0 : 20);
    ASSERT_STR_EQ(json_string_value(json_object_get(e, "transport")), "udp");
    seen |= 1u << is_a;
  }
  ASSERT_EQ(seen, 3);
  json_t *peers = json_object_get(j, "peers");
  ASSERT_STR_EQ(json_string_value(json_array_get(json_object_get(peers, "allow"), 0)), "10.1.0.0/16");
  ASSERT_STR_EQ(json_string_value(json_array_get(json_object_get(peers, "deny"), 0)), "10.1.2.0/24");
  ASSERT(json_is_false(json_object_get(peers, "allow_loopback")));
  json_decref(j);
  stop_relay();
  close(a.fd), close(b.fd), close(pfd);
}

/* Credentials: the EXPIRY must lie between now and now + max_credential_ttl
 * (+ RELAY_CRED_SKEW); refused ones count only once they prove the secret. */
static void test_credentials(void) {
  start_relay_cfg((relay_config_t){.max_credential_ttl = 3600});
  client_t cl;
  int64_t y2100 = 4102444800 - (int64_t)time(NULL);
  for (int round = 0; round < 2; round++) {
    ASSERT_EQ(client_alloc(&cl, "127.0.0.1", "eve", y2100), 401);
    close(cl.fd);
    ASSERT_EQ(client_alloc(&cl, "127.0.0.1", "eve", 3600 + RELAY_CRED_SKEW + 60), 401);
    close(cl.fd);
    ASSERT_EQ(client_alloc(&cl, "127.0.0.1", "eve", -1), 401);
    close(cl.fd);
  }
  ASSERT_EQ(counter("refused", "credential_too_long"), 4);
  ASSERT_EQ(counter("refused", "credential_expired"), 2);
  /* Without the secret: a plain auth failure, not a credential counted. */
  cl.fd = udp_socket(&cl.sa);
  cred_make(&cl.c, "eve", y2100, "not-the-secret");
  ASSERT_EQ(allocate(cl.fd, &cl.c, &cl.relayed), 401);
  close(cl.fd);
  ASSERT_EQ(counter("refused", "credential_too_long"), 4);
  ASSERT_EQ(counter("requests", "auth_failures"), 7);
  ASSERT_EQ(counter(NULL, "max_credential_ttl"), 3600);
  /* Up to the maximum: fine. */
  ASSERT_EQ(client_alloc(&cl, "127.0.0.1", "alice", 3600), 0);
  close(cl.fd);
  stop_relay();
}

/* Quotas: per client IP (ten self-minted names from one IP), per user name
 * (one name, an EXPIRY per allocation, from several IPs), in all; a slot
 * freed by a deleted allocation can be taken again. */
static void test_quotas(void) {
  start_relay_cfg((relay_config_t){.quota_per_user = 3, .quota_per_ip = 4, .quota_total = 9});
  client_t cl[20];
  int k = 0;
  char name[16], ip[16];
  for (int i = 0; i < 10; i++) {
    snprintf(name, sizeof(name), "self%d", i);
    ASSERT_EQ(client_alloc(&cl[k++], "127.0.0.2", name, 600), i < 4 ? 0 : 486);
  }
  ASSERT_EQ(counter("refused", "quota_ip"), 6);
  for (int i = 0; i < 5; i++) {
    snprintf(ip, sizeof(ip), "127.0.0.%d", 3 + i);
    ASSERT_EQ(client_alloc(&cl[k++], ip, "mallory", 600 + i), i < 3 ? 0 : 486);
  }
  ASSERT_EQ(counter("refused", "quota_user"), 2);
  ASSERT_EQ(counter(NULL, "users"), 4 + 1);
  ASSERT_EQ(counter(NULL, "client_ips"), 1 + 3);
  ASSERT_EQ(client_alloc(&cl[k++], "127.0.0.20", "carol", 600), 0);
  ASSERT_EQ(client_alloc(&cl[k++], "127.0.0.21", "dave", 600), 0);
  ASSERT_EQ(client_alloc(&cl[k++], "127.0.0.22", "erin", 600), 508); /* 9 in all */
  ASSERT_EQ(counter("refused", "quota_total"), 1);
  ASSERT_EQ(counter("requests", "quota_refusals"), 6 + 2 + 1);
  /* Deleting an allocation frees its slots at once. */
  refresh_zero(&cl[0]);
  ASSERT_EQ(client_alloc(&cl[k++], "127.0.0.2", "self10", 600), 0);
  ASSERT_EQ(counter(NULL, "allocations"), 9);
  for (int i = 0; i < k; i++) close(cl[i].fd);
  stop_relay();
}

static void test_mint(void) {
  json_t *j;
  ASSERT_OK(relay_mint_credentials(SECRET, REALM, "alice", 3600, &j));
  const char *u = json_string_value(json_object_get(j, "username"));
  const char *p = json_string_value(json_object_get(j, "password"));
  ASSERT(u && p);
  ASSERT(strstr(u, ":alice") != NULL);
  ASSERT_OK(proto_stun_rest_check(u, strlen(u), p, strlen(p), (const uint8_t *)SECRET,
                                  strlen(SECRET), (uint64_t)time(NULL)));
  ASSERT_EQ(json_integer_value(json_object_get(j, "ttl")), 3600);
  ASSERT_STR_EQ(json_string_value(json_object_get(j, "realm")), REALM);
  json_decref(j);
  ASSERT_EQ(relay_mint_credentials(SECRET, REALM, "a:b", 60, &j), -EINVAL);
  ASSERT(j == NULL);
  ASSERT_EQ(relay_mint_credentials(SECRET, REALM, "a", 0, &j), -EINVAL);
}

int main(void) {
  ASSERT_OK(uv_loop_init(&loop));
  test_forbidden();
  test_mint();

  start_relay(2, 1);
  struct sockaddr_in csa, psa;
  int cfd = udp_socket(&csa), pfd = udp_socket(&psa);
  test_binding(cfd, &csa);
  test_bad_input(cfd);
  test_auth(cfd);
  cred_t c;
  cred_make(&c, "alice", 600, SECRET);
  proto_stun_addr_t relayed;
  struct sockaddr_in asa;
  int afd = udp_socket(&asa);
  c.nonce[0] = '\0';
  ASSERT_EQ(allocate(afd, &c, &relayed), 0); /* gets a nonce, then allocates */
  test_unknown_attr(afd, &c);
  close(afd);
  test_relaying(cfd, pfd, &psa);
  test_quota();
  test_binding(cfd, &csa); /* still serving */
  stop_relay();

  start_relay(10, 0);
  int lfd = udp_socket(&csa);
  test_loopback_refused(lfd);
  stop_relay();
  test_peers_live();
  test_credentials();
  test_quotas();
  close(lfd);
  close(cfd);
  close(pfd);
  ASSERT_OK(uv_loop_close(&loop));
  printf("relay: ok\n");
  return 0;
}
