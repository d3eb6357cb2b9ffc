/* libFuzzer target for the user record a node reads back from the DHT (any
 * peer can store bytes there): decode, and when it decodes, encode again
 * and decode that to the same fields. */
#include <stdlib.h>
#include <string.h>

#include "sip/sip_int.h"

static int same_str(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dht_value_t v = {.vid = "v", .kind = DHT_KIND_USER, .expires_in = 600, .body = data, .body_len = size};
  sip_binding_t b;
  memset(&b, 0, sizeof(b));
  if (sip__binding_decode(&v, &b) != 0) return 0;
  char *text = sip__binding_encode(&b, 600);
  if (text) {
    dht_value_t w = {.vid = "v", .kind = DHT_KIND_USER, .expires_in = 600,
                     .body = (const uint8_t *)text, .body_len = strlen(text)};
    sip_binding_t c;
    memset(&c, 0, sizeof(c));
    if (sip__binding_decode(&w, &c) != 0 || !same_str(b.aor, c.aor) || !same_str(b.contact, c.contact) ||
        !same_str(b.path, c.path) || !same_str(b.edge, c.edge) || b.cseq != c.cseq)
      abort();
    sip__binding_clear(&c);
    free(text);
  }
  sip__binding_clear(&b);
  return 0;
}
