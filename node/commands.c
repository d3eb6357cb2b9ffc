/* Admin commands: each takes the request object and answers through reply,
 * now or from a DHT callback.  Field names are an interface: tools outside
 * the project read them. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dht/log.h"
#include "node/node.h"

typedef struct {
  node_t *n;
  node_reply_fn reply;
  void *arg;
} pending_t;

static json_t *fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *fail(const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  return json_pack("{s:b, s:s}", "ok", 0, "error", msg);
}

static json_t *node_json(const dht_node_t *x) {
  char id[DHT_ID_HEX], a[64];
  dht_id_hex(&x->id, id);
  dht_addr_str(&x->addr, a, sizeof(a));
  return json_pack("{s:s, s:s}", "id", id, "addr", a);
}

static pending_t *pending_new(node_t *n, node_reply_fn reply, void *arg) {
  pending_t *p = malloc(sizeof(*p));
  if (p) *p = (pending_t){n, reply, arg};
  return p;
}

static const char *dht_strerror(int status) {
  switch (status) {
  case DHT_ETIMEDOUT: return "no answer from the nodes responsible";
  case DHT_ECLOSING: return "node is leaving";
  case -EINVAL: return "invalid argument";
  case -ENOMEM: return "out of memory";
  }
  return "failed";
}

/* status ------------------------------------------------------------------ */

static json_t *cmd_status(node_t *n) {
  dht_t *d = n->dht;
  const dht_node_t *self = dht_self(d), *pred = dht_predecessor(d), *succ;
  char id[DHT_ID_HEX], addr[64];
  dht_id_hex(&self->id, id);
  dht_addr_str(&self->addr, addr, sizeof(addr));
  json_t *r = json_pack("{s:b, s:s, s:s}", "ok", 1, "id", id, "listen", addr);
  json_object_set_new(r, "overlay", json_string(n->opts->overlay));
  json_t *roles = json_array();
  json_array_append_new(roles, json_string("dht"));
  if (n->sip) {
    char sa[64];
    n->sipapi->addr(n->sip, sa, sizeof(sa));
    json_array_append_new(roles, json_string("sip"));
    if (n->sipapi->is_gateway(n->sip)) json_array_append_new(roles, json_string("gateway"));
    json_object_set_new(r, "sip", json_string(sa));
  }
  if (n->relay) {
    char ta[64];
    relay_addr(n->relay, ta, sizeof(ta));
    json_array_append_new(roles, json_string("relay"));
    json_object_set_new(r, "turn", json_string(ta));
  }
  json_object_set_new(r, "roles", roles);
  json_object_set_new(r, "public", node_public_json(n));
  json_t *off = json_object();
  if (n->sip_off[0]) json_object_set_new(off, "sip", json_string(n->sip_off));
  if (n->opts->sip && !n->sip && n->pub.decided && n->pub.is_public)
    json_object_set_new(off, "gateway", json_string("the SIP role is off"));
  if (!n->relay && n->relay_off[0]) json_object_set_new(off, "relay", json_string(n->relay_off));
  json_object_set_new(r, "roles_off", off);
  json_object_set_new(r, "predecessor", pred ? node_json(pred) : json_null());
  json_t *sl = json_array();
  int ns = dht_successors(d, &succ);
  for (int i = 0; i < ns; i++) json_array_append_new(sl, node_json(&succ[i]));
  json_object_set_new(r, "successors", sl);
  dht_id_t *starts = malloc(160 * sizeof(*starts));
  dht_node_t *fingers = malloc(160 * sizeof(*fingers));
  int nf = starts && fingers ? dht_fingers(d, starts, fingers, 160) : 0;
  json_t *fl = json_array();
  for (int i = 0; i < nf; i++) {
    char s[DHT_ID_HEX];
    dht_id_hex(&starts[i], s);
    json_t *f = node_json(&fingers[i]);
    json_object_set_new(f, "start", json_string(s));
    json_array_append_new(fl, f);
  }
  free(starts);
  free(fingers);
  json_object_set_new(r, "fingers", fl);
  json_object_set_new(r, "records", json_integer((json_int_t)dht_records(d)));
  return r;
}

/* put --------------------------------------------------------------------- */

static void on_put(dht_t *d, int status, int replicas, void *arg) {
  pending_t *p = arg;
  json_t *r = status ? fail("put failed: %s", dht_strerror(status))
                     : json_pack("{s:b, s:i}", "ok", 1, "replicas", replicas);
  p->reply(p->n, r, p->arg);
  free(p);
}

