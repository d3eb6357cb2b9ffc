/*
 * What a REGISTER datagram is known by ("Call-ID CSeq", as registrar.c
 * keys the requests under way), read off the bytes before sofia parses
 * them.  Under load a phone's retransmissions of a REGISTER still waiting
 * for the DHT queue up behind it, and sofia's parse of each cost as much
 * as the work they repeat; core.c peeks at the datagram at the head of the
 * socket's queue and drops it when this says it is such a repeat.  The
 * same reading builds the stateless answers core.c sends from there
 * without sofia: the 503 of shedding and the 401 challenge of a REGISTER
 * without credentials.
 *
 * Pure and strict: anything unusual (folded lines, a header twice, a
 * Call-ID with bytes RFC 3261's word does not allow, headers that do not
 * end within the bytes) is "not known" (0), and sofia takes the datagram
 * as it would anyway.  A key read here is the key sofia's parse gives
 * (tests/fuzz/fuzz_sip_peek.c checks it).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "sip/sip_int.h"

/* RFC 3261 25.1 word, and '@' between two words (callid). */
static int callid_char(unsigned char c)
{
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c && strchr("-.!%*_+`'~()<>:\\\"/[]?{}@", c) != NULL);
}

static int is_ws(char c)
{
  return c == ' ' || c == '\t';
}

/* A header line: its name (the blanks before the colon removed) and its
 * value (the blanks around it removed). */
typedef struct {
  const char *name, *v, *ve;
  size_t nl;
} hline_t;

/* Line [p, end) split once (every name is compared against it): 0 when it
 * has no colon. */
static int split_line(const char *p, const char *end, hline_t *h)
{
  const char *colon = memchr(p, ':', (size_t)(end - p));
  if (!colon)
    return 0;
  const char *ne = colon;
  while (ne > p && is_ws(ne[-1]))
    ne--;
  h->name = p, h->nl = (size_t)(ne - p);
  h->v = colon + 1, h->ve = end;
  while (h->v < h->ve && is_ws(*h->v))
    h->v++;
  while (h->ve > h->v && is_ws(h->ve[-1]))
    h->ve--;
  return 1;
}

/* Whether the line is named name (n bytes) or its compact form, if any. */
static int named(const hline_t *h, const char *name, size_t n, char compact)
{
  return (h->nl == n && strncasecmp(h->name, name, n) == 0) ||
         (compact && h->nl == 1 && (h->name[0] | 0x20) == compact);
}
#define NAMED(h, lit, compact) named(h, lit, sizeof lit - 1, compact)

/* "NUMBER METHOD" (the request's method): the number, or -1. */
static long long cseq_of(const char *v, const char *end, const sip_span_t *method)
{
  long long n = 0;
  const char *p = v;
  for (; p < end && *p >= '0' && *p <= '9'; p++)
    if ((n = n * 10 + (*p - '0')) > 0xffffffffLL)
      return -1;
  if (p == v || p >= end || !is_ws(*p))
    return -1;
  while (p < end && is_ws(*p))
    p++;
  return (size_t)(end - p) == method->n && memcmp(p, method->p, method->n) == 0 ? n : -1;
}

/* "METHOD sip:... SIP/2.0" in [p, e), METHOD one of those peeked at: the
 * method in *m. */
static int request_line(const char *p, const char *e, sip_span_t *m, sip_span_t *ruri)
{
  static const char *const methods[] = {"REGISTER", "INVITE", "SUBSCRIBE", "REFER"};
  const char *uri = memchr(p, ' ', (size_t)(e - p));
  m->p = p, m->n = uri ? (size_t)(uri - p) : 0;
  int known = 0;
  for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
    known |= m->n == strlen(methods[i]) && memcmp(p, methods[i], m->n) == 0;
  if (!known)
    return 0;
  uri++;
  const char *sp = memchr(uri, ' ', (size_t)(e - uri));
  char copy[SIP_PEEK_URI];
  url_t url[1];
  ruri->p = uri, ruri->n = sp ? (size_t)(sp - uri) : 0;
  if (!sp || sp == uri || (size_t)(sp - uri) >= sizeof copy || e - sp != 8 ||
      memcmp(sp + 1, "SIP/2.0", 7) != 0)
    return 0;
  for (const char *c = uri; c < sp; c++)
    if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f)
      return 0;
  memcpy(copy, uri, (size_t)(sp - uri));
  copy[sp - uri] = '\0';
  memset(url, 0, sizeof url);
  /* As sofia reads the Request-URI (url_d, in place): a request it cannot
   * read is not a request to it. */
  return url_d(url, copy) >= 0 && (url->url_type == url_sip || url->url_type == url_sips) &&
         url->url_host;
}

