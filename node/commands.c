/* Admin commands: each takes the request object and answers through reply,
 * now or from a DHT callback.  Field names are an interface: tools outside
 * the project read them. */
#include <errno.h>
#include <malloc.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dht/log.h"
#include "proto/stun.h"
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
  case DHT_EREFUSED: return "refused by the responsible node (access rules or limits)";
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
  json_object_set_new(r, "security", json_string(n->ca ? "tls" : "open"));
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
    return fail("put: %s", err == -EINVAL ? "value too large or invalid, or ttl beyond the cap" : dht_strerror(err));
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
  int (*get)(dht_t *, const char *, dht_get_cb, void *) =
      json_is_true(json_object_get(req, "local"))     ? dht_get_local
      : json_is_true(json_object_get(req, "primary")) ? dht_get_primary
                                                      : dht_get;
  int err = p ? get(n->dht, json_string_value(key), on_get, p) : -ENOMEM;
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

/* The heap as glibc sees it: free bytes it cannot hand back (fragments
 * between live blocks) show as heap_free_kb, not as less RSS.  mallinfo2()
 * walks every free chunk with the loop stopped: 64 ms on a registrar
 * holding 150,000 bindings (a 300 MB heap; docs/BENCHMARKS.md, session
 * 13), which every SIP and DHT message then waited for.  So the figures
 * are reused for HEAP_REUSE times as long as their walk took (the walk
 * takes at most 1/HEAP_REUSE of the loop's time): a small node's are
 * fresh at every call, a loaded registrar's at most a minute old;
 * heap_age_ms says how old. */
#define HEAP_REUSE 1000
static void heap_figures(node_t *n, json_t *mem) {
  uint64_t now = uv_hrtime();
  if (!n->heap.at_ns || now - n->heap.at_ns >= n->heap.cost_ns * HEAP_REUSE) {
    struct mallinfo2 mi = mallinfo2();
    uint64_t done = uv_hrtime();
    n->heap.used = mi.uordblks + mi.hblkhd, n->heap.free = mi.fordblks;
    n->heap.at_ns = done, n->heap.cost_ns = done - now;
    now = done;
  }
  json_object_set_new(mem, "heap_used_kb", json_integer((json_int_t)(n->heap.used / 1024)));
  json_object_set_new(mem, "heap_free_kb", json_integer((json_int_t)(n->heap.free / 1024)));
  json_object_set_new(mem, "heap_age_ms", json_integer((json_int_t)((now - n->heap.at_ns) / 1000000)));
  json_object_set_new(mem, "heap_walk_us", json_integer((json_int_t)(n->heap.cost_ns / 1000)));
}

