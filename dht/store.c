/* The values this node holds: a hash table of keys, each a small array of
 * values indexed by value id.  Expiry is in loop time (monotonic ms). */
#include <stdlib.h>
#include <string.h>

#include "dht/internal.h"
#include "dht/log.h"

#define STORE_MIN_BUCKETS 64

void dht__store_init(dht__store_t *s) {
  memset(s, 0, sizeof(*s));
  s->nbuckets = STORE_MIN_BUCKETS;
  s->buckets = calloc(s->nbuckets, sizeof(*s->buckets));
  if (!s->buckets) fatalx("out of memory");
}

static void value_free(dht__value_t *v) {
  free(v->vid);
  free(v->body);
  free(v->cert);
}

static void key_free(dht__key_t *k) {
  for (int i = 0; i < k->n; i++) value_free(&k->values[i]);
  free(k->values);
  free(k);
}

void dht__store_free(dht__store_t *s) {
  for (size_t i = 0; i < s->nbuckets; i++) {
    for (dht__key_t *k = s->buckets[i], *next; k; k = next) {
      next = k->next;
      key_free(k);
    }
  }
  free(s->buckets);
  memset(s, 0, sizeof(*s));
}

/* Keys are SHA-1 outputs, so any four bytes of them hash well. */
static size_t bucket_of(const dht__store_t *s, const dht_id_t *key) {
  uint32_t h;
  memcpy(&h, key->b + 8, sizeof(h));
  return h & (s->nbuckets - 1);
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

static int value_set(dht__value_t *v, const proto_value_t *in, const dht_id_t *signer, uint64_t now) {
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
  if (signer) v->signer = *signer;
  v->kind = in->kind;
  v->flags = in->flags;
  memcpy(v->owner.b, in->owner, DHT_ID_LEN);
  v->seq = in->seq;
  v->expires = now + (uint64_t)in->ttl * 1000;
  return 0;
}

dht__value_t *dht__store_value(dht__key_t *k, const uint8_t *vid, size_t len) {
  for (int i = 0; i < k->n; i++)
    if (strlen(k->values[i].vid) == len && memcmp(k->values[i].vid, vid, len) == 0)
      return &k->values[i];
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
  s->nvalues++;
  return v;
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
  } else if (!(v = value_add(s, k, in))) {
    return 0;
  }
  if (value_set(v, in, signer, now)) {
    /* Out of memory: drop the half-made value rather than keep garbage. */
    value_free(v);
    *v = k->values[--k->n];
    s->nvalues--;
    return 0;
  }
  return 1;
}

static void unlink_key(dht__store_t *s, dht__key_t *k) {
  dht__key_t **pp = &s->buckets[bucket_of(s, &k->key)];
  while (*pp != k) pp = &(*pp)->next;
  *pp = k->next;
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
          value_free(&k->values[i]);
          k->values[i] = k->values[--k->n];
          s->nvalues--;
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
      s->nvalues -= (size_t)k->n;
      unlink_key(s, k);
      n++;
    }
  }
  return n;
}

void dht__store_each(dht__store_t *s, void (*fn)(dht__key_t *k, void *arg), void *arg) {
  for (size_t b = 0; b < s->nbuckets; b++)
    for (dht__key_t *k = s->buckets[b]; k; k = k->next) fn(k, arg);
}

size_t dht__store_live(const dht__store_t *s, uint64_t now) {
  size_t n = 0;
  for (size_t b = 0; b < s->nbuckets; b++)
    for (const dht__key_t *k = s->buckets[b]; k; k = k->next)
      for (int i = 0; i < k->n; i++)
        if (k->values[i].expires > now && !(k->values[i].flags & PROTO_VF_TOMBSTONE)) n++;
  return n;
}

int dht__store_live_in(const dht__key_t *k, uint64_t now) {
  int n = 0;
  for (int i = 0; i < k->n; i++)
    n += k->values[i].expires > now && !(k->values[i].flags & PROTO_VF_TOMBSTONE);
  return n;
}

size_t dht__store_encoded_size(const dht__key_t *k) {
  size_t n = PROTO_ID_LEN + 3;
  for (int i = 0; i < k->n; i++)
    n += 1 + strlen(k->values[i].vid) + 2 + PROTO_ID_LEN + 8 + 4 + 4 + k->values[i].body_len +
         (k->values[i].cert_len ? 8 + 2 + k->values[i].cert_len + PROTO_SIG_LEN : 0);
  return n;
}

long dht__store_encode(const dht__key_t *k, uint8_t flags, uint64_t now, uint8_t *buf, size_t len) {
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
        .vid = (const uint8_t *)v->vid, .vid_len = (uint8_t)strlen(v->vid),
        .kind = v->kind, .flags = v->flags, .seq = v->seq,
        .ttl = (uint32_t)((v->expires - now) / 1000),
        .body = v->body, .body_len = v->body_len,
        .expires = v->expires_abs, .cert = v->cert, .cert_len = v->cert_len,
        .sig = v->cert ? v->cert + v->cert_len : NULL,
    };
    memcpy(pv.owner, v->owner.b, DHT_ID_LEN);
    proto_store_add(&w, &pv);
  }
  return proto_store_end(&w, buf);
}
