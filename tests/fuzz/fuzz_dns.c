/* libFuzzer target for the DNS answers the proxy peers' clean-up reads
 * (sip/dnsreg.c): any packet that ldns takes, as the answer to
 * "_sip._udp.overlay.test. SRV".  Only SRV records of that name in class
 * IN naming a pp-<12 hex> target of the zone are kept, our own target
 * only noted, at most GC_MAX_SRV of them; an answer to that question
 * encoded again by ldns and read back gives the same result. */
#include <errno.h>
#include <stdlib.h>

#include <ldns/ldns.h>

#include "sip/sip_int.h"
#include "tests/fuzz/fuzz.h"

#define ASKED "_sip._udp.overlay.test."
#define ZONE "overlay.test."
#define SELF "pp-0123456789ab.overlay.test."
#define MAX_SRV 64 /* GC_MAX_SRV */

typedef struct {
  int rc, self;
  ldns_rr_list *seen;
} result_t;

static result_t collect(const ldns_pkt *pkt) {
  result_t r = {0, 0, NULL};
  r.rc = sip__dns_srv_collect(pkt, ASKED, ZONE, SELF, &r.seen, &r.self);
  CHECK(r.rc == 0 || r.rc == -EINVAL);
  if (r.rc < 0) {
    CHECK(!r.seen && !r.self);
    return r;
  }
  ldns_rdf *asked = ldns_dname_new_frm_str(ASKED), *self = ldns_dname_new_frm_str(SELF);
  CHECK(asked && self && r.seen && ldns_rr_list_rr_count(r.seen) <= MAX_SRV);
  for (size_t i = 0; i < ldns_rr_list_rr_count(r.seen); i++) {
    const ldns_rr *rr = ldns_rr_list_rr(r.seen, i);
    CHECK(ldns_rr_get_type(rr) == LDNS_RR_TYPE_SRV && ldns_rr_get_class(rr) == LDNS_RR_CLASS_IN);
    CHECK(ldns_rr_rd_count(rr) == 4 && ldns_dname_compare(ldns_rr_owner(rr), asked) == 0);
    const ldns_rdf *target = ldns_rr_rdf(rr, 3);
    CHECK(ldns_rdf_get_type(target) == LDNS_RDF_TYPE_DNAME && ldns_dname_compare(target, self) != 0);
    /* pp- plus 12 hex digits is a label of 15 bytes under the zone's two. */
    CHECK(ldns_dname_label_count(target) == 3 && ldns_rdf_size(target) == 1 + 15 + 14);
  }
  ldns_rdf_deep_free(asked);
  ldns_rdf_deep_free(self);
  return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ldns_pkt *pkt = NULL;
  if (ldns_wire2pkt(&pkt, data, size) != LDNS_STATUS_OK) return 0;
  result_t a = collect(pkt);
  uint8_t *wire = NULL;
  size_t len = 0;
  /* Only answers to our question go round (encoding allocates 64 KiB). */
  if (a.rc == 0 && ldns_pkt2wire(&wire, pkt, &len) == LDNS_STATUS_OK) {
    ldns_pkt *again = NULL;
    CHECK(ldns_wire2pkt(&again, wire, len) == LDNS_STATUS_OK);
    result_t b = collect(again);
    CHECK(a.rc == b.rc && a.self == b.self);
    CHECK(!a.seen == !b.seen && (!a.seen || ldns_rr_list_compare(a.seen, b.seen) == 0));
    ldns_rr_list_deep_free(b.seen);
    ldns_pkt_free(again);
    free(wire);
  }
  ldns_rr_list_deep_free(a.seen);
  ldns_pkt_free(pkt);
  return 0;
}