/* "0", "00"...: a Content-Length of no body. */
static int all_zeros(const char *v, const char *ve)
{
  if (v == ve)
    return 0;
  for (; v < ve; v++)
    if (*v != '0')
      return 0;
  return 1;
}

/* A line whose meaning only sofia and the edge judge (proxy credentials,
 * extensions required, a route, a body): the request is not answered at
 * the peek. */
static int sofia_line(const hline_t *h)
{
  return NAMED(h, "Proxy-Authorization", 0) || NAMED(h, "Require", 0) ||
         NAMED(h, "Proxy-Require", 0) || NAMED(h, "Route", 0) || NAMED(h, "Content-Type", 'c') ||
         NAMED(h, "Content-Encoding", 'e');
}

/* One header line [p, e): noted in pk if it is one of those peek reads;
 * -1 when it makes the request unknown. */
static int header_line(const char *p, const char *e, sip_peek_t *pk, int *n_id, int *n_cseq)
{
  hline_t h;
  sip_span_t line = {p, (size_t)(e - p)};
  if (!split_line(p, e, &h))
    return 0;
  if (NAMED(&h, "Call-ID", 'i')) {
    pk->callid = (sip_span_t){h.v, (size_t)(h.ve - h.v)}, pk->callid_line = line, (*n_id)++;
  } else if (NAMED(&h, "CSeq", 0)) {
    long long n = cseq_of(h.v, h.ve, &pk->method);
    pk->cseq = (uint32_t)n, pk->cseq_line = line, (*n_cseq)++;
    return n < 0 ? -1 : 0;
  } else if (NAMED(&h, "Via", 'v')) {
    if (pk->n_via == SIP_PEEK_VIAS)
      return -1;
    pk->via[pk->n_via++] = line;
  } else if (NAMED(&h, "From", 'f')) {
    if (pk->from.p)
      return -1;
    pk->from = line;
  } else if (NAMED(&h, "To", 't')) {
    if (pk->to.p)
      return -1;
    pk->to = line;
  } else if (NAMED(&h, "Authorization", 0)) {
    pk->auth++;
  } else if (NAMED(&h, "Content-Length", 'l')) {
    pk->sofia |= !all_zeros(h.v, h.ve) || pk->n_length++;
  } else {
    pk->sofia |= sofia_line(&h);
  }
  return 0;
}

int sip__peek_read(const char *buf, size_t len, sip_peek_t *out)
{
  const char *p = buf, *end = buf + len;
  const char *line_end = memchr(p, '\n', len);
  sip_peek_t pk;
  memset(&pk, 0, sizeof pk);
  if (!line_end ||
      !request_line(p, line_end > p && line_end[-1] == '\r' ? line_end - 1 : line_end, &pk.method,
                    &pk.ruri))
    return -EINVAL;
  int n_id = 0, n_cseq = 0;
  for (;;) {
    p = line_end + 1;
    line_end = memchr(p, '\n', (size_t)(end - p));
    if (!line_end)
      return -EINVAL; /* the headers do not end here */
    const char *e = line_end > p && line_end[-1] == '\r' ? line_end - 1 : line_end;
    if (e == p)
      break; /* the blank line: end of headers */
    if (is_ws(*p) || memchr(p, '\0', (size_t)(e - p)) || memchr(p, '\r', (size_t)(e - p)))
      return -EINVAL; /* folded, or bytes sofia may read otherwise */
    if (header_line(p, e, &pk, &n_id, &n_cseq) < 0)
      return -EINVAL;
  }
  if (n_id != 1 || n_cseq != 1 || !pk.callid.n || !pk.n_via || !pk.from.p || !pk.to.p)
    return -EINVAL;
  pk.sofia |= line_end + 1 != end; /* a body */
  for (size_t i = 0; i < pk.callid.n; i++)
    if (!callid_char((unsigned char)pk.callid.p[i]))
      return -EINVAL;
  *out = pk;
  return 0;
}