static json_t *cmd_stats(node_t *n) {
  dht_stats_t s;
  dht_stats(n->dht, &s);
  int top = DHT_MAX_PATH;
  while (top > 0 && s.hops_hist[top] == 0) top--;
  json_t *hist = json_array();
  for (int i = 0; i <= top; i++) json_array_append_new(hist, json_integer((json_int_t)s.hops_hist[i]));
  json_t *by_type = json_object();
  for (int t = 1; t < (int)(sizeof(s.out_by_type) / sizeof(*s.out_by_type)); t++)
    if (dht_frame_name(t) && s.out_by_type[t])
      json_object_set_new(by_type, dht_frame_name(t), json_integer((json_int_t)s.out_by_type[t]));
  json_t *mem = json_object();
  static const char *const st_keys[] = {"VmRSS", "VmHWM", NULL};
  static const char *const st_names[] = {"rss_kb", "peak_rss_kb", NULL};
  static const char *const sm_keys[] = {"Pss", "Pss_Anon", "Private_Dirty", NULL};
  static const char *const sm_names[] = {"pss_kb", "pss_anon_kb", "private_dirty_kb", NULL};
  proc_kb(mem, "/proc/self/status", st_keys, st_names);
  proc_kb(mem, "/proc/self/smaps_rollup", sm_keys, sm_names);
  heap_figures(n, mem);
  const struct {
    const char *name;
    uint64_t v;
  } counters[] = {
      {"msgs_in", s.msgs_in},         {"msgs_out", s.msgs_out},
      {"bytes_in", s.bytes_in},       {"bytes_out", s.bytes_out},
      {"link_writes", s.link_writes}, {"link_holds", s.link_holds},
      {"lookups", s.lookups},         {"lookups_failed", s.lookups_failed},
      {"rpc_timeouts", s.rpc_timeouts}, {"bad_frames", s.bad_frames},
      {"rejoins", s.rejoins}, {"ring_splits", s.ring_splits},
      {"connections", s.connections}, {"tls_failed", s.tls_failed},
      {"tls_handshakes", s.tls_handshakes},
      {"auth_refused", s.auth_refused}, {"deadline_closes", s.deadline_closes},
      {"values_refused", s.values_refused}, {"refused_conns", s.refused_conns},
      {"refused_frames", s.refused_frames}, {"refused_key_full", s.refused_key_full},
      {"refused_owner_key", s.refused_owner_key}, {"refused_owner", s.refused_owner},
      {"refused_not_mine", s.refused_not_mine}, {"refused_net", s.refused_net},
      {"joins_repeated", s.joins_repeated},
      {"puts", s.puts},               {"gets", s.gets},
      {"gets_primary", s.gets_primary}, {"gets_direct", s.gets_direct},
      {"puts_read", s.puts_read}, {"puts_read_direct", s.puts_read_direct},
      {"puts_unread", s.puts_unread}, {"puts_relooked", s.puts_relooked},
      {"refresh_batches", s.refresh_batches},
      {"refresh_batch_misses", s.refresh_batch_misses}, {"copies_quick", s.copies_quick},
      {"copies_quick_batches", s.copies_quick_batches},
      {"stores_in", s.stores_in},     {"values_stored", s.values_stored},
      {"routed_sent", s.routed_sent}, {"routed_forwarded", s.routed_forwarded},
      {"routed_answered", s.routed_answered}, {"routed_failed", s.routed_failed},
      {"routed_fallbacks", s.routed_fallbacks},
      {"cert_checks", s.cert_checks}, {"cert_cache_hits", s.cert_cache_hits},
      {"cert_cache", s.cert_cache},   {"cert_cache_keys", s.cert_cache_keys},
      {"cert_key_builds", s.cert_key_builds},
      {"cert_full_checks", s.cert_full_checks},
  };
  json_t *r = json_pack("{s:b, s:o, s:o, s:o}", "ok", 1, "hops_histogram", hist, "memory", mem,
                        "msgs_out_by_type", by_type);
  for (size_t i = 0; i < sizeof(counters) / sizeof(*counters); i++)
    json_object_set_new(r, counters[i].name, json_integer((json_int_t)counters[i].v));
  return r;
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

/* Mint a TURN credential for user, living ttl seconds (NULL: a day, or
 * --turn-max-ttl if lower).  Returns NULL with *cred set, or the failure
 * answer (cmd names the command in it). */
static json_t *mint(node_t *n, const char *cmd, const char *user, json_t *ttl, json_t **cred) {
  const node_opts_t *o = n->opts;
  if (!o->turn_secret) return fail("%s: this node has no --turn-secret", cmd);
  /* Relays refuse credentials that live longer than --turn-max-ttl: mint
   * none they would refuse (the overlay's nodes share the setting). */
  unsigned max = (unsigned)o->turn_max_ttl;
  unsigned t = ttl ? (unsigned)json_integer_value(ttl) : (max < 86400 ? max : 86400);
  if (t > max) return fail("%s: ttl %u is above --turn-max-ttl (%u)", cmd, t, max);
  if (relay_mint_credentials(o->turn_secret, o->turn_realm ? o->turn_realm : o->overlay, user, t, cred))
    return fail("%s: invalid user or ttl", cmd);
  return NULL;
}

static json_t *cmd_turn_credentials(node_t *n, json_t *req) {
  json_t *cred;
  json_t *err = mint(n, "turn-credentials", json_string_value(json_object_get(req, "user")),
                     json_object_get(req, "ttl"), &cred);
  if (err) return err;
  json_object_set_new(cred, "ok", json_true());
  return cred;
}

/* phone-config ------------------------------------------------------------ */

/* What a phone attached to this node needs (spec 3.3.2, 5.1): the node as
 * its registrar and outbound proxy, the overlay's relay agent peers, and a
 * fresh TURN credential; for baresip also the account line, which holds
 * one TURN server, picked at random so that phones spread over the relays.
 * Media "relay" (baresip's medianat=turn) sends every call through it;
 * "ice" makes it one ICE candidate among the phone's own (README, "Phones"
 * says why relay is the default for baresip 1.0). */
typedef struct {
  pending_t p;
  json_t *answer; /* aor, registrar, turn: filled before the relay lookup */
  int baresip;
} phone_req_t;

/* How long a relay has to answer the STUN Binding that shows it is alive. */
#define PHONE_PROBE_MS 1000

/* Relays a phone can use: an address that parses as IP:PORT (written
 * again in canonical form, since the value came from any node of the
 * overlay and ends up in a config file) and UDP among the transports. */
static json_t *usable_relays(json_t *list) {
  json_t *out = json_array(), *e;
  size_t i, j;
  json_array_foreach(list, i, e) {
    struct sockaddr_storage ss;
    const char *a = json_string_value(json_object_get(e, "addr"));
    json_t *tr = json_object_get(e, "transports"), *t;
    int udp = 0;
    json_array_foreach(tr, j, t) udp |= json_is_string(t) && strcmp(json_string_value(t), "udp") == 0;
    if (!a || !udp || dht_addr_parse(a, &ss) < 0) continue;
    char canon[64];
    dht_addr_str(&ss, canon, sizeof(canon));
    json_array_append_new(out, json_pack("{s:s, s:O, s:O}", "addr", canon, "transports", tr, "owner",
                                         json_object_get(e, "owner")));
  }
  return out;
}

static uint32_t pick(size_t n) {
  uint32_t r = 0;
  if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1) r = (uint32_t)uv_hrtime();
  return r % (uint32_t)n;
}

