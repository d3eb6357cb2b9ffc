/*
 * sip/digest.c: the digest responses of RFC 7616 section 3.9.1 (user
 * Mufasa, password "Circle of Life"), MD5 and SHA-256, with qop=auth, and
 * one without qop (RFC 2069 style, as RFC 2617 3.2.2.1 computes it).
 */
#include <errno.h>

#include "sip/sip_int.h"
#include "tests/unit/test.h"

#define NONCE "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
#define CNONCE "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"

int main(void)
{
  char out[129];
  ASSERT_OK(sip__digest("MD5", "3d78807defe7de2157e2b0b6573a855f", NONCE, "00000001", CNONCE,
                        "auth", "GET", "/dir/index.html", out, sizeof out));
  ASSERT_STR_EQ(out, "8ca523f5e9506fed4657c9700eebdbec");
  ASSERT_OK(sip__digest("SHA-256", "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232",
                        NONCE, "00000001", CNONCE, "auth", "GET", "/dir/index.html", out,
                        sizeof out));
  ASSERT_STR_EQ(out, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1");
  /* No qop: KD(HA1, nonce:HA2); HA1 = MD5("Mufasa:testrealm@host.com:Circle Of Life"). */
  ASSERT_OK(sip__digest("MD5", "939e7578ed9e3c518a452acee763bce9", "dcd98b7102dd2f0e8b11d0f600bfb0c093",
                        NULL, NULL, NULL, "GET", "/dir/index.html", out, sizeof out));
  ASSERT_STR_EQ(out, "670fd8c2df070c60b045671b8b24ff02");
  ASSERT(sip__digest("SHA-512", "00", "n", NULL, NULL, NULL, "GET", "/", out, sizeof out) == -EINVAL);
  ASSERT(sip__digest("MD5", "00", "n", NULL, NULL, NULL, "GET", "/", out, 16) == -EINVAL);
  return 0;
}
