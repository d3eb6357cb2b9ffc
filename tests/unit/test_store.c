/* Storage: value sets under one key, sequence numbers, expiry, tombstones. */
#include <string.h>

#include "dht/internal.h"
#include "tests/unit/test.h"

static proto_value_t val(const char *vid, uint64_t seq, uint32_t ttl, const char *body) {
  proto_value_t v = {.vid = (const uint8_t *)vid, .vid_len = (uint8_t)strlen(vid), .kind = 1,
                     .seq = seq, .ttl = ttl, .body = (const uint8_t *)body,
                     .body_len = (uint32_t)strlen(body)};
  memset(v.owner, 0x11, sizeof(v.owner));
  return v;
}

static const dht__value_t *find(dht__store_t *s, const dht_id_t *key, const char *vid) {
  dht__key_t *k = dht__store_find(s, key);
  for (int i = 0; k && i < k->n; i++)
    if (strcmp(k->values[i].vid, vid) == 0) return &k->values[i];
  return NULL;
}

static void test_sets_and_seq(void) {
  dht__store_t s;
  dht__store_init(&s);
  dht_id_t key;
  dht_id_of("sip:overlay.test", &key);
  proto_value_t a = val("proxy-a", 10, 60, "A1"), b = val("proxy-b", 5, 60, "B1");
  ASSERT_EQ(dht__store_apply(&s, &key, &a, NULL, 0), 1);
  ASSERT_EQ(dht__store_apply(&s, &key, &b, NULL, 0), 1);
  ASSERT_EQ(dht__store_find(&s, &key)->n, 2); /* two proxy peers side by side */
  ASSERT_EQ(s.nkeys, 1);
  /* Older sequence loses, newer wins. */
  proto_value_t old = val("proxy-a", 9, 600, "A0"), newer = val("proxy-a", 11, 60, "A2");
  ASSERT_EQ(dht__store_apply(&s, &key, &old, NULL, 0), 0);
  ASSERT_MEM_EQ(find(&s, &key, "proxy-a")->body, "A1", 2);
  ASSERT_EQ(dht__store_apply(&s, &key, &newer, NULL, 0), 1);
  ASSERT_MEM_EQ(find(&s, &key, "proxy-a")->body, "A2", 2);
  /* Same sequence: a refresh extends the life, a shorter one is ignored. */
  proto_value_t refresh = val("proxy-a", 11, 120, "A2");
  ASSERT_EQ(dht__store_apply(&s, &key, &refresh, NULL, 1000), 1);
  ASSERT_UINT_EQ(find(&s, &key, "proxy-a")->expires, 121000);
  ASSERT_EQ(dht__store_apply(&s, &key, &newer, NULL, 0), 0);
  /* A NUL inside a value id is refused. */
  proto_value_t nul = val("x", 1, 60, "");
  nul.vid = (const uint8_t *)"a\0b";
  nul.vid_len = 3;
  ASSERT_EQ(dht__store_apply(&s, &key, &nul, NULL, 0), 0);
  dht__store_free(&s);
}

static void test_expiry(void) {
  dht__store_t s;
  dht__store_init(&s);
  dht_id_t k1, k2;
  dht_id_of("sip:alice@overlay.test", &k1);
  dht_id_of("turn:overlay.test", &k2);
  proto_value_t shortv = val("c1", 1, 10, "x"), longv = val("c2", 1, 100, "y"), t = val("r", 1, 10, "z");
  dht__store_apply(&s, &k1, &shortv, NULL, 0);
  dht__store_apply(&s, &k1, &longv, NULL, 0);
  dht__store_apply(&s, &k2, &t, NULL, 0);
  ASSERT_EQ(dht__store_live(&s, 0), 3);
  ASSERT_EQ(dht__store_sweep(&s, 9999), 0);
  ASSERT_EQ(dht__store_sweep(&s, 10000), 2);
  ASSERT_EQ(dht__store_live(&s, 10000), 1);
  ASSERT(dht__store_find(&s, &k2) == NULL); /* an empty key goes too */
  ASSERT(find(&s, &k1, "c2") != NULL);
  /* ttl 0 is never stored. */
  proto_value_t zero = val("c3", 1, 0, "w");
  ASSERT_EQ(dht__store_apply(&s, &k1, &zero, NULL, 0), 0);
  dht__store_free(&s);
}

static void test_tombstone_and_encode(void) {
  dht__store_t s;
  dht__store_init(&s);
  dht_id_t key;
  dht_id_of("k", &key);
  proto_value_t v = val("v", 1, 60, "body"), dead = val("v", 2, 60, "");
  dead.flags = PROTO_VF_TOMBSTONE;
  dht__store_apply(&s, &key, &v, NULL, 0);
  ASSERT_EQ(dht__store_apply(&s, &key, &dead, NULL, 0), 1);
  ASSERT_EQ(dht__store_live(&s, 0), 0); /* removed, but remembered */
  ASSERT_EQ(dht__store_apply(&s, &key, &v, NULL, 0), 0); /* a stale copy cannot resurrect it */
  /* Encode what we hold and decode it again. */
  dht__key_t *k = dht__store_find(&s, &key);
  uint8_t buf[512];
  long n = dht__store_encode(k, 0, false, 30000, buf, sizeof(buf));
  ASSERT_GT(n, 0);
  ASSERT_LE((size_t)n, dht__store_encoded_size(k));
  proto_store_t st;
  ASSERT_OK(proto_store_decode(buf, (size_t)n, &st));
  proto_value_t out;
  ASSERT_EQ(proto_value_next(&st.values, &out), 1);
  ASSERT_EQ(out.ttl, 30); /* remaining life, not the original */
  ASSERT_EQ(out.flags, PROTO_VF_TOMBSTONE);
  /* Many keys force the table to grow; all stay reachable. */
  for (int i = 0; i < 1000; i++) {
    char name[16];
    snprintf(name, sizeof(name), "key%d", i);
    dht_id_t kk;
    dht_id_of(name, &kk);
    dht__store_apply(&s, &kk, &v, NULL, 0);
  }
  for (int i = 0; i < 1000; i++) {
    char name[16];
    snprintf(name, sizeof(name), "key%d", i);
    dht_id_t kk;
    dht_id_of(name, &kk);
    ASSERT(dht__store_find(&s, &kk) != NULL);
  }
  ASSERT_EQ(s.nkeys, 1001);
  dht__store_free(&s);
}

