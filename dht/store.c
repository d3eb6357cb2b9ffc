/* The values this node holds: a hash table of keys, each a small array of
 * values (with an index by value id once it holds more than a few), and
 * what each owner holds in all, for the limits.  Expiry is in loop time
 * (monotonic ms). */
#include <stdlib.h>
#include <string.h>

#include "dht/internal.h"
#include "dht/log.h"

#define STORE_MIN_BUCKETS 64
#define INDEX_FROM 8 /* values under a key before it gets an index */

struct dht__owner {
  dht__owner_t *next;
  dht_id_t id;
  uint32_t values;
  uint64_t bytes;
};

void dht__store_init(dht__store_t *s) {
  memset(s, 0, sizeof(*s));
  s->nbuckets = STORE_MIN_BUCKETS;
  s->buckets = calloc(s->nbuckets, sizeof(*s->buckets));
  s->owners_nb = STORE_MIN_BUCKETS;
  s->owners = calloc(s->owners_nb, sizeof(*s->owners));
  if (!s->buckets || !s->owners) fatalx("out of memory");
}

static void value_free(dht__value_t *v) {
  free(v->vid);
  free(v->body);
  free(v->cert);
}

static void key_free(dht__key_t *k) {
  for (int i = 0; i < k->n; i++) value_free(&k->values[i]);
  free(k->values);
  free(k->index);
  free(k);
}

void dht__store_free(dht__store_t *s) {
  for (size_t i = 0; i < s->nbuckets; i++) {
    for (dht__key_t *k = s->buckets[i], *next; k; k = next) {
      next = k->next;
      key_free(k);
    }
  }
  for (size_t i = 0; i < s->owners_nb; i++) {
    for (dht__owner_t *o = s->owners[i], *next; o; o = next) {
      next = o->next;
      free(o);
    }
  }
  free(s->buckets);
  free(s->owners);
  memset(s, 0, sizeof(*s));
}

/* Keys and node ids are SHA-1 outputs (or CA-drawn random bits), so any
 * four bytes of them hash well. */
static uint32_t id_hash(const dht_id_t *id) {
  uint32_t h;
  memcpy(&h, id->b + 8, sizeof(h));
  return h;
}

static size_t bucket_of(const dht__store_t *s, const dht_id_t *key) {
  return id_hash(key) & (s->nbuckets - 1);
}

dht__key_t *dht__store_find(dht__store_t *s, const dht_id_t *key) {
  for (dht__key_t *k = s->buckets[bucket_of(s, key)]; k; k = k->next)
    if (dht__id_eq(&k->key, key)) return k;
  return NULL;
}

static void grow(dht__store_t *s) {
  size_t n = s->nbuckets * 2;
  dht__key_t **b = calloc(n, sizeof(*b));
  if (!b) return; /* a longer chain is slower, not wrong */
  dht__key_t **old = s->buckets;
  size_t oldn = s->nbuckets;
  s->buckets = b;
  s->nbuckets = n;
  for (size_t i = 0; i < oldn; i++) {
    for (dht__key_t *k = old[i], *next; k; k = next) {
      next = k->next;
      size_t j = bucket_of(s, &k->key);
      k->next = b[j];
      b[j] = k;
    }
  }
  free(old);
}

static dht__key_t *key_get(dht__store_t *s, const dht_id_t *key) {
  dht__key_t *k = dht__store_find(s, key);
  if (k) return k;
  if (s->nkeys >= s->nbuckets) grow(s);
  k = calloc(1, sizeof(*k));
  if (!k) return NULL;
  k->key = *key;
  size_t b = bucket_of(s, key);
  k->next = s->buckets[b];
  s->buckets[b] = k;
  s->nkeys++;
  return k;
}

/* Owners ------------------------------------------------------------------------ */

static dht__owner_t **owner_slot(dht__store_t *s, const dht_id_t *id) {
  dht__owner_t **pp = &s->owners[id_hash(id) & (s->owners_nb - 1)];
  while (*pp && !dht__id_eq(&(*pp)->id, id)) pp = &(*pp)->next;
  return pp;
}

static void owners_grow(dht__store_t *s) {
  size_t nb = s->owners_nb * 2;
  dht__owner_t **b = calloc(nb, sizeof(*b));
  if (!b) return;
  for (size_t i = 0; i < s->owners_nb; i++) {
    for (dht__owner_t *o = s->owners[i], *next; o; o = next) {
      next = o->next;
      size_t j = id_hash(&o->id) & (nb - 1);
      o->next = b[j];
      b[j] = o;
    }
  }
  free(s->owners);
  s->owners = b;
  s->owners_nb = nb;
}

