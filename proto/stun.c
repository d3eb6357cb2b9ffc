/* STUN (RFC 8489) and TURN (RFC 8656) messages and ChannelData.  See
 * proto/stun.h for the layouts and the contract of each function. */
#include "proto/stun.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define HDR PROTO_STUN_HDR_LEN
#define FP_XOR 0x5354554eu /* "STUN", RFC 8489 section 14.7 */

/* Padded size of an attribute value.  n is at most 65535 here, held in a
 * size_t, so n + 3 cannot wrap. */
static size_t pad4(size_t n) { return (n + 3) & ~(size_t)3; }

/* Message types ----------------------------------------------------------- */

/* The class bits C0 and C1 sit at bits 4 and 8 of the type and split the
 * method into 4, 3 and 5 bits (RFC 8489 section 5, figure 3). */
uint16_t proto_stun_type(uint16_t method, uint8_t cls) {
  method &= 0xFFF;
  return (uint16_t)((method & 0x00F) | (method & 0x070) << 1 | (method & 0xF80) << 2 |
                    (cls & 1) << 4 | (cls & 2) << 7);
}

uint16_t proto_stun_method(uint16_t type) {
  return (uint16_t)((type & 0x000F) | (type & 0x00E0) >> 1 | (type & 0x3E00) >> 2);
}

uint8_t proto_stun_class(uint16_t type) { return (uint8_t)((type >> 4 & 1) | (type >> 7 & 2)); }

/* Demultiplexing and stream framing ---------------------------------------- */

static const uint8_t cookie_bytes[4] = {0x21, 0x12, 0xA4, 0x42};

/* Channel numbers 0x4000-0x4FFF are exactly the first bytes 0x40-0x4F. */
static int is_chan_byte(uint8_t b) { return b >= 0x40 && b <= 0x4F; }

int proto_stun_kind(const uint8_t *buf, size_t len) {
  if (len >= HDR && buf[0] < 0x40 && memcmp(buf + 4, cookie_bytes, 4) == 0)
    return PROTO_STUN_KIND_STUN;
  if (len >= PROTO_STUN_CHAN_HDR_LEN && is_chan_byte(buf[0])) return PROTO_STUN_KIND_CHANNEL;
  return PROTO_STUN_KIND_OTHER;
}

static long frame_stun(const uint8_t *buf, size_t len) {
  /* Reject a wrong cookie as soon as its first byte arrives, so a stranger
   * speaking another protocol is told off early. */
  for (size_t i = 4; i < 8 && i < len; i++)
    if (buf[i] != cookie_bytes[i - 4]) return PROTO_EMAGIC;
  if (len < 4) return PROTO_NEED_MORE;
  proto_cur_t c = {buf + 2, buf + 4};
  uint16_t blen;
  proto_get_u16(&c, &blen);
  if (blen % 4) return PROTO_EINVAL;
  if (len < HDR || len - HDR < blen) return PROTO_NEED_MORE;
  return (long)HDR + blen;
}

static long frame_chan(const uint8_t *buf, size_t len) {
  if (len < PROTO_STUN_CHAN_HDR_LEN) return PROTO_NEED_MORE;
  proto_cur_t c = {buf + 2, buf + 4};
  uint16_t dlen;
  proto_get_u16(&c, &dlen);
  /* Over streams ChannelData is padded to 4 (RFC 8656 section 12.5). */
  size_t total = pad4(PROTO_STUN_CHAN_HDR_LEN + (size_t)dlen);
  return len < total ? PROTO_NEED_MORE : (long)total;
}

long proto_stun_frame(const uint8_t *buf, size_t len) {
  if (len == 0) return PROTO_NEED_MORE;
  if (buf[0] < 0x40) return frame_stun(buf, len);
  if (is_chan_byte(buf[0])) return frame_chan(buf, len);
  return PROTO_EMAGIC;
}

/* Attributes --------------------------------------------------------------- */

enum { ST_OPEN, ST_MI, ST_MI256, ST_FP };

/* One attribute: type, length, value and padding, all inside the cursor. */
static int get_attr(proto_cur_t *c, proto_stun_attr_t *a) {
  proto_cur_t val;
  if (proto_get_u16(c, &a->type) || proto_get_u16(c, &a->len)) return PROTO_ETRUNC;
  if (proto_get_sub(c, pad4(a->len), &val)) return PROTO_ETRUNC;
  a->val = val.p;
  return 0;
}

