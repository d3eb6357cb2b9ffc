/*
 * proto/stun: STUN (RFC 8489) and TURN (RFC 8656) messages, and TURN's
 * ChannelData framing, for relay/.
 *
 * Pure code: no I/O and no logging.  Decoders never allocate; what they
 * return points into the caller's buffer and lives as long as it.  The
 * crypto helpers (MESSAGE-INTEGRITY, credentials) call OpenSSL, which
 * allocates its own short-lived contexts internally.
 *
 * A STUN message:
 *
 *   0                   1                   2                   3
 *   +-+-+-------------------------+-------------------------------+
 *   |0 0|   message type (14)     |  message length (body only)   |
 *   +-+-+-------------------------+-------------------------------+
 *   |                magic cookie 0x2112A442                      |
 *   +-------------------------------------------------------------+
 *   |                transaction id (96 bits)                     |
 *   +-------------------------------------------------------------+
 *   |  attributes: type(16) length(16) value, padded to 4 bytes   |
 *
 * and a ChannelData message (RFC 8656 section 12.4):
 *
 *   +-------------------------------+-------------------------------+
 *   |  channel number 0x4000-0x4FFF |  length of the data           |
 *   +-------------------------------+-------------------------------+
 *   |  data, padded to 4 bytes over TCP/TLS (optional over UDP)     |
 *
 * Functions return 0 (or a size) on success, or a negative PROTO_E* code
 * from proto/proto.h.  Out-parameters are written only on success.
 */
#ifndef P2PSIP_PROTO_STUN_H
#define P2PSIP_PROTO_STUN_H

#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"

#define PROTO_STUN_HDR_LEN 20
#define PROTO_STUN_COOKIE 0x2112A442u
#define PROTO_STUN_TXID_LEN 12
/* The largest body a 16-bit length field can declare that is also a
 * multiple of 4 (RFC 8489 section 5). */
#define PROTO_STUN_MAX_BODY 65532
#define PROTO_STUN_MAX_MSG (PROTO_STUN_HDR_LEN + PROTO_STUN_MAX_BODY)
#define PROTO_STUN_MI_LEN 20  /* HMAC-SHA1 */
#define PROTO_STUN_FP_LEN 4
#define PROTO_STUN_KEY_LEN 16 /* MD5 long-term key */
#define PROTO_STUN_TOKEN_LEN 8 /* RESERVATION-TOKEN */
#define PROTO_STUN_REST_PASS_LEN 28 /* base64 of a SHA-1 HMAC */

#define PROTO_STUN_CHAN_HDR_LEN 4
#define PROTO_STUN_CHAN_MIN 0x4000 /* RFC 8656 section 12 */
#define PROTO_STUN_CHAN_MAX 0x4FFF /* 0x5000-0xFFFF are reserved */

/* Byte bounds on text attributes (RFC 8489 sections 14.3, 14.8, 14.9,
 * 14.10, 14.14): fewer than 128 characters, at most 763 bytes; USERNAME
 * is at most 513 bytes. */
#define PROTO_STUN_MAX_USERNAME 513
#define PROTO_STUN_MAX_TEXT 763

enum proto_stun_class {
  PROTO_STUN_REQUEST = 0,
  PROTO_STUN_INDICATION = 1,
  PROTO_STUN_SUCCESS = 2,
  PROTO_STUN_ERROR = 3,
};

enum proto_stun_method {
  PROTO_STUN_BINDING = 0x001,
  PROTO_STUN_ALLOCATE = 0x003, /* RFC 8656 section 17 */
  PROTO_STUN_REFRESH = 0x004,
  PROTO_STUN_SEND = 0x006,
  PROTO_STUN_DATA = 0x007,
  PROTO_STUN_CREATE_PERMISSION = 0x008,
  PROTO_STUN_CHANNEL_BIND = 0x009,
};