/* Many values under one key: found through the index, after removals too;
 * the key's size is what an encode of it takes; the limits refuse at the
 * right count. */
static void test_index_and_limits(void) {
  dht__store_t s;
  dht__store_init(&s);
  dht_id_t key;
  dht_id_of("big-key", &key);
  char vids[300][8];
  for (int i = 0; i < 300; i++) {
    snprintf(vids[i], sizeof(vids[i]), "v%d", i);
    proto_value_t v = val(vids[i], 1, 60 + (uint32_t)(i % 7), "body");
    ASSERT_EQ(dht__store_apply(&s, &key, &v, NULL, 0), 1);
  }
  dht__key_t *k = dht__store_find(&s, &key);
  for (int i = 0; i < 300; i++) ASSERT_EQ(dht__store_value(k, (const uint8_t *)vids[i], strlen(vids[i])) != NULL, 1);
  ASSERT_EQ(dht__store_value(k, (const uint8_t *)"v300", 4) == NULL, 1);
  ASSERT_EQ(dht__store_sweep(&s, 62 * 1000 + 1), 3 * 43); /* ttl 60, 61, 62 gone */
  for (int i = 0; i < 300; i++)
    ASSERT_EQ(dht__store_value(k, (const uint8_t *)vids[i], strlen(vids[i])) != NULL, i % 7 >= 3);
  uint8_t buf[PROTO_MAX_BODY];
  long n = dht__store_encode(k, 0, false, 0, buf, sizeof(buf));
  ASSERT_EQ((size_t)n, dht__store_encoded_size(k));

  dht__store_free(&s);
  dht__store_init(&s);
  dht_limits_t lim = {.key_values = 4, .owner_key_values = 3, .owner_values = 5, .owner_kb = 1};
  dht_id_t k2, k3;
  dht_id_of("k2", &k2);
  dht_id_of("k3", &k3);
  proto_value_t a = val("a", 1, 60, "x"), b = val("b", 1, 60, "x"), c = val("c", 1, 60, "x"),
                d = val("d", 1, 60, "x");
  ASSERT_EQ(dht__store_admit(&s, &k2, &a, NULL, &lim), 0);
  dht__store_apply(&s, &k2, &a, NULL, 0);
  dht__store_apply(&s, &k2, &b, NULL, 0);
  dht__store_apply(&s, &k2, &c, NULL, 0);
  ASSERT_EQ(dht__store_admit(&s, &k2, &d, NULL, &lim), DHT__FULL_OWNER_KEY);
  proto_value_t c2 = val("c", 2, 60, "y"); /* replacing one's own value is fine */
  ASSERT_EQ(dht__store_admit(&s, &k2, &c2, NULL, &lim), 0);
  proto_value_t e = val("e", 1, 60, "x");
  memset(e.owner, 0x22, sizeof(e.owner));
  ASSERT_EQ(dht__store_admit(&s, &k2, &e, NULL, &lim), 0); /* another owner */
  dht__store_apply(&s, &k2, &e, NULL, 0);
  memset(d.owner, 0x22, sizeof(d.owner));
  ASSERT_EQ(dht__store_admit(&s, &k2, &d, NULL, &lim), DHT__FULL_KEY); /* 4 values */
  dht__store_apply(&s, &k3, &d, NULL, 0);
  proto_value_t f = val("f", 1, 60, "x"), g = val("g", 1, 60, "x");
  ASSERT_EQ(dht__store_admit(&s, &k3, &f, NULL, &lim), 0);
  dht__store_apply(&s, &k3, &f, NULL, 0);
  /* 0x11.. holds a, b, c under k2 and f under k3; 0x22.. e and d. */
  lim.owner_values = 4;
  ASSERT_EQ(dht__store_admit(&s, &k3, &g, NULL, &lim), DHT__FULL_OWNER);
  proto_value_t big = val("h", 1, 60, "x");
  char body[2000];
  memset(body, 'b', sizeof(body));
  big.body = (const uint8_t *)body;
  big.body_len = sizeof(body);
  memset(big.owner, 0x33, sizeof(big.owner));
  ASSERT_EQ(dht__store_admit(&s, &k3, &big, NULL, &lim), 0); /* a new owner: no total yet */
  dht__store_apply(&s, &k3, &big, NULL, 0);
  big.vid = (const uint8_t *)"i";
  ASSERT_EQ(dht__store_admit(&s, &k3, &big, NULL, &lim), DHT__FULL_OWNER); /* over owner_kb */
  dht__store_free(&s);
}

int main(void) {
  test_index_and_limits();
  test_sets_and_seq();
  test_expiry();
  test_tombstone_and_encode();
  printf("test_store: ok\n");
  return 0;
}