/* Whether the iterator yields an attribute of this type, advancing its
 * state.  A receiver ignores everything after MESSAGE-INTEGRITY except
 * MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and everything after
 * MESSAGE-INTEGRITY-SHA256 except FINGERPRINT (RFC 8489 sections 14.5,
 * 14.6). */
static int visible(proto_stun_iter_t *it, uint16_t type) {
  if (type == PROTO_STUN_A_FINGERPRINT) {
    it->state = ST_FP;
    return 1;
  }
  if (it->state == ST_MI256) return 0;
  if (type == PROTO_STUN_A_MESSAGE_INTEGRITY_SHA256) {
    it->state = ST_MI256;
    return 1;
  }
  if (it->state == ST_MI) return 0;
  if (type == PROTO_STUN_A_MESSAGE_INTEGRITY) it->state = ST_MI;
  return 1;
}

void proto_stun_iter_init(proto_stun_iter_t *it, const proto_stun_msg_t *m) {
  it->c.p = m->buf + HDR;
  it->c.end = m->buf + m->len;
  it->state = ST_OPEN;
}

int proto_stun_next(proto_stun_iter_t *it, proto_stun_attr_t *out) {
  proto_stun_attr_t a;
  /* Each turn consumes at least 4 bytes, so the loop ends. */
  for (;;) {
    if (it->c.p == it->c.end) return 0;
    /* FINGERPRINT is the last attribute (RFC 8489 section 14.7). */
    if (it->state == ST_FP) return PROTO_ETRAIL;
    int err = get_attr(&it->c, &a);
    if (err) return err;
    if (visible(it, a.type)) break;
  }
  *out = a;
  return 1;
}

int proto_stun_find(const proto_stun_msg_t *m, uint16_t type, proto_stun_attr_t *out) {
  proto_stun_iter_t it;
  proto_stun_attr_t a;
  proto_stun_iter_init(&it, m);
  while (proto_stun_next(&it, &a) == 1) {
    if (a.type == type) {
      *out = a;
      return 1;
    }
  }
  return 0;
}

/* Messages ---------------------------------------------------------------- */

/* Walk every attribute once and note where the integrity attributes are,
 * checking their sizes so that the checks later read inside them. */
static int walk(proto_stun_msg_t *m) {
  proto_stun_iter_t it;
  proto_stun_attr_t a;
  int r;
  proto_stun_iter_init(&it, m);
  while ((r = proto_stun_next(&it, &a)) == 1) {
    uint32_t off = (uint32_t)(a.val - m->buf) - 4;
    switch (a.type) {
    case PROTO_STUN_A_MESSAGE_INTEGRITY:
      if (a.len != PROTO_STUN_MI_LEN) return PROTO_EINVAL;
      m->mi_off = off;
      break;
    case PROTO_STUN_A_MESSAGE_INTEGRITY_SHA256:
      if (a.len < 16 || a.len > 32 || a.len % 4) return PROTO_EINVAL; /* RFC 8489 14.6 */
      m->mi256_off = off;
      break;
    case PROTO_STUN_A_FINGERPRINT:
      if (a.len != PROTO_STUN_FP_LEN) return PROTO_EINVAL;
      m->fp_off = off;
      break;
    }
  }
  return r;
}

int proto_stun_parse(const uint8_t *buf, size_t len, proto_stun_msg_t *out) {
  proto_cur_t c = {buf, buf + len};
  proto_stun_msg_t m = {0};
  uint16_t blen;
  uint32_t cookie;
  if (proto_get_u16(&c, &m.type) || proto_get_u16(&c, &blen) || proto_get_u32(&c, &cookie) ||
      proto_get_bytes(&c, m.txid, PROTO_STUN_TXID_LEN))
    return PROTO_ETRUNC;
  if ((m.type & 0xC000) || cookie != PROTO_STUN_COOKIE) return PROTO_EMAGIC;
  if (blen % 4) return PROTO_EINVAL;
  /* len >= HDR here, so len - HDR does not wrap. */
  if (len - HDR < blen) return PROTO_ETRUNC;
  if (len - HDR > blen) return PROTO_ETRAIL;
  m.method = proto_stun_method(m.type);
  m.cls = proto_stun_class(m.type);
  m.buf = buf;
  m.len = len;
  int err = walk(&m);
  if (err) return err;
  *out = m;
  return 0;
}