enum proto_stun_attr_type {
  /* RFC 8489 section 18.3 */
  PROTO_STUN_A_MAPPED_ADDRESS = 0x0001,
  PROTO_STUN_A_USERNAME = 0x0006,
  PROTO_STUN_A_MESSAGE_INTEGRITY = 0x0008,
  PROTO_STUN_A_ERROR_CODE = 0x0009,
  PROTO_STUN_A_UNKNOWN_ATTRIBUTES = 0x000A,
  PROTO_STUN_A_REALM = 0x0014,
  PROTO_STUN_A_NONCE = 0x0015,
  PROTO_STUN_A_MESSAGE_INTEGRITY_SHA256 = 0x001C,
  PROTO_STUN_A_PASSWORD_ALGORITHM = 0x001D,
  PROTO_STUN_A_USERHASH = 0x001E,
  PROTO_STUN_A_XOR_MAPPED_ADDRESS = 0x0020,
  PROTO_STUN_A_PASSWORD_ALGORITHMS = 0x8002,
  PROTO_STUN_A_ALTERNATE_DOMAIN = 0x8003,
  PROTO_STUN_A_SOFTWARE = 0x8022,
  PROTO_STUN_A_ALTERNATE_SERVER = 0x8023,
  PROTO_STUN_A_FINGERPRINT = 0x8028,
  /* RFC 8656 section 18 */
  PROTO_STUN_A_CHANNEL_NUMBER = 0x000C,
  PROTO_STUN_A_LIFETIME = 0x000D,
  PROTO_STUN_A_XOR_PEER_ADDRESS = 0x0012,
  PROTO_STUN_A_DATA = 0x0013,
  PROTO_STUN_A_XOR_RELAYED_ADDRESS = 0x0016,
  PROTO_STUN_A_REQUESTED_ADDRESS_FAMILY = 0x0017,
  PROTO_STUN_A_EVEN_PORT = 0x0018,
  PROTO_STUN_A_REQUESTED_TRANSPORT = 0x0019,
  PROTO_STUN_A_DONT_FRAGMENT = 0x001A,
  PROTO_STUN_A_RESERVATION_TOKEN = 0x0022,
  PROTO_STUN_A_ADDITIONAL_ADDRESS_FAMILY = 0x8000,
  PROTO_STUN_A_ADDRESS_ERROR_CODE = 0x8001,
  PROTO_STUN_A_ICMP = 0x8004,
  /* RFC 8445 (ICE), seen in RFC 5769's sample request */
  PROTO_STUN_A_PRIORITY = 0x0024,
  PROTO_STUN_A_USE_CANDIDATE = 0x0025,
  PROTO_STUN_A_ICE_CONTROLLED = 0x8029,
  PROTO_STUN_A_ICE_CONTROLLING = 0x802A,
};

/* Attribute types below 0x8000 are comprehension-required: a server that
 * does not know one answers 420 with UNKNOWN-ATTRIBUTES (RFC 8489 14). */
#define PROTO_STUN_COMPREHENSION_REQUIRED(t) ((t) < 0x8000)

#define PROTO_STUN_PROTO_UDP 17 /* REQUESTED-TRANSPORT (RFC 8656 18.7) */

/* Message types --------------------------------------------------------- */

/* Compose the 14-bit type from a 12-bit method and a class; the class bits
 * sit at bits 4 and 8 (RFC 8489 section 5).  Out-of-range inputs are
 * masked. */
uint16_t proto_stun_type(uint16_t method, uint8_t cls);
uint16_t proto_stun_method(uint16_t type);
uint8_t proto_stun_class(uint16_t type);

/* Demultiplexing -------------------------------------------------------- */

enum proto_stun_kind {
  PROTO_STUN_KIND_OTHER = 0,   /* neither: drop it */
  PROTO_STUN_KIND_STUN = 1,    /* first two bits 00 and the magic cookie */
  PROTO_STUN_KIND_CHANNEL = 2, /* first byte 0x40-0x4F (RFC 8656 table 3) */
};

/* Classify a UDP datagram by its first bytes, without parsing it.  STUN
 * needs a whole header (20 bytes) with the cookie; ChannelData needs its
 * 4-byte header and a channel number in 0x4000-0x4FFF.  Returns a
 * PROTO_STUN_KIND_* value. */
int proto_stun_kind(const uint8_t *buf, size_t len);

/* Framing on a stream (TURN over TCP or TLS, RFC 8656 section 12.5): look
 * at the first len bytes of buf, which hold STUN messages and ChannelData
 * messages back to back.  Returns the size of the complete message at the
 * start of buf (ChannelData padded to 4 bytes), PROTO_NEED_MORE if more
 * bytes are needed, PROTO_EMAGIC if the bytes are neither STUN nor
 * ChannelData (bad first bits, reserved channel number, wrong cookie), or
 * PROTO_EINVAL for a STUN length that is not a multiple of 4.  After an
 * error the stream cannot be resynchronised and should be closed.  Only
 * the header is checked: pass the message to proto_stun_parse() or
 * proto_stun_chan_parse() next. */
long proto_stun_frame(const uint8_t *buf, size_t len);

/* Parsing --------------------------------------------------------------- */

