/* Shared by the fuzz targets: the entry point that libFuzzer and replay.c
 * call, and CHECK, which aborts so that a broken invariant is reported as
 * a crash (with the input) by libFuzzer and fails the replay. */
#ifndef P2PSIP_FUZZ_H
#define P2PSIP_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)         \
  do {                   \
    if (!(x)) abort();   \
  } while (0)

/* Both NULL, or the same text. */
static inline int fuzz_same_str(const char *a, const char *b) {
  return (!a && !b) || (a && b && !strcmp(a, b));
}

#endif
