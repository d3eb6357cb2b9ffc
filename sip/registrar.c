/*
 * The registrar (RFC 3261 section 10.3) with the DHT as location service.
 *
 * A REGISTER is checked, then the AOR's current bindings are read so that
 * the Call-ID/CSeq ordering rule (10.3 step 7) can be applied across
 * nodes, then one DHT value per contact is put (or removed), and the 200
 * lists the bindings that result.  One that only adds or refreshes
 * contacts (nearly all) reads with its writes instead: "writing first".  The node also keeps the bindings it put
 * in a local table: the admin socket shows them, and the proxy uses them to
 * reach its own phones through the address their REGISTER came from.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sofia-sip/hostdomain.h>
#include <sofia-sip/sip_tag.h>
#include <sofia-sip/su_string.h>

#include "sip/sip_int.h"

struct sip_reg {
  sip_reg_t *next, **pprev; /* s->regs, for walks */
  sip_reg_t *hnext[3], **hpprev[3]; /* s->reg_hash chains, by value id, contact, source */
  uint32_t hkey[3];                 /* the keys of those chains (reg_key()) */
  url_t url[1];    /* uri parsed, pointing into text */
  char *aor, *uri, *contact, *vid, *call_id, *received, *transport; /* into text */
  uint32_t cseq;
  int q1000;
  uint64_t expires_at; /* uv_now() milliseconds */
  unsigned gen;        /* s->route_gen when the record was last put */
  char text[];
};

typedef struct {
  const sip_contact_t *m;
  char *contact; /* header value without expires and q */
  char *uri;
  uint32_t expires;
  int q1000;
  int match;     /* index into rtx.ex, or -1 */
  int had_own;   /* written first: our table held its binding before (write_first) */
  char vid[DHT_ID_HEX + 8];
} intent_t;

typedef struct sip_regans regans_t;
typedef struct sip_rtx rtx_t;
struct sip_rtx {
  sip_svc_t *s;
  rtx_t *next, **prevp; /* s->rtx, while linked */
  regans_t *ans;        /* where its answer is kept for retransmissions */
  msg_t *msg;           /* the request, until it is answered */
  sip_t *sip;
  sip_lines_t *lines;   /* its lines as the peek read them (UDP), or NULL */
  char aor[600];
  int star;
  intent_t in[SIP_MAX_CONTACTS];
  int n_in;
  sip_binding_t ex[2 * SIP_MAX_CONTACTS];
  int n_ex;
  int removed[2 * SIP_MAX_CONTACTS];
  int pending, failed;
  int late;        /* written first: the bindings come back with the puts (write_first) */
  int read;        /* ex holds the AOR's bindings as read */
  int late_status; /* what the late checks decided, once the writes they made are done */
  const char *late_phrase;
  char received[80], transport[8], node[DHT_ID_HEX];
  const dht_cert_creds_t *signer; /* the user's, in the secured mode */
  int src;                        /* the source's slot (limit.c), or -1 */
};

/* ---- answers kept for retransmissions -----------------------------------
 *
 * REGISTERs are answered without a server transaction: nta kept each one
 * 32 s after its answer (timer J), 3000 REGISTERs/s held ~96,000 of them,
 * the request and answer of each, in its queues and hash table.  Here a
 * request is known by Call-ID and CSeq: a retransmission while it is under
 * way is dropped, one after it was answered gets the same answer, for
 * SIP_REG_LINGER_MS (a UAC retransmits at most every 4 s, T2), and what is
 * kept is the status and the answer's header lines. */
struct sip_regans {
  regans_t *hnext, *qnext; /* bucket chain; answered ones in order of expiry */
  rtx_t *rtx;              /* while under way */
  uint64_t until;          /* 0 while under way */
  int status;
  const char *phrase;      /* as sent: a static string (literal, sip_status_phrase()) */
  char *headers;           /* as sent */
  uint32_t hash;           /* of key: chains are compared by it first */
  char key[];              /* Call-ID " " CSeq */
};

struct sip_regans_tab {
  regans_t *bucket[SIP_REG_ANSWER_BUCKETS];
  regans_t *head, **tail;  /* answered, oldest first */
  size_t n;
  /* The key last looked up in vain, until an answer is added: the peek
   * looks a REGISTER up before sip__register() does, and nearly all are
   * new, so the second look-up (a cold bucket and chain in a table of
   * 200,000) is answered here. */
  uint32_t miss_hash;
  char miss[600];
};

static regans_t **ans_slot(sip_svc_t *s, uint32_t hash)
{
  return &s->answers->bucket[hash % SIP_REG_ANSWER_BUCKETS];
}

static void ans_drop(sip_svc_t *s, regans_t *a)
{
  for (regans_t **pp = ans_slot(s, a->hash); *pp; pp = &(*pp)->hnext)
    if (*pp == a) {
      *pp = a->hnext;
      break;
    }
  s->answers->n--;
  free(a->headers), free(a);
}

/* Forgets answers past their time (and the oldest beyond the cap). */
static void ans_expire(sip_svc_t *s)
{
  struct sip_regans_tab *t = s->answers;
  uint64_t now = sip__now_ms(s);
  while (t && t->head && (t->head->until <= now || t->n > SIP_REG_ANSWERS_MAX)) {
    regans_t *a = t->head;
    t->head = a->qnext;
    if (!t->head)
      t->tail = &t->head;
    ans_drop(s, a);
  }
}

static regans_t *ans_find(sip_svc_t *s, const char *key)
{
  if (!s->answers)
    return NULL;
  struct sip_regans_tab *t = s->answers;
  uint32_t hash = sip__fnv(SIP_FNV_INIT, key, 0);
  if (t->miss[0] && hash == t->miss_hash && strcmp(key, t->miss) == 0)
    return NULL;
  regans_t *a = *ans_slot(s, hash);
  while (a && (a->hash != hash || strcmp(a->key, key) != 0))
    a = a->hnext;
  if (!a && strlen(key) < sizeof t->miss)
    strcpy(t->miss, key), t->miss_hash = hash;
  return a;
}

static regans_t *ans_new(sip_svc_t *s, const char *key, rtx_t *x)
{
  if (!s->answers && (s->answers = calloc(1, sizeof *s->answers)))
    s->answers->tail = &s->answers->head;
  regans_t *a = s->answers ? calloc(1, sizeof *a + strlen(key) + 1) : NULL;
  if (!a)
    return NULL;
  strcpy(a->key, key);
  s->answers->miss[0] = '\0';
  a->rtx = x;
  a->hash = sip__fnv(SIP_FNV_INIT, key, 0);
  regans_t **slot = ans_slot(s, a->hash);
  a->hnext = *slot, *slot = a;
  s->answers->n++;
  return a;
}


/* ---- the local table --------------------------------------------------- */

static void reg_free(sip_reg_t *r)
{
  free(r);
}

