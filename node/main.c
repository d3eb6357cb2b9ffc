/* p2psipd: parse options, start the DHT and the admin socket, run. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "dht/cert.h"
#include "dht/log.h"
#include "node/node.h"

static void close_handle(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void shutdown_all(node_t *n) {
  node_admin_close(n);
  if (n->sip) {
    n->sipapi->destroy(n->sip);
    n->sip = NULL;
  }
  if (n->relay) {
    relay_free(n->relay); /* stopped (handles closed) before the leave */
    n->relay = NULL;
  }
  dht_close(n->dht);
  uv_walk(n->loop, close_handle, NULL);
}

static void on_exit_timer(uv_timer_t *t) { shutdown_all(t->data); }

/* Closing everything from inside a DHT callback would pull handles out
 * from under the code that called it: shut down from a fresh timer. */
static void shutdown_soon(node_t *n) {
  uv_timer_init(n->loop, &n->exit_timer);
  n->exit_timer.data = n;
  uv_timer_start(&n->exit_timer, on_exit_timer, 0, 0);
}

static void on_left(dht_t *d, void *arg) {
  log_info("left the overlay");
  shutdown_soon(arg);
}

static void dht_leave_now(node_t *n) {
  if (dht_leave(n->dht, on_left, n)) shutdown_soon(n);
}

/* The SIP role withdraws its records (user bindings stay with the DHT,
 * proxy-peer value and DNS records go) before the DHT hands over. */
/* The relay withdraws its turn: value and closes its sockets first. */
static void on_relay_stopped(relay_t *r, void *arg) { dht_leave_now(arg); }

static void relay_then_leave(node_t *n) {
  if (n->relay && !n->relay_stopping) relay_stop(n->relay, on_relay_stopped, n);
  else dht_leave_now(n);
}

static void on_sip_stopped(sip_svc_t *s, void *arg) { relay_then_leave(arg); }

void node_leave(node_t *n) {
  if (n->leaving) return;
  n->leaving = true;
  if (n->sip) n->sipapi->stop(n->sip, on_sip_stopped, n);
  else relay_then_leave(n);
}

/* The relay role is optional: a node whose TURN port is taken logs it and
 * runs on without the role (hundreds of nodes may share one IP). */
static void relay_setup(node_t *n, const node_opts_t *o) {
  if (!o->turn_secret) {
    snprintf(n->relay_off, sizeof(n->relay_off), "no --turn-secret");
    log_warn("relay: no --turn-secret; running without the relay role");
    return;
  }
  /* The node's other addresses are never peers (relay/peers.c, rule 3). */
  struct sockaddr_storage own[2];
  int n_own = 0;
  own[n_own++] = dht_self(n->dht)->addr;
  if (o->sip && dht_addr_parse(o->sip, &own[n_own]) == 0) n_own++;
  relay_config_t rc = {.overlay = o->overlay, .secret = o->turn_secret, .realm = o->turn_realm,
                       .port_min = (uint16_t)o->relay_port_min,
                       .port_max = (uint16_t)o->relay_port_max,
                       .allow_loopback_peers = o->allow_loopback_peers,
                       .allow_peers = o->relay_allow, .n_allow_peers = o->n_relay_allow,
                       .deny_peers = o->relay_deny, .n_deny_peers = o->n_relay_deny,
                       .own_addrs = own, .n_own_addrs = n_own,
                       .quota_per_user = (unsigned)o->quota_user,
                       .quota_per_ip = (unsigned)o->quota_ip,
                       .quota_total = (unsigned)o->quota_total,
                       .max_credential_ttl = (unsigned)o->turn_max_ttl,
                       .record_ttl = (unsigned)(o->refresh_s > 0 ? o->refresh_s : 30)};
  if (o->turn) {
    dht_addr_parse(o->turn, &rc.listen);
  } else {
    rc.listen = dht_self(n->dht)->addr;
    ((struct sockaddr_in *)&rc.listen)->sin_port = htons(3478); /* same offset for IPv6 */
  }
  int e = relay_new(n->loop, n->dht, &rc, &n->relay);
  if (e) {
    char a[64];
    dht_addr_str(&rc.listen, a, sizeof(a));
    log_warn("relay: cannot serve TURN on %s: %s; running without the relay role", a,
             uv_strerror(e));
    snprintf(n->relay_off, sizeof(n->relay_off), "cannot serve TURN on %s: %s", a, uv_strerror(e));
    n->relay = NULL;
    return;
  }
  n->relay_off[0] = '\0';
  relay_start(n->relay);
}

static void on_signal(uv_signal_t *s, int signum) {
  node_t *n = s->data;
  log_info("%s: leaving the overlay", signum == SIGTERM ? "SIGTERM" : "SIGINT");
  node_leave(n);
}

