/*
 * proto: the peer protocol's wire format.  Pure code: no I/O, no logging,
 * no allocation while decoding.  Decoded views point into the caller's
 * buffer and live as long as that buffer.
 *
 * A frame on the wire:
 *
 *   0      2        3      4          8            12
 *   +------+--------+------+----------+------------+----------------+
 *   | "PS" | version| type |  txid    | body length| body ...       |
 *   +------+--------+------+----------+------------+----------------+
 *
 * All integers are big-endian.  The body length is bounded by
 * PROTO_MAX_BODY; a longer declared length is an error before any byte of
 * the body arrives, so a peer can never make us buffer more than that.
 * Odd types are requests, the even type after each is its response.
 */
#ifndef P2PSIP_PROTO_H
#define P2PSIP_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_MAGIC0 'P'
#define PROTO_MAGIC1 'S'
#define PROTO_VERSION 1
#define PROTO_HDR_LEN 12
#define PROTO_MAX_BODY (256 * 1024)
#define PROTO_ID_LEN 20
#define PROTO_MAX_NODES 16        /* nodes in one list (successors, hops) */
#define PROTO_MAX_VALUE_ID 255
#define PROTO_MAX_VALUE_BODY (64 * 1024)
#define PROTO_MAX_OVERLAY 255

/* Errors: decoders return bytes consumed (>0), PROTO_NEED_MORE, or one of
 * the negative codes below. */
enum {
  PROTO_NEED_MORE = 0,
  PROTO_ETRUNC = -1,   /* a field runs past the end of its container */
  PROTO_EMAGIC = -2,   /* not our protocol */
  PROTO_EVERSION = -3, /* a version we do not speak */
  PROTO_ETOOBIG = -4,  /* a declared length above its bound */
  PROTO_EINVAL = -5,   /* a field holds a value it may not hold */
  PROTO_ETRAIL = -6,   /* bytes left over after the last field */
  PROTO_ENOSPC = -7,   /* (encoders) the output buffer is too small */
};

const char *proto_strerror(int err);

enum proto_type {
  PROTO_HELLO = 1, /* first frame on a connection, both ways */
  PROTO_HELLO_R = 2,
  PROTO_PING = 3,
  PROTO_PING_R = 4,
  PROTO_FIND = 5, /* iterative lookup step */
  PROTO_FIND_R = 6,
  PROTO_NEIGH = 7, /* stabilize: predecessor and successor list; a body
                    * naming the sender also notifies (see NOTIFY) */
  PROTO_NEIGH_R = 8,
  PROTO_NOTIFY = 9, /* "I might be your predecessor" */
  PROTO_NOTIFY_R = 10,
  PROTO_STORE = 11,
  PROTO_STORE_R = 12,
  PROTO_FETCH = 13,
  PROTO_FETCH_R = 14,
  PROTO_LEAVE = 15, /* the sender leaves; here are its neighbours */
  PROTO_LEAVE_R = 16,
  PROTO_POKE = 17, /* "the ring changed next to you: stabilize now"; empty */
  PROTO_POKE_R = 18,
  PROTO_JOIN = 19, /* "I just joined before you: send me my keys"; a node */
  PROTO_JOIN_R = 20,
  PROTO_REACH = 21, /* "what address do you see, and can you connect back?" */
  PROTO_REACH_R = 22,
  PROTO_ROUTE = 23, /* a STORE or FETCH carried hop by hop to the key's owner */
  PROTO_ROUTE_R = 24,
  PROTO_STORES = 25, /* several STORE bodies for one node: an owner's refreshes of values whose
                      * primary it is, or that primary's copies of them for a replica */
  PROTO_STORES_R = 26,
  PROTO_TYPE_MAX = 26,
};

/* A bounds-checked read cursor.  Every getter returns 0 or PROTO_ETRUNC and
 * never reads past end. */
typedef struct {
  const uint8_t *p;
  const uint8_t *end;
} proto_cur_t;

/* A write cursor; encoders accumulate errors and check once at the end. */
typedef struct {
  uint8_t *p;
  uint8_t *end;
  int err;
} proto_wcur_t;

typedef struct {
  uint8_t id[PROTO_ID_LEN];
  uint8_t family; /* 4 or 6 */
  uint8_t ip[16]; /* 4 bytes used for IPv4 */
  uint16_t port;
} proto_node_t;

