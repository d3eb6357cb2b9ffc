/* Command line and config file.  Both go through one table of options, so
 * the config file accepts exactly the long option names. */
#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "dht/log.h"
#include "node/node.h"

typedef int (*opt_set_fn)(node_opts_t *o, const char *v, char *err, size_t errlen);

typedef struct {
  const char *name;
  int has_arg;
  opt_set_fn set;
  const char *arg, *help;
} opt_def_t;

static int set_str(char **dst, const char *v) {
  free(*dst);
  *dst = strdup(v);
  return *dst ? 0 : -1;
}

static int set_int(int *dst, const char *v, int lo, int hi, const char *name, char *err, size_t len) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || *end || end == v || x < lo || x > hi) {
    snprintf(err, len, "--%s: expected an integer from %d to %d, got \"%s\"", name, lo, hi, v);
    return -1;
  }
  *dst = (int)x;
  return 0;
}

static int check_addr(const char *v, const char *name, char *err, size_t len) {
  struct sockaddr_storage ss;
  if (dht_addr_parse(v, &ss) == 0) return 0;
  snprintf(err, len, "--%s: expected IP:PORT (or [IPv6]:PORT), got \"%s\"", name, v);
  return -1;
}

static int o_overlay(node_opts_t *o, const char *v, char *err, size_t len) {
  if (!*v || strlen(v) > 253 || strspn(v, "abcdefghijklmnopqrstuvwxyz"
                                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") != strlen(v)) {
    snprintf(err, len, "--overlay: expected a domain name such as overlay.test, got \"%s\"", v);
    return -1;
  }
  return set_str(&o->overlay, v);
}

static int o_listen(node_opts_t *o, const char *v, char *err, size_t len) {
  return check_addr(v, "listen", err, len) ? -1 : set_str(&o->listen, v);
}

static int o_bootstrap(node_opts_t *o, const char *v, char *err, size_t len) {
  if (check_addr(v, "bootstrap", err, len)) return -1;
  if (o->n_bootstrap == NODE_MAX_BOOTSTRAP) {
    snprintf(err, len, "--bootstrap: at most %d addresses", NODE_MAX_BOOTSTRAP);
    return -1;
  }
  o->bootstrap[o->n_bootstrap] = NULL;
  return set_str(&o->bootstrap[o->n_bootstrap++], v);
}

static int o_admin(node_opts_t *o, const char *v, char *err, size_t len) {
  if (!*v || strlen(v) >= 100) { /* sun_path holds 108 bytes */
    snprintf(err, len, "--admin: socket path empty or longer than 100 bytes");
    return -1;
  }
  return set_str(&o->admin, v);
}

static int o_replicas(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_int(&o->replicas, v, 1, DHT_MAX_SUCC, "replicas", err, len);
}

static int o_successors(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_int(&o->successors, v, 3, DHT_MAX_SUCC, "successors", err, len);
}

static int o_refresh(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_int(&o->refresh_s, v, 1, 86400, "refresh", err, len);
}

static int o_stab(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_int(&o->stabilize_max_ms, v, 100, 600000, "stabilize-max", err, len);
}

static int o_link_hold(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_int(&o->link_hold_ms, v, 0, 1000, "link-hold", err, len);
}

static int o_node_id(node_opts_t *o, const char *v, char *err, size_t len) {
  dht_id_t id;
  if (dht_id_parse(v, &id)) {
    snprintf(err, len, "--node-id: expected 40 hex digits, got \"%s\"", v);
    return -1;
  }
  return set_str(&o->node_id, v);
}

static int o_file(char **dst, const char *v, const char *name, char *err, size_t len) {
  if (!*v || strlen(v) > 4096) {
    snprintf(err, len, "--%s: expected a file name", name);
    return -1;
  }
  return set_str(dst, v);
}

static int o_ca(node_opts_t *o, const char *v, char *err, size_t len) { return o_file(&o->ca, v, "ca", err, len); }
static int o_cert(node_opts_t *o, const char *v, char *err, size_t len) { return o_file(&o->cert, v, "cert", err, len); }
static int o_key(node_opts_t *o, const char *v, char *err, size_t len) { return o_file(&o->key, v, "key", err, len); }

static int o_users(node_opts_t *o, const char *v, char *err, size_t len) {
  struct stat st;
  if (o_file(&o->users, v, "users", err, len)) return -1;
  if (stat(v, &st) || !S_ISDIR(st.st_mode)) {
    snprintf(err, len, "--users: %s is not a directory", v);
    return -1;
  }
  return 0;
}

static int o_sip_digest(node_opts_t *o, const char *v, char *err, size_t len) {
  static const char *const ok[] = {"SHA-256,MD5", "MD5,SHA-256", "SHA-256", "MD5"};
  for (size_t i = 0; i < sizeof(ok) / sizeof(*ok); i++)
    if (strcasecmp(v, ok[i]) == 0) return set_str(&o->sip_digest, v);
  snprintf(err, len, "--sip-digest: expected SHA-256,MD5 or MD5,SHA-256 or one of them, got \"%s\"", v);
  return -1;
}

static int o_sip_tls(node_opts_t *o, const char *v, char *err, size_t len) {
  return check_addr(v, "sip-tls", err, len) ? -1 : set_str(&o->sip_tls, v);
}

static int o_sip_allow_loopback(node_opts_t *o, const char *v, char *err, size_t len) {
  o->sip_allow_loopback = strcmp(v, "0") != 0;
  return 0;
}

/* "A:B", or "A" alone when b is optional (then *b is left as it was). */
static int parse_pair(const char *v, unsigned *a, unsigned *b, int b_optional) {
  char c;
  int n = sscanf(v, "%u:%u%c", a, b, &c);
  return n == 2 || (b_optional && n == 1);
}

static int o_sip_rate(node_opts_t *o, const char *v, char *err, size_t len) {
  unsigned r, b = 0;
  if (!parse_pair(v, &r, &b, 1) || r > 1000000 || b > 1000000 || (strchr(v, ':') && b < 1 && r)) {
    snprintf(err, len, "--sip-rate: expected RATE[:BURST] requests per second (0: off), got \"%s\"", v);
    return -1;
  }
  o->sip_rate = (int)r, o->sip_rate_burst = (int)b;
  return 0;
}

static int o_sip_source_tx(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_int(&o->sip_source_tx, v, 0, 100000, "sip-source-transactions", err, len);
}

static int o_log_level(node_opts_t *o, const char *v, char *err, size_t len) {
  int l = log_level_parse(v);
  if (l < 0) {
    snprintf(err, len, "--log-level: expected error, warn, info or debug, got \"%s\"", v);
    return -1;
  }
  o->log_level = l;
  return 0;
}

static int o_sip(node_opts_t *o, const char *v, char *err, size_t len) {
  return check_addr(v, "sip", err, len) ? -1 : set_str(&o->sip, v);
}

static int o_sip_cache(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_int(&o->sip_cache_ms, v, 0, 60000, "sip-cache-ms", err, len);
}

static int o_gateway(node_opts_t *o, const char *v, char *err, size_t len) {
  o->gateway = strcmp(v, "0") != 0;
  return 0;
}

/* IP or IP:PORT, as the DNS options take. */
static int check_host_port(const char *v, const char *name, char *err, size_t len) {
  struct sockaddr_storage ss;
  char buf[80];
  if (strlen(v) < 60) {
    snprintf(buf, sizeof(buf), strchr(v, ':') && v[0] != '[' && strchr(v, ':') != strrchr(v, ':')
                                   ? "[%s]:53" : "%s:53", v);
    if (dht_addr_parse(v, &ss) == 0 || dht_addr_parse(buf, &ss) == 0) return 0;
  }
  snprintf(err, len, "--%s: expected IP or IP:PORT, got \"%s\"", name, v);
  return -1;
}

static int o_dns(node_opts_t *o, const char *v, char *err, size_t len) {
  return check_host_port(v, "dns", err, len) ? -1 : set_str(&o->dns, v);
}

static int o_dns_update(node_opts_t *o, const char *v, char *err, size_t len) {
  return check_host_port(v, "dns-update", err, len) ? -1 : set_str(&o->dns_update, v);
}

static int o_tsig(node_opts_t *o, const char *v, char *err, size_t len) {
  const char *a = strchr(v, ':'), *b = a ? strchr(a + 1, ':') : NULL;
  if (!a || a == v || !b || b == a + 1 || !b[1]) {
    snprintf(err, len, "--tsig: expected NAME:ALGORITHM:BASE64SECRET");
    return -1;
  }
  return set_str(&o->tsig, v);
}

static int o_public(node_opts_t *o, const char *v, char *err, size_t len) {
  if (strcmp(v, "auto") && strcmp(v, "yes") && strcmp(v, "no")) {
    snprintf(err, len, "--public: expected auto, yes or no, got \"%s\"", v);
    return -1;
  }
  return set_str(&o->public_mode, v);
}

static int o_turn(node_opts_t *o, const char *v, char *err, size_t len) {
  return check_addr(v, "turn", err, len) ? -1 : set_str(&o->turn, v);
}

static int o_turn_secret(node_opts_t *o, const char *v, char *err, size_t len) {
  if (!*v) {
    snprintf(err, len, "--turn-secret: must not be empty");
    return -1;
  }
  return set_str(&o->turn_secret, v);
}

static int o_turn_realm(node_opts_t *o, const char *v, char *err, size_t len) {
  if (!*v || strlen(v) > 127) {
    snprintf(err, len, "--turn-realm: 1 to 127 bytes");
    return -1;
  }
  return set_str(&o->turn_realm, v);
}

static int o_relay_ports(node_opts_t *o, const char *v, char *err, size_t len) {
  unsigned lo, hi;
  char c;
  if (sscanf(v, "%u-%u%c", &lo, &hi, &c) != 2 || lo < 1024 || hi > 65535 || lo > hi) {
    snprintf(err, len, "--relay-ports: expected MIN-MAX within 1024-65535, got \"%s\"", v);
    return -1;
  }
  o->relay_port_min = (int)lo, o->relay_port_max = (int)hi;
  return 0;
}

static int o_allow_loopback(node_opts_t *o, const char *v, char *err, size_t len) {
  o->allow_loopback_peers = strcmp(v, "0") != 0;
  return 0;
}

static int o_relay_quota(node_opts_t *o, const char *v, char *err, size_t len) {
  unsigned u, t;
  if (!parse_pair(v, &u, &t, 0) || u < 1 || t < 1 || u > 100000 || t > 100000) {
    snprintf(err, len, "--relay-quota: expected PER_USER:TOTAL (1-100000), got \"%s\"", v);
    return -1;
  }
  o->quota_user = (int)u, o->quota_total = (int)t;
  return 0;
}

static int o_relay_quota_ip(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_int(&o->quota_ip, v, 1, 100000, "relay-quota-ip", err, len);
}

static int o_turn_max_ttl(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_int(&o->turn_max_ttl, v, 60, 30 * 86400, "turn-max-ttl", err, len);
}

static int set_ranges(dht_cidr_t *list, int *n, const char *v, const char *name, char *err,
                      size_t len) {
  int rc = dht_cidr_parse_list(v, list, n, RELAY_MAX_PEER_RANGES);
  if (rc == -E2BIG)
    snprintf(err, len, "--%s: at most %d ranges", name, RELAY_MAX_PEER_RANGES);
  else if (rc)
    snprintf(err, len, "--%s: expected CIDR[,CIDR...] such as 10.1.0.0/16 (host bits zero), got \"%s\"",
             name, v);
  return rc ? -1 : 0;
}

static int o_relay_allow(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_ranges(o->relay_allow, &o->n_relay_allow, v, "relay-allow-peers", err, len);
}

static int o_relay_deny(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_ranges(o->relay_deny, &o->n_relay_deny, v, "relay-deny-peers", err, len);
}

static int o_sip_allow(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_ranges(o->sip_allow, &o->n_sip_allow, v, "sip-allow-targets", err, len);
}

static int o_sip_trusted(node_opts_t *o, const char *v, char *err, size_t len) {
  return set_ranges(o->sip_trusted, &o->n_sip_trusted, v, "sip-trusted", err, len);
}

static void clear_relay_allow(node_opts_t *o) { o->n_relay_allow = 0; }
static void clear_sip_trusted(node_opts_t *o) { o->n_sip_trusted = 0; }
static void clear_sip_allow(node_opts_t *o) { o->n_sip_allow = 0; }
static void clear_relay_deny(node_opts_t *o) { o->n_relay_deny = 0; }

static void clear_bootstrap(node_opts_t *o) {
  for (int i = 0; i < o->n_bootstrap; i++) free(o->bootstrap[i]);
  o->n_bootstrap = 0;
}

/* Options that add to a list, and how to empty it: flags replace a list
 * from the config file rather than add to it. */
static const struct {
  opt_set_fn set;
  void (*clear)(node_opts_t *o);
} list_opts[] = {
    {o_bootstrap, clear_bootstrap},
    {o_relay_allow, clear_relay_allow},
    {o_relay_deny, clear_relay_deny},
    {o_sip_allow, clear_sip_allow},
    {o_sip_trusted, clear_sip_trusted},
};

static void (*list_clear(opt_set_fn set))(node_opts_t *) {
  for (size_t i = 0; i < sizeof(list_opts) / sizeof(*list_opts); i++)
    if (list_opts[i].set == set) return list_opts[i].clear;
  return NULL;
}

/* --limit NAME=N: one of the limits no peer can exceed (dht_limits_t). */
static const struct {
  const char *name;
  size_t off;
} limit_names[] = {
    {"conns", offsetof(dht_limits_t, conns)},
    {"conns-per-ip", offsetof(dht_limits_t, conns_per_ip)},
    {"frame-kb", offsetof(dht_limits_t, frame_kb)},
    {"key-values", offsetof(dht_limits_t, key_values)},
    {"owner-key-values", offsetof(dht_limits_t, owner_key_values)},
    {"owner-values", offsetof(dht_limits_t, owner_values)},
    {"owner-kb", offsetof(dht_limits_t, owner_kb)},
    {"hello-ms", offsetof(dht_limits_t, hello_ms)},
    {"frame-ms", offsetof(dht_limits_t, frame_ms)},
    {"ids-per-net", offsetof(dht_limits_t, ids_per_net)},
};

static int o_limit(node_opts_t *o, const char *v, char *err, size_t len) {
  const char *eq = strchr(v, '=');
  for (size_t i = 0; eq && i < sizeof(limit_names) / sizeof(*limit_names); i++) {
    if (strlen(limit_names[i].name) != (size_t)(eq - v) || strncmp(v, limit_names[i].name, (size_t)(eq - v)))
      continue;
    int n;
    if (set_int(&n, eq + 1, 1, 100000000, "limit", err, len)) return -1;
    *(unsigned *)((char *)&o->limits + limit_names[i].off) = (unsigned)n;
    return 0;
  }
  snprintf(err, len, "--limit: expected NAME=N with NAME one of conns, conns-per-ip, frame-kb, key-values, "
                     "owner-key-values, owner-values, owner-kb, hello-ms, frame-ms, ids-per-net; got \"%.100s\"", v);
  return -1;
}

static int o_relay(node_opts_t *o, const char *v, char *err, size_t len) {
  o->relay = strcmp(v, "0") != 0;
  return 0;
}

/* main() takes a lone --launcher before parsing: here it came with others. */
static int o_launcher(node_opts_t *o, const char *v, char *err, size_t len) {
  snprintf(err, len, "--launcher takes no other options (each request gives its node's own)");
  return -1;
}

static const opt_def_t opt_table[] = {
    {"overlay", 1, o_overlay, "FQDN", "overlay identifier, e.g. overlay.test (required)"},
    {"listen", 1, o_listen, "IP:PORT", "peer protocol address (default 127.0.0.1:0, 0 = any port)"},
    {"bootstrap", 1, o_bootstrap, "IP:PORT", "a node to join through (repeatable; none: new ring)"},
    {"admin", 1, o_admin, "PATH", "JSON admin unix socket, mode 0600 (default: none)"},
    {"replicas", 1, o_replicas, "N", "copies of every stored key (default 3)"},
    {"successors", 1, o_successors, "N", "successor list length (default 8, at least 3)"},
    {"ca", 1, o_ca, "FILE", "the overlay CA certificate (p2psip-ca init): secured mode, TLS\n"
     "                             peer links with this node's --cert and --key"},
    {"cert", 1, o_cert, "FILE", "this node's certificate (p2psip-ca node); it gives the node id"},
    {"key", 1, o_key, "FILE", "this node's private key"},
    {"node-id", 1, o_node_id, "HEX40", "node identifier, open mode only (default: SHA-1 of the\n"
     "                             listen IP:PORT)"},
    {"log-level", 1, o_log_level, "LEVEL", "error, warn, info (default) or debug"},
    {"limit", 1, o_limit, "NAME=N", "a limit no peer can exceed (repeatable; defaults in brackets):\n"
     "                             conns [4096] accepted peer connections, conns-per-ip [512],\n"
     "                             frame-kb [65536] unfinished frames of all peers, key-values\n"
     "                             [1024] values under a key, owner-key-values [32] one owner's\n"
     "                             values under a key, owner-values [200000] and owner-kb\n"
     "                             [131072] one owner's values on this node, hello-ms [10000]\n"
     "                             to finish TLS and HELLO, frame-ms [30000] to finish a frame,\n"
     "                             ids-per-net [8, none on loopback] fingers in one /24 or /48"},
    {"refresh", 1, o_refresh, "SECONDS", "how often owners re-store their values (default 30)"},
    {"stabilize-max", 1, o_stab, "MS", "longest ring upkeep interval when quiet (default 30000)"},
    {"link-hold", 1, o_link_hold, "MS",
     "a busy peer link keeps new STOREs and their answers (routed\n"
     "                             ones too) up to MS so that under load one write carries\n"
     "                             several; lookups and gets never wait (default 20,\n"
     "                             0: every loop iteration writes)"},
    {"sip", 1, o_sip, "IP:PORT", "serve SIP phones on UDP and TCP there (registrar, proxy)"},
    {"sip-cache-ms", 1, o_sip_cache, "MS", "reuse a user record found in the DHT this long when\n"
     "                             proxying (default 2000, 0 = ask the DHT every time)"},
    {"gateway", 0, o_gateway, "", "act as P2PSIP proxy peer to public SIP domains (needs --sip)"},
    {"users", 1, o_users, "DIR", "this node's phones: DIR/USER.digest (and, secured, USER.crt,\n"
     "                             USER.key) as p2psip-ca user writes them; REGISTER and calls\n"
     "                             from them need digest auth (without it: no phones when secured);\n"
     "                             read at start and watched: changes count at once"},
    {"sip-tls", 1, o_sip_tls, "IP:PORT", "SIP between nodes over TLS with the node certificates\n"
     "                             (secured mode; default: the --sip IP, any free port)"},
    {"sip-allow-loopback", 0, o_sip_allow_loopback, "", "let SIP go to 127.0.0.0/8 and ::1 targets\n"
     "                             (loopback testbeds; refused by default)"},
    {"sip-allow-targets", 1, o_sip_allow, "CIDRS", "let SIP go to IP targets in these ranges\n"
     "                             (CIDR[,CIDR...]) despite the special-purpose deny list,\n"
     "                             any port and transport, e.g. a LAN overlay's 10.0.0.0/8"},
    {"sip-rate", 1, o_sip_rate, "RATE[:BURST]", "SIP requests per second from one source (an IPv4\n"
     "                             address, an IPv6 /64; on loopback address and port),\n"
     "                             burst default 2x; over it: 503 with Retry-After, then\n"
     "                             dropped for 5 s; overlay nodes are exempt (default 50, 0: off)"},
    {"sip-source-transactions", 1, o_sip_source_tx, "N", "live SIP transactions one source may hold\n"
     "                             (at most 512; over it: 503) (default 256, 0: off)"},
    {"sip-trusted", 1, o_sip_trusted, "CIDRS", "SIP sources the per-source limits spare (a SIP\n"
     "                             trunk, another domain's proxy): CIDR[,CIDR...]"},
    {"sip-digest", 1, o_sip_digest, "ALGS", "digest algorithms to challenge with, in order (default\n"
     "                             SHA-256,MD5 as RFC 8760 asks; MD5,SHA-256 for phones that\n"
     "                             take the first challenge and know only MD5, such as sipp;\n"
     "                             MD5 for baresip 1.0, which gives up on any SHA-256 one)"},
    {"dns", 1, o_dns, "IP[:PORT]", "DNS server for RFC 3263 lookups (default: resolv.conf)"},
    {"dns-update", 1, o_dns_update, "IP[:PORT]", "register the proxy peer in DNS there (RFC 2136)"},
    {"tsig", 1, o_tsig, "NAME:ALG:SECRET", "TSIG key signing the DNS updates: one per proxy\n"
     "                             peer, named pp-<first 12 hex of the node id>.OVERLAY\n"
     "                             (docs/DNS.md)"},
    {"relay", 0, o_relay, "", "serve TURN whatever --public decides (needs --turn-secret)"},
    {"turn", 1, o_turn, "IP:PORT", "TURN address (default: the listen IP, port 3478)"},
    {"turn-secret", 1, o_turn_secret, "S", "the overlay's shared secret for TURN credentials"},
    {"turn-realm", 1, o_turn_realm, "R", "TURN realm (default: the overlay)"},
    {"relay-ports", 1, o_relay_ports, "MIN-MAX", "relayed UDP ports (default 49152-65535)"},
    {"relay-quota", 1, o_relay_quota, "USER:TOTAL", "live TURN allocations per user name (the NAME of\n"
     "                             EXPIRY:NAME) and in all (default 100:1000)"},
    {"relay-quota-ip", 1, o_relay_quota_ip, "N", "live TURN allocations per client IP, IPv6 per /64\n"
     "                             (default 100)"},
    {"turn-max-ttl", 1, o_turn_max_ttl, "SECONDS", "refuse TURN credentials expiring later than this\n"
     "                             from now (default 86400; turn-credentials mints up to it)"},
    {"relay-allow-peers", 1, o_relay_allow, "CIDRS", "let TURN relay to these ranges (CIDR[,CIDR...])\n"
     "                             despite the special-purpose deny list, e.g. a\n"
     "                             testbed's 10.1.0.0/16 (repeatable)"},
    {"relay-deny-peers", 1, o_relay_deny, "CIDRS", "never let TURN relay to these ranges (CIDR[,CIDR...]);\n"
     "                             wins over every allow (repeatable)"},
    {"allow-loopback-peers", 0, o_allow_loopback, "", "let TURN relay to 127.0.0.0/8 and ::1 (tests)"},
    {"public", 1, o_public, "auto|yes|no", "take the public roles (proxy peer, relay): auto (default)\n"
     "                             when two independent peers see us at our address and\n"
     "                             connect back, and more peers agree than disagree"},
    {"launcher", 0, o_launcher, "", "fork server for testbeds: initialise OpenSSL once, then start\n"
     "                             one node per JSON line on stdin ({\"argv\":[...],\"log\":F,\n"
     "                             \"cwd\":D} -> {\"pid\":N}; {\"cmd\":\"wait\"} -> exits), sharing\n"
     "                             its memory copy-on-write; alone on the command line.  The\n"
     "                             nodes share one address layout (ASLR): one machine's\n"
     "                             testbed only, never nodes facing the Internet"},
};
#define N_OPTS (sizeof(opt_table) / sizeof(*opt_table))

void node_usage(FILE *f) {
  fprintf(f, "usage: p2psipd --overlay FQDN [options]\n\n"
             "A P2PSIP overlay node: Chord DHT, peer protocol, JSON admin socket; with --sip\n"
             "a registrar and proxy for SIP phones, with --gateway a proxy peer to public\n"
             "SIP domains.\n\n");
  for (size_t i = 0; i < N_OPTS; i++) {
    char left[64];
    snprintf(left, sizeof(left), "--%s%s%s", opt_table[i].name, opt_table[i].has_arg ? " " : "",
             opt_table[i].arg);
    fprintf(f, "  %-26s %s\n", left, opt_table[i].help);
  }
  fprintf(f, "  %-26s %s\n", "--config FILE", "JSON object with the same keys; flags win");
  fprintf(f, "  %-26s %s\n", "--help, --version", "");
  fprintf(f, "\nSIGTERM or SIGINT: leave gracefully (hand records over) and exit 0.\n");
}

static const opt_def_t *opt_find(const char *name) {
  for (size_t i = 0; i < N_OPTS; i++)
    if (strcmp(opt_table[i].name, name) == 0) return &opt_table[i];
  return NULL;
}

/* One config value as a string for the option setter. */
static int config_apply(node_opts_t *o, const opt_def_t *def, json_t *v, char *err, size_t len) {
  char buf[64];
  if (json_is_string(v)) return def->set(o, json_string_value(v), err, len);
  if (json_is_boolean(v) && !def->has_arg) return def->set(o, json_is_true(v) ? "1" : "0", err, len);
  if (json_is_integer(v)) {
    snprintf(buf, sizeof(buf), "%lld", (long long)json_integer_value(v));
    return def->set(o, buf, err, len);
  }
  snprintf(err, len, "config: \"%s\" must be a string or an integer", def->name);
  return -1;
}

int node__config_apply(node_opts_t *o, json_t *root, const char *path, char *err, size_t len) {
  int rc = 0;
  const char *key;
  json_t *v;
  if (!json_is_object(root)) {
    snprintf(err, len, "config %s: expected a JSON object", path);
    rc = -1;
  }
  json_object_foreach(json_is_object(root) ? root : NULL, key, v) {
    const opt_def_t *def = opt_find(key);
    if (!def) {
      snprintf(err, len, "config %s: unknown key \"%s\"", path, key);
      rc = -1;
      break;
    }
    if (json_is_array(v)) { /* repeatable options, such as bootstrap */
      size_t i;
      json_t *e;
      json_array_foreach(v, i, e) if ((rc = config_apply(o, def, e, err, len))) break;
    } else {
      rc = config_apply(o, def, v, err, len);
    }
    if (rc) break;
  }
  return rc;
}

static int config_load(node_opts_t *o, const char *path, char *err, size_t len) {
  json_error_t je;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    snprintf(err, len, "config %s: line %d: %s", path, je.line, je.text);
    return -1;
  }
  int rc = node__config_apply(o, root, path, err, len);
  json_decref(root);
  return rc;
}