/* Hundreds of peers each hold a connection or two to a bootstrap node:
 * take all the descriptors the hard limit allows. */
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/* The secured mode's CA and credentials, or a loud word on the open mode. */
static int trust_setup(node_t *n, const node_opts_t *o, char *err, size_t errlen) {
  if (!o->ca) {
    log_warn("OPEN MODE: peer links are not authenticated and stored values not signed; anyone who "
             "reaches the peer port can join, store, replace or remove anything. For a lab testbed "
             "only: give --ca, --cert and --key (p2psip-ca) to run secured");
    return 0;
  }
  char why[300];
  if (dht_cert_ca_load(o->ca, o->overlay, &n->ca, why, sizeof(why)) ||
      dht_cert_creds_load(n->ca, o->cert, o->key, &n->creds, why, sizeof(why))) {
    snprintf(err, errlen, "%s", why);
    return -1;
  }
  if (dht_cert_info(dht_cert_creds_cert(n->creds))->kind != DHT_CERT_NODE) {
    snprintf(err, errlen, "--cert %s is not a node certificate (p2psip-ca node)", o->cert);
    return -1;
  }
  return 0;
}

static void trust_free(node_t *n) {
  dht_cert_creds_free(n->creds);
  dht_cert_ca_free(n->ca);
  n->creds = NULL;
  n->ca = NULL;
}

static int dht_setup(node_t *n, const node_opts_t *o, char *err, size_t errlen) {
  struct sockaddr_storage boots[NODE_MAX_BOOTSTRAP];
  dht_id_t id;
  dht_config_t cfg = {.overlay = o->overlay, .replicas = o->replicas, .succ_list = o->successors,
                      .refresh_ms = (unsigned)o->refresh_s * 1000u,
                      .stabilize_max_ms = (unsigned)o->stabilize_max_ms,
                      .link_hold_ms = (unsigned)o->link_hold_ms,
                      .bootstrap = boots, .n_bootstrap = o->n_bootstrap,
                      .ca = n->ca, .creds = n->creds, .limits = o->limits};
  dht_addr_parse(o->listen, &cfg.listen); /* checked by node_opts_parse */
  for (int i = 0; i < o->n_bootstrap; i++) dht_addr_parse(o->bootstrap[i], &boots[i]);
  if (o->node_id) {
    dht_id_parse(o->node_id, &id);
    cfg.node_id = &id;
  }
  int rc = dht_new(n->loop, &cfg, &n->dht);
  if (rc) {
    snprintf(err, errlen, "cannot listen on %s: %s", o->listen,
             rc == -EINVAL ? "invalid configuration" : uv_strerror(rc));
    return rc;
  }
  return 0;
}

static void on_relay_role_stopped(relay_t *r, void *arg) {
  node_t *n = arg;
  relay_free(r);
  n->relay = NULL;
  n->relay_stopping = false;
  log_info("relay role off");
  node_roles_apply(n); /* the decision may have flipped back meanwhile */
}

/* The public roles follow the public decision; --gateway and --relay
 * force theirs on.  Called at start and whenever the decision changes. */
void node_roles_apply(node_t *n) {
  if (n->leaving) return;
  bool pub = n->pub.decided && n->pub.is_public;
  if (n->sip) {
    int want = n->opts->gateway || pub;
    if (want != n->sipapi->is_gateway(n->sip)) {
      int rc = n->sipapi->set_gateway(n->sip, want);
      if (rc) log_warn("cannot %s the proxy peer role: %s", want ? "enable" : "disable", uv_strerror(rc));
      else log_info("proxy peer role %s", want ? "on" : "off");
    }
  }
  bool want_relay = n->opts->relay || (pub && n->opts->turn_secret);
  if (pub && !n->opts->turn_secret && !n->opts->relay)
    snprintf(n->relay_off, sizeof(n->relay_off), "public, but no --turn-secret to authenticate users with");
  if (n->relay_stopping) return;
  if (want_relay && !n->relay) {
    relay_setup(n, n->opts);
  } else if (!want_relay && n->relay) {
    n->relay_stopping = true;
    relay_stop(n->relay, on_relay_role_stopped, n);
  }
}

