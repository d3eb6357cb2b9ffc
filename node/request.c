/* Admin request validation, and the JSON of the values put and got: pure
 * (jansson only), so that the fuzzers and the unit tests reach it without a
 * running node.  The commands in commands.c trust what passes here. */
#include <stdio.h>
#include <string.h>

#include "node/node.h"

#define MAX_KEY 1024
#define MAX_TTL (365 * 86400)

static int need_key(json_t *req, const char *cmd, char *err, size_t len) {
  json_t *key = json_object_get(req, "key");
  if (json_is_string(key) && json_string_length(key) > 0 && json_string_length(key) <= MAX_KEY &&
      strlen(json_string_value(key)) == json_string_length(key))
    return 0;
  snprintf(err, len, "%s: \"key\" must be a string of 1 to %d bytes", cmd, MAX_KEY);
  return -1;
}

/* An optional value id: 1 to 255 bytes, no NUL. */
static int check_vid(json_t *vid, const char *cmd, char *err, size_t len) {
  if (vid && (!json_is_string(vid) || json_string_length(vid) == 0 || json_string_length(vid) > 255 ||
              strlen(json_string_value(vid)) != json_string_length(vid))) {
    snprintf(err, len, "%s: \"value_id\" must be a string of 1 to 255 bytes", cmd);
    return -1;
  }
  return 0;
}

static int check_put(json_t *req, char *err, size_t len) {
  if (need_key(req, "put", err, len)) return -1;
  json_t *ttl = json_object_get(req, "ttl"), *vid = json_object_get(req, "value_id");
  if (!json_object_get(req, "value")) {
    snprintf(err, len, "put: \"value\" is required");
    return -1;
  }
  if (ttl && (!json_is_integer(ttl) || json_integer_value(ttl) < 1 || json_integer_value(ttl) > MAX_TTL)) {
    snprintf(err, len, "put: \"ttl\" must be an integer number of seconds, 1 to %d", MAX_TTL);
    return -1;
  }
  return check_vid(vid, "put", err, len);
}

static int check_remove(json_t *req, char *err, size_t len) {
  if (need_key(req, "remove", err, len)) return -1;
  return check_vid(json_object_get(req, "value_id"), "remove", err, len);
}

static int check_key(json_t *req, char *err, size_t len) {
  return need_key(req, json_string_value(json_object_get(req, "cmd")), err, len);
}

static int check_none(json_t *req, char *err, size_t len) { return 0; }

/* get: a key, and "local" (only this node's own copy) a boolean if given. */
static int check_get(json_t *req, char *err, size_t len) {
  json_t *local = json_object_get(req, "local");
  if (local && !json_is_boolean(local)) {
    snprintf(err, len, "get: \"local\" must be true or false");
    return -1;
  }
  return check_key(req, err, len);
}

/* A credential's optional ttl: up to 30 days. */
static int check_ttl(json_t *req, const char *cmd, char *err, size_t len) {
  json_t *ttl = json_object_get(req, "ttl");
  if (ttl && (!json_is_integer(ttl) || json_integer_value(ttl) < 1 || json_integer_value(ttl) > 30 * 86400)) {
    snprintf(err, len, "%s: \"ttl\" must be 1 to %d seconds", cmd, 30 * 86400);
    return -1;
  }
  return 0;
}

/* An optional field that must be one of two strings. */
static int check_choice(json_t *req, const char *cmd, const char *field, const char *a, const char *b, char *err,
                        size_t len) {
  json_t *v = json_object_get(req, field);
  const char *s = json_string_value(v);
  if (v && (!s || (strcmp(s, a) && strcmp(s, b)))) {
    snprintf(err, len, "%s: \"%s\" must be \"%s\" or \"%s\"", cmd, field, a, b);
    return -1;
  }
  return 0;
}

/* A name without ':' (the username is "EXPIRY:NAME"), and a ttl up to 30
 * days. */
