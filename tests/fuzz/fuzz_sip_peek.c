/* libFuzzer target for the peek at a REGISTER datagram before sofia
 * parses it (sip/peek.c), which decides whether the datagram is dropped
 * as a retransmission.  The input is a datagram.  Checked: a key is read
 * only off a request that sofia parses as a REGISTER, and it is the key
 * the registrar builds from sofia's parse ("Call-ID CSeq"); so the peek
 * never drops what sofia would take for another request.  The same bytes
 * cut short (a truncated peek) give the same key or none. */
#include <stdio.h>

#include "sip/sip_int.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char key[600], again[600];
  if (!sip__peek_register_key((const char *)data, size, key, sizeof key)) return 0;
  CHECK(strlen(key) < sizeof key);
  msg_t *msg = msg_make(sip_default_mclass(), 0, data, (ssize_t)size);
  sip_t *sip = msg ? sip_object(msg) : NULL;
  CHECK(sip && sip->sip_request && sip->sip_request->rq_method == sip_method_register);
  CHECK(sip->sip_call_id && sip->sip_cseq);
  char want[600];
  snprintf(want, sizeof want, "%s %u", sip->sip_call_id->i_id, sip->sip_cseq->cs_seq);
  CHECK(strcmp(key, want) == 0);
  msg_destroy(msg);
  for (size_t cut = size / 2; cut < size; cut += (size - cut + 1) / 2)
    if (sip__peek_register_key((const char *)data, cut, again, sizeof again))
      CHECK(strcmp(again, key) == 0);
  return 0;
}
