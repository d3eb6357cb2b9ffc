/*
 * sip/resend.c: the kept answers, the REGISTERs shed lately, and the
 * sources judged deaf to our 503s.  A source is judged so at its
 * SIP_DEAF_COPIES-th copy within SIP_SHED_MEMORY_MS, stays so until
 * SIP_SHED_MEMORY_MS after its latest copy, and is told apart from
 * another port of the same address; copies spread wider are never enough.
 * The clock is the test's.
 */
#include <arpa/inet.h>
#include <netinet/in.h>

#include "sip/sip_int.h"
#include "tests/unit/test.h"

static uint64_t now_ms = 1000000;

uint64_t sip__now_ms(const sip_svc_t *s)
{
  (void)s;
  return now_ms;
}

/* core.c's hash, as resend.c needs it: FNV-1a. */
uint32_t sip__fnv_n(uint32_t h, const char *p, size_t n)
{
  for (size_t i = 0; i < n; i++)
    h = (h ^ (uint8_t)p[i]) * 16777619u;
  return h;
}

uint32_t sip__fnv(uint32_t h, const char *p, int fold)
{
  (void)fold;
  return sip__fnv_n(h, p, strlen(p));
}

static struct sockaddr_storage v4(const char *ip, unsigned port)
{
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in *a = (struct sockaddr_in *)&ss;
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)port);
  ASSERT_EQ(inet_pton(AF_INET, ip, &a->sin_addr), 1);
  return ss;
}

static const struct sockaddr *sa(const struct sockaddr_storage *ss)
{
  return (const struct sockaddr *)ss;
}

/* A service with resend.c's tables alone; shed: a REGISTER shed already
 * (the copies' table exists once something was). */
static sip_svc_t *svc(int shed)
{
  sip_svc_t *s = calloc(1, sizeof *s);
  ASSERT(s != NULL);
  if (shed)
    sip__resend_shed_note(s, "x");
  return s;
}

static void svc_free(sip_svc_t *s)
{
  sip__resend_free(s);
  free(s);
}

static void shed_keys(void)
{
  sip_svc_t *s = svc(0);
  ASSERT_EQ(sip__resend_shed_seen(s, "a 1 z9hG4bK-a", SIP_SHED_MEMORY_MS), 0);
  sip__resend_shed_note(s, "a 1 z9hG4bK-a");
  ASSERT_EQ(sip__resend_shed_seen(s, "a 1 z9hG4bK-a", SIP_SHED_MEMORY_MS), 1);
  ASSERT_EQ(sip__resend_shed_seen(s, "b 1 z9hG4bK-b", SIP_SHED_MEMORY_MS), 0);
  now_ms += SIP_SHED_RETRY_AFTER_MS;
  ASSERT_EQ(sip__resend_shed_seen(s, "a 1 z9hG4bK-a", SIP_SHED_RETRY_AFTER_MS), 0);
  ASSERT_EQ(sip__resend_shed_seen(s, "a 1 z9hG4bK-a", SIP_SHED_MEMORY_MS), 1);
  svc_free(s);
}

static void deaf_after_copies(void)
{
  sip_svc_t *s = svc(0);
  struct sockaddr_storage a = v4("192.0.2.7", 5060), b = v4("192.0.2.7", 5062);
  /* Nothing shed yet: nothing to judge. */
  ASSERT_EQ(sip__resend_shed_copy(s, sa(&a)), 0);
  sip__resend_shed_note(s, "x");
  for (int i = 1; i < SIP_DEAF_COPIES; i++) {
    ASSERT_EQ(sip__resend_shed_copy(s, sa(&a)), 0);
    now_ms += 10;
  }
  ASSERT_EQ(sip__resend_shed_deaf(s, sa(&a)), 0); /* a few lost 503s are allowed */
  ASSERT_EQ(sip__resend_shed_copy(s, sa(&a)), 1);  /* judged, once */
  ASSERT_EQ(sip__resend_shed_deaf(s, sa(&a)), 1);
  ASSERT_EQ(sip__resend_shed_deaf(s, sa(&b)), 0); /* another port: another phone */
  /* Each further copy keeps it so for SIP_SHED_MEMORY_MS from then. */
  now_ms += SIP_SHED_MEMORY_MS - 100;
  ASSERT_EQ(sip__resend_shed_copy(s, sa(&a)), 0);
  now_ms += SIP_SHED_MEMORY_MS - 100;
  ASSERT_EQ(sip__resend_shed_deaf(s, sa(&a)), 1);
  now_ms += 100;
  ASSERT_EQ(sip__resend_shed_deaf(s, sa(&a)), 0);
  /* Judged again only after as many copies again. */
  ASSERT_EQ(sip__resend_shed_copy(s, sa(&a)), 0);
  ASSERT_EQ(sip__resend_shed_deaf(s, sa(&a)), 0);
  svc_free(s);
}

static void copies_spread_out(void)
{
  sip_svc_t *s = svc(1);
  struct sockaddr_storage a = v4("198.51.100.1", 5060);
  /* One copy every 600 ms: never SIP_DEAF_COPIES within the window. */
  for (int i = 0; i < 4 * SIP_DEAF_COPIES; i++) {
    ASSERT_EQ(sip__resend_shed_copy(s, sa(&a)), 0);
    now_ms += 600;
  }
  ASSERT_EQ(sip__resend_shed_deaf(s, sa(&a)), 0);
  svc_free(s);
}

static void ipv6_and_unknown(void)
{
  sip_svc_t *s = svc(1);
  struct sockaddr_storage a, other;
  memset(&a, 0, sizeof a);
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&a;
  a6->sin6_family = AF_INET6;
  a6->sin6_port = htons(5060);
  ASSERT_EQ(inet_pton(AF_INET6, "2001:db8::1", &a6->sin6_addr), 1);
  other = a;
  ((struct sockaddr_in6 *)&other)->sin6_addr.s6_addr[15] = 2;
  for (int i = 1; i < SIP_DEAF_COPIES; i++)
    ASSERT_EQ(sip__resend_shed_copy(s, sa(&a)), 0);
  ASSERT_EQ(sip__resend_shed_copy(s, sa(&a)), 1);
  ASSERT_EQ(sip__resend_shed_deaf(s, sa(&a)), 1);
  ASSERT_EQ(sip__resend_shed_deaf(s, sa(&other)), 0);
  /* An address of no known family is never judged. */
  struct sockaddr_storage none;
  memset(&none, 0, sizeof none);
  for (int i = 0; i < 2 * SIP_DEAF_COPIES; i++)
    ASSERT_EQ(sip__resend_shed_copy(s, sa(&none)), 0);
  ASSERT_EQ(sip__resend_shed_deaf(s, sa(&none)), 0);
  ASSERT_EQ(sip__resend_shed_deaf(s, NULL), 0);
  svc_free(s);
}

int main(void)
{
  shed_keys();
  deaf_after_copies();
  copies_spread_out();
  ipv6_and_unknown();
  return 0;
}