static const dht__owner_t *owner_find(dht__store_t *s, const dht_id_t *id) { return *owner_slot(s, id); }

/* The wire size of a stored value: what it adds to a FETCH answer. */
static size_t value_bytes(const dht__value_t *v) {
  return 1u + v->vid_len + 2 + PROTO_ID_LEN + 8 + 4 + 4 + v->body_len +
         (v->cert ? 8u + 2 + v->cert_len + PROTO_SIG_LEN : 0);
}

static size_t proto_bytes(const proto_value_t *v) {
  return 1u + v->vid_len + 2 + PROTO_ID_LEN + 8 + 4 + 4 + v->body_len +
         ((v->flags & PROTO_VF_SIGNED) ? 8u + 2 + v->cert_len + PROTO_SIG_LEN : 0);
}

/* Count v in (dir 1) or out of (dir -1) its key's and its owner's totals. */
static void account(dht__store_t *s, dht__key_t *k, const dht__value_t *v, int dir) {
  size_t b = value_bytes(v);
  k->bytes = dir > 0 ? k->bytes + b : k->bytes - b;
  dht__owner_t **pp = owner_slot(s, &v->signer);
  if (dir > 0 && !*pp) {
    if (s->owners_n >= s->owners_nb) {
      owners_grow(s);
      pp = owner_slot(s, &v->signer);
    }
    if (!(*pp = calloc(1, sizeof(**pp)))) fatalx("out of memory");
    (*pp)->id = v->signer;
    s->owners_n++;
  }
  dht__owner_t *o = *pp;
  if (!o) return;
  if (dir > 0) {
    o->values++;
    o->bytes += b;
    return;
  }
  o->values--;
  o->bytes -= b;
  if (o->values == 0) {
    *pp = o->next;
    free(o);
    s->owners_n--;
  }
}

/* Values of a key by id ------------------------------------------------------------
 *
 * A key with more than INDEX_FROM values gets an open-addressing index
 * (slots hold value index + 1), rebuilt lazily after removals: a key
 * holding many values must not cost a scan per STORE. */

static uint32_t vid_hash(const uint8_t *vid, size_t len) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < len; i++) h = (h ^ vid[i]) * 16777619u;
  return h;
}

static void index_build(dht__key_t *k) {
  uint32_t cap = 16;
  while (cap < 2u * (uint32_t)k->n) cap *= 2;
  uint32_t *ix = cap == k->index_cap ? k->index : calloc(cap, sizeof(*ix));
  if (!ix) return; /* a scan is slower, not wrong */
  if (ix == k->index) memset(ix, 0, cap * sizeof(*ix));
  else free(k->index);
  for (int i = 0; i < k->n; i++) {
    uint32_t h = vid_hash((const uint8_t *)k->values[i].vid, k->values[i].vid_len) & (cap - 1);
    while (ix[h]) h = (h + 1) & (cap - 1);
    ix[h] = (uint32_t)i + 1;
  }
  k->index = ix;
  k->index_cap = cap;
  k->index_stale = false;
}

static bool vid_is(const dht__value_t *v, const uint8_t *vid, size_t len) {
  return v->vid_len == len && memcmp(v->vid, vid, len) == 0;
}

dht__value_t *dht__store_value(dht__key_t *k, const uint8_t *vid, size_t len) {
  if (k->n > INDEX_FROM && (k->index_stale || !k->index || k->index_cap < 2u * (uint32_t)k->n))
    index_build(k);
  if (k->n <= INDEX_FROM || !k->index) {
    for (int i = 0; i < k->n; i++)
      if (vid_is(&k->values[i], vid, len)) return &k->values[i];
    return NULL;
  }
  for (uint32_t h = vid_hash(vid, len) & (k->index_cap - 1); k->index[h]; h = (h + 1) & (k->index_cap - 1))
    if (vid_is(&k->values[k->index[h] - 1], vid, len)) return &k->values[k->index[h] - 1];
  return NULL;
}

static dht__value_t *value_add(dht__store_t *s, dht__key_t *k, const proto_value_t *in) {
  if (k->n == k->cap) {
    int cap = k->cap ? k->cap * 2 : 2;
    dht__value_t *nv = realloc(k->values, (size_t)cap * sizeof(*nv));
    if (!nv) return NULL;
    k->values = nv;
    k->cap = cap;
  }
  char *vid = malloc(in->vid_len + 1u);
  if (!vid) return NULL;
  memcpy(vid, in->vid, in->vid_len);
  vid[in->vid_len] = '\0';
  dht__value_t *v = &k->values[k->n++];
  memset(v, 0, sizeof(*v));
  v->vid = vid;
  v->vid_len = in->vid_len;
  k->index_stale = true;
  s->nvalues++;
  return v;
}