typedef struct {
  uint16_t type; /* the whole 14-bit type */
  uint16_t method;
  uint8_t cls;
  uint8_t txid[PROTO_STUN_TXID_LEN];
  const uint8_t *buf; /* the message, header included */
  size_t len;         /* PROTO_STUN_HDR_LEN + body length */
  /* Offsets from buf of the attribute headers that the integrity checks
   * need, 0 when absent (no attribute can start at offset 0). */
  uint32_t mi_off;     /* MESSAGE-INTEGRITY */
  uint32_t mi256_off;  /* MESSAGE-INTEGRITY-SHA256 (located, not checked) */
  uint32_t fp_off;     /* FINGERPRINT */
} proto_stun_msg_t;

/* Parse one STUN message that fills exactly len bytes (a UDP datagram, or
 * a message framed by proto_stun_frame()).  Checks the header (first two
 * bits, cookie, length a multiple of 4 and equal to len - 20) and walks
 * every attribute once, so that iterating later cannot fail.  Returns 0,
 * or PROTO_ETRUNC (too short, or an attribute runs past the end),
 * PROTO_ETRAIL (bytes after the declared length, or attributes after
 * FINGERPRINT), PROTO_EMAGIC (not STUN), PROTO_EINVAL (bad length field, or
 * MESSAGE-INTEGRITY / FINGERPRINT / MESSAGE-INTEGRITY-SHA256 of the wrong
 * size).  Attributes between MESSAGE-INTEGRITY and FINGERPRINT other than
 * MESSAGE-INTEGRITY-SHA256 are accepted but ignored (RFC 8489 14.5). */
int proto_stun_parse(const uint8_t *buf, size_t len, proto_stun_msg_t *out);

/* An attribute as found in the message; val points into the message and
 * holds len bytes (padding excluded). */
typedef struct {
  uint16_t type;
  uint16_t len;
  const uint8_t *val;
} proto_stun_attr_t;

/* Iterating attributes.  The iterator hides what a receiver must ignore:
 * after MESSAGE-INTEGRITY it yields only MESSAGE-INTEGRITY-SHA256 and
 * FINGERPRINT, after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT. */
typedef struct {
  proto_cur_t c;
  uint8_t state; /* internal */
} proto_stun_iter_t;

void proto_stun_iter_init(proto_stun_iter_t *it, const proto_stun_msg_t *m);
/* Returns 1 with *a set, 0 at the end, or a negative error (never after a
 * successful proto_stun_parse() of the same message). */
int proto_stun_next(proto_stun_iter_t *it, proto_stun_attr_t *a);
/* The first attribute of this type that the iterator would yield (only the
 * first one counts, RFC 8489 section 14).  Returns 1 with *a set, or 0. */
int proto_stun_find(const proto_stun_msg_t *m, uint16_t type, proto_stun_attr_t *a);

/* Typed attribute values.  Each getter checks the value's exact size and
 * fields, and returns 0 or PROTO_EINVAL (PROTO_ETOOBIG for text over its
 * bound).  Attributes not listed here are plain bytes: DATA, USERHASH,
 * ICE-CONTROLLED... use a->val and a->len. */

typedef struct {
  uint8_t family; /* 4 or 6, like proto_node_t */
  uint16_t port;
  uint8_t ip[16]; /* 4 bytes used for IPv4, network order */
} proto_stun_addr_t;

/* MAPPED-ADDRESS, ALTERNATE-SERVER and other plain addresses. */
int proto_stun_get_addr(const proto_stun_attr_t *a, proto_stun_addr_t *out);
/* XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS: the port is
 * XORed with the cookie's top half, an IPv4 address with the cookie and an
 * IPv6 address with the cookie followed by the transaction id (RFC 8489
 * section 14.2). */
int proto_stun_get_xaddr(const proto_stun_attr_t *a, const uint8_t txid[PROTO_STUN_TXID_LEN],
                         proto_stun_addr_t *out);

/* USERNAME, REALM, NONCE, SOFTWARE and other text: *s is not
 * NUL-terminated.  Only the byte bounds above are checked (PROTO_ETOOBIG),
 * not UTF-8 or OpaqueString/SASLprep. */
int proto_stun_get_text(const proto_stun_attr_t *a, const char **s, size_t *len);

typedef struct {
  uint16_t code;      /* 300..699: class * 100 + number */
  const char *reason; /* not NUL-terminated */
  uint16_t reason_len;
} proto_stun_error_t;

/* ERROR-CODE (RFC 8489 section 14.8): class 3-6, number 0-99; the 21
 * reserved bits are ignored. */
