/* libFuzzer target for the user record a node reads back from the DHT (any
 * peer can store bytes there): decode, and when it decodes, encode again
 * and decode that to the same binding, field by field. */
#include <stdlib.h>
#include <string.h>

#include "sip/sip_int.h"
#include "tests/fuzz/fuzz.h"

/* The decoder takes at most this many bytes of body. */
#define MAX_BODY 4096

static void same_binding(const sip_binding_t *a, const sip_binding_t *b) {
  CHECK(fuzz_same_str(a->aor, b->aor) && fuzz_same_str(a->contact, b->contact) && fuzz_same_str(a->uri, b->uri));
  CHECK(fuzz_same_str(a->call_id, b->call_id) && fuzz_same_str(a->path, b->path) && fuzz_same_str(a->node, b->node));
  CHECK(fuzz_same_str(a->received, b->received) && fuzz_same_str(a->transport, b->transport));
  CHECK(fuzz_same_str(a->edge, b->edge));
  CHECK(a->cseq == b->cseq && a->q1000 == b->q1000 && a->remaining == b->remaining);
  CHECK(strcmp(a->vid, b->vid) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dht_value_t v = {.vid = "v", .kind = DHT_KIND_USER, .expires_in = 600, .body = data, .body_len = size};
  sip_binding_t b;
  if (sip__binding_decode(&v, &b) != 0) return 0;
  /* Every string field is there (received, transport and edge may be ""). */
  CHECK(b.aor && b.contact && b.uri && b.call_id && b.path && b.node && b.received && b.transport &&
        b.edge);
  CHECK(b.q1000 >= 0 && b.q1000 <= 1000 && b.remaining == 600 - SIP_GRACE_S);
  (void)sip__binding_hop_ok(b.path);
  (void)sip__binding_hop_ok(b.edge);
  char *text = sip__binding_encode(&b, 600);
  CHECK(text != NULL);
  /* A body grown past the decoder's bound (encode adds "expires", which
   * decode ignores) is the only excuse for not decoding. */
  dht_value_t w = {.vid = "v", .kind = DHT_KIND_USER, .expires_in = 600,
                   .body = (const uint8_t *)text, .body_len = strlen(text)};
  sip_binding_t c;
  if (sip__binding_decode(&w, &c) == 0) {
    same_binding(&b, &c);
    sip__binding_clear(&c);
  } else {
    CHECK(strlen(text) > MAX_BODY);
  }
  free(text);
  sip__binding_clear(&b);
  return 0;
}