/* Remove value i of k (swapping the last one into its place). */
static void value_remove(dht__store_t *s, dht__key_t *k, int i) {
  account(s, k, &k->values[i], -1);
  value_free(&k->values[i]);
  k->values[i] = k->values[--k->n];
  k->index_stale = true;
  s->nvalues--;
}

static int value_set(dht__value_t *v, const proto_value_t *in, const dht_id_t *who, uint64_t now) {
  uint8_t *body = NULL, *cert = NULL;
  bool signed_ = in->flags & PROTO_VF_SIGNED;
  if ((in->body_len && !(body = malloc(in->body_len))) ||
      (signed_ && !(cert = malloc((size_t)in->cert_len + PROTO_SIG_LEN)))) {
    free(body);
    return -1;
  }
  if (in->body_len) memcpy(body, in->body, in->body_len);
  if (signed_) {
    memcpy(cert, in->cert, in->cert_len);
    memcpy(cert + in->cert_len, in->sig, PROTO_SIG_LEN);
  }
  free(v->body);
  free(v->cert);
  v->body = body;
  v->body_len = in->body_len;
  v->cert = cert;
  v->cert_len = signed_ ? in->cert_len : 0;
  v->expires_abs = in->expires;
  v->signer = *who;
  v->kind = in->kind;
  v->flags = in->flags;
  memcpy(v->owner.b, in->owner, DHT_ID_LEN);
  v->seq = in->seq;
  v->expires = now + (uint64_t)in->ttl * 1000;
  return 0;
}

/* Applying values ------------------------------------------------------------------ */

static const dht_id_t *who_of(const proto_value_t *in, const dht_id_t *signer) {
  /* In the open mode nobody signs: the owner field is all we have. */
  return signer ? signer : (const dht_id_t *)in->owner;
}

int dht__store_admit(dht__store_t *s, const dht_id_t *key, const proto_value_t *in,
                     const dht_id_t *signer, const dht_limits_t *lim) {
  const dht_id_t *who = who_of(in, signer);
  dht__key_t *k = dht__store_find(s, key);
  dht__value_t *old = k ? dht__store_value(k, in->vid, in->vid_len) : NULL;
  size_t oldb = old ? value_bytes(old) : 0, newb = proto_bytes(in);
  /* A key's values must always fit in one FETCH answer. */
  if (PROTO_ID_LEN + 3 + (k ? k->bytes : 0) - oldb + newb > PROTO_MAX_BODY) return DHT__FULL_KEY;
  if (!old && k && (unsigned)k->n >= lim->key_values) return DHT__FULL_KEY;
  bool same = old && dht__id_eq(&old->signer, who);
  if (!same && k) {
    unsigned mine = 0;
    for (int i = 0; i < k->n; i++) mine += dht__id_eq(&k->values[i].signer, who);
    if (mine >= lim->owner_key_values) return DHT__FULL_OWNER_KEY;
  }
  const dht__owner_t *o = owner_find(s, who);
  if (o && (o->values + !same > lim->owner_values ||
            o->bytes + newb - (same ? oldb : 0) > (uint64_t)lim->owner_kb * 1024))
    return DHT__FULL_OWNER;
  return 0;
}

int dht__store_apply(dht__store_t *s, const dht_id_t *key, const proto_value_t *in,
                     const dht_id_t *signer, uint64_t now) {
  if (in->ttl == 0) return 0;
  /* A value id with a NUL in it would be cut short by strlen: refuse it. */
  if (memchr(in->vid, '\0', in->vid_len)) return 0;
  dht__key_t *k = key_get(s, key);
  if (!k) return 0;
  k->confirmed = now;
  dht__value_t *v = dht__store_value(k, in->vid, in->vid_len);
  if (v) {
    uint64_t exp = now + (uint64_t)in->ttl * 1000;
    if (in->seq < v->seq || (in->seq == v->seq && exp <= v->expires)) return 0;
    if (in->seq == v->seq) {
      v->expires = exp; /* a refresh: same value, longer life */
      return 1;
    }
    account(s, k, v, -1);
  } else if (!(v = value_add(s, k, in))) {
    return 0;
  }
  if (value_set(v, in, who_of(in, signer), now)) {
    /* Out of memory: drop the half-made value rather than keep garbage. */
    account(s, k, v, 1);
    value_remove(s, k, (int)(v - k->values));
    return 0;
  }
  account(s, k, v, 1);
  return 1;
}

