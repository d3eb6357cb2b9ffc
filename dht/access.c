/*
 * Who may store what: the checks a node makes on every value it is asked
 * to keep (as primary or replica) and on every value it reads.
 *
 * In the secured mode every value carries its signer's certificate and a
 * signature over key, value id, kind, flags, sequence number, absolute
 * expiry and body (dht/cert.h has the exact bytes).  A value is kept only
 * if the certificate is one the overlay CA issued, the signature holds,
 * the signer satisfies the key's rule (USER: the user's own certificate
 * for sip:USER@OVERLAY; NODE: sip:OVERLAY and turn:OVERLAY values only
 * under the signer's own node id; FIRST: any other key, where a value id
 * belongs to whoever stored it first), its sequence number is not from
 * the future, and its life is within the cap for its kind.
 *
 * Both modes cap the life of a value by kind, so nothing is stored for
 * ever.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "dht/cert.h"
#include "dht/internal.h"
#include "dht/log.h"

/* Sequence numbers are the signer's wall clock in ms: one further ahead
 * of ours than this is refused (a value that would win until then). */
#define SEQ_SKEW_MS (60 * 1000)
#define EXPIRY_SKEW_S 60

uint32_t dht__ttl_cap(uint8_t kind) {
  /* User records follow registrations (RFC 3261 allows days, phones ask
   * for an hour); proxy-peer and relay values are re-put every few
   * minutes; admin values may be kept for a year. */
  switch (kind) {
  case DHT_KIND_USER: return 7 * 86400;
  case DHT_KIND_PROXY:
  case DHT_KIND_RELAY: return 3 * 86400;
  default: return 366 * 86400;
  }
}

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void cert_value(const dht_id_t *key, const proto_value_t *v, dht_cert_value_t *out) {
  *out = (dht_cert_value_t){.key = *key, .vid = v->vid, .vid_len = v->vid_len, .kind = v->kind,
                            .flags = v->flags, .seq = v->seq, .expires = v->expires,
                            .body = v->body, .body_len = v->body_len};
}

/* The secured mode's checks; 0 with *signer set, or a reason. */
static const char *signed_ok(dht_t *d, const dht_id_t *key, const proto_value_t *v,
                             const dht__value_t *old, dht_id_t *signer) {
  if (!(v->flags & PROTO_VF_SIGNED)) return "not signed";
  /* The same version we already hold (a refresh, a replica push) was
   * checked when it first came: no need to verify it again. */
  if (old && old->seq == v->seq && old->cert_len == v->cert_len &&
      memcmp(old->cert, v->cert, v->cert_len) == 0 &&
      memcmp(old->cert + old->cert_len, v->sig, PROTO_SIG_LEN) == 0 && old->expires_abs == v->expires) {
    *signer = old->signer;
    return NULL;
  }
  const dht_cert_t *cert;
  char why[200];
  if (dht_cert_check(d->ca, v->cert, v->cert_len, &cert, why, sizeof(why))) return "certificate refused";
  dht_cert_value_t cv;
  cert_value(key, v, &cv);
  if (dht_cert_verify(cert, &cv, v->sig, PROTO_SIG_LEN)) return "bad signature";
  const dht_cert_info_t *who = dht_cert_info(cert);
  int rule = dht_cert_rule(who, &cv);
  if (rule < 0) return "signer may not write this key";
  if (who->kind == DHT_CERT_NODE) {
    if (memcmp(v->owner, who->node.b, DHT_ID_LEN) != 0) return "owner is not the signer";
    *signer = who->node;
  } else {
    char aor[DHT_CERT_MAX_USER + DHT_CERT_MAX_OVERLAY + 8];
    snprintf(aor, sizeof(aor), "sip:%s@%s", who->user, who->overlay);
    dht_id_of(aor, signer);
  }
  if (rule == DHT_CERT_RULE_FIRST && old && !dht__id_eq(&old->signer, signer))
    return "value id belongs to another signer";
  if (v->seq > wall_ms() + SEQ_SKEW_MS) return "sequence number from the future";
  uint64_t now = (uint64_t)time(NULL);
  if (v->expires > now + dht__ttl_cap(v->kind) + EXPIRY_SKEW_S) return "expiry beyond the cap";
  return NULL;
}

const char *dht__value_check(dht_t *d, const dht_id_t *key, const proto_value_t *v,
                             const dht__value_t *old, dht_id_t *signer, uint32_t *ttl) {
  if (v->ttl > dht__ttl_cap(v->kind)) return "ttl beyond the cap";
  *ttl = v->ttl;
  if (!d->ca) return (v->flags & PROTO_VF_SIGNED) ? "signed value in the open mode" : NULL;
  const char *why = signed_ok(d, key, v, old, signer);
  if (why) return why;
  /* The relative ttl is a relayer's word; the signed expiry bounds it. */
  int64_t left = (int64_t)v->expires - (int64_t)time(NULL) + EXPIRY_SKEW_S;
  if (left <= 0) return "expired";
  if ((uint64_t)left < *ttl) *ttl = (uint32_t)left;
  return NULL;
}

void dht__log_refused(dht_t *d, const dht_node_t *from, const dht_id_t *key, const proto_value_t *v,
                      const char *why) {
  char a[64] = "ourselves", k[DHT_ID_HEX], o[DHT_ID_HEX];
  if (from) dht_addr_str(&from->addr, a, sizeof(a));
  dht_id_hex(key, k);
  dht_id_t owner;
  memcpy(owner.b, v->owner, DHT_ID_LEN);
  dht_id_hex(&owner, o);
  log_warn("refused value %.*s under key %s (owner %.8s) from %s: %s", (int)v->vid_len,
           (const char *)v->vid, k, o, a, why);
}