int sip__key(char *key, size_t keylen, const char *callid, size_t callid_len, uint32_t cseq,
             const char *branch)
{
  char num[12];
  size_t nl = 0;
  do
    num[sizeof num - ++nl] = (char)('0' + cseq % 10);
  while ((cseq /= 10) > 0);
  size_t bl = branch ? strlen(branch) : 0;
  /* Each part is bounded by a datagram, so the sum cannot wrap. */
  if (callid_len + 1 + nl + (branch ? 1 + bl : 0) >= keylen)
    return 0;
  char *o = key;
  memcpy(o, callid, callid_len), o += callid_len;
  *o++ = ' ';
  memcpy(o, num + sizeof num - nl, nl), o += nl;
  if (branch) {
    *o++ = ' ';
    memcpy(o, branch, bl), o += bl;
  }
  *o = '\0';
  return 1;
}

int sip__peek_key(const sip_peek_t *pk, char *key, size_t keylen)
{
  return sip__key(key, keylen, pk->callid.p, pk->callid.n, pk->cseq, NULL);
}

int sip__peek_register_key(const char *buf, size_t len, char *key, size_t keylen)
{
  sip_peek_t pk;
  if (sip__peek_read(buf, len, &pk) < 0 || !sip__peek_is(&pk, "REGISTER"))
    return 0;
  return sip__peek_key(&pk, key, keylen);
}

int sip__peek_is(const sip_peek_t *pk, const char *method)
{
  return pk->method.n == strlen(method) && memcmp(pk->method.p, method, pk->method.n) == 0;
}

/* The value of header line l, NUL-terminated in buf (of size n). */
static char *line_value(sip_span_t l, char *buf, size_t n)
{
  const char *v, *ve;
  const char *colon = memchr(l.p, ':', l.n);
  if (!colon || l.n >= n)
    return NULL;
  v = colon + 1, ve = l.p + l.n;
  while (v < ve && is_ws(*v))
    v++;
  memcpy(buf, v, (size_t)(ve - v));
  buf[ve - v] = '\0';
  return buf;
}

/* What sofia reads in the top Via: NULL unless it is the line's only one. */
static sip_via_t *top_via_read(su_home_t *home, const sip_peek_t *pk)
{
  char buf[SIP_PEEK_BYTES];
  sip_via_t *v = sip_via_make(home, line_value(pk->via[0], buf, sizeof buf));
  return v && !v->v_next && v->v_host ? v : NULL;
}

/* Whether sofia reads the other lines a 503 copies as peek copies them:
 * no error, no tag in the To.  Parsed only for a 503: every new REGISTER
 * is looked up by its top Via's branch alone. */
static int copied_lines_ok(su_home_t *home, const sip_peek_t *pk)
{
  char buf[SIP_PEEK_BYTES];
  sip_to_t *to = sip_to_make(home, line_value(pk->to, buf, sizeof buf));
  if (!to || to->a_tag || !sip_from_make(home, line_value(pk->from, buf, sizeof buf)))
    return 0;
  for (int i = 1; i < pk->n_via; i++)
    if (!sip_via_make(home, line_value(pk->via[i], buf, sizeof buf)))
      return 0;
  return 1;
}

int sip__peek_branch(const sip_peek_t *pk, char *key, size_t keylen)
{
  SIP_SCRATCH_HOME(home, 2048);
  sip_via_t *v = top_via_read(home, pk);
  int ok = v && sip__key(key, keylen, pk->callid.p, pk->callid.n, pk->cseq,
                         v->v_branch ? v->v_branch : "");
  su_home_deinit(home);
  return ok ? 0 : -EINVAL;
}

/* Appends line l and CRLF at *o, if it fits before end. */
static void put(char **o, const char *end, const char *p, size_t n)
{
  if (*o && (size_t)(end - *o) >= n + 2) {
    memcpy(*o, p, n);
    memcpy(*o + n, "\r\n", 2);
    *o += n + 2;
  } else {
    *o = NULL;
  }
}

/* Appends line l with ";tag=" tag (if tag) and CRLF at *o, if it fits. */
static void put_tagged(char **o, const char *end, const sip_span_t *l, const char *tag)
{
  size_t tl = tag ? strlen(tag) : 0, n = l->n + (tag ? 5 + tl : 0);
  if (!*o || (size_t)(end - *o) < n + 2) {
    *o = NULL;
    return;
  }
  memcpy(*o, l->p, l->n);
  if (tag) {
    memcpy(*o + l->n, ";tag=", 5);
    memcpy(*o + l->n + 5, tag, tl);
  }
  memcpy(*o + n, "\r\n", 2);
  *o += n + 2;
}

