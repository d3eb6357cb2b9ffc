/*
 * log: one line per event on stderr, "TIME LEVEL message".  The project's
 * only logger; it lives in dht/ because that is the lowest layer that does
 * I/O, and node/, sip/ and relay/ all sit on top of it.
 */
#ifndef P2PSIP_LOG_H
#define P2PSIP_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

extern int log_verbosity; /* messages above this level are dropped */

/* Parse "error|warn|info|debug"; returns the level or -1. */
int log_level_parse(const char *s);
/* A short tag put in front of every line (e.g. the node's port). */
void log_set_tag(const char *tag);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) \
  do { if (log_verbosity >= LOG_DEBUG) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)
/* An internal invariant broke: log and abort. */
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