/* Typed values -------------------------------------------------------------- */

static int get_addr(const proto_stun_attr_t *a, const uint8_t mask[16], proto_stun_addr_t *out) {
  proto_cur_t c = {a->val, a->val + a->len};
  proto_stun_addr_t v = {0};
  uint8_t reserved, fam;
  /* The first byte is reserved and ignored (RFC 8489 section 14.1). */
  if (proto_get_u8(&c, &reserved) || proto_get_u8(&c, &fam) || proto_get_u16(&c, &v.port))
    return PROTO_EINVAL;
  size_t iplen = fam == 1 ? 4 : fam == 2 ? 16 : 0;
  if (iplen == 0 || a->len != 4 + iplen) return PROTO_EINVAL;
  proto_get_bytes(&c, v.ip, iplen);
  v.family = fam == 1 ? 4 : 6;
  if (mask) {
    v.port ^= (uint16_t)(PROTO_STUN_COOKIE >> 16);
    for (size_t i = 0; i < iplen; i++) v.ip[i] ^= mask[i];
  }
  *out = v;
  return 0;
}

/* The XOR mask of an address: the cookie, then the transaction id. */
static void xor_mask(uint8_t mask[16], const uint8_t txid[PROTO_STUN_TXID_LEN]) {
  memcpy(mask, cookie_bytes, 4);
  memcpy(mask + 4, txid, PROTO_STUN_TXID_LEN);
}

int proto_stun_get_addr(const proto_stun_attr_t *a, proto_stun_addr_t *out) {
  return get_addr(a, NULL, out);
}

int proto_stun_get_xaddr(const proto_stun_attr_t *a, const uint8_t txid[PROTO_STUN_TXID_LEN],
                         proto_stun_addr_t *out) {
  uint8_t mask[16];
  xor_mask(mask, txid);
  return get_addr(a, mask, out);
}

static size_t text_max(uint16_t type) {
  switch (type) {
  case PROTO_STUN_A_USERNAME: return PROTO_STUN_MAX_USERNAME;
  case PROTO_STUN_A_REALM:
  case PROTO_STUN_A_NONCE:
  case PROTO_STUN_A_SOFTWARE: return PROTO_STUN_MAX_TEXT;
  }
  return UINT16_MAX;
}

int proto_stun_get_text(const proto_stun_attr_t *a, const char **s, size_t *len) {
  if (a->len > text_max(a->type)) return PROTO_ETOOBIG;
  *s = (const char *)a->val;
  *len = a->len;
  return 0;
}

int proto_stun_get_error(const proto_stun_attr_t *a, proto_stun_error_t *out) {
  if (a->len < 4) return PROTO_EINVAL;
  /* 21 reserved bits, class in the low 3 bits of byte 2, number in byte 3
   * (RFC 8489 section 14.8). */
  uint8_t cls = a->val[2] & 7, num = a->val[3];
  if (cls < 3 || cls > 6 || num > 99) return PROTO_EINVAL;
  if (a->len - 4 > PROTO_STUN_MAX_TEXT) return PROTO_ETOOBIG;
  out->code = (uint16_t)(cls * 100 + num);
  out->reason = (const char *)a->val + 4;
  out->reason_len = (uint16_t)(a->len - 4);
  return 0;
}

int proto_stun_get_u32(const proto_stun_attr_t *a, uint32_t *v) {
  proto_cur_t c = {a->val, a->val + a->len};
  if (a->len != 4) return PROTO_EINVAL;
  return proto_get_u32(&c, v);
}

/* REQUESTED-TRANSPORT and the address family attributes: one byte, then
 * three RFFU bytes that are ignored (RFC 8656 sections 18.6, 18.8). */
int proto_stun_get_transport(const proto_stun_attr_t *a, uint8_t *protocol) {
  if (a->len != 4) return PROTO_EINVAL;
  *protocol = a->val[0];
  return 0;
}

