/* libFuzzer target for the reading of a user's digest file (sip/users.c,
 * sip__users_parse()).  The input is the user's name, a newline, and the
 * file's bytes (at most the 4 KB the node reads).  Checked:
 * - it returns 0 exactly when it found an MD5 or a SHA-256 HA1;
 * - round trip: the HA1s found, written back as "NAME:REALM:ALG:HEX" lines
 *   (as p2psip-ca writes them), read back the same, and a line for
 *   another name or realm gives nothing. */
#include <stdio.h>

#include "sip/sip_int.h"
#include "tests/fuzz/fuzz.h"

#define REALM "overlay.test"

static void check_round_trip(const char *name, const sip_ha1_t *h) {
  char text[512], hex[65], other[512];
  size_t o = 0;
  if (h->has_sha256) {
    sip__hex(h->sha256, sizeof h->sha256, hex);
    o += (size_t)snprintf(text + o, sizeof text - o, "%s:" REALM ":SHA-256:%s\n", name, hex);
  }
  if (h->has_md5) {
    sip__hex(h->md5, sizeof h->md5, hex);
    o += (size_t)snprintf(text + o, sizeof text - o, "%s:" REALM ":MD5:%s\r\n", name, hex);
  }
  CHECK(o < sizeof text);
  memcpy(other, text, o + 1);
  sip_ha1_t back;
  CHECK(sip__users_parse(REALM, name, text, &back) == 0);
  CHECK(back.has_md5 == h->has_md5 && back.has_sha256 == h->has_sha256);
  CHECK(!h->has_md5 || memcmp(back.md5, h->md5, sizeof h->md5) == 0);
  CHECK(!h->has_sha256 || memcmp(back.sha256, h->sha256, sizeof h->sha256) == 0);
  CHECK(sip__users_parse("other." REALM, name, other, &back) == -ENOENT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *nl = memchr(data, '\n', size);
  if (!nl || nl - data > DHT_CERT_MAX_USER || size - (size_t)(nl + 1 - data) > 4096)
    return 0;
  char name[DHT_CERT_MAX_USER + 1], text[4097];
  size_t nlen = (size_t)(nl - data), tlen = size - nlen - 1;
  memcpy(name, data, nlen);
  name[nlen] = '\0';
  if (strlen(name) != nlen || strchr(name, ':') || strchr(name, '\r') || !nlen)
    return 0; /* users.c reads only the names p2psip-ca issues */
  memcpy(text, nl + 1, tlen);
  text[tlen] = '\0';
  sip_ha1_t h;
  int rc = sip__users_parse(REALM, name, text, &h);
  CHECK((rc == 0) == (h.has_md5 || h.has_sha256));
  CHECK(rc == 0 || rc == -ENOENT);
  if (rc == 0)
    check_round_trip(name, &h);
  return 0;
}