static void defaults(node_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->replicas = 3;
  o->successors = 8;
  o->log_level = LOG_INFO;
  o->refresh_s = 30;
  o->link_hold_ms = 20;
  o->sip_cache_ms = 2000;
  o->sip_rate = o->sip_source_tx = -1;
  o->turn_max_ttl = RELAY_DEFAULT_CRED_TTL;
  o->listen = strdup("127.0.0.1:0");
  o->public_mode = strdup("auto");
}

int node_opts_parse(int argc, char **argv, node_opts_t *o, char *err, size_t errlen) {
  struct option lo[N_OPTS + 4];
  for (size_t i = 0; i < N_OPTS; i++)
    lo[i] = (struct option){opt_table[i].name, opt_table[i].has_arg, NULL, (int)(256 + i)};
  lo[N_OPTS] = (struct option){"config", 1, NULL, 'c'};
  lo[N_OPTS + 1] = (struct option){"help", 0, NULL, 'h'};
  lo[N_OPTS + 2] = (struct option){"version", 0, NULL, 'V'};
  lo[N_OPTS + 3] = (struct option){0};
  defaults(o);
  unsigned char list_flag[N_OPTS] = {0};
  /* Pass 1 finds --config; pass 2 applies flags over it. */
  for (int pass = 0; pass < 2; pass++) {
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":", lo, NULL)) != -1) {
      if (c == '?' || c == ':') {
        const char *bad = argv[optind - 1];
        snprintf(err, errlen, c == ':' ? "%s needs a value" : "unknown option %s (see --help)", bad);
        return -1;
      }
      if (c == 'h' || c == 'V') {
        if (pass == 1) continue;
        if (c == 'h') node_usage(stdout);
        else printf("p2psipd 0.1.0\n");
        return 1;
      }
      if (c == 'c') {
        if (pass == 0 && config_load(o, optarg, err, errlen)) return -1;
        continue;
      }
      if (pass == 0) continue;
      /* Flags replace a list from the config file rather than add to it. */
      const opt_def_t *def = &opt_table[c - 256];
      void (*clear)(node_opts_t *) = list_clear(def->set);
      if (clear && !list_flag[c - 256]++) clear(o);
      if (def->set(o, optarg ? optarg : "1", err, errlen)) return -1;
    }
    if (optind < argc) {
      snprintf(err, errlen, "unexpected argument \"%s\" (see --help)", argv[optind]);
      return -1;
    }
  }
  if (!o->overlay) {
    snprintf(err, errlen, "--overlay is required (see --help)");
    return -1;
  }
  if ((o->gateway || o->dns_update || o->users || o->sip_tls) && !o->sip) {
    snprintf(err, errlen, "--%s needs --sip", o->gateway ? "gateway" : o->users ? "users"
                                              : o->sip_tls ? "sip-tls" : "dns-update");
    return -1;
  }
  if (!o->ca != !o->cert || !o->ca != !o->key) {
    snprintf(err, errlen, "--ca, --cert and --key go together (the secured mode)");
    return -1;
  }
  if (o->sip_tls && !o->ca) {
    snprintf(err, errlen, "--sip-tls needs the secured mode (--ca, --cert, --key)");
    return -1;
  }
  if (o->ca && o->node_id) {
    snprintf(err, errlen, "--node-id: in the secured mode the node id is the one in --cert");
    return -1;
  }
  if (o->relay && !o->turn_secret) {
    snprintf(err, errlen, "--relay needs --turn-secret");
    return -1;
  }
  if (o->dns_update && !o->tsig) {
    snprintf(err, errlen, "--dns-update needs --tsig: updates are always signed");
    return -1;
  }
  return 0;
}

void node_opts_free(node_opts_t *o) {
  free(o->overlay);
  free(o->listen);
  for (int i = 0; i < o->n_bootstrap; i++) free(o->bootstrap[i]);
  free(o->admin);
  free(o->node_id);
  free(o->sip);
  free(o->dns);
  free(o->dns_update);
  free(o->tsig);
  free(o->public_mode);
  free(o->turn);
  free(o->turn_secret);
  free(o->turn_realm);
  free(o->ca);
  free(o->cert);
  free(o->key);
  free(o->users);
  free(o->sip_digest);
  free(o->sip_tls);
  memset(o, 0, sizeof(*o));
}