typedef struct {
  uint8_t type;
  uint32_t txid;
  uint32_t body_len;
  const uint8_t *body;
} proto_frame_t;

/* One stored value as it travels.  Pointers refer to the decoded buffer. */
typedef struct {
  const uint8_t *vid; /* value id, 1..255 bytes */
  uint8_t vid_len;
  uint8_t kind;
  uint8_t flags; /* PROTO_VF_* */
  uint8_t owner[PROTO_ID_LEN];
  uint64_t seq;
  uint32_t ttl; /* seconds left; relative so clocks need not agree */
  const uint8_t *body;
  uint32_t body_len;
  /* PROTO_VF_SIGNED (the secured mode): what the signer signed and how. */
  uint64_t expires;     /* absolute expiry, unix seconds */
  const uint8_t *cert;  /* the signer's certificate, DER */
  uint16_t cert_len;    /* 1..PROTO_MAX_CERT */
  const uint8_t *sig;   /* PROTO_SIG_LEN bytes */
} proto_value_t;

#define PROTO_VF_TOMBSTONE 0x01 /* the owner removed it; keep until ttl */
#define PROTO_VF_SIGNED 0x02    /* expires, cert and sig follow the body */
/* "Keep the version (value id, sequence number) you hold for ttl more":
 * a refresh without the body, certificate and signature the receiver
 * already has.  Never with PROTO_VF_SIGNED; the body is empty.  One the
 * receiver does not hold makes it answer PROTO_STORE_NEED_FULL. */
#define PROTO_VF_SAME 0x04
#define PROTO_VF_ALL (PROTO_VF_TOMBSTONE | PROTO_VF_SIGNED | PROTO_VF_SAME)
#define PROTO_MAX_CERT 2048
#define PROTO_SIG_LEN 64

/* Frame bodies ------------------------------------------------------------ */

typedef struct {
  proto_node_t self;
  const char *overlay; /* not NUL-terminated */
  uint8_t overlay_len;
} proto_hello_t;

typedef struct {
  uint8_t key[PROTO_ID_LEN];
} proto_find_t;

#define PROTO_FIND_DONE 0x01 /* nodes[0] is the key's successor */
typedef struct {
  uint8_t flags;
  uint8_t n;
  proto_node_t nodes[PROTO_MAX_NODES];
} proto_find_r_t;

typedef struct {
  uint8_t has_pred;
  proto_node_t pred;
  uint8_t n;
  proto_node_t succ[PROTO_MAX_NODES];
} proto_neigh_r_t; /* also the body of PROTO_LEAVE */

#define PROTO_STORE_REPLICA 0x01 /* a copy: the receiver must not fan out */
/* "And tell me what you held": a primary that takes the STORE answers with
 * the key's values as they were just before (STORE_R's `before`), so that
 * a writer that must read first (a registrar) sends one request, not two.
 * Replicas ignore it. */
#define PROTO_STORE_READ 0x04
/* On a primary STORE: answer once the values are stored here and the
 * copies sent, without asking the replicas to answer (a registrar's write:
 * its owner re-stores it every refresh interval, and the primary's
 * periodic push repairs a replica that missed it).  On a copy (with
 * PROTO_STORE_REPLICA): sent one-way, not answered.  Whole values only: a
 * primary sends copies of PROTO_VF_SAME refreshes asking for answers, as
 * a replica that lacks the version must say so. */
#define PROTO_STORE_QUICK 0x08
/* On a primary STORE: a leaving predecessor's handover of what it held
 * (keys of its range among them, which become ours once it has left).
 * Without it a primary STORE for a key outside the receiver's range is
 * refused whoever sends it: a new node's own put that found the key's old
 * primary was taken there as a handover, and stayed where no get looks. */
#define PROTO_STORE_HANDOVER 0x10
typedef struct {
  uint8_t key[PROTO_ID_LEN];
  uint8_t flags;
  uint16_t count;
  proto_cur_t values; /* iterate with proto_value_next() */
} proto_store_t;      /* also the body of PROTO_FETCH_R (flags: PROTO_FETCH_PRIMARY) */
/* FETCH_R: the answering node is the key's primary (a node that does not
 * set it may be one too: older nodes never set it). */
