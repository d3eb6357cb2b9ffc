/*
 * node: the daemon around the DHT: options and config file, the roles a
 * node plays, the JSON admin socket, signals.
 */
#ifndef P2PSIP_NODE_H
#define P2PSIP_NODE_H

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

#include "dht/dht.h"
#include "relay/relay.h"
#include "sip/sip.h"

#define NODE_MAX_BOOTSTRAP 16

/* Everything the command line and config file can set. */
typedef struct {
  char *overlay;
  char *listen;
  char *bootstrap[NODE_MAX_BOOTSTRAP];
  int n_bootstrap;
  char *admin;
  int replicas;
  int successors;
  char *node_id;
  int log_level;
  int refresh_s;
  int stabilize_max_ms;
  int link_hold_ms;
  char *sip;        /* --sip IP:PORT: serve SIP phones there */
  int gateway;      /* --gateway: act as proxy peer (needs --sip) */
  int sip_cache_ms; /* --sip-cache-ms: reuse a located user record this long (0: never) */
  char *dns;        /* --dns IP[:PORT]: resolver for RFC 3263 */
  char *dns_update; /* --dns-update IP[:PORT]: RFC 2136 server */
  char *tsig;       /* --tsig NAME:ALG:SECRET */
  char *public_mode; /* --public auto|yes|no */
  char *turn;        /* --turn IP:PORT (default: listen IP, port 3478) */
  char *turn_secret; /* --turn-secret S: the overlay's shared secret */
  char *turn_realm;  /* --turn-realm R (default: the overlay) */
  int relay_port_min, relay_port_max; /* --relay-ports MIN-MAX */
  int allow_loopback_peers;           /* --allow-loopback-peers */
  dht_cidr_t relay_allow[RELAY_MAX_PEER_RANGES]; /* --relay-allow-peers */
  int n_relay_allow;
  dht_cidr_t relay_deny[RELAY_MAX_PEER_RANGES];  /* --relay-deny-peers */
  int n_relay_deny;
  int quota_user, quota_total;        /* --relay-quota PER_USER:TOTAL */
  int quota_ip;                       /* --relay-quota-ip N */
  int turn_max_ttl;                   /* --turn-max-ttl SECONDS (default 86400) */
  int relay;                          /* --relay: serve TURN whatever --public decides */
  char *ca, *cert, *key; /* --ca/--cert/--key: the secured mode (p2psip-ca files) */
  dht_limits_t limits;   /* --limit NAME=N (0: the default) */
  char *users;           /* --users DIR: the SIP phones' credentials (p2psip-ca user) */
  char *sip_digest;      /* --sip-digest ALGS: digest algorithms offered, in order */
  char *sip_tls;         /* --sip-tls IP:PORT: SIP between nodes over TLS (secured mode) */
  int sip_allow_loopback; /* --sip-allow-loopback: SIP targets on 127.0.0.0/8, ::1 */
  dht_cidr_t sip_allow[RELAY_MAX_PEER_RANGES]; /* --sip-allow-targets */
  int n_sip_allow;
  int sip_rate, sip_rate_burst; /* --sip-rate RATE[:BURST] per source; -1: default, 0: off */
  int sip_source_tx;            /* --sip-source-transactions N; -1: default, 0: off */
  dht_cidr_t sip_trusted[RELAY_MAX_PEER_RANGES]; /* --sip-trusted */
  int n_sip_trusted;
} node_opts_t;

/* Parse argv (and the --config file it names; flags win over the file).
 * On error, writes one line to err and returns -1; returns 1 when --help or
 * --version was handled (exit 0), 0 to run. */
int node_opts_parse(int argc, char **argv, node_opts_t *o, char *err, size_t errlen);
void node_opts_free(node_opts_t *o);
void node_usage(FILE *f);
/* Apply a config file's parsed contents over o (path names the file in
 * err).  Returns 0, or -1 with err. */
int node__config_apply(node_opts_t *o, json_t *root, const char *path, char *err, size_t len);

typedef struct node node_t;

/* The SIP role's entry points (sip/sip.h), reached through the module
 * that holds them. */
typedef struct {
  int (*create)(uv_loop_t *loop, dht_t *dht, const sip_config_t *cfg, sip_svc_t **out);
  int (*start)(sip_svc_t *s);
  int (*set_gateway)(sip_svc_t *s, int on);
  void (*stop)(sip_svc_t *s, void (*cb)(sip_svc_t *s, void *arg), void *arg);
  void (*destroy)(sip_svc_t *s);
  json_t *(*stats_json)(const sip_svc_t *s);
  json_t *(*registrations_json)(const sip_svc_t *s);
  void (*addr)(const sip_svc_t *s, char *out, size_t len);
  int (*is_gateway)(const sip_svc_t *s);
  int (*set_public)(sip_svc_t *s, int on);
  int (*tls_leaks_ssl)(void);
} node_sip_api_t;

