/* libFuzzer target for the admin request parser: any line either parses
 * into a checked request or yields an error message, never a crash.  A put
 * that passes is carried on as the node would: its value encoded as the
 * body stored, that body read back as get's answer lists it, which must
 * hold the same value. */
#include <stdlib.h>
#include <string.h>

#include "node/node.h"
#include "tests/fuzz/fuzz.h"

/* put, then get: the value comes back as it went. */
static void put_then_get(json_t *req) {
  json_t *value = json_object_get(req, "value");
  char *body = node__put_body(value);
  CHECK(body != NULL);
  dht_value_t v = {.vid = "v", .kind = DHT_KIND_JSON, .expires_in = 3600,
                   .body = (const uint8_t *)body, .body_len = strlen(body)};
  json_t *e = node__value_json(&v);
  CHECK(e != NULL && json_equal(json_object_get(e, "value"), value));
  json_decref(e);
  free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const extra[] = {"sip", "registrations", "relays", NULL};
  char err[300] = "";
  json_t *req = node_request_parse((const char *)data, size, extra, err, sizeof(err));
  if (!req) {
    CHECK(err[0]); /* every refusal says why */
    return 0;
  }
  /* What passed has a string cmd; a checked key is a non-empty string. */
  json_t *cmd = json_object_get(req, "cmd");
  CHECK(json_is_string(cmd));
  const char *c = json_string_value(cmd);
  if (!strcmp(c, "get") || !strcmp(c, "put") || !strcmp(c, "lookup")) {
    json_t *key = json_object_get(req, "key");
    CHECK(json_is_string(key) && json_string_length(key) > 0);
  }
  /* A phone-config user goes into a config line: only its safe set. */
  if (!strcmp(c, "phone-config")) {
    json_t *user = json_object_get(req, "user");
    const char *u = json_string_value(user);
    if (!u || !*u || strspn(u, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*") !=
                         json_string_length(user))
      CHECK(0);
  }
  if (!strcmp(c, "put")) put_then_get(req);
  /* A request that passed passes again once printed and parsed. */
  char *text = json_dumps(req, JSON_COMPACT);
  CHECK(text != NULL);
  json_t *again = node_request_parse(text, strlen(text), extra, err, sizeof(err));
  CHECK(again != NULL && json_equal(again, req));
  json_decref(again);
  free(text);
  json_decref(req);
  return 0;
}