int proto_stun_get_family(const proto_stun_attr_t *a, uint8_t *family) {
  if (a->len != 4 || (a->val[0] != 1 && a->val[0] != 2)) return PROTO_EINVAL;
  *family = a->val[0] == 1 ? 4 : 6;
  return 0;
}

int proto_stun_get_channel(const proto_stun_attr_t *a, uint16_t *chan) {
  proto_cur_t c = {a->val, a->val + a->len};
  if (a->len != 4) return PROTO_EINVAL;
  return proto_get_u16(&c, chan);
}

int proto_stun_get_even_port(const proto_stun_attr_t *a, int *reserve) {
  if (a->len != 1) return PROTO_EINVAL;
  *reserve = a->val[0] >> 7;
  return 0;
}

int proto_stun_get_token(const proto_stun_attr_t *a, uint8_t token[PROTO_STUN_TOKEN_LEN]) {
  if (a->len != PROTO_STUN_TOKEN_LEN) return PROTO_EINVAL;
  memcpy(token, a->val, PROTO_STUN_TOKEN_LEN);
  return 0;
}

int proto_stun_get_flag(const proto_stun_attr_t *a) { return a->len == 0 ? 0 : PROTO_EINVAL; }

int proto_stun_get_unknown(const proto_stun_attr_t *a, uint16_t *types, size_t max, size_t *n) {
  if (a->len % 2) return PROTO_EINVAL;
  size_t count = a->len / 2;
  if (count > max) return PROTO_ETOOBIG;
  proto_cur_t c = {a->val, a->val + a->len};
  for (size_t i = 0; i < count; i++) proto_get_u16(&c, &types[i]);
  *n = count;
  return 0;
}

/* Crypto -------------------------------------------------------------------- */

/* CRC-32 (reflected polynomial 0xEDB88320), four bits at a time: a 16-entry
 * table is small enough to read, and STUN messages are short. */
static const uint32_t crc_nibble[16] = {
    0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4,
    0x4db26158, 0x5005713c, 0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c,
    0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
};

/* crc is the running register, not the finished value. */
static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    crc ^= p[i];
    crc = (crc >> 4) ^ crc_nibble[crc & 15];
    crc = (crc >> 4) ^ crc_nibble[crc & 15];
  }
  return crc;
}

uint32_t proto_stun_crc32(const uint8_t *p, size_t n) { return ~crc_update(~0u, p, n); }

typedef struct {
  const void *p;
  size_t n;
} span_t;

/* HMAC over several pieces, so a message can be authenticated with a
 * patched length field without copying it. */
static int hmac(const char *digest, const uint8_t *key, size_t keylen, const span_t *parts,
                size_t nparts, uint8_t *out, size_t outlen) {
  static const uint8_t empty[1];
  EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)digest, 0),
      OSSL_PARAM_construct_end(),
  };
  /* A NULL key would mean "keep the previous key" to OpenSSL. */
  int ok = ctx && EVP_MAC_init(ctx, keylen ? key : empty, keylen, params);
  for (size_t i = 0; ok && i < nparts; i++) ok = EVP_MAC_update(ctx, parts[i].p, parts[i].n);
  size_t got = 0;
  ok = ok && EVP_MAC_final(ctx, out, &got, outlen) && got == outlen;
  EVP_MAC_CTX_free(ctx);
  EVP_MAC_free(mac);
  return ok ? 0 : PROTO_EINVAL;
}