static int sip_setup(node_t *n, const node_opts_t *o, char *err, size_t errlen) {
  sip_config_t sc = {.overlay = o->overlay, .gateway = o->gateway, .dns = o->dns,
                     .dns_update = o->dns_update, .tsig = o->tsig,
                     .locate_cache_ms = o->sip_cache_ms > 0 ? o->sip_cache_ms : -1,
                     .users = o->users, .digest = o->sip_digest, .ca = n->ca,
                     .ca_file = n->ca ? o->ca : NULL, .cert_file = n->ca ? o->cert : NULL,
                     .key_file = n->ca ? o->key : NULL, .tls_listen = o->sip_tls,
                     .allow_loopback = o->sip_allow_loopback, .allow_targets = o->sip_allow,
                     .n_allow_targets = o->n_sip_allow,
                     /* node/: -1 unset, 0 off; sip/: 0 default, < 0 off */
                     .rate = o->sip_rate < 0 ? 0 : o->sip_rate ? o->sip_rate : -1,
                     .rate_burst = o->sip_rate_burst,
                     .source_tx = o->sip_source_tx < 0 ? 0 : o->sip_source_tx ? o->sip_source_tx : -1,
                     .trusted = o->sip_trusted, .n_trusted = o->n_sip_trusted};
  dht_addr_parse(o->sip, &sc.listen); /* checked by node_opts_parse */
  if (node_sip_load(&n->sipapi, err, errlen)) return 1; /* broken install: fatal */
  if (n->ca && !o->users)
    log_warn("SIP: secured mode without --users: this node serves no phones (REGISTER gets 403)");
  int rc = n->sipapi->create(n->loop, n->dht, &sc, &n->sip);
  if (rc) snprintf(err, errlen, "cannot start SIP on %s: %s", o->sip, uv_strerror(rc));
  return rc;
}

/* The daemon, from its argv: run directly by main, or in a child of the
 * launcher (launch.c) with a request's argv. */
static int node_main(int argc, char **argv) {
  node_opts_t opts;
  char err[512];
  int rc = node_opts_parse(argc, argv, &opts, err, sizeof(err));
  if (rc) {
    if (rc < 0) fprintf(stderr, "p2psipd: %s\n", err);
    node_opts_free(&opts);
    return rc < 0 ? 2 : 0;
  }
  log_verbosity = opts.log_level;
  signal(SIGPIPE, SIG_IGN);
  raise_nofile();

  node_t n = {.loop = uv_default_loop(), .opts = &opts};
  if (trust_setup(&n, &opts, err, sizeof(err))) {
    fprintf(stderr, "p2psipd: %s\n", err);
    trust_free(&n);
    node_opts_free(&opts);
    return 1;
  }
  if (dht_setup(&n, &opts, err, sizeof(err))) {
    fprintf(stderr, "p2psipd: %s\n", err);
    if (n.dht) {
      shutdown_all(&n);
      uv_run(n.loop, UV_RUN_DEFAULT);
      dht_free(n.dht);
      trust_free(&n);
    }
    node_opts_free(&opts);
    return 1;
  }
  /* A role that cannot start (hundreds of nodes share 127.0.0.1 on a
   * testbed, and only one gets port 5060) stays off; the node runs on and
   * its status says why. */
  if (opts.sip && (rc = sip_setup(&n, &opts, err, sizeof(err)))) {
    if (rc == 1) {
      fprintf(stderr, "p2psipd: %s\n", err);
      shutdown_all(&n);
      uv_run(n.loop, UV_RUN_DEFAULT);
      dht_free(n.dht);
      trust_free(&n);
      node_opts_free(&opts);
      return 1;
    }
    log_warn("SIP role off: %s", err);
    snprintf(n.sip_off, sizeof(n.sip_off), "%.200s", err);
    n.sip = NULL;
  }
  char addr[64], id[DHT_ID_HEX];
  dht_addr_str(&dht_self(n.dht)->addr, addr, sizeof(addr));
  dht_id_hex(&dht_self(n.dht)->id, id);
  log_set_tag(addr);
  if (opts.admin && (rc = node_admin_start(&n, opts.admin))) {
    fprintf(stderr, "p2psipd: admin socket %s: %s\n", opts.admin,
            rc == -EADDRINUSE ? "in use by a running node" : uv_strerror(rc));
    shutdown_all(&n);
    uv_run(n.loop, UV_RUN_DEFAULT);
    dht_free(n.dht);
    trust_free(&n);
    node_opts_free(&opts);
    return 1;
  }
  uv_signal_init(n.loop, &n.sigterm);
  uv_signal_init(n.loop, &n.sigint);
  n.sigterm.data = n.sigint.data = &n;
  uv_signal_start(&n.sigterm, on_signal, SIGTERM);
  uv_signal_start(&n.sigint, on_signal, SIGINT);
  log_info("node %s of overlay %s listening on %s%s%s", id, opts.overlay, addr,
           opts.admin ? ", admin " : "", opts.admin ? opts.admin : "");
  dht_start(n.dht);
  if (n.sip) {
    char sa[64];
    n.sipapi->start(n.sip);
    n.sipapi->addr(n.sip, sa, sizeof(sa));
    log_info("SIP on %s%s", sa, n.sipapi->is_gateway(n.sip) ? " (proxy peer)" : "");
  }
  node_roles_apply(&n);  /* forced roles start now, the others once decided */
  node_public_start(&n);
  uv_run(n.loop, UV_RUN_DEFAULT);
  dht_free(n.dht);
  trust_free(&n);
  free(n.admin);
  node_opts_free(&opts);
  uv_loop_close(n.loop);
  return n.exit_code;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--launcher") == 0) return node_launch_run(argv[0], node_main);
  return node_main(argc, argv);
}
