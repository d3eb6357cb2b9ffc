/*
 * Tiny assertion macros for unit tests, after libuv's test/task.h.  A
 * failed assertion prints the expression, both values and where, then
 * exits with status 1, so a test is a plain main() that returns 0.
 */
#ifndef P2PSIP_TEST_H
#define P2PSIP_TEST_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_FAIL_()                                                                             \
  do {                                                                                           \
    fflush(stderr);                                                                              \
    exit(1);                                                                                     \
  } while (0)

#define ASSERT(expr)                                                                             \
  do {                                                                                           \
    if (!(expr)) {                                                                               \
      fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #expr);               \
      TEST_FAIL_();                                                                              \
    }                                                                                            \
  } while (0)

/* Integers of any width and signedness, compared as intmax_t/uintmax_t. */
#define ASSERT_BASE_(a, op, b, type, fmt)                                                        \
  do {                                                                                           \
    type a_ = (type)(a);                                                                         \
    type b_ = (type)(b);                                                                         \
    if (!(a_ op b_)) {                                                                           \
      fprintf(stderr, "%s:%d: assertion failed: %s %s %s (" fmt " %s " fmt ")\n", __FILE__,      \
              __LINE__, #a, #op, #b, a_, #op, b_);                                               \
      TEST_FAIL_();                                                                              \
    }                                                                                            \
  } while (0)

#define ASSERT_EQ(a, b) ASSERT_BASE_(a, ==, b, intmax_t, "%" PRIdMAX)
#define ASSERT_NE(a, b) ASSERT_BASE_(a, !=, b, intmax_t, "%" PRIdMAX)
#define ASSERT_LT(a, b) ASSERT_BASE_(a, <, b, intmax_t, "%" PRIdMAX)
#define ASSERT_LE(a, b) ASSERT_BASE_(a, <=, b, intmax_t, "%" PRIdMAX)
#define ASSERT_GT(a, b) ASSERT_BASE_(a, >, b, intmax_t, "%" PRIdMAX)
#define ASSERT_GE(a, b) ASSERT_BASE_(a, >=, b, intmax_t, "%" PRIdMAX)
#define ASSERT_UINT_EQ(a, b) ASSERT_BASE_(a, ==, b, uintmax_t, "%" PRIuMAX)
#define ASSERT_HEX_EQ(a, b) ASSERT_BASE_(a, ==, b, uintmax_t, "0x%" PRIxMAX)
#define ASSERT_OK(a) ASSERT_EQ(a, 0)

#define ASSERT_STR_EQ(a, b)                                                                      \
  do {                                                                                           \
    const char *a_ = (a), *b_ = (b);                                                             \
    if (strcmp(a_, b_) != 0) {                                                                   \
      fprintf(stderr, "%s:%d: assertion failed: %s == %s (\"%s\" != \"%s\")\n", __FILE__,        \
              __LINE__, #a, #b, a_, b_);                                                         \
      TEST_FAIL_();                                                                              \
    }                                                                                            \
  } while (0)

/* Memory, shown in hex up to the first 64 bytes. */
static inline void test_hex_(const char *label, const void *p, size_t n) {
  const unsigned char *b = (const unsigned char *)p;
  fprintf(stderr, "  %s:", label);
  for (size_t i = 0; i < n && i < 64; i++) fprintf(stderr, " %02x", b[i]);
  fprintf(stderr, n > 64 ? " ...\n" : "\n");
}

#define ASSERT_MEM_EQ(a, b, n)                                                                   \
  do {                                                                                           \
    size_t n_ = (size_t)(n);                                                                     \
    if (memcmp((a), (b), n_) != 0) {                                                             \
      fprintf(stderr, "%s:%d: assertion failed: %s == %s (%zu bytes)\n", __FILE__, __LINE__,    \
              #a, #b, n_);                                                                       \
      test_hex_(#a, (a), n_);                                                                    \
      test_hex_(#b, (b), n_);                                                                    \
      TEST_FAIL_();                                                                              \
    }                                                                                            \
  } while (0)

#endif