int sip__peek_via_source(su_home_t *home, sip_via_t *v, const char *ip, unsigned port)
{
  /* The header keeps the parameter strings it is given: they go in home. */
  if (strcmp(v->v_host, ip) != 0 &&
      msg_header_replace_param(home, v->v_common, su_sprintf(home, "received=%s", ip)) < 0)
    return -ENOMEM;
  if (v->v_rport &&
      msg_header_replace_param(home, v->v_common, su_sprintf(home, "rport=%u", port)) < 0)
    return -ENOMEM;
  return 0;
}

int sip__peek_answer(const sip_peek_t *pk, const char *status, const sip_via_t *via,
                     const char *tag, const char *extra, char *out, size_t cap)
{
  static const char tail[] = "Content-Length: 0\r\n\r\n";
  char *o = out, *end = out + cap;
  put(&o, end, status, strlen(status));
  issize_t vl = o ? msg_header_e(o, end - o, (const msg_header_t *)via, 0) : -1;
  if (vl <= 0 || vl >= end - o)
    return -ENOSPC;
  o += vl;
  for (int i = 1; i < pk->n_via; i++)
    put(&o, end, pk->via[i].p, pk->via[i].n);
  put(&o, end, pk->from.p, pk->from.n);
  put_tagged(&o, end, &pk->to, tag);
  put(&o, end, pk->callid_line.p, pk->callid_line.n);
  put(&o, end, pk->cseq_line.p, pk->cseq_line.n);
  size_t xl = strlen(extra);
  if (!o || (size_t)(end - o) < xl + sizeof tail - 1)
    return -ENOSPC;
  memcpy(o, extra, xl);
  memcpy(o + xl, tail, sizeof tail - 1);
  return (int)(o + xl + sizeof tail - 1 - out);
}

/* The answer status to the request read in pk, sent statelessly by the
 * peek: the request's lines read as sofia reads them, the top Via with
 * received/rport as sofia sets them (sip__peek_via_source()). */
static int answer(const sip_peek_t *pk, const char *status, const char *extra, const char *tag,
                  const char *ip, unsigned port, char *out, size_t cap)
{
  SIP_SCRATCH_HOME(home, 4096);
  sip_via_t *v = copied_lines_ok(home, pk) ? top_via_read(home, pk) : NULL;
  int rc = v ? sip__peek_via_source(home, v, ip, port) : -EINVAL;
  if (rc == 0)
    rc = sip__peek_answer(pk, status, v, tag, extra, out, cap);
  su_home_deinit(home);
  return rc;
}

int sip__peek_503(const sip_peek_t *pk, size_t reqlen, const char *tag, const char *ip,
                  unsigned port, char *out, size_t outlen)
{
  return answer(pk, "SIP/2.0 503 Service Unavailable", "Retry-After: " SIP_SHED_RETRY_AFTER "\r\n",
                tag, ip, port, out, outlen < reqlen ? outlen : reqlen);
}

int sip__peek_513(const sip_peek_t *pk, size_t reqlen, const char *tag, const char *ip,
                  unsigned port, char *out, size_t outlen)
{
  return answer(pk, "SIP/2.0 513 Message Too Large", "", tag, ip, port, out,
                outlen < reqlen ? outlen : reqlen);
}

int sip__peek_401(const sip_peek_t *pk, size_t reqlen, const char *challenge, const char *tag,
                  const char *ip, unsigned port, char *out, size_t outlen)
{
  size_t cap = reqlen > SIP_UDP_ANSWER_MAX ? reqlen : SIP_UDP_ANSWER_MAX;
  return answer(pk, "SIP/2.0 401 Unauthorized", challenge, tag, ip, port, out,
                outlen < cap ? outlen : cap);
}

/* Every span of pk moved from the bytes at from to a copy of them at to. */
void sip__peek_move(sip_peek_t *pk, const char *from, const char *to)
{
  sip_span_t *spans[] = {&pk->method, &pk->callid, &pk->callid_line, &pk->cseq_line,
                         &pk->from,   &pk->to,     &pk->ruri};
  for (size_t i = 0; i < sizeof spans / sizeof *spans; i++)
    if (spans[i]->p)
      spans[i]->p = to + (spans[i]->p - from);
  for (int i = 0; i < pk->n_via; i++)
    pk->via[i].p = to + (pk->via[i].p - from);
}