int dht__store_refresh(dht__store_t *s, const dht_id_t *key, const proto_value_t *in, uint64_t now,
                       int64_t wall) {
  dht__key_t *k = dht__store_find(s, key);
  dht__value_t *v = k ? dht__store_value(k, in->vid, in->vid_len) : NULL;
  if (!v || v->seq != in->seq) return 0;
  uint64_t ttl = in->ttl;
  /* A signed value lives no longer than its signer said, whoever relays the
   * refresh (a minute of clock skew allowed, as for whole values). */
  if (v->cert) {
    int64_t left = (int64_t)v->expires_abs - wall + 60;
    ttl = left <= 0 ? 0 : (uint64_t)left < ttl ? (uint64_t)left : ttl;
  }
  uint64_t exp = now + ttl * 1000;
  if (exp > v->expires) v->expires = exp;
  k->confirmed = now;
  return 1;
}

/* Dropping ------------------------------------------------------------------------- */

static void unlink_key(dht__store_t *s, dht__key_t *k) {
  dht__key_t **pp = &s->buckets[bucket_of(s, &k->key)];
  while (*pp != k) pp = &(*pp)->next;
  *pp = k->next;
  while (k->n) value_remove(s, k, k->n - 1);
  s->nkeys--;
  key_free(k);
}

size_t dht__store_sweep(dht__store_t *s, uint64_t now) {
  size_t dropped = 0;
  for (size_t b = 0; b < s->nbuckets; b++) {
    for (dht__key_t *k = s->buckets[b], *next; k; k = next) {
      next = k->next;
      for (int i = 0; i < k->n;) {
        if (k->values[i].expires <= now) {
          value_remove(s, k, i);
          dropped++;
        } else {
          i++;
        }
      }
      if (k->n == 0) unlink_key(s, k);
    }
  }
  return dropped;
}

size_t dht__store_drop_keys(dht__store_t *s, bool (*drop)(const dht__key_t *k, void *arg), void *arg) {
  size_t n = 0;
  for (size_t b = 0; b < s->nbuckets; b++) {
    for (dht__key_t *k = s->buckets[b], *next; k; k = next) {
      next = k->next;
      if (!drop(k, arg)) continue;
      unlink_key(s, k);
      n++;
    }
  }
  return n;
}

/* Reading ---------------------------------------------------------------------------- */

void dht__store_each(dht__store_t *s, void (*fn)(dht__key_t *k, void *arg), void *arg) {
  for (size_t b = 0; b < s->nbuckets; b++)
    for (dht__key_t *k = s->buckets[b]; k; k = k->next) fn(k, arg);
}

size_t dht__store_live(const dht__store_t *s, uint64_t now) {
  size_t n = 0;
  for (size_t b = 0; b < s->nbuckets; b++)
    for (const dht__key_t *k = s->buckets[b]; k; k = k->next) n += (size_t)dht__store_live_in(k, now);
  return n;
}

int dht__store_live_in(const dht__key_t *k, uint64_t now) {
  int n = 0;
  for (int i = 0; i < k->n; i++)
    n += k->values[i].expires > now && !(k->values[i].flags & PROTO_VF_TOMBSTONE);
  return n;
}

size_t dht__store_encoded_size(const dht__key_t *k) { return PROTO_ID_LEN + 3 + k->bytes; }

long dht__store_encode(const dht__key_t *k, uint8_t flags, bool same, uint64_t now, uint8_t *buf, size_t len) {
  proto_wcur_t w = {buf, buf + len, 0};
  proto_store_begin(&w, k->key.b, flags);
  for (int i = 0; i < k->n; i++) {
    const dht__value_t *v = &k->values[i];
    /* Round the remaining life down, and leave out what has less than a
     * second: a copy must never outlive its original.  Rounding up let two
     * replicas that read repair kept in step extend each other's copy of a
     * value whose owner had died, a second at a time, for as long as
     * someone kept reading it. */
    if (v->expires < now + 1000) continue;
    proto_value_t pv = {
        .vid = (const uint8_t *)v->vid, .vid_len = v->vid_len,
        .kind = v->kind, .flags = v->flags, .seq = v->seq,
        .ttl = (uint32_t)((v->expires - now) / 1000),
        .body = v->body, .body_len = v->body_len,
        .expires = v->expires_abs, .cert = v->cert, .cert_len = v->cert_len,
        .sig = v->cert ? v->cert + v->cert_len : NULL,
    };
    memcpy(pv.owner, v->owner.b, DHT_ID_LEN);
    if (same) {
      pv.flags = (uint8_t)((pv.flags & ~PROTO_VF_SIGNED) | PROTO_VF_SAME);
      pv.body_len = 0;
    }
    proto_store_add(&w, &pv);
  }
  return proto_store_end(&w, buf);
}
