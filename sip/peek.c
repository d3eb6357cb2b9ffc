/*
 * What a REGISTER datagram is known by ("Call-ID CSeq", as registrar.c
 * keys the requests under way), read off the bytes before sofia parses
 * them.  Under load a phone's retransmissions of a REGISTER still waiting
 * for the DHT queue up behind it, and sofia's parse of each cost as much
 * as the work they repeat; core.c peeks at the datagram at the head of the
 * socket's queue and drops it when this says it is such a repeat.
 *
 * Pure and strict: anything unusual (folded lines, a header twice, a
 * Call-ID with bytes RFC 3261's word does not allow, headers that do not
 * end within the bytes) is "not known" (0), and sofia takes the datagram
 * as it would anyway.  A key read here is the key sofia's parse gives
 * (tests/fuzz/fuzz_sip_peek.c checks it).
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "sip/sip_int.h"

#define SIP_PEEK_URI 512 /* a longer Request-URI: not known */

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

/* The header line [p, end) named name (or its compact form, if any):
 * its value with the blanks around it removed, in [*v, *vend); 0 when the
 * line has another name. */
static int header_value(const char *p, const char *end, const char *name, const char *compact,
                        const char **v, const char **vend)
{
  const char *colon = memchr(p, ':', (size_t)(end - p));
  if (!colon)
    return 0;
  const char *ne = colon;
  while (ne > p && is_ws(ne[-1]))
    ne--;
  size_t nl = (size_t)(ne - p);
  if (!((nl == strlen(name) && strncasecmp(p, name, nl) == 0) ||
        (compact && nl == strlen(compact) && strncasecmp(p, compact, nl) == 0)))
    return 0;
  *v = colon + 1, *vend = end;
  while (*v < *vend && is_ws(**v))
    (*v)++;
  while (*vend > *v && is_ws((*vend)[-1]))
    (*vend)--;
  return 1;
}

/* "NUMBER REGISTER": the number, or -1. */
static long long cseq_register(const char *v, const char *end)
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
  return end - p == 8 && memcmp(p, "REGISTER", 8) == 0 ? n : -1;
}

/* "REGISTER sip:... SIP/2.0" in [p, e). */
static int request_line(const char *p, const char *e)
{
  if (e - p < 9 || memcmp(p, "REGISTER ", 9) != 0)
    return 0;
  const char *uri = p + 9, *sp = memchr(uri, ' ', (size_t)(e - uri));
  char copy[SIP_PEEK_URI];
  url_t url[1];
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
   * read is not a REGISTER to it. */
  return url_d(url, copy) >= 0 && (url->url_type == url_sip || url->url_type == url_sips) &&
         url->url_host;
}

int sip__peek_register_key(const char *buf, size_t len, char *key, size_t keylen)
{
  const char *p = buf, *end = buf + len;
  const char *line_end = memchr(p, '\n', len);
  if (!line_end || !request_line(p, line_end > p && line_end[-1] == '\r' ? line_end - 1 : line_end))
    return 0;
  const char *id = NULL, *id_end = NULL;
  long long cseq = -1;
  int n_id = 0, n_cseq = 0;
  while (line_end) {
    p = line_end + 1;
    line_end = memchr(p, '\n', (size_t)(end - p));
    if (!line_end)
      return 0; /* the headers do not end here */
    const char *e = line_end > p && line_end[-1] == '\r' ? line_end - 1 : line_end;
    if (e == p)
      break; /* the blank line: end of headers */
    if (is_ws(*p) || memchr(p, '\0', (size_t)(e - p)) || memchr(p, '\r', (size_t)(e - p)))
      return 0; /* folded, or bytes sofia may read otherwise */
    const char *v, *ve;
    if (header_value(p, e, "Call-ID", "i", &v, &ve)) {
      id = v, id_end = ve, n_id++;
    } else if (header_value(p, e, "CSeq", NULL, &v, &ve)) {
      cseq = cseq_register(v, ve), n_cseq++;
    }
  }
  if (!line_end || n_id != 1 || n_cseq != 1 || cseq < 0 || id == id_end)
    return 0;
  for (const char *c = id; c < id_end; c++)
    if (!callid_char((unsigned char)*c))
      return 0;
  int n = snprintf(key, keylen, "%.*s %u", (int)(id_end - id), id, (unsigned)cseq);
  return n > 0 && (size_t)n < keylen;
}