/* Load p2psip-sip.so (once).  Returns 0, or -1 with a reason in err. */
int node_sip_load(const node_sip_api_t **out, char *err, size_t len);

/* From now on free the SSL object of every connection on a socket BIO
 * right after its SSL_shutdown(): the SIP module's TLS library shuts
 * connections down and forgets them (sip_tls_leaks_ssl; sslfree.c). */
void node__ssl_free_on_shutdown(void);

/* One peer asked whether we are public (public.c). */
#define NODE_PUB_ASK_MAX 6 /* peers asked per round at most */
typedef struct {
  dht_node_t peer;
  int state; /* public.c's ANS_* */
  struct sockaddr_storage seen;
} node_pub_answer_t;

struct node {
  uv_loop_t *loop;
  dht_t *dht;
  sip_svc_t *sip; /* NULL without --sip */
  const node_sip_api_t *sipapi;
  relay_t *relay;     /* NULL unless the node serves TURN */
  bool relay_stopping;
  char relay_off[256]; /* why the relay role is off */
  char sip_off[256]; /* why the SIP role is off though --sip was given */
  struct {
    bool decided, is_public;
    char why[320];
    uv_timer_t timer;
    /* The round of questions under way or last done. */
    unsigned round;
    bool running;
    int n_asked, pending, fast_rounds;
    node_pub_answer_t asked[NODE_PUB_ASK_MAX];
    uint64_t rounds, answers, dissents; /* dissents: answers against the decision taken */
  } pub; /* public.c */
  node_opts_t *opts;
  struct node_admin *admin;
  uv_signal_t sigterm, sigint;
  uv_timer_t exit_timer;
  bool leaving;
  int exit_code;
  dht_cert_ca_t *ca;        /* secured mode: the overlay CA; NULL: open mode */
  dht_cert_creds_t *creds;  /* secured mode: our certificate and key */
  struct {
    size_t used, free;       /* bytes, as mallinfo2() last said */
    uint64_t at_ns, cost_ns; /* when (uv_hrtime), and how long it took */
  } heap; /* stats' heap figures (commands.c) */
};

/* Admin socket: listen on path (mode 0600).  Returns 0 or -errno. */
int node_admin_start(node_t *n, const char *path);
void node_admin_close(node_t *n);
/* Handle one request object; reply is called exactly once, maybe later. */
typedef void (*node_reply_fn)(node_t *n, json_t *resp, void *arg);
void node_admin_dispatch(node_t *n, json_t *req, node_reply_fn reply, void *arg);
/* Parse and check one request line: a JSON object whose "cmd" is a core
 * command with well-typed fields, or one of the NULL-terminated extra
 * command names.  Returns the object (caller owns it) or NULL with err. */
json_t *node_request_parse(const char *line, size_t n, const char *const *extra, char *err, size_t len);
int node_request_check(json_t *req, const char *const *extra, char *err, size_t len);
/* A put's value as the body stored (malloc'd; NULL when it cannot be
 * encoded), and a value from the DHT as get's answer lists it (a new
 * reference): {"value","owner","expires_in","value_id","kind"}, the body
 * as JSON, else as a string, else null. */
char *node__put_body(json_t *value);
json_t *node__value_json(const dht_value_t *v);
/* Commands the roles add (checked by their handlers): NULL-terminated. */
extern const char *const node_role_commands[];
/* Public or not (public.c): start the checks; status JSON. */
int node_public_start(node_t *n);
json_t *node_public_json(const node_t *n);
/* Ask peers again now (admin "check-public"): 0, -1 unless --public auto,
 * -2 while a round is under way or the node leaves. */
int node_public_check_now(node_t *n);
/* Turn the public roles on or off after the decision changed (main.c). */
void node_roles_apply(node_t *n);
/* Start a graceful leave and exit (admin "leave", SIGTERM). */
void node_leave(node_t *n);
/* p2psipd --launcher (launch.c): initialise what every node would, then
 * fork one node per request line on stdin, each running node_main with
 * the request's argv behind argv0.  Returns 0 at EOF on stdin, leaving
 * the nodes running. */
int node_launch_run(const char *argv0, int (*node_main)(int argc, char **argv));

#endif