static int check_turn_cred(json_t *req, char *err, size_t len) {
  json_t *user = json_object_get(req, "user");
  const char *u = json_string_value(user);
  if (!u || !*u || json_string_length(user) > 256 || strlen(u) != json_string_length(user) ||
      strchr(u, ':')) {
    snprintf(err, len, "turn-credentials: \"user\" must be 1 to 256 bytes without ':'");
    return -1;
  }
  return check_ttl(req, "turn-credentials", err, len);
}

/* The user part of sip:USER@OVERLAY, written into a phone's config: 1 to
 * 64 of RFC 3261's unreserved characters other than the quote and
 * parentheses (so it needs no escaping in a URI or a config line). */
#define PHONE_USER_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*"
static int check_phone_config(json_t *req, char *err, size_t len) {
  json_t *user = json_object_get(req, "user");
  const char *u = json_string_value(user);
  size_t ul = u ? json_string_length(user) : 0;
  if (!u || ul == 0 || ul > 64 || strspn(u, PHONE_USER_CHARS) != ul) {
    snprintf(err, len, "phone-config: \"user\" must be 1 to 64 letters, digits or -_.!~*");
    return -1;
  }
  if (check_choice(req, "phone-config", "format", "baresip", "json", err, len) ||
      check_choice(req, "phone-config", "media", "relay", "ice", err, len))
    return -1;
  return check_ttl(req, "phone-config", err, len);
}

static const struct {
  const char *name;
  int (*check)(json_t *req, char *err, size_t len);
} core_commands[] = {
    {"status", check_none}, {"put", check_put},    {"get", check_get}, {"remove", check_remove},
    {"lookup", check_key},  {"stats", check_none}, {"leave", check_none},
    {"relays", check_none}, {"turn-credentials", check_turn_cred}, {"phone-config", check_phone_config},
    {"check-public", check_none}, {"check-split", check_none},
};

int node_request_check(json_t *req, const char *const *extra, char *err, size_t len) {
  if (!json_is_object(req)) {
    snprintf(err, len, "request must be a JSON object");
    return -1;
  }
  json_t *cmd = json_object_get(req, "cmd");
  if (!json_is_string(cmd)) {
    snprintf(err, len, "\"cmd\" must be a string");
    return -1;
  }
  const char *c = json_string_value(cmd);
  for (size_t i = 0; i < sizeof(core_commands) / sizeof(*core_commands); i++)
    if (strcmp(c, core_commands[i].name) == 0) return core_commands[i].check(req, err, len);
  for (int i = 0; extra && extra[i]; i++)
    if (strcmp(c, extra[i]) == 0) return 0; /* a role's command checks its own fields */
  snprintf(err, len, "unknown cmd \"%.64s\"", c);
  return -1;
}

json_t *node_request_parse(const char *line, size_t n, const char *const *extra, char *err, size_t len) {
  json_error_t je;
  json_t *req = json_loadb(line, n, JSON_REJECT_DUPLICATES, &je);
  if (!req) {
    snprintf(err, len, "not JSON: %s", je.text);
    return NULL;
  }
  if (node_request_check(req, extra, err, len)) {
    json_decref(req);
    return NULL;
  }
  return req;
}

char *node__put_body(json_t *value) { return json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY); }

json_t *node__value_json(const dht_value_t *v) {
  json_error_t je;
  json_t *j = json_loadb((const char *)v->body, v->body_len, JSON_DECODE_ANY, &je);
  if (!j) j = json_stringn((const char *)v->body, v->body_len);
  if (!j) j = json_null(); /* not JSON and not UTF-8: say so rather than fail */
  char owner[DHT_ID_HEX];
  dht_id_hex(&v->owner, owner);
  return json_pack("{s:o, s:s, s:I, s:s, s:I}", "value", j, "owner", owner, "expires_in",
                   (json_int_t)v->expires_in, "value_id", v->vid, "kind", (json_int_t)v->kind);
}
