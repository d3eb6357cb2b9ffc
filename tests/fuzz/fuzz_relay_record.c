/* libFuzzer target for the relay value under turn:OVERLAY (records.c):
 * every node lists the values found there, which any peer can store, for
 * the admin relays command.  A value taken as a relay's gives an entry
 * with a string addr, an array of transports and the owner; the body a
 * relay publishes for that addr is taken back as the same entry. */
#include <stdlib.h>
#include <string.h>

#include "relay/relay_int.h"
#include "tests/fuzz/fuzz.h"

static const dht_id_t owner = {{0x01, 0x23, 0x45, 0x67}};

static json_t *entry(const uint8_t *body, size_t len) {
  dht_value_t v = {.vid = "v", .kind = DHT_KIND_RELAY, .owner = owner, .expires_in = 60,
                   .body = body, .body_len = len};
  return relay__record_entry(&v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_t *e = entry(data, size);
  if (!e) return 0;
  json_t *addr = json_object_get(e, "addr");
  CHECK(json_object_size(e) == 3 && json_is_string(addr));
  CHECK(json_is_array(json_object_get(e, "transports")));
  const char *o = json_string_value(json_object_get(e, "owner"));
  CHECK(o && strcmp(o, "0123456700000000000000000000000000000000") == 0);
  char *body = relay__record_encode(json_string_value(addr));
  CHECK(body != NULL);
  json_t *again = entry((const uint8_t *)body, strlen(body));
  json_t *want = json_pack("{sO s[ss] ss}", "addr", addr, "transports", "udp", "tcp", "owner", o);
  CHECK(again && want && json_equal(again, want));
  json_decref(want);
  json_decref(again);
  free(body);
  json_decref(e);
  return 0;
}
