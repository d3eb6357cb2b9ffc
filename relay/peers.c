/*
 * relay/peers: which peers a client may make the relay send to.
 *
 * RFC 8656 section 21.3 leaves the policy to the server and warns that a
 * relay on a public address would otherwise carry strangers into the
 * networks behind it; coturn's answer is a list of denied-peer-ip ranges
 * in its sample configuration.  Ours is on by default.  In this order:
 *   1. a range given with --relay-deny-peers: denied, whatever else says;
 *   2. a range given with --relay-allow-peers, and 127.0.0.0/8 and ::1
 *      with --allow-loopback-peers (tests): allowed, even if it holds one
 *      of the node's own addresses;
 *   3. one of the node's own IP addresses (the TURN address, which is the
 *      relayed IP too, and the node's DHT and SIP addresses): only the
 *      relayed address of a live allocation of ours, IP and port, which
 *      the in-process hand-over serves (alloc.c); any other port there
 *      is a service of this host, never a peer;
 *   4. special-purpose addresses (dht_addr_special: private, loopback,
 *      link-local, multicast, documentation, ... and IPv4-mapped or 6to4
 *      forms of them): denied;
 *   5. anything else: allowed.
 * CreatePermission and ChannelBind apply it (403 Forbidden, counted in
 * refused.peer_denied).  A permission covers an IP, every port (RFC 8656
 * section 9), so rule 3 is applied again per packet to the node's own IPs
 * (relay__own_peer_denied): a permission won for one of our relayed
 * addresses does not open the host's other ports.
 */
#include <errno.h>
#include <string.h>

#include "relay/relay_int.h"

static void unmap(const proto_stun_addr_t *a, proto_stun_addr_t *out) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  *out = *a;
  if (a->family == 6 && memcmp(a->ip, mapped, 12) == 0) {
    memset(out->ip, 0, sizeof(out->ip));
    memcpy(out->ip, a->ip + 12, 4);
    out->family = 4;
  }
}

/* The index of a's IP among the node's own, or -1. */
static int own_ip(const relay_t *r, const proto_stun_addr_t *a) {
  proto_stun_addr_t u;
  unmap(a, &u);
  for (int i = 0; i < r->n_own; i++)
    if (r->own[i].family == u.family && memcmp(r->own[i].ip, u.ip, u.family == 6 ? 16 : 4) == 0)
      return i;
  return -1;
}

/* Rules 1 and 2: -1 denied, 1 allowed, 0 neither. */
static int listed(const relay_t *r, const struct sockaddr_storage *ss) {
  if (dht_cidr_list_match(r->deny, r->n_deny, ss)) return -1;
  if (r->allow_loopback && dht_addr_loopback(ss)) return 1;
  return dht_cidr_list_match(r->allow, r->n_allow, ss) ? 1 : 0;
}

int relay__forbidden_peer(const relay_t *r, const proto_stun_addr_t *a) {
  struct sockaddr_storage ss;
  relay__addr_to_sa(a, &ss);
  int l = listed(r, &ss);
  if (l) return l < 0;
  if (own_ip(r, a) >= 0) return relay__find_relayed(r, a) == NULL;
  return dht_addr_special(&ss);
}

/* Per packet: rules 1 and 2 were worked out for each own IP up front. */
int relay__own_peer_denied(const relay_t *r, const proto_stun_addr_t *a) {
  int i = own_ip(r, a);
  if (i < 0 || r->own_listed[i] > 0) return 0;
  return r->own_listed[i] < 0 || relay__find_relayed(r, a) == NULL;
}

static int own_add(relay_t *r, const struct sockaddr_storage *ss) {
  proto_stun_addr_t a;
  if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6) return -EINVAL;
  relay__addr_from_sa((const struct sockaddr *)ss, &a);
  unmap(&a, &a);
  if (own_ip(r, &a) >= 0) return 0;
  if (r->n_own >= RELAY_MAX_OWN_ADDRS) return -EINVAL;
  a.port = 0;
  struct sockaddr_storage norm;
  relay__addr_to_sa(&a, &norm);
  r->own_listed[r->n_own] = (int8_t)listed(r, &norm); /* the lists are copied first */
  r->own[r->n_own++] = a;
  return 0;
}

int relay__peers_config(relay_t *r, const relay_config_t *cfg) {
  if (cfg->n_allow_peers < 0 || cfg->n_allow_peers > RELAY_MAX_PEER_RANGES ||
      cfg->n_deny_peers < 0 || cfg->n_deny_peers > RELAY_MAX_PEER_RANGES ||
      cfg->n_own_addrs < 0 || cfg->n_own_addrs >= RELAY_MAX_OWN_ADDRS)
    return -EINVAL;
  r->allow_loopback = cfg->allow_loopback_peers;
  if (cfg->n_allow_peers) memcpy(r->allow, cfg->allow_peers, cfg->n_allow_peers * sizeof(*r->allow));
  if (cfg->n_deny_peers) memcpy(r->deny, cfg->deny_peers, cfg->n_deny_peers * sizeof(*r->deny));
  r->n_allow = cfg->n_allow_peers, r->n_deny = cfg->n_deny_peers;
  int rc = own_add(r, &cfg->listen);
  for (int i = 0; rc == 0 && i < cfg->n_own_addrs; i++) rc = own_add(r, &cfg->own_addrs[i]);
  return rc;
}

static json_t *ranges(const dht_cidr_t *c, int n) {
  json_t *a = json_array();
  for (int i = 0; a && i < n; i++) {
    char s[DHT_CIDR_STRLEN];
    dht_cidr_str(&c[i], s, sizeof(s));
    json_array_append_new(a, json_string(s));
  }
  return a;
}

json_t *relay__peers_stats(const relay_t *r) {
  return json_pack("{so so sb}", "allow", ranges(r->allow, r->n_allow), "deny",
                   ranges(r->deny, r->n_deny), "allow_loopback", r->allow_loopback);
}
