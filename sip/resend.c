/*
 * The bytes of the answers to REGISTERs sent statelessly (the 401
 * challenge, the registrar's final answer), kept a short time by Call-ID,
 * CSeq and top Via branch, so that core.c's peek answers a retransmission
 * from them without sofia parsing it or building the answer again: past
 * the REGISTER knee most of what floods the socket is sipp retransmitting
 * the first REGISTER, whose 401 left no state behind.
 *
 * The REGISTERs the peek shed are remembered here too, by the same key,
 * as keys alone: while the node sheds, a phone that retransmits one
 * (sipp ignores a 503 it did not expect) costs a look-up, not another
 * answer built from sofia's reading of its lines.
 *
 * A ring of SIP_RESEND_MAX entries in order of sending: the oldest is
 * the first to expire and the one a new answer replaces; a hash of chains
 * (indexes into the ring) finds them.  Each entry's key and bytes live in
 * its own SIP_RESEND_SLOT of the table, not in blocks of their own: two
 * 1.5 KB blocks a registration, past glibc's per-thread cache, went
 * through malloc's general bins among the bindings a registrar keeps.
 * The table is one mapping whose pages are touched as the ring reaches
 * them; an answer too big for a slot is not kept.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "sip/sip_int.h"

typedef struct {
  char *key;       /* NULL when free; the slot's start */
  uint8_t *bytes;  /* the answer as sent, after the key */
  size_t len;
  uint64_t until;  /* uv_now() ms */
  uint32_t hash;   /* of key: a chain is compared by it first */
  int hnext;       /* next index in the chain, or -1 */
} resend_t;

struct sip_resend {
  resend_t e[SIP_RESEND_MAX];
  int bucket[SIP_RESEND_MAX];
  unsigned next; /* the ring's oldest slot, reused next */
  char slot[SIP_RESEND_MAX][SIP_RESEND_SLOT];
};

static int *chain(sip_resend_t *t, uint32_t hash)
{
  return &t->bucket[hash % SIP_RESEND_MAX];
}

static void slot_clear(sip_resend_t *t, int i)
{
  resend_t *e = &t->e[i];
  if (!e->key)
    return;
  for (int *pp = chain(t, e->hash); *pp >= 0; pp = &t->e[*pp].hnext)
    if (*pp == i) {
      *pp = e->hnext;
      break;
    }
  e->key = NULL, e->bytes = NULL;
}

void sip__resend_keep(sip_svc_t *s, const char *key, const void *bytes, size_t len)
{
  if (!s->resend && (s->resend = malloc(sizeof *s->resend))) {
    memset(s->resend->e, 0, sizeof s->resend->e);
    memset(s->resend->bucket, 0xff, sizeof s->resend->bucket); /* -1 */
    s->resend->next = 0;
  }
  sip_resend_t *t = s->resend;
  size_t kl = strlen(key) + 1;
  if (!t || kl + len > SIP_RESEND_SLOT || sip__resend_find(s, key, NULL))
    return;
  int i = (int)(t->next++ % SIP_RESEND_MAX);
  slot_clear(t, i);
  resend_t *e = &t->e[i];
  e->key = t->slot[i];
  memcpy(e->key, key, kl);
  e->bytes = (uint8_t *)e->key + kl;
  memcpy(e->bytes, bytes, len);
  e->len = len, e->until = sip__now_ms(s) + SIP_RESEND_MS;
  e->hash = sip__fnv(SIP_FNV_INIT, key, 0);
  int *head = chain(t, e->hash);
  e->hnext = *head, *head = i;
}

const void *sip__resend_find(sip_svc_t *s, const char *key, size_t *len)
{
  sip_resend_t *t = s->resend;
  if (!t)
    return NULL;
  uint64_t now = sip__now_ms(s);
  uint32_t hash = sip__fnv(SIP_FNV_INIT, key, 0);
  for (int i = *chain(t, hash); i >= 0; i = t->e[i].hnext)
    if (t->e[i].hash == hash && strcmp(t->e[i].key, key) == 0) {
      if (t->e[i].until <= now)
        return NULL;
      if (len)
        *len = t->e[i].len;
      return t->e[i].bytes;
    }
  return NULL;
}

