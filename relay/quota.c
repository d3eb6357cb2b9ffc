/*
 * relay/quota: live allocations counted by user name and by client IP, so
 * an Allocate is checked against its quotas in O(1) however many
 * allocations there are.
 *
 * The user name is the NAME of "EXPIRY:NAME": credentials minted again for
 * the same name (another EXPIRY) share its quota.  A client IP is an IPv4
 * address, or the /64 of an IPv6 one, since a single host is commonly
 * handed a whole /64 (RFC 7934) and could otherwise take a new address per
 * allocation; an IPv4-mapped IPv6 address counts as its IPv4 address.
 *
 * Each table is a chained hash from key to count; an entry goes when its
 * count drops to zero, so the tables hold at most one entry per allocation.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "relay/relay_int.h"

struct relay_count {
  relay_count_t *next;
  unsigned n;
  uint16_t len;
  uint8_t key[];
};

uint32_t relay__fnv(uint32_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 16777619u; /* FNV-1a */
  return h;
}

static relay_count_t **slot(const relay_counts_t *t, const void *key, size_t len) {
  relay_count_t **pp = &t->b[relay__fnv(RELAY_FNV_BASIS, key, len) & (t->nb - 1)];
  while (*pp && ((*pp)->len != len || memcmp((*pp)->key, key, len) != 0)) pp = &(*pp)->next;
  return pp;
}

static unsigned count_get(const relay_counts_t *t, const void *key, size_t len) {
  if (!t->nb) return 0;
  relay_count_t *e = *slot(t, key, len);
  return e ? e->n : 0;
}

/* Keep the load factor at most 1; doubles from 16 buckets. */
static int count_grow(relay_counts_t *t) {
  if (t->n < t->nb) return 0;
  size_t nb = t->nb ? t->nb * 2 : 16;
  relay_count_t **b = calloc(nb, sizeof(*b));
  if (!b) return -ENOMEM;
  for (size_t i = 0; i < t->nb; i++) {
    for (relay_count_t *e = t->b[i], *next; e; e = next) {
      next = e->next;
      relay_count_t **head = &b[relay__fnv(RELAY_FNV_BASIS, e->key, e->len) & (nb - 1)];
      e->next = *head, *head = e;
    }
  }
  free(t->b);
  t->b = b, t->nb = nb;
  return 0;
}

static int count_inc(relay_counts_t *t, const void *key, size_t len) {
  relay_count_t **pp = t->nb ? slot(t, key, len) : NULL;
  if (pp && *pp) {
    (*pp)->n++;
    return 0;
  }
  if (count_grow(t) < 0) return -ENOMEM;
  relay_count_t *e = malloc(sizeof(*e) + len);
  if (!e) return -ENOMEM;
  e->n = 1, e->len = (uint16_t)len;
  memcpy(e->key, key, len);
  relay_count_t **head = &t->b[relay__fnv(RELAY_FNV_BASIS, key, len) & (t->nb - 1)];
  e->next = *head, *head = e;
  t->n++;
  return 0;
}

static void count_dec(relay_counts_t *t, const void *key, size_t len) {
  relay_count_t **pp = t->nb ? slot(t, key, len) : NULL;
  if (!pp || !*pp) return;
  relay_count_t *e = *pp;
  if (--e->n) return;
  *pp = e->next;
  free(e);
  t->n--;
}

static void count_free(relay_counts_t *t) {
  for (size_t i = 0; i < t->nb; i++) {
    for (relay_count_t *e = t->b[i], *next; e; e = next) {
      next = e->next;
      free(e);
    }
  }
  free(t->b);
  memset(t, 0, sizeof(*t));
}

/* Keys ------------------------------------------------------------------ */

/* NAME of "EXPIRY:NAME" (empty for a bare "EXPIRY"); the username has been
 * authenticated, so its length is bounded by the STUN attribute's. */
static const char *user_name(const char *user, size_t ulen, size_t *nlen) {
  const char *colon = memchr(user, ':', ulen);
  if (!colon) {
    *nlen = 0;
    return user + ulen;
  }
  *nlen = ulen - (size_t)(colon + 1 - user);
  return colon + 1;
}

/* The family, then 4 bytes of IPv4 or the /64 of IPv6; returns the length. */
static size_t ip_key(const proto_stun_addr_t *a, uint8_t key[9]) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (a->family == 4 || memcmp(a->ip, mapped, 12) == 0) {
    key[0] = 4;
    memcpy(key + 1, a->family == 4 ? a->ip : a->ip + 12, 4);
    return 5;
  }
  key[0] = 6;
  memcpy(key + 1, a->ip, 8);
  return 9;
}

/* The quotas ------------------------------------------------------------ */

int relay__quota_check(relay_t *r, const char *user, size_t ulen, const proto_stun_addr_t *client) {
  /* The allocation keeps the username as a C string (strndup): count what
   * it will keep, so bytes after a NUL cannot make a name look new. */
  ulen = strnlen(user, ulen);
  size_t nlen;
  const char *name = user_name(user, ulen, &nlen);
  uint8_t key[9];
  size_t klen = ip_key(client, key);
  int code = 0;
  if (count_get(&r->by_name, name, nlen) >= r->quota_user) code = 486, r->c.quota_user++;
  else if (count_get(&r->by_ip, key, klen) >= r->quota_ip) code = 486, r->c.quota_ip++;
  else if (r->n_allocs >= r->quota_total) code = 508, r->c.quota_total++;
  if (code) r->c.quota_refusals++;
  return code;
}

int relay__quota_take(relay_t *r, const relay_alloc_t *a) {
  size_t nlen;
  const char *name = user_name(a->user, strlen(a->user), &nlen);
  uint8_t key[9];
  size_t klen = ip_key(&a->client, key);
  if (count_inc(&r->by_name, name, nlen) < 0) return -ENOMEM;
  if (count_inc(&r->by_ip, key, klen) < 0) {
    count_dec(&r->by_name, name, nlen);
    return -ENOMEM;
  }
  return 0;
}

void relay__quota_release(relay_t *r, const relay_alloc_t *a) {
  size_t nlen;
  const char *name = user_name(a->user, strlen(a->user), &nlen);
  uint8_t key[9];
  size_t klen = ip_key(&a->client, key);
  count_dec(&r->by_name, name, nlen);
  count_dec(&r->by_ip, key, klen);
}

void relay__quota_free(relay_t *r) {
  count_free(&r->by_name);
  count_free(&r->by_ip);
}

void relay__quota_stats(const relay_t *r, json_t *j) {
  json_object_set_new(j, "quota_per_user", json_integer((json_int_t)r->quota_user));
  json_object_set_new(j, "quota_per_ip", json_integer((json_int_t)r->quota_ip));
  json_object_set_new(j, "quota_total", json_integer((json_int_t)r->quota_total));
  json_object_set_new(j, "users", json_integer((json_int_t)r->by_name.n));
  json_object_set_new(j, "client_ips", json_integer((json_int_t)r->by_ip.n));
}
