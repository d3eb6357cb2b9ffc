/* libFuzzer target for the admin request parser: any line either parses
 * into a checked request or yields an error message, never a crash. */
#include <stdlib.h>
#include <string.h>

#include "node/node.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const extra[] = {"sip", "registrations", "relays", NULL};
  char err[300] = "";
  json_t *req = node_request_parse((const char *)data, size, extra, err, sizeof(err));
  if (!req) {
    if (!err[0]) abort(); /* every refusal says why */
    return 0;
  }
  /* What passed has a string cmd; a checked key is a non-empty string. */
  json_t *cmd = json_object_get(req, "cmd");
  if (!json_is_string(cmd)) abort();
  const char *c = json_string_value(cmd);
  if (!strcmp(c, "get") || !strcmp(c, "put") || !strcmp(c, "lookup")) {
    json_t *key = json_object_get(req, "key");
    if (!json_is_string(key) || json_string_length(key) == 0) abort();
  }
  /* A phone-config user goes into a config line: only its safe set. */
  if (!strcmp(c, "phone-config")) {
    json_t *user = json_object_get(req, "user");
    const char *u = json_string_value(user);
    if (!u || !*u || strspn(u, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*") !=
                         json_string_length(user))
      abort();
  }
  char *text = json_dumps(req, JSON_COMPACT);
  if (!text) abort();
  free(text);
  json_decref(req);
  return 0;
}