/* Bindings are kept in a list (walks: sweep, admin) and hashed three ways:
 * by value id (every REGISTER replaces one), by the contact's user, host
 * and port (the proxy reaching its own phones) and by the address the
 * REGISTER came from (whether a request comes from one of them).  A
 * registrar node may hold over 100,000, many from one address (a NAT, a
 * PBX, sipp): chains are doubly linked, so that dropping a binding costs
 * the same however many share its source, and the contact key has the
 * user in it.
 *
 * The tables grow a step at a time, as redis's dict does: rebuilding them
 * at once stopped a registrar for 67 ms at 131,072 bindings (its socket
 * filled with a thousand REGISTERs), twice as long at each doubling.  The
 * old tables' buckets below reg_moved have been moved to the new ones;
 * each binding added moves two more, so a growth is done long before the
 * next one is due. */
enum { BY_VID, BY_CONTACT, BY_SOURCE };

/* User and host hash without case (a superset of what url_cmp() finds
 * equal) and a missing port is the scheme's default, so that URLs
 * url_cmp() finds equal have equal keys. */
static uint32_t url_key(const url_t *u)
{
  const char *port = u->url_port && u->url_port[0] ? u->url_port
                     : u->url_type == url_sips    ? "5061"
                                                  : "5060";
  uint32_t h = sip__fnv(sip__fnv(SIP_FNV_INIT, u->url_user, 1) ^ '@', u->url_host, 1);
  return sip__fnv(h ^ ':', port, 0);
}

static sip_reg_t **reg_slot(const sip_svc_t *s, int idx, uint32_t key)
{
  if (s->reg_old[idx] && (key & (s->reg_old_nb - 1)) >= s->reg_moved)
    return &s->reg_old[idx][key & (s->reg_old_nb - 1)];
  return &s->reg_hash[idx][key & (s->reg_nb - 1)];
}

static uint32_t reg_key(const sip_reg_t *r, int idx)
{
  if (idx == BY_VID)
    return sip__fnv(SIP_FNV_INIT, r->vid, 0);
  return idx == BY_CONTACT ? url_key(r->url) : sip__fnv(SIP_FNV_INIT, r->received, 0);
}

static void chain_add(sip_svc_t *s, int i, sip_reg_t *r)
{
  sip_reg_t **slot = reg_slot(s, i, r->hkey[i]);
  r->hnext[i] = *slot;
  if (*slot)
    (*slot)->hpprev[i] = &r->hnext[i];
  r->hpprev[i] = slot;
  *slot = r;
}

static void reg_hash_add(sip_svc_t *s, sip_reg_t *r)
{
  for (int i = 0; i < 3; i++)
    chain_add(s, i, r);
}

/* Moves n more old buckets (of the three tables) to the new ones. */
static void reg_hash_move(sip_svc_t *s, size_t n)
{
  for (; s->reg_old[0] && n > 0; n--) {
    size_t b = s->reg_moved++; /* from now on reg_slot() looks in the new */
    for (int i = 0; i < 3; i++) {
      sip_reg_t *r = s->reg_old[i][b];
      s->reg_old[i][b] = NULL;
      for (sip_reg_t *next; r; r = next) {
        next = r->hnext[i];
        chain_add(s, i, r);
      }
    }
    if (s->reg_moved == s->reg_old_nb) {
      free(s->reg_old[0]);
      memset(s->reg_old, 0, sizeof s->reg_old);
      s->reg_old_nb = s->reg_moved = 0;
    }
  }
}

static int reg_hash_grow(sip_svc_t *s)
{
  reg_hash_move(s, s->reg_old_nb); /* the last growth, if unfinished */
  size_t nb = s->reg_nb ? s->reg_nb * 2 : 64;
  sip_reg_t **h = calloc(3 * nb, sizeof *h);
  if (!h)
    return -ENOMEM;
  for (int i = 0; i < 3; i++) {
    s->reg_old[i] = s->reg_hash[i];
    s->reg_hash[i] = h + (size_t)i * nb;
  }
  s->reg_old_nb = s->reg_nb, s->reg_moved = 0;
  s->reg_nb = nb;
  return 0;
}

static void reg_link(sip_svc_t *s, sip_reg_t *r)
{
  r->next = s->regs;
  if (r->next)
    r->next->pprev = &r->next;
  r->pprev = &s->regs;
  s->regs = r;
  s->n_regs++;
  for (int i = 0; i < 3; i++)
    r->hkey[i] = reg_key(r, i);
  /* If the tables cannot grow, longer chains are slower, not wrong. */
  if (s->n_regs > s->reg_nb)
    reg_hash_grow(s);
  reg_hash_move(s, 2);
  if (s->reg_nb)
    reg_hash_add(s, r);
}

static void reg_unlink(sip_svc_t *s, sip_reg_t *r)
{
  if (s->reg_cursor == r)
    s->reg_cursor = r->next;
  *r->pprev = r->next;
  if (r->next)
    r->next->pprev = r->pprev;
  for (int i = 0; i < 3; i++) {
    if (!r->hpprev[i])
      continue; /* never hashed: the table could not be made */
    *r->hpprev[i] = r->hnext[i];
    if (r->hnext[i])
      r->hnext[i]->hpprev[i] = r->hpprev[i];
  }
  s->n_regs--;
}

static sip_reg_t *reg_find(const sip_svc_t *s, const char *aor, const char *vid)
{
  if (!s->reg_nb)
    return NULL;
  for (sip_reg_t *r = *reg_slot(s, BY_VID, sip__fnv(SIP_FNV_INIT, vid, 0)); r; r = r->hnext[BY_VID])
    if (strcmp(r->vid, vid) == 0 && strcmp(r->aor, aor) == 0)
      return r;
  return NULL;
}

static void reg_drop(sip_svc_t *s, const char *aor, const char *vid)
{
  sip_reg_t *r = reg_find(s, aor, vid);
  if (r) {
    reg_unlink(s, r);
    reg_free(r);
  }
}

/* Copies of the strings at src (NULL stays NULL) one after another from
 * *o, their addresses in dst. */
static void reg_copy(char **o, const char *const *src, char **const *dst, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    if (!src[i]) {
      *dst[i] = NULL;
      continue;
    }
    size_t l = strlen(src[i]) + 1;
    memcpy(*o, src[i], l);
    *dst[i] = *o, *o += l;
  }
}

/* Enters b (its aor, uri, contact, vid, call_id, received, transport,
 * cseq, q) into the table for `expires` seconds, replacing what was there.
 * One allocation: a binding and its strings were eleven, through a home,
 * at every registration. */
static int reg_save(sip_svc_t *s, const sip_binding_t *b, uint32_t expires)
{
  reg_drop(s, b->aor, b->vid);
  if (!b->aor || !b->uri || !b->contact || !b->call_id)
    return -EINVAL;
  const char *src[] = {b->aor, b->uri, b->contact, b->vid, b->call_id, b->received,
                       b->transport, b->uri};
  size_t len = 0;
  for (size_t i = 0; i < sizeof src / sizeof *src; i++)
    len += src[i] ? strlen(src[i]) + 1 : 0;
  sip_reg_t *r = calloc(1, sizeof *r + len);
  if (!r)
    return -ENOMEM;
  char *o = r->text, *parsed;
  char **dst[] = {&r->aor, &r->uri, &r->contact, &r->vid, &r->call_id, &r->received,
                  &r->transport, &parsed};
  reg_copy(&o, src, dst, sizeof src / sizeof *src);
  /* As url_make() reads it, in place in the last copy. */
  if (url_d(r->url, parsed) < 0) {
    reg_free(r);
    return -EINVAL;
  }
  r->cseq = b->cseq, r->q1000 = b->q1000;
  r->expires_at = sip__now_ms(s) + (uint64_t)expires * 1000;
  r->gen = s->route_gen;
  reg_link(s, r);
  return 0;
}