/* baresip 1.0's account syntax: parameters after the AOR, values without
 * ';' or blanks (they are not unquoted); libre adds ";lr" to outbound. */
static json_t *baresip_account(json_t *a) {
  json_t *turn = json_object_get(a, "turn");
  const char *media = json_string_value(json_object_get(a, "media"));
  char *line = NULL;
  if (asprintf(&line, "<%s>;outbound=%s;medianat=%s;stunserver=turn:%s;stunuser=%s;stunpass=%s",
               json_string_value(json_object_get(a, "aor")), json_string_value(json_object_get(a, "registrar")),
               strcmp(media, "ice") == 0 ? "ice" : "turn", json_string_value(json_object_get(a, "relay")),
               json_string_value(json_object_get(turn, "username")),
               json_string_value(json_object_get(turn, "password"))) < 0)
    return NULL;
  json_t *s = json_string(line);
  free(line);
  return s;
}

static void phone_reply(phone_req_t *q, json_t *r) {
  q->p.reply(q->p.n, r, q->p.arg);
  json_decref(q->answer);
  free(q);
}

/* The relays that answered: pick one; the others are listed too. */
static void on_phone_probed(json_t *alive, void *arg) {
  phone_req_t *q = arg;
  json_t *a = q->answer, *tried = json_object_get(a, "relays"), *e;
  if (json_array_size(alive) == 0) {
    phone_reply(q, fail("phone-config: none of the %zu relays under turn:%s answered a STUN Binding within %d ms",
                        json_array_size(tried), q->p.n->opts->overlay, PHONE_PROBE_MS));
    json_decref(alive);
    return;
  }
  json_t *silent = json_array();
  size_t i;
  json_array_foreach(tried, i, e) {
    size_t j;
    json_t *x;
    int ok = 0;
    json_array_foreach(alive, j, x) ok |= x == e;
    if (!ok) json_array_append(silent, json_object_get(e, "addr"));
  }
  json_object_set_new(a, "unanswered", silent);
  json_object_set(a, "relay", json_object_get(json_array_get(alive, pick(json_array_size(alive))), "addr"));
  json_object_set_new(a, "relays", alive);
  if (q->baresip) json_object_set_new(a, "account", baresip_account(a));
  phone_reply(q, json_incref(a));
}

/* The overlay's list: keep the usable entries (at most RELAY_PROBE_MAX, a
 * random choice if there are more) and ask each whether it is alive. */
static void on_phone_relays(json_t *list, void *arg) {
  phone_req_t *q = arg;
  json_t *usable = list ? usable_relays(list) : NULL;
  json_decref(list);
  if (!usable) {
    phone_reply(q, fail("phone-config: the overlay did not answer for turn:%s", q->p.n->opts->overlay));
    return;
  }
  while (json_array_size(usable) > RELAY_PROBE_MAX) json_array_remove(usable, pick(json_array_size(usable)));
  json_object_set_new(q->answer, "relays", usable);
  int rc = json_array_size(usable) ? relay_probe(q->p.n->loop, usable, PHONE_PROBE_MS, on_phone_probed, q)
                                   : -ENOENT;
  if (rc == -ENOENT)
    phone_reply(q, fail("phone-config: no relay agent peer in the overlay (nothing usable under turn:%s)",
                        q->p.n->opts->overlay));
  else if (rc)
    phone_reply(q, fail("phone-config: cannot probe the relays: %s", dht_strerror(rc)));
}

