/* libFuzzer target for the peek at a request datagram before sofia parses
 * it (sip/peek.c).  The input is a datagram.  Checked:
 * - the REGISTER key (drops retransmissions under way): read only off a
 *   request that sofia parses as a REGISTER, and the key the registrar
 *   builds from sofia's parse ("Call-ID CSeq"); the same bytes cut short
 *   (a truncated peek) give the same key or none;
 * - the resend key: "Call-ID CSeq branch" as core.c builds it from
 *   sofia's parse of the request;
 * - the stateless 503 built from the datagram: never longer than it,
 *   parsed by sofia as a 503 response without errors, with the request's
 *   Call-ID, CSeq, From, the To with the tag added, and its Vias (the top
 *   one with received/rport added, the others as they were);
 * - the 401 built from the datagram with auth.c's challenge lines: never
 *   longer than SIP_UDP_ANSWER_MAX or the request if larger, parsed by
 *   sofia as a 401 with the same lines as the 503 and each
 *   WWW-Authenticate read by sofia's digest parser (realm, nonce,
 *   algorithm as written). */
#include <stdio.h>

#include <sofia-sip/auth_digest.h>

#include "sip/sip_int.h"
#include "tests/fuzz/fuzz.h"

/* strict: NULL when sofia finds an error anywhere. */
static msg_t *parse(const void *p, size_t n, int strict) {
  msg_t *msg = msg_make(sip_default_mclass(), 0, p, (ssize_t)n);
  sip_t *sip = msg ? sip_object(msg) : NULL;
  if (sip && (!strict || (!sip->sip_error && !(msg_extract_errors(msg) & MSG_FLG_ERROR))))
    return msg;
  msg_destroy(msg);
  return NULL;
}

static int same_header(const void *a, const void *b) {
  char x[2048], y[2048];
  issize_t n = msg_header_field_e(x, sizeof x, a, 0), m = msg_header_field_e(y, sizeof y, b, 0);
  return n > 0 && n == m && n < (issize_t)sizeof x && memcmp(x, y, (size_t)n) == 0;
}

static void check_register_key(const uint8_t *data, size_t size, const sip_t *sip) {
  char key[600], again[600];
  if (!sip__peek_register_key((const char *)data, size, key, sizeof key)) return;
  CHECK(strlen(key) < sizeof key);
  CHECK(sip && sip->sip_request && sip->sip_request->rq_method == sip_method_register);
  CHECK(sip->sip_call_id && sip->sip_cseq);
  char want[600];
  snprintf(want, sizeof want, "%s %u", sip->sip_call_id->i_id, sip->sip_cseq->cs_seq);
  CHECK(strcmp(key, want) == 0);
  for (size_t cut = size / 2; cut < size; cut += (size - cut + 1) / 2)
    if (sip__peek_register_key((const char *)data, cut, again, sizeof again))
      CHECK(strcmp(again, key) == 0);
}

/* The challenge lines as auth.c writes them for --sip-digest SHA-256,MD5. */
#define NONCE "0000019a2b3c4d5e8f0e1d2c3b4a59687766554433221100"
static const char challenge[] =
    "WWW-Authenticate: Digest realm=\"p2p.test\", nonce=\"" NONCE "\", qop=\"auth\", "
    "algorithm=SHA-256\r\n"
    "WWW-Authenticate: Digest realm=\"p2p.test\", nonce=\"" NONCE "\", qop=\"auth\", "
    "algorithm=MD5\r\n";

