#include "dht/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int log_verbosity = LOG_INFO;
static char log_tag[64];

static const char *const names[] = {"error", "warn", "info", "debug"};

int log_level_parse(const char *s) {
  for (int i = 0; i < 4; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return -1;
}

void log_set_tag(const char *tag) { snprintf(log_tag, sizeof(log_tag), "%s", tag); }

static void vlog(int level, const char *fmt, va_list ap) {
  struct timespec ts;
  struct tm tm;
  char line[1024];
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof(line), "%02d:%02d:%02d.%03ld %s%s%s ", tm.tm_hour, tm.tm_min,
                   tm.tm_sec, ts.tv_nsec / 1000000, log_tag, log_tag[0] ? " " : "", names[level]);
  vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
  /* One write per line so that lines of concurrent nodes sharing a file
   * never interleave. */
  size_t len = strlen(line);
  if (len < sizeof(line) - 1) line[len++] = '\n';
  fwrite(line, 1, len, stderr);
}

void log_msg(int level, const char *fmt, ...) {
  if (level > log_verbosity) return;
  va_list ap;
  va_start(ap, fmt);
  vlog(level, fmt, ap);
  va_end(ap);
}

void fatalx(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(LOG_ERROR, fmt, ap);
  va_end(ap);
  abort();
}