/* A binding of the phone at u's host and port, whatever the user part: the
 * Contact a phone puts in its dialogs need not be the one it registered. */
const sip_reg_t *sip__reg_by_hostport(const sip_svc_t *s, const url_t *u)
{
  uint64_t now = sip__now_ms(s);
  if (!s->reg_nb || !u->url_host)
    return NULL;
  uint32_t key = url_key(u);
  for (const sip_reg_t *r = *reg_slot(s, BY_CONTACT, key); r; r = r->hnext[BY_CONTACT])
    if (r->expires_at > now && r->hkey[BY_CONTACT] == key && host_cmp(r->url->url_host, u->url_host) == 0 &&
        strcmp(url_port(r->url), url_port(u)) == 0)
      return r;
  return NULL;
}

const sip_reg_t *sip__reg_by_contact(const sip_svc_t *s, const url_t *u)
{
  uint64_t now = sip__now_ms(s);
  if (!s->reg_nb || !u->url_host)
    return NULL;
  for (const sip_reg_t *r = *reg_slot(s, BY_CONTACT, url_key(u)); r; r = r->hnext[BY_CONTACT])
    if (r->expires_at > now && url_cmp(r->url, u) == 0)
      return r;
  return NULL;
}

/* "sip:IP:PORT;transport=T": where the phone's REGISTER came from, when
 * requests must go there rather than to the Contact: the phone asked for
 * it (RFC 5626 ";ob"), or a NAT rewrote its address (the Contact's host is
 * not the address the REGISTER came from).  NULL: use the Contact. */
const char *sip__reg_flow(const sip_reg_t *r, char *buf, size_t len)
{
  if (!r->received || !r->received[0] || !r->url->url_host)
    return NULL;
  char ip[80];
  snprintf(ip, sizeof ip, "%s", r->received);
  char *colon = strrchr(ip, ':');
  if (colon)
    *colon = '\0';
  if (!url_has_param(r->url, "ob") && host_cmp(ip, r->url->url_host) == 0)
    return NULL;
  snprintf(buf, len, "sip:%s;transport=%s", r->received,
           r->transport && r->transport[0] ? r->transport : "udp");
  return buf;
}

/* Who signs the records of aor: in the secured mode its user's
 * certificate from --users (the DHT's access rules take no other), in the
 * open mode nobody (NULL).  -EACCES when the secured mode has none. */
static int signer_of(sip_svc_t *s, const char *aor, const dht_cert_creds_t **out)
{
  *out = NULL;
  if (!s->ca)
    return 0;
  const char *at = strncmp(aor, "sip:", 4) == 0 ? strchr(aor + 4, '@') : NULL;
  char user[DHT_CERT_MAX_USER + 1];
  if (!at || at - aor - 4 > DHT_CERT_MAX_USER || !s->auth)
    return -EACCES;
  memcpy(user, aor + 4, (size_t)(at - aor - 4));
  user[at - aor - 4] = '\0';
  *out = sip__users_creds(s, user);
  return *out ? 0 : -EACCES;
}

/* The route into this node changed (flow.c): put the records of the
 * bindings held here again, with the new path and edge, a batch at a time
 * so that thousands of phones do not flood the DHT at once.  Each batch
 * walks from the head: O(n) per batch, fine for what one node holds. */
size_t sip__reg_reput(sip_svc_t *s, size_t max)
{
  uint64_t now = sip__now_ms(s);
  char path[128], edge[128], node[DHT_ID_HEX];
  sip__flow_route(s, path, sizeof path, edge, sizeof edge);
  dht_id_hex(&dht_self(s->dht)->id, node);
  size_t done = 0, left = 0;
  for (sip_reg_t *r = s->regs; r; r = r->next) {
    if (r->gen == s->route_gen || r->expires_at <= now + 1000)
      continue;
    if (done >= max) {
      left++;
      continue;
    }
    uint32_t expires = (uint32_t)((r->expires_at - now) / 1000);
    sip_binding_t b = {.aor = r->aor, .contact = r->contact, .uri = r->uri,
                       .call_id = r->call_id, .path = path, .node = node,
                       .received = r->received, .transport = r->transport, .edge = edge,
                       .cseq = r->cseq, .q1000 = r->q1000};
    char *body = sip__binding_encode(&b, expires);
    const dht_cert_creds_t *signer;
    if (!body || signer_of(s, r->aor, &signer) < 0 ||
        sip__dht_put(s, signer, r->aor, r->vid, DHT_KIND_USER, body, expires + SIP_GRACE_S, NULL,
                     NULL) < 0)
      log_warn("re-putting the binding of %s failed", r->aor);
    free(body);
    r->gen = s->route_gen;
    done++;
  }
  return left;
}

/* Whether a request is about one of this node's phones: it goes to one
 * when no Route is left and its Request-URI is a contact registered here;
 * it comes from one when its Contact is such a contact or its source is
 * the address a REGISTER came from.  Linear walks over the bindings: the
 * proxy asks only for dialog-creating requests, and only on proxy peers
 * and nodes behind a NAT. */
int sip__reg_direction(const sip_svc_t *s, msg_t *msg, const sip_t *sip)
{
  if (!s->regs)
    return 0;
  if (!sip->sip_route && sip__reg_by_contact(s, sip->sip_request->rq_url))
    return 1;
  if (sip->sip_contact && sip->sip_contact->m_url->url_type != url_any &&
      sip__reg_by_contact(s, sip->sip_contact->m_url))
    return -1;
  char src[80];
  sip__msg_source(msg, src, sizeof src);
  if (!src[0])
    return 0;
  uint64_t now = sip__now_ms(s);
  for (const sip_reg_t *r = *reg_slot(s, BY_SOURCE, sip__fnv(SIP_FNV_INIT, src, 0)); r;
       r = r->hnext[BY_SOURCE])
    if (r->expires_at > now && r->received && strcmp(r->received, src) == 0)
      return -1;
  return 0;
}

/* A live binding of sip:USER@OVERLAY registered through the TCP
 * connection msg came on (its source address; the connection is not
 * forgeable as a UDP source is). */
int sip__reg_stream_user(const sip_svc_t *s, msg_t *msg, const char *user)
{
  su_addrinfo_t *ai = msg_addrinfo(msg);
  char src[80], aor[600];
  if (!s->reg_nb || !ai || ai->ai_protocol != IPPROTO_TCP)
    return 0;
  sip__msg_source(msg, src, sizeof src);
  snprintf(aor, sizeof aor, "sip:%s@%s", user, s->overlay);
  uint64_t now = sip__now_ms(s);
  for (const sip_reg_t *r = *reg_slot(s, BY_SOURCE, sip__fnv(SIP_FNV_INIT, src, 0)); r;
       r = r->hnext[BY_SOURCE])
    if (r->expires_at > now && r->received && strcmp(r->received, src) == 0 && r->transport &&
        strcmp(r->transport, "tcp") == 0 && strcmp(r->aor, aor) == 0)
      return 1;
  return 0;
}