/* Each WWW-Authenticate of r as sofia's digest parser reads it. */
static void check_challenges(const sip_t *r) {
  static const char *const algs[] = {"SHA-256", "MD5"};
  const sip_www_authenticate_t *w = r->sip_www_authenticate;
  for (int i = 0; i < 2; i++, w = w->au_next) {
    CHECK(w && fuzz_same_str(w->au_scheme, "Digest"));
    su_home_t home[1] = {SU_HOME_INIT(home)};
    auth_challenge_t ac[1];
    memset(ac, 0, sizeof ac);
    ac->ac_size = sizeof ac;
    CHECK(auth_digest_challenge_get(home, ac, w->au_params) >= 0);
    CHECK(fuzz_same_str(ac->ac_realm, "p2p.test") && fuzz_same_str(ac->ac_nonce, NONCE) &&
          fuzz_same_str(ac->ac_algorithm, algs[i]) && ac->ac_auth);
    su_home_deinit(home);
  }
  CHECK(!w);
}

/* The 503 or 401 (status) against the request as sofia reads it (req,
 * NULL when sofia does not take it) and as peek read it (pk). */
static void check_answer(int status, const char *out, int n, size_t max, const sip_peek_t *pk,
                         const sip_t *req) {
  CHECK(n > 0 && (size_t)n <= max);
  msg_t *msg = parse(out, (size_t)n, 1);
  CHECK(msg);
  sip_t *r = sip_object(msg);
  CHECK(r->sip_status && r->sip_status->st_status == status);
  if (status == 503) CHECK(r->sip_retry_after);
  if (status == 401) check_challenges(r);
  CHECK(r->sip_call_id && r->sip_call_id->i_id && strlen(r->sip_call_id->i_id) == pk->callid.n &&
        memcmp(r->sip_call_id->i_id, pk->callid.p, pk->callid.n) == 0);
  CHECK(r->sip_cseq && r->sip_cseq->cs_seq == pk->cseq);
  CHECK(r->sip_to && fuzz_same_str(r->sip_to->a_tag, "p2psl1") && r->sip_from && r->sip_via);
  if (req) {
    CHECK(req->sip_cseq && req->sip_cseq->cs_method == r->sip_cseq->cs_method);
    CHECK(same_header(req->sip_from, r->sip_from));
    const sip_via_t *a = req->sip_via, *b = r->sip_via;
    CHECK(a && fuzz_same_str(a->v_branch, b->v_branch) && fuzz_same_str(a->v_host, b->v_host) &&
          fuzz_same_str(a->v_port, b->v_port) && fuzz_same_str(a->v_protocol, b->v_protocol));
    for (a = a->v_next, b = b->v_next; a && b; a = a->v_next, b = b->v_next)
      CHECK(same_header(a, b));
    CHECK(!a && !b);
  }
  msg_destroy(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  msg_t *msg = parse(data, size, 0);
  sip_t *sip = msg && sip_object(msg)->sip_request ? sip_object(msg) : NULL;
  check_register_key(data, size, sip);
  sip_peek_t pk;
  char key[700], out[SIP_PEEK_BYTES];
  if (sip__peek_read((const char *)data, size, &pk) == 0) {
    if (sip__peek_branch(&pk, key, sizeof key) == 0 && sip) {
      char want[700];
      snprintf(want, sizeof want, "%s %u %s", sip->sip_call_id->i_id, sip->sip_cseq->cs_seq,
               sip->sip_via->v_branch ? sip->sip_via->v_branch : "");
      CHECK(strcmp(key, want) == 0);
    }
    int n = sip__peek_503(&pk, size, "p2psl1", "192.0.2.7", 5071, out, sizeof out);
    if (n >= 0) check_answer(503, out, n, size, &pk, sip);
    n = sip__peek_513(&pk, size, "p2psl1", "192.0.2.7", 5071, out, sizeof out);
    if (n >= 0) check_answer(513, out, n, size, &pk, sip);
    n = sip__peek_401(&pk, size, challenge, "p2psl1", "192.0.2.7", 5071, out, sizeof out);
    if (n >= 0)
      check_answer(401, out, n, size > SIP_UDP_ANSWER_MAX ? size : SIP_UDP_ANSWER_MAX, &pk, sip);
  }
  msg_destroy(msg);
  return 0;
}