/* Shed REGISTERs: direct-mapped by a 64-bit hash of the key, so a
 * collision only forgets one (its copy then gets a 503 again). */
typedef struct {
  uint64_t hash, at; /* at: uv_now() ms, 0 when free */
} shed_t;

/* A source that sent copies of REGISTERs shed with a 503: counted from
 * its first copy (since), judged deaf to the 503 (until) at
 * SIP_DEAF_COPIES within SIP_SHED_MEMORY_MS. */
typedef struct {
  uint64_t hash, since, until; /* uv_now() ms; until 0: not judged */
  unsigned copies;
} deaf_t;

struct sip_shed {
  uint64_t last; /* uv_now() ms of the latest key noted */
  shed_t e[SIP_SHED_KEYS];
  deaf_t deaf[SIP_DEAF_SOURCES]; /* direct-mapped by the source's hash */
};

static uint64_t hash64(const char *p, size_t n)
{
  /* Two FNV-1a runs from different bases: 64 bits without a second hash. */
  return (uint64_t)sip__fnv_n(SIP_FNV_INIT, p, n) << 32 | sip__fnv_n(0x5bd1e995u, p, n);
}

void sip__resend_shed_note(sip_svc_t *s, const char *key)
{
  if (!s->shed_keys && !(s->shed_keys = calloc(1, sizeof *s->shed_keys)))
    return;
  uint64_t h = hash64(key, strlen(key));
  s->shed_keys->last = sip__now_ms(s);
  s->shed_keys->e[h % SIP_SHED_KEYS] = (shed_t){h, s->shed_keys->last};
}

int sip__resend_shed_seen(sip_svc_t *s, const char *key, unsigned within_ms)
{
  /* Once the node no longer sheds, every REGISTER asks for the
   * Retry-After's 2 s: none is hashed when nothing was shed that late. */
  uint64_t now = sip__now_ms(s);
  if (!s->shed_keys || now - s->shed_keys->last >= within_ms)
    return 0;
  uint64_t h = hash64(key, strlen(key));
  const shed_t *e = &s->shed_keys->e[h % SIP_SHED_KEYS];
  return e->at && e->hash == h && now - e->at < within_ms;
}

/* The source's address and port (the port too: phones behind one NAT
 * share an address), hashed; 0 for an address of no known family. */
static uint64_t source_hash(const struct sockaddr *sa)
{
  char b[sizeof(struct in6_addr) + 2];
  size_t n;
  if (sa && sa->sa_family == AF_INET) {
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
    memcpy(b, &v4->sin_addr, n = sizeof v4->sin_addr);
    memcpy(b + n, &v4->sin_port, 2);
  } else if (sa && sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
    memcpy(b, &v6->sin6_addr, n = sizeof v6->sin6_addr);
    memcpy(b + n, &v6->sin6_port, 2);
  } else {
    return 0;
  }
  return hash64(b, n + 2) | 1; /* never 0: 0 marks a free entry */
}

int sip__resend_shed_copy(sip_svc_t *s, const struct sockaddr *sa)
{
  uint64_t h = source_hash(sa), now = sip__now_ms(s);
  if (!h || !s->shed_keys)
    return 0;
  deaf_t *e = &s->shed_keys->deaf[h % SIP_DEAF_SOURCES];
  int deaf = e->hash == h && now < e->until;
  /* Another source in the slot, or copies too far apart: count anew. */
  if (e->hash != h || (!deaf && now - e->since >= SIP_SHED_MEMORY_MS))
    *e = (deaf_t){.hash = h, .since = now};
  if (++e->copies >= SIP_DEAF_COPIES)
    e->until = now + SIP_SHED_MEMORY_MS;
  return !deaf && now < e->until;
}

int sip__resend_shed_deaf(sip_svc_t *s, const struct sockaddr *sa)
{
  uint64_t h = s->shed_keys ? source_hash(sa) : 0;
  const deaf_t *e = h ? &s->shed_keys->deaf[h % SIP_DEAF_SOURCES] : NULL;
  return e && e->hash == h && sip__now_ms(s) < e->until;
}

void sip__resend_free(sip_svc_t *s)
{
  free(s->shed_keys);
  s->shed_keys = NULL;
  free(s->resend);
  s->resend = NULL;
}
