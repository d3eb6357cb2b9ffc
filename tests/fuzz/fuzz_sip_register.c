/* libFuzzer target for the registrar's own readings of a REGISTER's
 * headers (sip/registrar.c): each Contact's q-value, its expiry, and the
 * Contact value the user record stores.  The input is a SIP message as
 * sofia parses it off the wire.  Checked for every Contact: q and expiry
 * stay in range; q written as the 200 OK writes it reads back the same;
 * a stored value the registrar takes (it reads back as the same URI)
 * holds neither expires nor q and gives itself again; the 200 OK's
 * Contact built from it carries the expiry and q the registrar states; and
 * the user record holding it, with the request's Call-ID, decodes to the
 * same fields unless the registrar refuses them. */
#include <stdlib.h>
#include <string.h>

#include <sofia-sip/hostdomain.h>

#include "sip/sip_int.h"
#include "tests/fuzz/fuzz.h"

static void check_q(int q) {
  CHECK(q == -1 || (q >= 0 && q <= 1000));
  if (q < 0) return;
  char text[16];
  snprintf(text, sizeof text, "%d.%03d", q / 1000, q % 1000);
  CHECK(sip__parse_q(text) == q);
}

/* What the registrar takes it puts in the DHT, and that reads back. */
static void check_record(const char *contact, const char *uri, const char *call_id) {
  if (!sip__record_text_ok(contact, SIP_REC_MAX_CONTACT) ||
      !sip__record_text_ok(uri, SIP_REC_MAX_TEXT) || !sip__record_text_ok(call_id, SIP_REC_MAX_TEXT))
    return; /* refused with 400 */
  sip_binding_t b = {.aor = "sip:fuzz@overlay.test", .contact = (char *)contact,
                     .uri = (char *)uri, .call_id = (char *)call_id, .path = "sip:192.0.2.1:5060",
                     .node = "0123", .received = "192.0.2.9:5060", .transport = "udp",
                     .edge = "", .cseq = 1, .q1000 = 1000};
  char *body = sip__binding_encode(&b, 3600);
  CHECK(body != NULL);
  dht_value_t v = {.vid = "v", .kind = DHT_KIND_USER, .expires_in = 3600 + SIP_GRACE_S,
                   .body = (const uint8_t *)body, .body_len = strlen(body)};
  sip_binding_t d;
  CHECK(sip__binding_decode(&v, &d) == 0);
  CHECK(strcmp(d.contact, contact) == 0 && strcmp(d.uri, uri) == 0 && strcmp(d.call_id, call_id) == 0);
  sip__binding_clear(&d);
  free(body);
}

static void check_contact(su_home_t *home, const sip_t *sip, const sip_contact_t *m) {
  int q = sip__parse_q(m->m_q);
  check_q(q);
  long exp = sip__contact_expires(sip, m);
  CHECK(exp >= -1 && exp <= SIP_MAX_EXPIRES);
  char *cv = sip__contact_value(m);
  if (!cv) return;
  if (!sip__contact_reads_back(cv, m->m_url)) { /* refused with 400 */
    free(cv);
    return;
  }
  sip_contact_t *again = sip_contact_make(home, cv);
  CHECK(again && !again->m_next && url_cmp(again->m_url, m->m_url) == 0);
  CHECK(!again->m_expires && !again->m_q);
  char *cv2 = sip__contact_value(again);
  CHECK(cv2 && strcmp(cv, cv2) == 0);
  free(cv2);
  if (q >= 0 && exp > 0) { /* as reply_bindings() lists it */
    char qt[16];
    snprintf(qt, sizeof qt, "%d.%03d", q / 1000, q % 1000);
    sip_contact_t *r = sip_contact_format(home, "%s;expires=%ld%s%s", cv, exp,
                                          q < 1000 ? ";q=" : "", q < 1000 ? qt : "");
    CHECK(r && !r->m_next && url_cmp(r->m_url, m->m_url) == 0);
    CHECK(r->m_expires && strtol(r->m_expires, NULL, 10) == exp && sip__parse_q(r->m_q) == q);
  }
  char uri[1024];
  issize_t ul = url_e(uri, sizeof uri, m->m_url);
  if (ul > 0 && (size_t)ul < sizeof uri) check_record(cv, uri, sip->sip_call_id->i_id);
  free(cv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  msg_t *msg = msg_make(sip_default_mclass(), 0, data, (ssize_t)size);
  sip_t *sip = msg ? sip_object(msg) : NULL;
  if (sip && sip_sanity_check(sip) == 0) { /* else nta answers 400 itself */
    su_home_t home[1] = {SU_HOME_INIT(home)};
    int n = 0;
    /* The Contacts check_contacts() takes: sip or sips URIs with a host. */
    for (const sip_contact_t *m = sip->sip_contact; m && n < SIP_MAX_CONTACTS; m = m->m_next, n++)
      if ((m->m_url->url_type == url_sip || m->m_url->url_type == url_sips) && m->m_url->url_host &&
          host_is_valid(m->m_url->url_host) && !m->m_url->url_path)
        check_contact(home, sip, m);
    su_home_deinit(home);
  }
  msg_destroy(msg);
  return 0;
}