/* Called every second: frees expired bindings, SIP_SWEEP_BATCH at most
 * per call, resuming where the last call stopped.  A node holding 100,000
 * bindings walked them all every second (9% of a busy registrar's CPU in
 * bench-sip); lookups check expiry themselves, so a late sweep only holds
 * memory a little longer. */
void sip__reg_sweep(sip_svc_t *s)
{
  ans_expire(s);
  uint64_t now = sip__now_ms(s);
  sip_reg_t *r = s->reg_cursor ? s->reg_cursor : s->regs;
  for (int n = 0; r && n < SIP_SWEEP_BATCH; n++) {
    sip_reg_t *next = r->next;
    if (r->expires_at <= now) {
      reg_unlink(s, r);
      reg_free(r);
    }
    r = next;
  }
  s->reg_cursor = r;
}

/* The bindings held, counting those expired since the sweep last passed
 * them (a walk over 100,000 for each {"cmd":"sip"} cost 3% of a loaded
 * registrar). */
size_t sip__regs_count(const sip_svc_t *s)
{
  return s->n_regs;
}

json_t *sip__regs_json(const sip_svc_t *s)
{
  json_t *a = json_array();
  uint64_t now = sip__now_ms(s);
  for (const sip_reg_t *r = s->regs; r && a; r = r->next) {
    if (r->expires_at <= now)
      continue;
    json_array_append_new(
        a, json_pack("{s:s, s:s, s:I, s:f, s:s, s:I, s:s, s:s}", "aor", r->aor, "contact",
                     r->contact, "expires", (json_int_t)((r->expires_at - now + 999) / 1000),
                     "q", r->q1000 / 1000.0, "call_id", r->call_id, "cseq",
                     (json_int_t)r->cseq, "received", r->received ? r->received : "",
                     "transport", r->transport ? r->transport : ""));
  }
  return a;
}

static void rtx_free(rtx_t *x);
static void rtx_unlink(rtx_t *x);

void sip__reg_free_all(sip_svc_t *s)
{
  while (s->rtx) {
    rtx_t *x = s->rtx;
    rtx_unlink(x);
    rtx_free(x);
  }
  while (s->regs) {
    sip_reg_t *r = s->regs;
    s->regs = r->next;
    reg_free(r);
  }
  while (s->rtx_spare) {
    rtx_t *x = s->rtx_spare;
    s->rtx_spare = x->next;
    free(x);
  }
  s->n_rtx_spare = 0;
  sip__reg_answers_free(s);
  free(s->reg_hash[0]);
  free(s->reg_old[0]);
  memset(s->reg_hash, 0, sizeof s->reg_hash);
  memset(s->reg_old, 0, sizeof s->reg_old);
  s->reg_nb = s->n_regs = s->reg_old_nb = s->reg_moved = 0;
  s->reg_cursor = NULL;
}

/* ---- one REGISTER ------------------------------------------------------ */

/* A REGISTER's record is 7 KB: past glibc's per-thread cache, each one
 * went through malloc's general bins and left a hole among the bindings
 * made meanwhile.  Up to SIP_RTX_SPARES freed ones are kept for the next
 * REGISTERs instead (as many as are in flight at 10,000/s and 10 ms). */
static rtx_t *rtx_new(sip_svc_t *s)
{
  rtx_t *x = s->rtx_spare;
  if (!x)
    return calloc(1, sizeof *x);
  s->rtx_spare = x->next;
  s->n_rtx_spare--;
  memset(x, 0, sizeof *x);
  return x;
}

static void rtx_release(sip_svc_t *s, rtx_t *x)
{
  if (s->n_rtx_spare >= SIP_RTX_SPARES) {
    free(x);
    return;
  }
  x->next = s->rtx_spare;
  s->rtx_spare = x;
  s->n_rtx_spare++;
}

static void rtx_free(rtx_t *x)
{
  for (int i = 0; i < x->n_in; i++)
    free(x->in[i].contact), free(x->in[i].uri);
  for (int i = 0; i < x->n_ex; i++)
    sip__binding_clear(&x->ex[i]);
  if (x->ans)
    x->ans->rtx = NULL;
  sip__limit_release(x->s, x->src);
  msg_destroy(x->msg);
  free(x->lines);
  rtx_release(x->s, x);
}

/* Doubly linked: with a thousand REGISTERs in flight, a walk per answer
 * made each one cost as much as all the others. */
static void rtx_link(rtx_t *x)
{
  sip_svc_t *s = x->s;
  x->next = s->rtx;
  if (x->next)
    x->next->prevp = &x->next;
  x->prevp = &s->rtx;
  s->rtx = x;
  s->n_rtx++;
}

static void rtx_unlink(rtx_t *x)
{
  if (!x->prevp)
    return;
  *x->prevp = x->next;
  if (x->next)
    x->next->prevp = x->prevp;
  x->prevp = NULL;
  x->s->n_rtx--;
}

/* Answers the request (statelessly: see above) with status, and headers
 * ("Name: value" lines, or NULL), keeps the answer for retransmissions,
 * counts the outcome and frees x.  Over UDP the answer is built from the
 * request's own lines where it can be (core.c): sofia's reply builder
 * cost as much as the rest of a registration on this node. */
static void rtx_answer(rtx_t *x, int status, const char *phrase, const char *headers)
{
  sip_svc_t *s = x->s;
  if (x->msg && !(x->lines && sip__lines_reply(s, x->lines, x->sip, status, phrase, headers) == 0)) {
    sip__reply_stateless(s, x->msg, x->sip, status, phrase,
                         TAG_IF(headers, SIPTAG_HEADER_STR(headers)), TAG_END());
    x->msg = NULL;
  }
  regans_t *a = x->ans;
  if (a) {
    a->status = status;
    a->phrase = phrase;
    a->headers = headers ? strdup(headers) : NULL;
    a->until = sip__now_ms(s) + SIP_REG_LINGER_MS;
    a->rtx = NULL, x->ans = NULL;
    *s->answers->tail = a, s->answers->tail = &a->qnext;
  }
  if (status == 200)
    s->c.register_ok++;
  else
    s->c.register_failed++;
  rtx_unlink(x);
  rtx_free(x);
}

static void rtx_done(rtx_t *x, int status, const char *phrase)
{
  rtx_answer(x, status, phrase, NULL);
}

/* A retransmission: dropped while the first is under way (0), answered
 * again afterwards (1); -1 when the request is new. */
static int ans_repeat(sip_svc_t *s, msg_t *msg, sip_t *sip, const char *key)
{
  regans_t *a = ans_find(s, key);
  if (!a)
    return -1;
  s->c.register_repeats++;
  if (a->rtx)
    msg_destroy(msg);
  else
    sip__reply_stateless(s, msg, sip, a->status, a->phrase,
                         TAG_IF(a->headers, SIPTAG_HEADER_STR(a->headers)), TAG_END());
  return a->rtx ? 0 : 1;
}

void sip__reg_answers_free(sip_svc_t *s)
{
  if (!s->answers)
    return;
  for (size_t i = 0; i < SIP_REG_ANSWER_BUCKETS; i++)
    while (s->answers->bucket[i]) {
      regans_t *a = s->answers->bucket[i];
      s->answers->bucket[i] = a->hnext;
      free(a->headers), free(a);
    }
  free(s->answers);
  s->answers = NULL;
}