int proto_stun_get_error(const proto_stun_attr_t *a, proto_stun_error_t *out);
/* Any 4-byte integer: LIFETIME, PRIORITY... */
int proto_stun_get_u32(const proto_stun_attr_t *a, uint32_t *v);
/* REQUESTED-TRANSPORT: the IP protocol number (17 for UDP). */
int proto_stun_get_transport(const proto_stun_attr_t *a, uint8_t *protocol);
/* CHANNEL-NUMBER: the number as sent; checking 0x4000-0x4FFF is the
 * server's job (it answers 400, RFC 8656 section 12.2). */
int proto_stun_get_channel(const proto_stun_attr_t *a, uint16_t *chan);
/* REQUESTED-ADDRESS-FAMILY, ADDITIONAL-ADDRESS-FAMILY: *family is 4 or 6. */
int proto_stun_get_family(const proto_stun_attr_t *a, uint8_t *family);
/* EVEN-PORT: *reserve is the R bit. */
int proto_stun_get_even_port(const proto_stun_attr_t *a, int *reserve);
int proto_stun_get_token(const proto_stun_attr_t *a, uint8_t token[PROTO_STUN_TOKEN_LEN]);
/* DONT-FRAGMENT and other flags: 0 if the value is empty. */
int proto_stun_get_flag(const proto_stun_attr_t *a);
/* UNKNOWN-ATTRIBUTES: copies up to max types into types[] and sets *n.
 * Returns PROTO_ETOOBIG if there are more than max, PROTO_EINVAL for an
 * odd length. */
int proto_stun_get_unknown(const proto_stun_attr_t *a, uint16_t *types, size_t max, size_t *n);

/* Integrity ------------------------------------------------------------- */

/* MESSAGE-INTEGRITY (RFC 8489 section 14.5): HMAC-SHA1 keyed with key over
 * the message up to the attribute, with the header's length field counting
 * up to the end of MESSAGE-INTEGRITY.  The key is the short-term password,
 * or proto_stun_lt_key() for long-term credentials.  Returns 0 if present
 * and correct, PROTO_EINVAL if absent or wrong (look at m->mi_off to tell
 * which).  Compares in constant time. */
int proto_stun_check_integrity(const proto_stun_msg_t *m, const uint8_t *key, size_t keylen);
/* FINGERPRINT (RFC 8489 section 14.7): CRC-32 of the message up to the
 * attribute, XORed with 0x5354554e.  Returns 0 if present and correct,
 * PROTO_EINVAL otherwise. */
int proto_stun_check_fingerprint(const proto_stun_msg_t *m);
/* The CRC-32 of ISO 3309 / zlib (our own nibble-table code, no zlib). */
uint32_t proto_stun_crc32(const uint8_t *p, size_t n);

/* Credentials ----------------------------------------------------------- */

/* The long-term key MD5(username ":" realm ":" password) (RFC 8489
 * section 9.2.2).  The caller applies OpaqueString to password if it
 * wants to; we hash the bytes as given.  Returns 0 or PROTO_EINVAL if
 * OpenSSL fails. */
int proto_stun_lt_key(const char *user, size_t ulen, const char *realm, size_t rlen,
                      const char *pass, size_t plen, uint8_t key[PROTO_STUN_KEY_LEN]);

/* Time-limited credentials in the "TURN REST API" scheme that coturn's
 * --use-auth-secret implements: username "EXPIRY:NAME" where EXPIRY is a
 * Unix time in decimal, password base64(HMAC-SHA1(secret, username)).
 * The credential is valid while now <= EXPIRY. */

/* The password for a username, NUL-terminated in pass. */
int proto_stun_rest_password(const char *user, size_t ulen, const uint8_t *secret, size_t slen,
                             char pass[PROTO_STUN_REST_PASS_LEN + 1]);
/* Mint a credential: writes "EXPIRY:NAME" (or "EXPIRY" if nlen is 0),
 * NUL-terminated, into user[usize] and its password into pass.  Returns
 * the username's length or PROTO_ENOSPC. */
long proto_stun_rest_mint(char *user, size_t usize, uint64_t expiry, const char *name, size_t nlen,
                          const uint8_t *secret, size_t slen,
                          char pass[PROTO_STUN_REST_PASS_LEN + 1]);
/* The EXPIRY of a username: decimal digits whose value fits 64 bits, then
 * the end or ':'.  (coturn also takes "NAME:EXPIRY"; we do not.)  Returns
 * 0 or PROTO_EINVAL. */
int proto_stun_rest_expiry(const char *user, size_t ulen, uint64_t *expiry);
/* Check a username/password pair: 0 if well formed, not expired and the
 * password matches (constant-time), PROTO_EINVAL otherwise. */