static json_t *cmd_phone_config(node_t *n, json_t *req, node_reply_fn reply, void *arg) {
  const char *user = json_string_value(json_object_get(req, "user"));
  const char *format = json_string_value(json_object_get(req, "format"));
  const char *media = json_string_value(json_object_get(req, "media"));
  char sa[64], reg[80], aor[400];
  if (!n->sip)
    return fail("phone-config: this node has no SIP role (start it with --sip): it is the phone's registrar");
  if (!n->opts->turn_secret)
    return fail("phone-config: this node cannot provision relays: it has no --turn-secret "
                "(the overlay's TURN secret)");
  /* The address sofia put in its Via: a real one even for --sip 0.0.0.0. */
  n->sipapi->addr(n->sip, sa, sizeof(sa));
  snprintf(reg, sizeof(reg), "sip:%s", sa);
  json_t *cred, *err = mint(n, "phone-config", user, json_object_get(req, "ttl"), &cred);
  if (err) return err;
  json_t *uname = json_object_get(cred, "username");
  uint64_t expires = 0;
  proto_stun_rest_expiry(json_string_value(uname), json_string_length(uname), &expires);
  json_object_set_new(cred, "expires", json_integer((json_int_t)expires));
  snprintf(aor, sizeof(aor), "sip:%s@%s", user, n->opts->overlay);
  phone_req_t *q = malloc(sizeof(*q));
  if (!q) {
    json_decref(cred);
    return fail("out of memory");
  }
  *q = (phone_req_t){{n, reply, arg},
                     json_pack("{s:b, s:s, s:s, s:s, s:s, s:o}", "ok", 1, "user", user, "aor", aor, "registrar",
                               reg, "media", media ? media : "relay", "turn", cred),
                     !format || strcmp(format, "baresip") == 0};
  int rc = relay_list(n->dht, n->opts->overlay, on_phone_relays, q);
  if (rc) {
    json_decref(q->answer);
    free(q);
    return fail("phone-config: %s", dht_strerror(rc));
  }
  return NULL;
}

/* remove ------------------------------------------------------------------ */

static json_t *cmd_remove(node_t *n, json_t *req, node_reply_fn reply, void *arg) {
  json_t *vid = json_object_get(req, "value_id");
  pending_t *p = pending_new(n, reply, arg);
  int err = p ? dht_remove(n->dht, json_string_value(json_object_get(req, "key")),
                           vid ? json_string_value(vid) : NULL, on_put, p)
              : -ENOMEM;
  if (err) {
    free(p);
    return fail("remove: %s", err == -ENOENT ? "this node put no such value (only its owner may remove it)"
                                             : dht_strerror(err));
  }
  return NULL;
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
    } else if (strcmp(c, "remove") == 0) {
      r = cmd_remove(n, req, reply, arg);
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
    } else if (strcmp(c, "phone-config") == 0) {
      r = cmd_phone_config(n, req, reply, arg);
    } else if (strcmp(c, "relay") == 0) {
      r = n->relay ? json_pack("{s:b, s:o}", "ok", 1, "relay", relay_stats_json(n->relay))
                   : fail("relay: this node has no relay role");
    } else if (strcmp(c, "check-public") == 0) {
      int rc = node_public_check_now(n);
      r = rc == 0    ? json_pack("{s:b}", "ok", 1)
          : rc == -1 ? fail("check-public: the node is public or not by --public %s", n->opts->public_mode)
                     : fail("check-public: a check is under way");
    } else if (strcmp(c, "check-split") == 0) {
      int k = dht_split_check(n->dht);
      r = k >= 0 ? json_pack("{s:b, s:i}", "ok", 1, "asked", k)
          : k == -ENOENT ? fail("check-split: this node has no bootstrap address")
                         : fail("check-split: not joined yet");
    } else if (strcmp(c, "leave") == 0) {
      r = json_pack("{s:b}", "ok", 1);
      node_leave(n);
    } else {
      r = fail("unknown cmd \"%.64s\"", c);
    }
  }
  if (r) reply(n, r, arg);
}