/* The Contact header value as stored: display name, URI and parameters
 * other than expires and q (the registrar states those itself). */
char *sip__contact_value(const sip_contact_t *m)
{
  char url[1024];
  /* url_e() returns the length it needs and skips what does not fit,
   * leaving those bytes unset: only a whole URL is taken. */
  issize_t ul = url_e(url, sizeof url, m->m_url);
  if (ul <= 0 || (size_t)ul >= sizeof url)
    return NULL;
  char buf[2048];
  int named = m->m_display && m->m_display[0];
  int n = snprintf(buf, sizeof buf, "%s%s<%s>", named ? m->m_display : "", named ? " " : "", url);
  for (int i = 0; m->m_params && m->m_params[i] && n > 0 && (size_t)n < sizeof buf; i++) {
    const char *p = m->m_params[i];
    if (su_casenmatch(p, "expires", 7) && (p[7] == '=' || !p[7]))
      continue;
    if (su_casenmatch(p, "q", 1) && (p[1] == '=' || !p[1]))
      continue;
    n += snprintf(buf + n, sizeof buf - (size_t)n, ";%s", p);
  }
  if (n <= 0 || (size_t)n >= sizeof buf)
    return NULL;
  return strdup(buf);
}

/* sofia prints some URIs it parses in a form that parses as another URI
 * (a '>' in a password unescaped), so what would be stored and listed is
 * read back first. */
int sip__contact_reads_back(const char *value, const url_t *url)
{
  SIP_SCRATCH_HOME(home, 2048);
  sip_contact_t *m = sip_contact_make(home, value);
  int same = m && !m->m_next && url_cmp(m->m_url, url) == 0;
  su_home_deinit(home);
  return same;
}

/* q-value "0.5" or "1.000" -> 500, 1000; -1 when malformed. */
int sip__parse_q(const char *q)
{
  if (!q)
    return 1000;
  if (q[0] == '1') {
    for (const char *p = q[1] == '.' ? q + 2 : q + 1; *p; p++)
      if (*p != '0')
        return -1;
    return q[1] == '\0' || q[1] == '.' ? 1000 : -1;
  }
  if (q[0] != '0')
    return -1;
  if (q[1] == '\0')
    return 0;
  if (q[1] != '.')
    return -1;
  int v = 0, digits = 0;
  for (const char *p = q + 2; *p; p++, digits++) {
    if (*p < '0' || *p > '9' || digits >= 3)
      return -1;
    v = v * 10 + (*p - '0');
  }
  while (digits++ < 3)
    v *= 10;
  return v;
}

/* Seconds asked for one contact (10.2.1.1): its expires parameter, else
 * the Expires header, else our default.  -1 when malformed. */
long sip__contact_expires(const sip_t *sip, const sip_contact_t *m)
{
  if (m->m_expires) {
    char *end;
    unsigned long v = strtoul(m->m_expires, &end, 10);
    if (end == m->m_expires || *end)
      return -1;
    return v > SIP_MAX_EXPIRES ? SIP_MAX_EXPIRES : (long)v;
  }
  if (sip->sip_expires)
    return sip->sip_expires->ex_delta > SIP_MAX_EXPIRES ? SIP_MAX_EXPIRES
                                                        : (long)sip->sip_expires->ex_delta;
  return SIP_DEFAULT_EXPIRES;
}

/* 10.3 steps 2-6 on the request alone; 0 or the failing status. */
static int check_contacts(rtx_t *x, long *too_brief)
{
  const sip_t *sip = x->sip;
  /* What the user record cannot hold would be stored as a record nobody
   * decodes (or not stored at all): the phone would seem registered yet
   * be unreachable. */
  if (!sip__record_text_ok(x->aor, SIP_REC_MAX_TEXT) ||
      !sip__record_text_ok(sip->sip_call_id->i_id, SIP_REC_MAX_TEXT))
    return 400;
  for (const sip_contact_t *m = sip->sip_contact; m; m = m->m_next) {
    if (m->m_url->url_type == url_any) { /* "*" */
      if (m != sip->sip_contact || m->m_next || !sip->sip_expires ||
          sip->sip_expires->ex_delta != 0)
        return 400;
      x->star = 1;
      return 0;
    }
    if (x->n_in >= SIP_MAX_CONTACTS)
      return 403;
    if ((m->m_url->url_type != url_sip && m->m_url->url_type != url_sips) ||
        !m->m_url->url_host || !host_is_valid(m->m_url->url_host) || m->m_url->url_path)
      return 400; /* a SIP URI has no path, and sofia prints one inconsistently */
    long exp = sip__contact_expires(sip, m);
    int q = sip__parse_q(m->m_q);
    if (exp < 0 || q < 0)
      return 400;
    if (exp > 0 && exp < SIP_MIN_EXPIRES) {
      *too_brief = exp;
      return 423;
    }
    intent_t *in = &x->in[x->n_in++];
    in->m = m, in->expires = (uint32_t)exp, in->q1000 = q, in->match = -1;
    char u[1024];
    issize_t ul = url_e(u, sizeof u, m->m_url); /* as in sip__contact_value() */
    if (ul <= 0 || ul > SIP_REC_MAX_TEXT)
      return 400;
    in->contact = sip__contact_value(m);
    in->uri = strdup(u);
    if (!in->contact || !in->uri)
      return 500;
    if (!sip__record_text_ok(in->contact, SIP_REC_MAX_CONTACT) ||
        !sip__record_text_ok(in->uri, SIP_REC_MAX_TEXT) ||
        !sip__contact_reads_back(in->contact, m->m_url))
      return 400;
  }
  return 0;
}

static void note_source(rtx_t *x)
{
  su_addrinfo_t *ai = msg_addrinfo(x->msg);
  sip__msg_source(x->msg, x->received, sizeof x->received);
  snprintf(x->transport, sizeof x->transport, "%s",
           ai && ai->ai_protocol == IPPROTO_TCP ? "tcp" : "udp");
  char hex[DHT_ID_HEX];
  dht_id_hex(&dht_self(x->s->dht)->id, hex);
  memcpy(x->node, hex, sizeof x->node);
}

/* What a binding adds to the Contact line besides its value: ", ",
 * ";expires=" with a long, ";q=0.000". */
#define CONTACT_EXTRA 48

/* One binding, as the answer lists it, appended to the Contact line of
 * cap bytes at out[at] (answer_contacts() made room); the line's new
 * length. */
static size_t add_contact(char *out, size_t cap, size_t at, const char *contact, long expires,
                          int q1000)
{
  char q[24] = "";
  if (q1000 < 1000)
    snprintf(q, sizeof q, ";q=%d.%03d", q1000 / 1000, q1000 % 1000);
  int n = snprintf(out + at, cap - at, "%s%s;expires=%ld%s", at > 9 ? ", " : "", contact,
                   expires, q);
  if (n >= 0 && (size_t)n < cap - at)
    return at + (size_t)n;
  out[at] = '\0'; /* no room after all: the binding is left out whole */
  return at;
}