static json_t *cmd_put(node_t *n, json_t *req, node_reply_fn reply, void *arg) {
  json_t *key = json_object_get(req, "key"), *value = json_object_get(req, "value");
  json_t *ttl = json_object_get(req, "ttl"), *vid = json_object_get(req, "value_id");
  char *body = node__put_body(value);
  if (!body) return fail("put: cannot encode value");
  pending_t *p = pending_new(n, reply, arg);
  int err = p ? dht_put(n->dht, json_string_value(key), vid ? json_string_value(vid) : NULL,
                        DHT_KIND_JSON, body, strlen(body),
                        ttl ? (uint32_t)json_integer_value(ttl) : 3600, on_put, p)
              : -ENOMEM;
  free(body);
  if (err) {
    free(p);
    return fail("put: %s", err == -EINVAL ? "value too large or invalid" : dht_strerror(err));
  }
  return NULL;
}

/* get --------------------------------------------------------------------- */

static void on_get(dht_t *d, int status, const dht_value_t *vals, size_t nv, int hops, void *arg) {
  pending_t *p = arg;
  if (status) {
    p->reply(p->n, fail("get failed: %s", dht_strerror(status)), p->arg);
    free(p);
    return;
  }
  json_t *list = json_array();
  for (size_t i = 0; i < nv; i++) json_array_append_new(list, node__value_json(&vals[i]));
  p->reply(p->n, json_pack("{s:b, s:o, s:i}", "ok", 1, "values", list, "hops", hops), p->arg);
  free(p);
}

static json_t *cmd_get(node_t *n, json_t *req, node_reply_fn reply, void *arg) {
  json_t *key = json_object_get(req, "key");
  pending_t *p = pending_new(n, reply, arg);
  int err = p ? dht_get(n->dht, json_string_value(key), on_get, p) : -ENOMEM;
  if (err) {
    free(p);
    return fail("get: %s", dht_strerror(err));
  }
  return NULL;
}

/* lookup ------------------------------------------------------------------ */

typedef struct {
  pending_t p;
  dht_id_t key;
} lookup_req_t;

static void on_lookup(dht_t *d, int status, const dht_node_t *owner, int hops, const dht_id_t *path,
                      int path_len, void *arg) {
  lookup_req_t *l = arg;
  json_t *r;
  if (status) {
    r = fail("lookup failed: %s", dht_strerror(status));
  } else {
    char k[DHT_ID_HEX], h[DHT_ID_HEX];
    dht_id_hex(&l->key, k);
    json_t *pl = json_array();
    for (int i = 0; i < path_len; i++) {
      dht_id_hex(&path[i], h);
      json_array_append_new(pl, json_string(h));
    }
    r = json_pack("{s:b, s:s, s:o, s:i, s:o}", "ok", 1, "key_id", k, "owner", node_json(owner),
                  "hops", hops, "path", pl);
  }
  l->p.reply(l->p.n, r, l->p.arg);
  free(l);
}

static json_t *cmd_lookup(node_t *n, json_t *req, node_reply_fn reply, void *arg) {
  json_t *key = json_object_get(req, "key");
  lookup_req_t *l = malloc(sizeof(*l));
  if (!l) return fail("out of memory");
  l->p = (pending_t){n, reply, arg};
  dht_id_of(json_string_value(key), &l->key);
  int err = dht_lookup(n->dht, &l->key, on_lookup, l);
  if (err) {
    free(l);
    return fail("lookup: %s", dht_strerror(err));
  }
  return NULL;
}

/* stats ------------------------------------------------------------------- */

/* Read "Key: N kB" lines from a /proc file into obj as key_kb fields. */
static void proc_kb(json_t *obj, const char *path, const char *const *keys, const char *const *names) {
  FILE *f = fopen(path, "r");
  if (!f) return;
  char line[256];
  while (fgets(line, sizeof(line), f)) {
    for (int i = 0; keys[i]; i++) {
      size_t kl = strlen(keys[i]);
      if (strncmp(line, keys[i], kl) == 0 && line[kl] == ':')
        json_object_set_new(obj, names[i], json_integer(strtoll(line + kl + 1, NULL, 10)));
    }
  }
  fclose(f);
}