int proto_stun_rest_check(const char *user, size_t ulen, const char *pass, size_t plen,
                          const uint8_t *secret, size_t slen, uint64_t now);
/* What a server needs to check MESSAGE-INTEGRITY on a request whose
 * USERNAME is user: the long-term key for the derived password.  Returns 0,
 * or PROTO_EINVAL if the username is malformed or expired. */
int proto_stun_rest_key(const char *user, size_t ulen, const char *realm, size_t rlen,
                        const uint8_t *secret, size_t slen, uint64_t now,
                        uint8_t key[PROTO_STUN_KEY_LEN]);

/* Building ------------------------------------------------------------- */

/* A builder writes into a caller buffer.  Errors accumulate (the first one
 * sticks) and proto_stun_finish() reports them: PROTO_ENOSPC (buffer too
 * small), PROTO_ETOOBIG (body above PROTO_STUN_MAX_BODY or a value above
 * 65535 bytes), PROTO_EINVAL (a bad value, or an attribute after
 * FINGERPRINT or after MESSAGE-INTEGRITY other than FINGERPRINT).  The
 * header's length field is kept current after every call. */
typedef struct {
  uint8_t *start;
  proto_wcur_t w;
  uint8_t txid[PROTO_STUN_TXID_LEN];
  uint8_t state; /* internal */
  int err;       /* internal: the first error */
} proto_stun_builder_t;

/* type is the whole 14-bit type, e.g. proto_stun_type(method, cls). */
void proto_stun_begin(proto_stun_builder_t *b, uint8_t *buf, size_t size, uint16_t type,
                      const uint8_t txid[PROTO_STUN_TXID_LEN]);
/* Any attribute from bytes, padded with zeros.  Text types are held to
 * their bounds (PROTO_ETOOBIG).  MESSAGE-INTEGRITY(-SHA256) and
 * FINGERPRINT are refused (PROTO_EINVAL): use the functions below. */
void proto_stun_add(proto_stun_builder_t *b, uint16_t type, const void *val, size_t len);
void proto_stun_add_u32(proto_stun_builder_t *b, uint16_t type, uint32_t v);
void proto_stun_add_addr(proto_stun_builder_t *b, uint16_t type, const proto_stun_addr_t *a);
void proto_stun_add_xaddr(proto_stun_builder_t *b, uint16_t type, const proto_stun_addr_t *a);
/* code 300..699; reason may be NULL if rlen is 0. */
void proto_stun_add_error(proto_stun_builder_t *b, uint16_t code, const char *reason, size_t rlen);
void proto_stun_add_transport(proto_stun_builder_t *b, uint8_t protocol);
void proto_stun_add_channel(proto_stun_builder_t *b, uint16_t chan);
void proto_stun_add_family(proto_stun_builder_t *b, uint16_t type, uint8_t family);
void proto_stun_add_even_port(proto_stun_builder_t *b, int reserve);
void proto_stun_add_unknown(proto_stun_builder_t *b, const uint16_t *types, size_t n);
/* MESSAGE-INTEGRITY over everything added so far. */
void proto_stun_add_integrity(proto_stun_builder_t *b, const uint8_t *key, size_t keylen);
/* FINGERPRINT; nothing may follow it. */
void proto_stun_add_fingerprint(proto_stun_builder_t *b);
/* Returns the message's size, or the first error. */
long proto_stun_finish(proto_stun_builder_t *b);

/* ChannelData ----------------------------------------------------------- */

typedef struct {
  uint16_t chan;
  uint16_t len;
  const uint8_t *data;
} proto_stun_chan_t;

/* Parse a ChannelData message that fills len bytes: a UDP datagram (with
 * or without padding) or a message framed by proto_stun_frame().  Returns
 * 0, PROTO_ETRUNC (shorter than 4 + length), PROTO_ETRAIL (longer than
 * that plus padding to 4), or PROTO_EINVAL (channel outside
 * 0x4000-0x4FFF). */
int proto_stun_chan_parse(const uint8_t *buf, size_t len, proto_stun_chan_t *out);
/* Write the 4-byte header, for callers that receive the data in place
 * after it. */
void proto_stun_chan_header(uint8_t hdr[PROTO_STUN_CHAN_HDR_LEN], uint16_t chan, uint16_t len);
/* Build a whole message; pad is required over TCP/TLS.  Returns its size,
 * or PROTO_ENOSPC, PROTO_ETOOBIG (len over 65535) or PROTO_EINVAL (chan
 * outside 0x4000-0x4FFF). */
long proto_stun_chan_build(uint8_t *buf, size_t size, uint16_t chan, const void *data, size_t len,
                           int pad);

#endif