/* Whether the answer lists this existing binding (own: only those
 * registered from the requester's address or in this request). */
static int lists(const rtx_t *x, int i, int own)
{
  const sip_binding_t *b = &x->ex[i];
  return !x->removed[i] && b->remaining > 0 && (!own || strcmp(b->received, x->received) == 0);
}

/* "Contact: ..." with the bindings the answer lists, in fits (fitlen
 * bytes) when it has room, as one binding's line does, else in a block
 * of its own; NULL when there are none.  Its length in *len. */
static char *answer_contacts(rtx_t *x, int own, char *fits, size_t fitlen, size_t *len)
{
  size_t need = 10; /* "Contact: " and the NUL */
  for (int i = 0; i < x->n_ex; i++)
    need += lists(x, i, own) ? strlen(x->ex[i].contact) + CONTACT_EXTRA : 0;
  for (int i = 0; i < x->n_in; i++)
    need += x->in[i].expires ? strlen(x->in[i].contact) + CONTACT_EXTRA : 0;
  *len = 0;
  char *line = need == 10 ? NULL : need <= fitlen ? fits : malloc(need);
  if (!line)
    return NULL;
  memcpy(line, "Contact: ", 10);
  *len = 9;
  for (int i = 0; i < x->n_ex; i++)
    if (lists(x, i, own))
      *len = add_contact(line, need, *len, x->ex[i].contact, x->ex[i].remaining, x->ex[i].q1000);
  for (int i = 0; i < x->n_in; i++)
    if (x->in[i].expires)
      *len = add_contact(line, need, *len, x->in[i].contact, x->in[i].expires, x->in[i].q1000);
  return line;
}

/* Frees p unless it is the caller's own buffer. */
static void free_unless(char *p, const char *own)
{
  if (p != own)
    free(p);
}

/* 10.3 step 8: the 200 lists the AOR's bindings.  Over UDP it must fit
 * where the request came from: a query with no Contact of its own could
 * otherwise return 16 times its size to a forged source.  Where every
 * binding does not fit, the answer lists the requester's own; where even
 * those do not, 513 (the bindings were stored: over TCP a query lists
 * them). */
static void reply_bindings(rtx_t *x)
{
  size_t len, limit = msg_size(x->msg) > SIP_UDP_ANSWER_MAX ? msg_size(x->msg)
                                                           : SIP_UDP_ANSWER_MAX;
  int udp = strcmp(x->transport, "udp") == 0;
  char line[1024];
  char *contacts = answer_contacts(x, 0, line, sizeof line, &len);
  if (udp && SIP_ANSWER_HEAD + len > limit) {
    x->s->c.register_trimmed++;
    free_unless(contacts, line);
    contacts = answer_contacts(x, 1, line, sizeof line, &len);
  }
  if (udp && SIP_ANSWER_HEAD + len > limit) {
    x->s->c.register_too_big++;
    free_unless(contacts, line);
    rtx_done(x, 513, "Bindings Do Not Fit a Datagram");
    return;
  }
  char date[80], fits[2048], *headers = fits;
  sip_date_t d;
  sip_date_init(&d)->d_time = sip_now();
  sip_date_e(date, sizeof date, (msg_header_t *)&d, 0);
  /* In the stack when they fit, as one binding's do (asprintf() was three
   * of a registration's allocations). */
  const char *c = contacts ? contacts : "", *crlf = contacts ? "\r\n" : "";
  int n = snprintf(fits, sizeof fits, "%s%sDate: %s", c, crlf, date);
  if (n < 0 || ((size_t)n >= sizeof fits && asprintf(&headers, "%s%sDate: %s", c, crlf, date) < 0))
    headers = NULL;
  free_unless(contacts, line);
  rtx_answer(x, SIP_200_OK, headers);
  free_unless(headers, fits);
}

/* Written first, a value this node put for one of the request's contacts
 * (its owner us, its binding in our table) is the old version of what the
 * request replaces, and its order was checked against the table before
 * the write (write_first): nothing in it is needed, and decoding it was
 * 6 % of a registrar whose phones re-register. */
static int replaced_own(const rtx_t *x, const dht_value_t *v)
{
  if (!x->late || memcmp(v->owner.b, dht_self(x->s->dht)->id.b, DHT_ID_LEN) != 0)
    return 0;
  for (int i = 0; i < x->n_in; i++)
    if (strcmp(v->vid, x->in[i].vid) == 0)
      return x->in[i].had_own;
  return 0;
}

static void take_bindings(rtx_t *x, const dht_value_t *v, size_t n)
{
  for (size_t i = 0; i < n && x->n_ex < 2 * SIP_MAX_CONTACTS; i++)
    if (!replaced_own(x, &v[i]) && sip__binding_decode(&v[i], &x->ex[x->n_ex]) == 0)
      x->n_ex++;
  x->read = 1;
}

static void late_checks(rtx_t *x);

static void on_stored(sip_svc_t *s, void *ctx, int status, const dht_value_t *v, size_t n)
{
  rtx_t *x = ctx;
  if (status < 0) {
    x->failed = 1;
    log_warn("storing a binding of %s failed: %d", x->aor, status);
  }
  if (x->late && status == DHT_OK && !x->read)
    take_bindings(x, v, n); /* every put of the request went to the same primary */
  sip__dht_forget(s, x->aor); /* our proxy must not reuse what we just changed */
  if (--x->pending > 0)
    return;
  if (x->failed)
    rtx_done(x, 500, "Location Service Failed");
  else if (x->late)
    late_checks(x);
  else if (x->late_status)
    rtx_done(x, x->late_status, x->late_phrase);
  else
    reply_bindings(x);
}

static int ordering_ok(const rtx_t *x, const sip_binding_t *b)
{
  /* 10.3 step 7: same Call-ID needs a higher CSeq. */
  return strcmp(b->call_id, x->sip->sip_call_id->i_id) != 0 ||
         x->sip->sip_cseq->cs_seq > b->cseq;
}

/* Withdraws an existing binding, whoever put it: this node since it
 * started, this node before a restart (its DHT no longer knows it put the
 * value), or another node.  A tombstone that outlasts the value as found
 * replaces it, so that lookups find nothing (404) at once. */
static int drop_old(rtx_t *x, int i)
{
  sip_binding_t *b = &x->ex[i];
  x->removed[i] = 1;
  reg_drop(x->s, x->aor, b->vid);
  dht_value_t seen = {.vid = b->vid, .kind = DHT_KIND_USER, .seq = b->seq, .expires_in = b->ttl};
  return sip__dht_remove(x->s, x->signer, x->aor, b->vid, &seen, on_stored, x);
}

static int withdraw(rtx_t *x, int i)
{
  x->s->c.unregisters++;
  return drop_old(x, i);
}

/* A new binding's value id: its AOR and contact URI hashed. */
static void vid_of(const rtx_t *x, intent_t *in)
{
  char key[1200];
  dht_id_t id;
  snprintf(key, sizeof key, "%s|%s", x->aor, in->uri);
  dht_id_of(key, &id);
  dht_id_hex(&id, in->vid);
}