static json_t *cmd_stats(node_t *n) {
  dht_stats_t s;
  dht_stats(n->dht, &s);
  int top = DHT_MAX_PATH;
  while (top > 0 && s.hops_hist[top] == 0) top--;
  json_t *hist = json_array();
  for (int i = 0; i <= top; i++) json_array_append_new(hist, json_integer((json_int_t)s.hops_hist[i]));
  json_t *by_type = json_object();
  for (int t = 1; t < 24; t++)
    if (dht_frame_name(t) && s.out_by_type[t])
      json_object_set_new(by_type, dht_frame_name(t), json_integer((json_int_t)s.out_by_type[t]));
  json_t *mem = json_object();
  static const char *const st_keys[] = {"VmRSS", "VmHWM", NULL};
  static const char *const st_names[] = {"rss_kb", "peak_rss_kb", NULL};
  static const char *const sm_keys[] = {"Pss", "Pss_Anon", "Private_Dirty", NULL};
  static const char *const sm_names[] = {"pss_kb", "pss_anon_kb", "private_dirty_kb", NULL};
  proc_kb(mem, "/proc/self/status", st_keys, st_names);
  proc_kb(mem, "/proc/self/smaps_rollup", sm_keys, sm_names);
  return json_pack("{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o}",
                   "ok", 1, "msgs_in", (json_int_t)s.msgs_in, "msgs_out", (json_int_t)s.msgs_out,
                   "bytes_in", (json_int_t)s.bytes_in, "bytes_out", (json_int_t)s.bytes_out,
                   "lookups", (json_int_t)s.lookups, "lookups_failed", (json_int_t)s.lookups_failed,
                   "hops_histogram", hist, "rpc_timeouts", (json_int_t)s.rpc_timeouts,
                   "bad_frames", (json_int_t)s.bad_frames, "connections", (json_int_t)s.connections,
                   "puts", (json_int_t)s.puts, "gets", (json_int_t)s.gets,
                   "stores_in", (json_int_t)s.stores_in, "values_stored", (json_int_t)s.values_stored,
                   "memory", mem, "msgs_out_by_type", by_type);
}

/* relays, turn-credentials, relay ------------------------------------------ */

static void on_relays(json_t *list, void *arg) {
  pending_t *p = arg;
  json_t *r = list ? json_pack("{s:b, s:o}", "ok", 1, "relays", list)
                   : fail("relays: the overlay did not answer");
  p->reply(p->n, r, p->arg);
  free(p);
}

static json_t *cmd_relays(node_t *n, node_reply_fn reply, void *arg) {
  pending_t *p = pending_new(n, reply, arg);
  if (!p) return fail("out of memory");
  int rc = relay_list(n->dht, n->opts->overlay, on_relays, p);
  if (rc) {
    free(p);
    return fail("relays: %s", dht_strerror(rc));
  }
  return NULL;
}

static json_t *cmd_turn_credentials(node_t *n, json_t *req) {
  const node_opts_t *o = n->opts;
  if (!o->turn_secret) return fail("turn-credentials: this node has no --turn-secret");
  json_t *ttl = json_object_get(req, "ttl"), *cred;
  unsigned t = ttl ? (unsigned)json_integer_value(ttl) : 86400;
  if (relay_mint_credentials(o->turn_secret, o->turn_realm ? o->turn_realm : o->overlay,
                             json_string_value(json_object_get(req, "user")), t, &cred))
    return fail("turn-credentials: invalid user or ttl");
  json_object_set_new(cred, "ok", json_true());
  return cred;
}

/* dispatch ---------------------------------------------------------------- */

const char *const node_role_commands[] = {"sip", "registrations", "relay", NULL};

void node_admin_dispatch(node_t *n, json_t *req, node_reply_fn reply, void *arg) {
  char err[300];
  json_t *r = NULL;
  if (node_request_check(req, node_role_commands, err, sizeof(err))) {
    r = fail("%s", err);
  } else {
    const char *c = json_string_value(json_object_get(req, "cmd"));
    if (strcmp(c, "status") == 0) {
      r = cmd_status(n);
    } else if (strcmp(c, "put") == 0) {
      r = cmd_put(n, req, reply, arg);
    } else if (strcmp(c, "get") == 0) {
      r = cmd_get(n, req, reply, arg);
    } else if (strcmp(c, "lookup") == 0) {
      r = cmd_lookup(n, req, reply, arg);
    } else if (strcmp(c, "stats") == 0) {
      r = cmd_stats(n);
    } else if (strcmp(c, "sip") == 0 || strcmp(c, "registrations") == 0) {
      if (!n->sip) {
        r = fail("%s: this node has no SIP role (start it with --sip)", c);
      } else {
        json_t *v = c[0] == 's' ? n->sipapi->stats_json(n->sip) : n->sipapi->registrations_json(n->sip);
        r = json_pack("{s:b, s:o}", "ok", 1, c, v ? v : json_null());
      }
    } else if (strcmp(c, "relays") == 0) {
      r = cmd_relays(n, reply, arg);
    } else if (strcmp(c, "turn-credentials") == 0) {
      r = cmd_turn_credentials(n, req);
    } else if (strcmp(c, "relay") == 0) {
      r = n->relay ? json_pack("{s:b, s:o}", "ok", 1, "relay", relay_stats_json(n->relay))
                   : fail("relay: this node has no relay role");
    } else if (strcmp(c, "leave") == 0) {
      r = json_pack("{s:b}", "ok", 1);
      node_leave(n);
    } else {
      r = fail("unknown cmd \"%.64s\"", c);
    }
  }
  if (r) reply(n, r, arg);
}
