/*
 * Is this node public?  Decided at run time (--public auto): a peer tells
 * us the address our requests come from and whether it can open a
 * connection back to it.  Only a node reachable at the address it would
 * publish takes the public roles (proxy peer, relay); one that stops being
 * reachable gives them up.  --public yes|no overrides the check.
 */
#include <stdio.h>
#include <string.h>

#include "dht/log.h"
#include "node/node.h"

#define CHECK_FIRST_MS 1000
#define CHECK_RETRY_MS 5000   /* while no peer could answer */
#define CHECK_EVERY_MS 300000 /* once decided: reachability rarely changes */

static bool same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return false;
  if (a->ss_family == AF_INET)
    return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
           ((const struct sockaddr_in *)b)->sin_addr.s_addr;
  return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
}

static void decide(node_t *n, bool pub, const char *why) {
  bool changed = !n->pub.decided || n->pub.is_public != pub;
  n->pub.decided = true;
  n->pub.is_public = pub;
  snprintf(n->pub.why, sizeof(n->pub.why), "%s", why);
  if (!changed) return;
  log_info("%s: %s", pub ? "public" : "not public", why);
  node_roles_apply(n);
  /* A SIP node that is not public keeps a flow to a proxy peer so that
   * calls can reach it through its NAT (sip/flow.c). */
  if (n->sip && !n->leaving) n->sipapi->set_public(n->sip, pub);
}

static void schedule(node_t *n, unsigned ms);

static void on_reach(dht_t *d, int status, const struct sockaddr_storage *seen, int reachable,
                     void *arg) {
  node_t *n = arg;
  char s[64], me[64], why[sizeof(n->pub.why)];
  if (status) {
    /* No answer says nothing about us: keep the decision we had. */
    schedule(n, n->pub.decided ? CHECK_EVERY_MS : CHECK_RETRY_MS);
    return;
  }
  const dht_node_t *self = dht_self(d);
  dht_addr_str(seen, s, sizeof(s));
  dht_addr_str(&self->addr, me, sizeof(me));
  if (!same_ip(seen, &self->addr)) {
    snprintf(why, sizeof(why), "a peer sees us at %s but we listen on %s (NAT)", s, me);
    decide(n, false, why);
  } else if (!reachable) {
    snprintf(why, sizeof(why), "a peer could not connect back to %s", me);
    decide(n, false, why);
  } else {
    snprintf(why, sizeof(why), "a peer sees us at %s and connected back", s);
    decide(n, true, why);
  }
  schedule(n, CHECK_EVERY_MS);
}

static void on_timer(uv_timer_t *t) {
  node_t *n = t->data;
  if (n->leaving) return;
  int err = dht_check_reachable(n->dht, 0, on_reach, n);
  if (err) schedule(n, CHECK_RETRY_MS); /* not joined yet, or alone */
}

static void schedule(node_t *n, unsigned ms) {
  if (!n->leaving) uv_timer_start(&n->pub.timer, on_timer, ms, 0);
}

int node_public_start(node_t *n) {
  const char *mode = n->opts->public_mode;
  uv_timer_init(n->loop, &n->pub.timer);
  n->pub.timer.data = n;
  if (strcmp(mode, "auto") != 0) {
    decide(n, strcmp(mode, "yes") == 0, "set by --public");
    return 0;
  }
  snprintf(n->pub.why, sizeof(n->pub.why), "not checked yet");
  schedule(n, CHECK_FIRST_MS);
  return 0;
}

json_t *node_public_json(const node_t *n) {
  return json_pack("{s:s, s:o, s:s}", "mode", n->opts->public_mode, "public",
                   n->pub.decided ? json_boolean(n->pub.is_public) : json_null(), "why", n->pub.why);
}