static void be16(uint8_t *p, size_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

/* The message up to the attribute at off, as the integrity attributes see
 * it: the length field counts up to the end of that attribute (RFC 8489
 * sections 14.5, 14.7). */
static void prefix_parts(const uint8_t *buf, uint32_t off, size_t attr_len, uint8_t lenbuf[2],
                         span_t parts[3]) {
  be16(lenbuf, off + 4 + attr_len - HDR);
  parts[0] = (span_t){buf, 2};
  parts[1] = (span_t){lenbuf, 2};
  parts[2] = (span_t){buf + 4, off - 4};
}

int proto_stun_check_integrity(const proto_stun_msg_t *m, const uint8_t *key, size_t keylen) {
  if (m->mi_off == 0) return PROTO_EINVAL;
  uint8_t lenbuf[2], mac[PROTO_STUN_MI_LEN];
  span_t parts[3];
  prefix_parts(m->buf, m->mi_off, PROTO_STUN_MI_LEN, lenbuf, parts);
  if (hmac("SHA1", key, keylen, parts, 3, mac, sizeof(mac))) return PROTO_EINVAL;
  return CRYPTO_memcmp(mac, m->buf + m->mi_off + 4, sizeof(mac)) ? PROTO_EINVAL : 0;
}

int proto_stun_check_fingerprint(const proto_stun_msg_t *m) {
  if (m->fp_off == 0) return PROTO_EINVAL;
  uint8_t lenbuf[2];
  span_t parts[3];
  prefix_parts(m->buf, m->fp_off, PROTO_STUN_FP_LEN, lenbuf, parts);
  uint32_t crc = ~0u;
  for (int i = 0; i < 3; i++) crc = crc_update(crc, parts[i].p, parts[i].n);
  crc = ~crc ^ FP_XOR;
  proto_cur_t c = {m->buf + m->fp_off + 4, m->buf + m->fp_off + 8};
  uint32_t got;
  proto_get_u32(&c, &got);
  return got == crc ? 0 : PROTO_EINVAL;
}

/* Credentials ---------------------------------------------------------------- */

int proto_stun_lt_key(const char *user, size_t ulen, const char *realm, size_t rlen,
                      const char *pass, size_t plen, uint8_t key[PROTO_STUN_KEY_LEN]) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned int n = 0;
  int ok = ctx && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) &&
           EVP_DigestUpdate(ctx, user, ulen) && EVP_DigestUpdate(ctx, ":", 1) &&
           EVP_DigestUpdate(ctx, realm, rlen) && EVP_DigestUpdate(ctx, ":", 1) &&
           EVP_DigestUpdate(ctx, pass, plen) && EVP_DigestFinal_ex(ctx, key, &n) &&
           n == PROTO_STUN_KEY_LEN;
  EVP_MD_CTX_free(ctx);
  return ok ? 0 : PROTO_EINVAL;
}

int proto_stun_rest_password(const char *user, size_t ulen, const uint8_t *secret, size_t slen,
                             char pass[PROTO_STUN_REST_PASS_LEN + 1]) {
  uint8_t mac[20];
  span_t part = {user, ulen};
  if (hmac("SHA1", secret, slen, &part, 1, mac, sizeof(mac))) return PROTO_EINVAL;
  /* 20 bytes make 28 base64 characters, and EVP_EncodeBlock adds the NUL. */
  EVP_EncodeBlock((unsigned char *)pass, mac, sizeof(mac));
  return 0;
}

long proto_stun_rest_mint(char *user, size_t usize, uint64_t expiry, const char *name, size_t nlen,
                          const uint8_t *secret, size_t slen,
                          char pass[PROTO_STUN_REST_PASS_LEN + 1]) {
  char num[24];
  int k = snprintf(num, sizeof(num), "%" PRIu64, expiry);
  size_t total = (size_t)k + (nlen ? 1 + nlen : 0);
  if (nlen > usize || total >= usize) return PROTO_ENOSPC;
  memcpy(user, num, (size_t)k);
  if (nlen) {
    user[k] = ':';
    memcpy(user + k + 1, name, nlen);
  }
  user[total] = '\0';
  int err = proto_stun_rest_password(user, total, secret, slen, pass);
  return err ? err : (long)total;
}

