/* libFuzzer target for the proxy-peer value under sip:OVERLAY (gateway.c):
 * every node reads the values found there, which any peer can store, and
 * sends requests for public domains to the URI one names.  A value that
 * decodes names a URI that is "sip:" and no delimiter a header could be
 * split at; encoded as a proxy peer publishes it and decoded again, it
 * gives the same peer, TLS address included. */
#include <stdlib.h>
#include <string.h>

#include "sip/sip_int.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dht_value_t v = {.vid = "v", .kind = DHT_KIND_PROXY, .expires_in = SIP_PEER_TTL_S,
                   .body = data, .body_len = size};
  sip_peer_t p;
  memset(&p, 0xa5, sizeof(p)); /* no decoder may rely on a clean out-parameter */
  if (sip__peer_decode(&v, &p) != 0) return 0;
  CHECK(memchr(p.uri, '\0', sizeof(p.uri)) && memchr(p.node, '\0', sizeof(p.node)));
  CHECK(strncmp(p.uri, "sip:", 4) == 0 && !strpbrk(p.uri, " \t\r\n<>;,\""));
  /* The node id is kept cut to DHT_ID_HEX - 1 bytes, maybe inside a UTF-8
   * sequence; nothing reads it back but this check. */
  json_t *node = json_string(p.node);
  if (!node) return 0;
  json_decref(node);
  /* A TLS address is taken only as a plain IP:PORT; the peer's is
   * "sip:IP:PORT;transport=tls", which must not split a header. */
  char hp[sizeof(p.tls)] = "";
  if (p.tls[0]) {
    CHECK(memchr(p.tls, '\0', sizeof(p.tls)) && strncmp(p.tls, "sip:", 4) == 0);
    const char *end = strstr(p.tls, ";transport=tls");
    CHECK(end && strcmp(end, ";transport=tls") == 0 && !strpbrk(p.tls, " \t\r\n<>,\"@"));
    memcpy(hp, p.tls + 4, (size_t)(end - p.tls - 4));
    hp[end - p.tls - 4] = '\0';
  }
  char *body = sip__peer_encode(p.uri, p.node, hp);
  CHECK(body != NULL);
  dht_value_t w = {.vid = "v", .kind = DHT_KIND_PROXY, .expires_in = SIP_PEER_TTL_S,
                   .body = (const uint8_t *)body, .body_len = strlen(body)};
  sip_peer_t q;
  CHECK(sip__peer_decode(&w, &q) == 0);
  CHECK(strcmp(p.uri, q.uri) == 0 && strcmp(p.node, q.node) == 0 && strcmp(p.tls, q.tls) == 0);
  free(body);
  return 0;
}