#define PROTO_FETCH_PRIMARY 0x02

#define PROTO_STORE_REFUSED 1  /* STORE_R status: values refused by the access rules or limits */
#define PROTO_STORE_NOT_MINE 2 /* STORE_R status: a primary STORE for a key of another range */
#define PROTO_STORE_NEED_FULL 3 /* STORE_R status: PROTO_VF_SAME values not held here: send them whole */
typedef struct {
  uint8_t status; /* 0 ok, else an error (PROTO_STORE_REFUSED) */
  uint16_t stored;
  uint8_t replicas; /* copies the receiver made, counting itself */
  /* PROTO_STORE_READ answered: the key's values before the STORE, a
   * FETCH_R body (validated by the decoder); NULL when absent. */
  const uint8_t *before;
  size_t before_len;
} proto_store_r_t;

/* REACH: the port to connect back to (on the address the request came
 * from; never elsewhere, so a node cannot be made to probe third parties).
 * REACH_R: whether that connect succeeded, and the address seen. */
typedef struct {
  uint16_t port;
} proto_reach_t;

typedef struct {
  uint8_t reachable;
  proto_node_t seen; /* id unused (zero) */
} proto_reach_r_t;

/* ROUTE (RFC 6940's symmetric recursive routing, for data requests): each
 * hop passes it to a node closer to key over a link it already has; the
 * key's owner (or, with skip > 0, the skip-th node after it, reached along
 * successors with PROTO_ROUTE_PASSED set) answers the inner request, and
 * the answer goes back the same way as a ROUTE_R.  origin names who asked,
 * for logs only: intermediate nodes could change it, so it carries no
 * authority (values carry their signatures). */
#define PROTO_ROUTE_PASSED 0x01 /* past the owner: count skip down along successors */
#define PROTO_ROUTE_FLAGS PROTO_ROUTE_PASSED
typedef struct {
  uint8_t key[PROTO_ID_LEN];
  uint8_t flags;
  uint8_t skip; /* successors of the owner still to pass */
  uint8_t hops; /* hops so far; the receiver bounds it */
  proto_node_t origin;
  uint8_t type; /* the inner request: an odd type other than ROUTE */
  const uint8_t *body;
  uint32_t body_len;
} proto_route_t;

#define PROTO_ROUTE_FAILED 1 /* ROUTE_R status: no answer (no route, hop limit, a hop failed) */
typedef struct {
  uint8_t status; /* 0: answered (type and body hold the answer) */
  uint8_t hops;   /* hops the request took */
  proto_node_t responder;
  uint8_t type; /* the inner response: the even type after a request; 0 when failed */
  const uint8_t *body;
  uint32_t body_len;
} proto_route_r_t;

/* Framing: parse a header from the first len bytes of buf.  Returns the
 * whole frame's size when it is complete, PROTO_NEED_MORE when more bytes
 * are needed, or a negative error (the connection should be closed). */
long proto_frame_decode(const uint8_t *buf, size_t len, proto_frame_t *out);
/* The size of the whole frame (header and body) whose first len bytes are
 * in buf, once its header is complete and valid; PROTO_NEED_MORE before
 * that, or a negative error.  The body need not have arrived. */
long proto_frame_size(const uint8_t *buf, size_t len);
/* Write a header for a body of body_len bytes into hdr[PROTO_HDR_LEN]. */
void proto_frame_header(uint8_t *hdr, uint8_t type, uint32_t txid, uint32_t body_len);

/* Body codecs.  Decoders return 0 or a negative error; they demand that the
 * body is consumed exactly.  Encoders return the number of bytes written or
 * PROTO_ENOSPC. */