static int store(rtx_t *x, intent_t *in)
{
  sip_svc_t *s = x->s;
  if (in->match >= 0) {
    memcpy(in->vid, x->ex[in->match].vid, sizeof in->vid);
    x->removed[in->match] = 1; /* replaced by the intent in the reply */
  } else if (!in->vid[0]) { /* write_first() has made it */
    vid_of(x, in);
  }
  if (in->expires == 0)
    return in->match >= 0 ? (x->removed[in->match] = 0, withdraw(x, in->match)) : 1;
  char path[128], edge[128];
  sip__flow_route(s, path, sizeof path, edge, sizeof edge);
  sip_binding_t b = {.aor = x->aor, .contact = in->contact, .uri = in->uri,
                     .call_id = (char *)x->sip->sip_call_id->i_id, .path = path,
                     .node = x->node, .received = x->received, .transport = x->transport,
                     .edge = edge, .cseq = x->sip->sip_cseq->cs_seq, .q1000 = in->q1000};
  char *body = sip__binding_encode(&b, in->expires);
  int rc = !body   ? -ENOMEM
           : x->late ? sip__dht_put_read(s, x->signer, x->aor, in->vid, DHT_KIND_USER, body,
                                         in->expires + SIP_GRACE_S, on_stored, x)
                     : sip__dht_put(s, x->signer, x->aor, in->vid, DHT_KIND_USER, body,
                                    in->expires + SIP_GRACE_S, on_stored, x);
  free(body);
  memcpy(b.vid, in->vid, sizeof b.vid);
  if (rc == 0)
    reg_save(s, &b, in->expires);
  return rc;
}

/* Puts every contact of the request; x->pending counts the writes under
 * way (the caller's one for itself included), and the last one to finish
 * answers. */
static void store_all(rtx_t *x)
{
  for (int i = 0; i < x->n_in; i++) {
    int rc = store(x, &x->in[i]);
    if (rc == 0)
      x->pending++;
    else if (rc < 0)
      x->failed = 1;
  }
  on_stored(x->s, x, DHT_UNREAD, NULL, 0); /* not DHT_OK: no values come with it */
}

/* Applies the request to the bindings found; every DHT write counts in
 * pending, and the last one to finish answers. */
static void apply(rtx_t *x)
{
  su_home_t home[1];
  su_home_init(home);
  for (int i = 0; i < x->n_in; i++) {
    url_t const *u = x->in[i].m->m_url;
    for (int j = 0; j < x->n_ex && x->in[i].match < 0; j++) {
      url_t *e = url_make(home, x->ex[j].uri);
      if (e && url_cmp(e, u) == 0)
        x->in[i].match = j;
    }
  }
  su_home_deinit(home);
  for (int i = 0; i < x->n_in; i++)
    if (x->in[i].match >= 0 && !ordering_ok(x, &x->ex[x->in[i].match])) {
      rtx_done(x, 400, "Out of Order CSeq");
      return;
    }
  if (x->star)
    for (int j = 0; j < x->n_ex; j++)
      if (!ordering_ok(x, &x->ex[j])) {
        rtx_done(x, 400, "Out of Order CSeq");
        return;
      }
  x->pending = 1; /* ourselves, until every write has started */
  for (int j = 0; x->star && j < x->n_ex; j++)
    if (withdraw(x, j) == 0)
      x->pending++;
  store_all(x);
}

/* Bindings this node put before it restarted (they name this node, and
 * the table, which starts empty, lacks them) go back into the table: the
 * proxy reaches those phones through the address their REGISTER came from
 * again, and the admin lists them.  Their DHT values stay as they are
 * until a refresh replaces them (a newer sequence number) or an
 * unregistration removes them (withdraw). */
static void adopt(rtx_t *x)
{
  for (int i = 0; i < x->n_ex; i++) {
    const sip_binding_t *b = &x->ex[i];
    if (b->remaining > 0 && strcmp(b->node, x->node) == 0 && !reg_find(x->s, x->aor, b->vid) &&
        strcmp(b->aor, x->aor) == 0 && reg_save(x->s, b, (uint32_t)b->remaining) == 0)
      log_info("took back the binding of %s to %s, put before this node restarted", x->aor,
               b->uri);
  }
}

static void on_bindings(sip_svc_t *s, void *ctx, int status, const dht_value_t *v, size_t n)
{
  rtx_t *x = ctx;
  take_bindings(x, v, n);
  adopt(x);
  if (status < 0 && status != DHT_ENOTFOUND)
    log_info("bindings of %s not fetched (%d); registering anyway", x->aor,
             status);
  int live = x->star ? 0 : x->n_in;
  for (int i = 0; i < x->n_ex; i++)
    live += x->ex[i].remaining > 0;
  if (live > 2 * SIP_MAX_CONTACTS) {
    rtx_done(x, 403, "Too Many Contacts");
    return;
  }
  apply(x);
}

/* ---- writing first --------------------------------------------------------
 *
 * A REGISTER that only adds or refreshes contacts writes first: each
 * contact's put brings back the AOR's bindings as its primary held them
 * just before (dht_put_read), one DHT request where a read and then a
 * write were two.  What needed those bindings before the write is checked
 * after it, and undone where it fails: 10.3 step 7's order (a binding of
 * the same Call-ID with a higher CSeq: put back as it was, 400) and the
 * limit on contacts (ours withdrawn, 403).  The order is also checked
 * first against this node's own table, where a phone's refreshes through
 * its home node are, so that only a phone's REGISTERs reordered across two
 * nodes are caught late.  A contact URI equal to a binding's under
 * another value id (another spelling) replaces it, as apply() does. */

/* Put ex[i] back as it was (its owner, if not us, refreshes it on). */
static int restore(rtx_t *x, int i)
{
  sip_binding_t *b = &x->ex[i];
  char *body = sip__binding_encode(b, (uint32_t)b->remaining);
  int rc = body ? sip__dht_put(x->s, x->signer, x->aor, b->vid, DHT_KIND_USER, body,
                               (uint32_t)b->remaining + SIP_GRACE_S, on_stored, x)
                : -ENOMEM;
  free(body);
  if (strcmp(b->node, x->node) == 0 && rc == 0)
    reg_save(x->s, b, (uint32_t)b->remaining);
  else
    reg_drop(x->s, x->aor, b->vid);
  return rc;
}

/* Withdraw the contacts this request put. */
static void undo_intents(rtx_t *x)
{
  for (int i = 0; i < x->n_in; i++) {
    reg_drop(x->s, x->aor, x->in[i].vid);
    if (sip__dht_remove(x->s, x->signer, x->aor, x->in[i].vid, NULL, on_stored, x) == 0)
      x->pending++;
  }
}

static void late_fail(rtx_t *x, int status, const char *phrase)
{
  x->late_status = status, x->late_phrase = phrase;
}

/* Which bindings the intents replaced or spelled otherwise (dup[j] set),
 * and the one whose order this request breaks, or -1. */
