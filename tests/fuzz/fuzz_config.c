/* libFuzzer target for the config file (--config FILE: a JSON object whose
 * keys are the long option names).  Whatever is applied, or refused with a
 * message, leaves options node_opts_free() can free; what is accepted,
 * printed back as a config file and applied again, gives the same
 * options. */
#include <stdlib.h>
#include <string.h>

#include "dht/log.h"
#include "node/node.h"
#include "tests/fuzz/fuzz.h"

static void put_str(json_t *o, const char *key, const char *v) {
  if (v) json_object_set_new(o, key, json_string(v));
}

static void put_fmt(json_t *o, const char *key, int set, const char *fmt, int a, int b) {
  char buf[64];
  if (!set) return;
  snprintf(buf, sizeof(buf), fmt, a, b);
  json_object_set_new(o, key, json_string(buf));
}

/* The options as a config file would set them; what is zero is unset. */
static json_t *print(const node_opts_t *o) {
  static const char *const levels[] = {"error", "warn", "info", "debug"};
  json_t *j = json_object();
  put_str(j, "overlay", o->overlay);
  put_str(j, "listen", o->listen);
  if (o->n_bootstrap) {
    json_t *a = json_array();
    for (int i = 0; i < o->n_bootstrap; i++) json_array_append_new(a, json_string(o->bootstrap[i]));
    json_object_set_new(j, "bootstrap", a);
  }
  put_str(j, "admin", o->admin);
  put_fmt(j, "replicas", o->replicas, "%d", o->replicas, 0);
  put_fmt(j, "successors", o->successors, "%d", o->successors, 0);
  put_str(j, "node-id", o->node_id);
  if (o->log_level) json_object_set_new(j, "log-level", json_string(levels[o->log_level]));
  put_fmt(j, "refresh", o->refresh_s, "%d", o->refresh_s, 0);
  put_fmt(j, "stabilize-max", o->stabilize_max_ms, "%d", o->stabilize_max_ms, 0);
  put_str(j, "sip", o->sip);
  put_fmt(j, "sip-cache-ms", o->sip_cache_ms, "%d", o->sip_cache_ms, 0);
  if (o->gateway) json_object_set_new(j, "gateway", json_true());
  put_str(j, "dns", o->dns);
  put_str(j, "dns-update", o->dns_update);
  put_str(j, "tsig", o->tsig);
  put_str(j, "public", o->public_mode);
  put_str(j, "turn", o->turn);
  put_str(j, "turn-secret", o->turn_secret);
  put_str(j, "turn-realm", o->turn_realm);
  put_fmt(j, "relay-ports", o->relay_port_min, "%d-%d", o->relay_port_min, o->relay_port_max);
  if (o->allow_loopback_peers) json_object_set_new(j, "allow-loopback-peers", json_true());
  put_fmt(j, "relay-quota", o->quota_user, "%d:%d", o->quota_user, o->quota_total);
  if (o->relay) json_object_set_new(j, "relay", json_true());
  return j;
}

static void same_opts(const node_opts_t *a, const node_opts_t *b) {
  CHECK(fuzz_same_str(a->overlay, b->overlay) && fuzz_same_str(a->listen, b->listen));
  CHECK(a->n_bootstrap == b->n_bootstrap);
  for (int i = 0; i < a->n_bootstrap; i++) CHECK(fuzz_same_str(a->bootstrap[i], b->bootstrap[i]));
  CHECK(fuzz_same_str(a->admin, b->admin) && fuzz_same_str(a->node_id, b->node_id));
  CHECK(a->replicas == b->replicas && a->successors == b->successors);
  CHECK(a->log_level == b->log_level && a->refresh_s == b->refresh_s);
  CHECK(a->stabilize_max_ms == b->stabilize_max_ms && a->sip_cache_ms == b->sip_cache_ms);
  CHECK(fuzz_same_str(a->sip, b->sip) && a->gateway == b->gateway);
  CHECK(fuzz_same_str(a->dns, b->dns) && fuzz_same_str(a->dns_update, b->dns_update));
  CHECK(fuzz_same_str(a->tsig, b->tsig) && fuzz_same_str(a->public_mode, b->public_mode));
  CHECK(fuzz_same_str(a->turn, b->turn) && fuzz_same_str(a->turn_secret, b->turn_secret));
  CHECK(fuzz_same_str(a->turn_realm, b->turn_realm));
  CHECK(a->relay_port_min == b->relay_port_min && a->relay_port_max == b->relay_port_max);
  CHECK(a->allow_loopback_peers == b->allow_loopback_peers);
  CHECK(a->quota_user == b->quota_user && a->quota_total == b->quota_total);
  CHECK(a->relay == b->relay);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* As config_load reads the file. */
  json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
  if (!root) return 0;
  node_opts_t a, b;
  memset(&a, 0, sizeof(a));
  memset(&b, 0, sizeof(b));
  char err[512] = "";
  int rc = node__config_apply(&a, root, "fuzz.json", err, sizeof(err));
  json_decref(root);
  CHECK(rc == 0 || rc == -1);
  if (rc) {
    CHECK(err[0]);
    node_opts_free(&a);
    return 0;
  }
  CHECK(a.n_bootstrap >= 0 && a.n_bootstrap <= NODE_MAX_BOOTSTRAP);
  CHECK(a.log_level >= LOG_ERROR && a.log_level <= LOG_DEBUG);
  json_t *printed = print(&a);
  CHECK(node__config_apply(&b, printed, "printed.json", err, sizeof(err)) == 0);
  json_decref(printed);
  same_opts(&a, &b);
  node_opts_free(&a);
  node_opts_free(&b);
  return 0;
}
