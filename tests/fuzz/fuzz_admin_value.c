/* libFuzzer target for the admin get command's reading of DHT values: any
 * peer can store any bytes under a key, and get lists each value as JSON
 * when its body parses, else as a string, else as null.  The input is one
 * body (and, as a string, one value id).  What get shows and a put request
 * could carry must read back the same once put: body, listing, body again. */
#include <stdlib.h>
#include <string.h>

#include "node/node.h"
#include "tests/fuzz/fuzz.h"

static const dht_id_t owner = {{0xde, 0xad, 0xbe, 0xef}};

static json_t *listed(const char *vid, const uint8_t *body, size_t len) {
  dht_value_t v = {.vid = vid, .kind = DHT_KIND_JSON, .owner = owner, .expires_in = 42,
                   .body = body, .body_len = len};
  return node__value_json(&v);
}

/* The entry has every field, with the value's metadata as given. */
static void check_entry(json_t *e, const char *vid) {
  CHECK(json_object_size(e) == 5 && json_object_get(e, "value"));
  CHECK(json_integer_value(json_object_get(e, "expires_in")) == 42);
  CHECK(json_integer_value(json_object_get(e, "kind")) == DHT_KIND_JSON);
  CHECK(strcmp(json_string_value(json_object_get(e, "value_id")), vid) == 0);
  const char *o = json_string_value(json_object_get(e, "owner"));
  CHECK(o && strlen(o) == 40 && strncmp(o, "deadbeef00", 10) == 0);
}

/* A value a put request could carry: it survives the request parser's
 * reading (no NUL in strings). */
static int puttable(json_t *value) {
  char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
  CHECK(text != NULL);
  json_t *back = json_loads(text, JSON_DECODE_ANY, NULL);
  int ok = back && json_equal(back, value);
  json_decref(back);
  free(text);
  return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_t *e = listed("v", data, size);
  CHECK(e != NULL);
  check_entry(e, "v");
  json_t *value = json_object_get(e, "value");
  if (puttable(value)) {
    char *body = node__put_body(value);
    CHECK(body != NULL);
    json_t *again = listed("v", (const uint8_t *)body, strlen(body));
    CHECK(again && json_equal(json_object_get(again, "value"), value));
    json_decref(again);
    free(body);
  }
  json_decref(e);

  /* The input as a value id (one stored value's id is 1 to 255 bytes,
   * without NUL): listed whenever it is text JSON can hold. */
  char vid[256];
  size_t n = strnlen((const char *)data, size < 255 ? size : 255);
  memcpy(vid, data, n);
  vid[n] = '\0';
  json_t *as_text = json_string(vid);
  e = listed(vid, (const uint8_t *)"1", 1);
  CHECK(!as_text == !e);
  if (e) check_entry(e, vid);
  json_decref(e);
  json_decref(as_text);
  return 0;
}
