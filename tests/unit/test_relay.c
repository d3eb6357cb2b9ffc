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

static int udp_socket(struct sockaddr_in *bound) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  ASSERT(fd >= 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ASSERT_OK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)));
  socklen_t sl = sizeof(*bound);
  getsockname(fd, (struct sockaddr *)bound, &sl);
  return fd;
}

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

static void start_relay(unsigned quota_user, int allow_loopback) {
  relay_config_t cfg = {.overlay = "overlay.test", .secret = SECRET, .port_min = 42000,
                        .port_max = 42999, .allow_loopback_peers = allow_loopback,
                        .quota_per_user = quota_user, .quota_total = 50};
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
  ASSERT_EQ(counter(NULL, "allocations"), before + 2);
  for (int i = 0; i < 3; i++) close(fds[i]);
}

static void test_forbidden(void) {
  relay_t r = {.allow_loopback = 0};
  proto_stun_addr_t a = {.family = 4, .port = 1, .ip = {127, 0, 0, 1}};
  ASSERT(relay__forbidden_peer(&r, &a));
  r.allow_loopback = 1;
  ASSERT(!relay__forbidden_peer(&r, &a));
  uint8_t bad[][4] = {{0, 0, 0, 0}, {169, 254, 1, 1}, {224, 0, 0, 1}, {255, 255, 255, 255}};
  for (size_t i = 0; i < 4; i++) {
    memcpy(a.ip, bad[i], 4);
    ASSERT(relay__forbidden_peer(&r, &a));
  }
  uint8_t ok[4] = {192, 0, 2, 7};
  memcpy(a.ip, ok, 4);
  ASSERT(!relay__forbidden_peer(&r, &a));
  proto_stun_addr_t v6 = {.family = 6, .ip = {[15] = 1}};
  r.allow_loopback = 0;
  ASSERT(relay__forbidden_peer(&r, &v6)); /* ::1 */
  uint8_t mapped[16] = {[10] = 0xff, [11] = 0xff, [12] = 127, [15] = 1};
  memcpy(v6.ip, mapped, 16);
  ASSERT(relay__forbidden_peer(&r, &v6)); /* ::ffff:127.0.0.1 */
}

static void test_loopback_refused(int fd) {
  cred_t c;
  proto_stun_addr_t relayed, peer = {.family = 4, .port = 9, .ip = {127, 0, 0, 1}};
  cred_make(&c, "carol", 600, SECRET);
  ASSERT_EQ(allocate(fd, &c, &relayed), 0);
  ASSERT_EQ(permission(fd, &c, &peer), 403);
  ASSERT_EQ(channel_bind(fd, &c, 0x4000, &peer), 403);
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
  close(lfd);
  close(cfd);
  close(pfd);
  ASSERT_OK(uv_loop_close(&loop));
  printf("relay: ok\n");
  return 0;
}