static int late_match(rtx_t *x, int *dup)
{
  SIP_SCRATCH_HOME(home, 2048);
  int bad = -1;
  for (int j = 0; j < x->n_ex; j++)
    for (int i = 0; i < x->n_in; i++) {
      const sip_binding_t *b = &x->ex[j];
      if (strcmp(b->vid, x->in[i].vid) == 0) {
        x->removed[j] = 1; /* the intent replaced it */
        if (strcmp(b->call_id, x->sip->sip_call_id->i_id) == 0 &&
            b->cseq > x->sip->sip_cseq->cs_seq)
          bad = j;
      } else if (!x->removed[j] && !dup[j]) {
        url_t *e = url_make(home, b->uri);
        dup[j] = e && url_cmp(e, x->in[i].m->m_url) == 0;
      }
    }
  su_home_deinit(home);
  return bad;
}

static void on_late_read(sip_svc_t *s, void *ctx, int status, const dht_value_t *v, size_t n)
{
  rtx_t *x = ctx;
  if (status < 0 && status != DHT_ENOTFOUND)
    log_info("bindings of %s not fetched (%d); answering with ours", x->aor, status);
  take_bindings(x, v, n);
  late_checks(x);
}

static void late_checks(rtx_t *x)
{
  if (!x->read) {
    /* No bindings came back with the puts: read them (ours among them). */
    x->read = 1;
    if (sip__dht_get_primary(x->s, x->aor, on_late_read, x) == 0)
      return;
  }
  x->late = 0;
  adopt(x);
  int dup[2 * SIP_MAX_CONTACTS] = {0};
  int bad = late_match(x, dup);
  x->pending = 1;
  if (bad >= 0) {
    late_fail(x, 400, "Out of Order CSeq");
    x->pending += restore(x, bad) == 0;
  } else {
    int live = x->n_in;
    for (int j = 0; j < x->n_ex; j++)
      live += !x->removed[j] && !dup[j] && x->ex[j].remaining > 0;
    if (live > 2 * SIP_MAX_CONTACTS) {
      late_fail(x, 403, "Too Many Contacts");
      undo_intents(x);
    }
    for (int j = 0; j < x->n_ex; j++)
      if (dup[j])
        x->pending += drop_old(x, j) == 0;
  }
  on_stored(x->s, x, DHT_UNREAD, NULL, 0);
}

/* The order checked against this node's table, then every contact put. */
static void write_first(rtx_t *x)
{
  const sip_t *sip = x->sip;
  for (int i = 0; i < x->n_in; i++) {
    vid_of(x, &x->in[i]);
    const sip_reg_t *r = reg_find(x->s, x->aor, x->in[i].vid);
    if (r && strcmp(r->call_id, sip->sip_call_id->i_id) == 0 && sip->sip_cseq->cs_seq <= r->cseq) {
      rtx_done(x, 400, "Out of Order CSeq");
      return;
    }
    x->in[i].had_own = r != NULL;
  }
  x->late = 1;
  x->pending = 1; /* ourselves, until every write has started */
  store_all(x);
}

/* A REGISTER that only adds or refreshes contacts writes first (above):
 * it reads the AOR's bindings as the primary alone held them, which can
 * miss some (the primary has just joined and holds nothing yet, or lacks
 * a write its replicas have).  That costs little here: each contact is a
 * value of its own that the put replaces or adds, never deleting the
 * others, so the missed bindings live on and only the 200 lists fewer of
 * them.  A query lists, and a removal ("*" or Expires: 0) must find, every
 * binding: those read from every holder first, then write. */
static int adds_only(const rtx_t *x)
{
  if (x->star || x->n_in == 0)
    return 0;
  for (int i = 0; i < x->n_in; i++)
    if (x->in[i].expires == 0)
      return 0;
  return 1;
}

/* The AOR in To must be one of the overlay's users (10.3 step 3). */
static int aor_of(const sip_svc_t *s, const sip_t *sip, char *out, size_t len)
{
  const url_t *to = sip->sip_to->a_url;
  if ((to->url_type != url_sip && to->url_type != url_sips) || !to->url_user ||
      !to->url_user[0] || strlen(to->url_user) > 256)
    return 404;
  if (!sip__host_is_overlay(s, to->url_host) && !sip__uri_is_self(s, to))
    return 404;
  snprintf(out, len, "sip:%s@%s", to->url_user, s->overlay);
  return 0;
}

/* The answer to a REGISTER that asks for extensions: we support none. */
static void require_unsupported(rtx_t *x)
{
  char hdr[560] = "Unsupported: ";
  const sip_t *sip = x->sip;
  for (int i = 0; sip->sip_require->k_items && sip->sip_require->k_items[i] && i < 16; i++)
    snprintf(hdr + strlen(hdr), sizeof hdr - strlen(hdr), "%s%s", i ? ", " : "",
             sip->sip_require->k_items[i]);
  rtx_answer(x, SIP_420_BAD_EXTENSION, hdr);
}

/* What a request is known by here: Call-ID and CSeq number. */
static void ans_key(const sip_t *sip, char key[600])
{
  const char *id = sip->sip_call_id ? sip->sip_call_id->i_id : "";
  uint32_t cseq = sip->sip_cseq ? sip->sip_cseq->cs_seq : 0;
  if (!sip__key(key, 600, id, strlen(id), cseq, NULL))
    snprintf(key, 600, "%s %u", id, cseq); /* cut short, as it always was */
}

int sip__reg_key_underway(sip_svc_t *s, const char *key)
{
  ans_expire(s);
  regans_t *a = ans_find(s, key);
  return a && a->rtx;
}

int sip__reg_underway(sip_svc_t *s, msg_t *msg, const sip_t *sip)
{
  char key[600];
  ans_key(sip, key);
  if (!sip__reg_key_underway(s, key))
    return 0;
  s->c.register_repeats++;
  msg_destroy(msg);
  return 1;
}

void sip__register(sip_svc_t *s, msg_t *msg, sip_t *sip, const sip_req_t *rq)
{
  char key[600];
  ans_key(sip, key);
  ans_expire(s);
  if (ans_repeat(s, msg, sip, key) >= 0)
    return;
  s->c.registers++;
  rtx_t *x = rtx_new(s);
  if (!x) {
    sip__reply_stateless(s, msg, sip, SIP_500_INTERNAL_SERVER_ERROR, TAG_END());
    return;
  }
  x->s = s, x->msg = msg, x->sip = sip, x->src = rq->src;
  x->lines = sip__lines_take(s, msg, sip);
  sip__limit_hold(s, x->src);
  rtx_link(x); /* so that sip_free() finds it */
  x->ans = ans_new(s, key, x);
  if (sip->sip_require) {
    require_unsupported(x);
    return;
  }
  long brief = 0;
  int status = aor_of(s, sip, x->aor, sizeof x->aor);
  if (status == 0 && signer_of(s, x->aor, &x->signer) < 0) {
    rtx_done(x, 403, "No certificate for this user here");
    return;
  }
  if (status == 0)
    status = check_contacts(x, &brief);
  if (status == 423) {
    char min[40];
    snprintf(min, sizeof min, "Min-Expires: %d", SIP_MIN_EXPIRES);
    rtx_answer(x, SIP_423_INTERVAL_TOO_BRIEF, min);
    return;
  }
  if (status) {
    rtx_done(x, status, sip_status_phrase(status));
    return;
  }
  note_source(x);
  if (adds_only(x)) {
    write_first(x);
    return;
  }
  if (sip__dht_get(s, x->aor, on_bindings, x) < 0)
    rtx_done(x, 500, "Location Service Failed");
}