int proto_stun_rest_expiry(const char *user, size_t ulen, uint64_t *expiry) {
  uint64_t v = 0;
  size_t i = 0;
  for (; i < ulen && user[i] >= '0' && user[i] <= '9'; i++) {
    unsigned d = (unsigned)(user[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return PROTO_EINVAL; /* would overflow */
    v = v * 10 + d;
  }
  if (i == 0 || (i < ulen && user[i] != ':')) return PROTO_EINVAL;
  *expiry = v;
  return 0;
}

/* The password of a well-formed, unexpired username. */
static int rest_live_password(const char *user, size_t ulen, const uint8_t *secret, size_t slen,
                              uint64_t now, char pass[PROTO_STUN_REST_PASS_LEN + 1]) {
  uint64_t expiry;
  int err = proto_stun_rest_expiry(user, ulen, &expiry);
  if (err) return err;
  if (now > expiry) return PROTO_EINVAL;
  return proto_stun_rest_password(user, ulen, secret, slen, pass);
}

int proto_stun_rest_check(const char *user, size_t ulen, const char *pass, size_t plen,
                          const uint8_t *secret, size_t slen, uint64_t now) {
  char want[PROTO_STUN_REST_PASS_LEN + 1];
  int err = rest_live_password(user, ulen, secret, slen, now, want);
  if (err) return err;
  if (plen != PROTO_STUN_REST_PASS_LEN) return PROTO_EINVAL;
  return CRYPTO_memcmp(want, pass, plen) ? PROTO_EINVAL : 0;
}

int proto_stun_rest_key(const char *user, size_t ulen, const char *realm, size_t rlen,
                        const uint8_t *secret, size_t slen, uint64_t now,
                        uint8_t key[PROTO_STUN_KEY_LEN]) {
  char pass[PROTO_STUN_REST_PASS_LEN + 1];
  int err = rest_live_password(user, ulen, secret, slen, now, pass);
  if (err) return err;
  return proto_stun_lt_key(user, ulen, realm, rlen, pass, PROTO_STUN_REST_PASS_LEN, key);
}

/* Building ------------------------------------------------------------------ */

enum { B_OPEN, B_MI, B_FP };

/* Record the first error.  An earlier cursor error (ENOSPC) came first; the
 * cursor's error is set too, which turns every later put into a no-op. */
static void fail(proto_stun_builder_t *b, int err) {
  if (!b->err) b->err = b->w.err ? b->w.err : err;
  b->w.err = b->err;
}

static int failed(const proto_stun_builder_t *b) { return b->err || b->w.err; }

/* Keep the header's length field current; only called while the header is
 * known to be written in full. */
static void set_len(proto_stun_builder_t *b, size_t body) { be16(b->start + 2, body); }

void proto_stun_begin(proto_stun_builder_t *b, uint8_t *buf, size_t size, uint16_t type,
                      const uint8_t txid[PROTO_STUN_TXID_LEN]) {
  b->start = buf;
  b->w = (proto_wcur_t){buf, buf + size, 0};
  memcpy(b->txid, txid, PROTO_STUN_TXID_LEN);
  b->state = B_OPEN;
  b->err = 0;
  if (type & 0xC000) {
    fail(b, PROTO_EINVAL);
    return;
  }
  proto_put_u16(&b->w, type);
  proto_put_u16(&b->w, 0);
  proto_put_u32(&b->w, PROTO_STUN_COOKIE);
  proto_put_bytes(&b->w, txid, PROTO_STUN_TXID_LEN);
}

/* Write an attribute header after checking that the attribute may come
 * here and fits the bounds.  Returns 0 if the caller should now write len
 * bytes of value and call attr_end(). */
static int attr_begin(proto_stun_builder_t *b, uint16_t type, size_t len) {
  if (failed(b)) return -1;
  if (b->state == B_FP || (b->state == B_MI && type != PROTO_STUN_A_FINGERPRINT)) {
    fail(b, PROTO_EINVAL);
    return -1;
  }
  size_t body = (size_t)(b->w.p - b->start) - HDR;
  /* len is checked alone first so that pad4(len) cannot wrap. */
  if (len > UINT16_MAX || body + 4 + pad4(len) > PROTO_STUN_MAX_BODY) {
    fail(b, PROTO_ETOOBIG);
    return -1;
  }
  proto_put_u16(&b->w, type);
  proto_put_u16(&b->w, (uint16_t)len);
  return failed(b) ? -1 : 0;
}

static void attr_end(proto_stun_builder_t *b, size_t len) {
  static const uint8_t zeros[3];
  proto_put_bytes(&b->w, zeros, pad4(len) - len);
  if (!failed(b)) set_len(b, (size_t)(b->w.p - b->start) - HDR);
}

void proto_stun_add(proto_stun_builder_t *b, uint16_t type, const void *val, size_t len) {
  if (type == PROTO_STUN_A_MESSAGE_INTEGRITY || type == PROTO_STUN_A_MESSAGE_INTEGRITY_SHA256 ||
      type == PROTO_STUN_A_FINGERPRINT) {
    fail(b, PROTO_EINVAL);
    return;
  }
  if (len > text_max(type)) {
    fail(b, PROTO_ETOOBIG);
    return;
  }
  if (attr_begin(b, type, len)) return;
  proto_put_bytes(&b->w, val, len);
  attr_end(b, len);
}

void proto_stun_add_u32(proto_stun_builder_t *b, uint16_t type, uint32_t v) {
  if (attr_begin(b, type, 4)) return;
  proto_put_u32(&b->w, v);
  attr_end(b, 4);
}

static void put_addr(proto_stun_builder_t *b, uint16_t type, const proto_stun_addr_t *a,
                     const uint8_t mask[16]) {
  if (a->family != 4 && a->family != 6) {
    fail(b, PROTO_EINVAL);
    return;
  }
  size_t iplen = a->family == 4 ? 4 : 16;
  if (attr_begin(b, type, 4 + iplen)) return;
  uint8_t ip[16];
  memcpy(ip, a->ip, iplen);
  uint16_t port = a->port;
  if (mask) {
    port ^= (uint16_t)(PROTO_STUN_COOKIE >> 16);
    for (size_t i = 0; i < iplen; i++) ip[i] ^= mask[i];
  }
  proto_put_u8(&b->w, 0);
  proto_put_u8(&b->w, a->family == 4 ? 1 : 2);
  proto_put_u16(&b->w, port);
  proto_put_bytes(&b->w, ip, iplen);
  attr_end(b, 4 + iplen);
}

void proto_stun_add_addr(proto_stun_builder_t *b, uint16_t type, const proto_stun_addr_t *a) {
  put_addr(b, type, a, NULL);
}

void proto_stun_add_xaddr(proto_stun_builder_t *b, uint16_t type, const proto_stun_addr_t *a) {
  uint8_t mask[16];
  xor_mask(mask, b->txid);
  put_addr(b, type, a, mask);
}

void proto_stun_add_error(proto_stun_builder_t *b, uint16_t code, const char *reason, size_t rlen) {
  if (code < 300 || code > 699) {
    fail(b, PROTO_EINVAL);
    return;
  }
  if (rlen > PROTO_STUN_MAX_TEXT) {
    fail(b, PROTO_ETOOBIG);
    return;
  }
  if (attr_begin(b, PROTO_STUN_A_ERROR_CODE, 4 + rlen)) return;
  proto_put_u16(&b->w, 0);
  proto_put_u8(&b->w, (uint8_t)(code / 100));
  proto_put_u8(&b->w, (uint8_t)(code % 100));
  proto_put_bytes(&b->w, reason, rlen);
  attr_end(b, 4 + rlen);
}

/* One byte followed by three zero RFFU bytes. */
static void put_byte_rffu(proto_stun_builder_t *b, uint16_t type, uint8_t v) {
  if (attr_begin(b, type, 4)) return;
  proto_put_u8(&b->w, v);
  proto_put_u8(&b->w, 0);
  proto_put_u16(&b->w, 0);
  attr_end(b, 4);
}

void proto_stun_add_transport(proto_stun_builder_t *b, uint8_t protocol) {
  put_byte_rffu(b, PROTO_STUN_A_REQUESTED_TRANSPORT, protocol);
}

void proto_stun_add_family(proto_stun_builder_t *b, uint16_t type, uint8_t family) {
  if (family != 4 && family != 6) {
    fail(b, PROTO_EINVAL);
    return;
  }
  put_byte_rffu(b, type, family == 4 ? 1 : 2);
}

void proto_stun_add_channel(proto_stun_builder_t *b, uint16_t chan) {
  if (attr_begin(b, PROTO_STUN_A_CHANNEL_NUMBER, 4)) return;
  proto_put_u16(&b->w, chan);
  proto_put_u16(&b->w, 0);
  attr_end(b, 4);
}

void proto_stun_add_even_port(proto_stun_builder_t *b, int reserve) {
  if (attr_begin(b, PROTO_STUN_A_EVEN_PORT, 1)) return;
  proto_put_u8(&b->w, reserve ? 0x80 : 0);
  attr_end(b, 1);
}

void proto_stun_add_unknown(proto_stun_builder_t *b, const uint16_t *types, size_t n) {
  if (n > UINT16_MAX / 2) {
    fail(b, PROTO_ETOOBIG);
    return;
  }
  if (attr_begin(b, PROTO_STUN_A_UNKNOWN_ATTRIBUTES, 2 * n)) return;
  for (size_t i = 0; i < n; i++) proto_put_u16(&b->w, types[i]);
  attr_end(b, 2 * n);
}

void proto_stun_add_integrity(proto_stun_builder_t *b, const uint8_t *key, size_t keylen) {
  if (attr_begin(b, PROTO_STUN_A_MESSAGE_INTEGRITY, PROTO_STUN_MI_LEN)) return;
  uint8_t *attr = b->w.p - 4;
  /* Hashed with the length counting this attribute (RFC 8489 14.5). */
  set_len(b, (size_t)(attr - b->start) + 4 + PROTO_STUN_MI_LEN - HDR);
  uint8_t mac[PROTO_STUN_MI_LEN];
  span_t part = {b->start, (size_t)(attr - b->start)};
  if (hmac("SHA1", key, keylen, &part, 1, mac, sizeof(mac))) {
    fail(b, PROTO_EINVAL);
    return;
  }
  proto_put_bytes(&b->w, mac, sizeof(mac));
  b->state = B_MI;
  attr_end(b, PROTO_STUN_MI_LEN);
}

void proto_stun_add_fingerprint(proto_stun_builder_t *b) {
  if (attr_begin(b, PROTO_STUN_A_FINGERPRINT, PROTO_STUN_FP_LEN)) return;
  uint8_t *attr = b->w.p - 4;
  set_len(b, (size_t)(attr - b->start) + 4 + PROTO_STUN_FP_LEN - HDR);
  proto_put_u32(&b->w, proto_stun_crc32(b->start, (size_t)(attr - b->start)) ^ FP_XOR);
  b->state = B_FP;
  attr_end(b, PROTO_STUN_FP_LEN);
}

long proto_stun_finish(proto_stun_builder_t *b) {
  if (b->err) return b->err;
  if (b->w.err) return b->w.err;
  return (long)(b->w.p - b->start);
}

/* ChannelData ---------------------------------------------------------------- */

int proto_stun_chan_parse(const uint8_t *buf, size_t len, proto_stun_chan_t *out) {
  proto_cur_t c = {buf, buf + len}, data;
  uint16_t chan, dlen;
  if (proto_get_u16(&c, &chan) || proto_get_u16(&c, &dlen)) return PROTO_ETRUNC;
  if (chan < PROTO_STUN_CHAN_MIN || chan > PROTO_STUN_CHAN_MAX) return PROTO_EINVAL;
  if (proto_get_sub(&c, dlen, &data)) return PROTO_ETRUNC;
  /* Padding is optional over UDP and required over streams (RFC 8656
   * section 12.5); more than the padding is not ours to accept. */
  if (len > pad4(PROTO_STUN_CHAN_HDR_LEN + (size_t)dlen)) return PROTO_ETRAIL;
  out->chan = chan;
  out->len = dlen;
  out->data = data.p;
  return 0;
}

void proto_stun_chan_header(uint8_t hdr[PROTO_STUN_CHAN_HDR_LEN], uint16_t chan, uint16_t len) {
  be16(hdr, chan);
  be16(hdr + 2, len);
}

long proto_stun_chan_build(uint8_t *buf, size_t size, uint16_t chan, const void *data, size_t len,
                           int pad) {
  static const uint8_t zeros[3];
  if (chan < PROTO_STUN_CHAN_MIN || chan > PROTO_STUN_CHAN_MAX) return PROTO_EINVAL;
  if (len > UINT16_MAX) return PROTO_ETOOBIG;
  proto_wcur_t w = {buf, buf + size, 0};
  proto_put_u16(&w, chan);
  proto_put_u16(&w, (uint16_t)len);
  proto_put_bytes(&w, data, len);
  if (pad) proto_put_bytes(&w, zeros, pad4(len) - len);
  return w.err ? w.err : (long)(w.p - buf);
}
