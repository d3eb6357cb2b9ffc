/*
 * Role modules.  The SIP role pulls in sofia-sip, libssl and libldns,
 * whose relocated data alone cost a process ~170 KiB of private memory.
 * Most nodes of a testbed never serve SIP, so the role lives in a shared
 * module, p2psip-sip.so, loaded only by nodes started with --sip.  The
 * module calls back into the daemon's dht_* and log_* functions, which
 * p2psipd exports for it.
 */
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/node.h"

static node_sip_api_t sip_api;

/* Where to look: $P2PSIP_MODULE_DIR, then beside the binary in the build
 * tree (build/node/../sip), then the install location. */
static void *open_module(const char *file, char *err, size_t len) {
  char exe[PATH_MAX], path[PATH_MAX + 64];
  const char *env = getenv("P2PSIP_MODULE_DIR");
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  exe[n > 0 ? n : 0] = '\0';
  const char *dir = n > 0 ? dirname(exe) : ".";
  const char *tries[] = {env, "%s/../sip", "%s/../lib/p2psip", "%s/../lib/x86_64-linux-gnu/p2psip"};
  void *h = NULL;
  for (size_t i = 0; i < sizeof(tries) / sizeof(*tries) && !h; i++) {
    if (!tries[i]) continue;
    char d[PATH_MAX + 32];
    snprintf(d, sizeof(d), tries[i], dir);
    snprintf(path, sizeof(path), "%s/%s", d, file);
    if (access(path, R_OK) == 0 && !(h = dlopen(path, RTLD_NOW | RTLD_LOCAL)))
      snprintf(err, len, "%s: %s", path, dlerror());
  }
  if (!h && !err[0]) snprintf(err, len, "%s not found (set P2PSIP_MODULE_DIR)", file);
  return h;
}

#define SYM(field, name)                                                   \
  do {                                                                     \
    *(void **)&sip_api.field = dlsym(h, name);                             \
    if (!sip_api.field) {                                                  \
      snprintf(err, len, "p2psip-sip.so: missing symbol %s", name);        \
      return -1;                                                           \
    }                                                                      \
  } while (0)

int node_sip_load(const node_sip_api_t **out, char *err, size_t len) {
  if (sip_api.create) {
    *out = &sip_api;
    return 0;
  }
  err[0] = '\0';
  void *h = open_module("p2psip-sip.so", err, len);
  if (!h) return -1;
  SYM(create, "sip_new");
  SYM(start, "sip_start");
  SYM(set_gateway, "sip_set_gateway");
  SYM(stop, "sip_stop");
  SYM(destroy, "sip_free");
  SYM(stats_json, "sip_stats_json");
  SYM(registrations_json, "sip_registrations_json");
  SYM(addr, "sip_addr");
  SYM(is_gateway, "sip_is_gateway");
  SYM(set_public, "sip_set_public");
  SYM(tls_leaks_ssl, "sip_tls_leaks_ssl");
  if (sip_api.tls_leaks_ssl()) node__ssl_free_on_shutdown();
  *out = &sip_api;
  return 0;
}