int proto_hello_decode(const uint8_t *b, size_t n, proto_hello_t *out);
long proto_hello_encode(uint8_t *b, size_t n, const proto_hello_t *in);
int proto_node_decode(const uint8_t *b, size_t n, proto_node_t *out); /* PING_R, NOTIFY */
long proto_node_encode(uint8_t *b, size_t n, const proto_node_t *in);
int proto_find_decode(const uint8_t *b, size_t n, proto_find_t *out); /* FIND, FETCH */
long proto_find_encode(uint8_t *b, size_t n, const proto_find_t *in);
int proto_find_r_decode(const uint8_t *b, size_t n, proto_find_r_t *out);
long proto_find_r_encode(uint8_t *b, size_t n, const proto_find_r_t *in);
int proto_neigh_r_decode(const uint8_t *b, size_t n, proto_neigh_r_t *out);
long proto_neigh_r_encode(uint8_t *b, size_t n, const proto_neigh_r_t *in);
int proto_reach_decode(const uint8_t *b, size_t n, proto_reach_t *out);
long proto_reach_encode(uint8_t *b, size_t n, const proto_reach_t *in);
int proto_reach_r_decode(const uint8_t *b, size_t n, proto_reach_r_t *out);
long proto_reach_r_encode(uint8_t *b, size_t n, const proto_reach_r_t *in);
int proto_store_r_decode(const uint8_t *b, size_t n, proto_store_r_t *out);
long proto_store_r_encode(uint8_t *b, size_t n, const proto_store_r_t *in);
int proto_route_decode(const uint8_t *b, size_t n, proto_route_t *out);
long proto_route_encode(uint8_t *b, size_t n, const proto_route_t *in);
int proto_route_r_decode(const uint8_t *b, size_t n, proto_route_r_t *out);
long proto_route_r_encode(uint8_t *b, size_t n, const proto_route_r_t *in);

/* STORE and FETCH_R: the decoder checks every value, so that after it
 * returns 0, proto_value_next() cannot fail on the same view. */
int proto_store_decode(const uint8_t *b, size_t n, proto_store_t *out);
/* Building: start, append values one by one, finish to patch the count. */
void proto_store_begin(proto_wcur_t *w, const uint8_t key[PROTO_ID_LEN], uint8_t flags);
void proto_store_add(proto_wcur_t *w, const proto_value_t *v);
long proto_store_end(proto_wcur_t *w, uint8_t *start);
/* Next value of a decoded store; returns 1 with *out set, 0 at the end,
 * or a negative error. */
int proto_value_next(proto_cur_t *values, proto_value_t *out);

/* STORES: u16 count, then count times (u32 length, STORE body).  The
 * decoder checks every STORE body in it (proto_store_decode), so that
 * proto_stores_next() cannot fail on the same view.  STORES_R: u16
 * count, then one STORE_R status per STORE, in order. */
#define PROTO_STORES_MAX 1024 /* STOREs in one STORES */
typedef struct {
  uint16_t count;
  proto_cur_t items; /* iterate with proto_stores_next() */
} proto_stores_t;
int proto_stores_decode(const uint8_t *b, size_t n, proto_stores_t *out);
/* Next STORE body of a decoded STORES: 1 with *body, *len set, 0 at the end. */
int proto_stores_next(proto_cur_t *items, const uint8_t **body, size_t *len);
void proto_stores_begin(proto_wcur_t *w);
void proto_stores_add(proto_wcur_t *w, const uint8_t *store, size_t len);
long proto_stores_end(proto_wcur_t *w, uint8_t *start, unsigned count);
typedef struct {
  uint16_t count;
  const uint8_t *status; /* count STORE_R statuses */
} proto_stores_r_t;
int proto_stores_r_decode(const uint8_t *b, size_t n, proto_stores_r_t *out);
long proto_stores_r_encode(uint8_t *b, size_t n, const proto_stores_r_t *in);

/* Cursor primitives, shared with the other codecs in proto/. */
int proto_get_u8(proto_cur_t *c, uint8_t *v);
int proto_get_u16(proto_cur_t *c, uint16_t *v);
int proto_get_u32(proto_cur_t *c, uint32_t *v);
int proto_get_u64(proto_cur_t *c, uint64_t *v);
int proto_get_bytes(proto_cur_t *c, void *dst, size_t len);
int proto_get_sub(proto_cur_t *c, size_t len, proto_cur_t *sub);
void proto_put_u8(proto_wcur_t *w, uint8_t v);
void proto_put_u16(proto_wcur_t *w, uint16_t v);
void proto_put_u32(proto_wcur_t *w, uint32_t v);
void proto_put_u64(proto_wcur_t *w, uint64_t v);
void proto_put_bytes(proto_wcur_t *w, const void *src, size_t len);

#endif
