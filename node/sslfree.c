/*
 * Frees what sofia-sip 1.12.11 leaks on every SIP-over-TLS connection.
 *
 * Its tls_free() (tport_tls.c) calls SSL_shutdown() on the connection,
 * then frees the socket BIO and its own state, and never calls SSL_free():
 * each connection that closes leaves its SSL object behind (24 KB, ~70 KB
 * after a refused handshake).  A node's SIP-over-TLS port is open to
 * anyone, so a stranger that connects and closes in a loop would take the
 * node's memory.  Newer sofia-sip frees it (FreeSWITCH's 1.13, since
 * 2013); Debian 12 ships the 2011 snapshot.
 *
 * The daemon defines SSL_shutdown() and exports it (p2psipd is linked with
 * --export-dynamic), so the SIP module's sofia, loaded later, calls this
 * one; it calls libssl's and then, once the module said its sofia needs
 * it (sip_tls_leaks_ssl, module.c), frees the SSL.  Only SSLs on a socket
 * BIO are touched: sofia's tport connections.  The DHT's links use memory
 * BIOs and free their SSLs themselves; nothing else in the process shuts
 * a connection down (sofia's STUN-over-TLS client and libssl's BIO_f_ssl,
 * which call SSL_free themselves after SSL_shutdown, are not used).
 *
 * What tls_free() does next decides the reference counts (read off the
 * 1.12.11 binary and the sources of that time): it frees the socket BIO
 * the SSL also holds, and it frees the SSL_CTX, because a connection's
 * state copies the listener's type and so never counts as a "slave" - a
 * reference the forgotten SSL used to make up for.  So the BIO and the
 * SSL_CTX each get a reference here before the SSL_free, which drops the
 * SSL's, and tls_free() then drops the other: the listener's SSL_CTX lives
 * on, and the BIO goes with the connection.
 */
#include <dlfcn.h>
#include <stdbool.h>

#include <openssl/ssl.h>

#include "node/node.h"

static bool free_on_shutdown;

void node__ssl_free_on_shutdown(void) { free_on_shutdown = true; }

int SSL_shutdown(SSL *s) {
  static int (*next)(SSL *);
  if (!next) *(void **)&next = dlsym(RTLD_NEXT, "SSL_shutdown");
  int rc = next ? next(s) : -1;
  BIO *b = free_on_shutdown && s ? SSL_get_rbio(s) : NULL;
  SSL_CTX *ctx = b && BIO_method_type(b) == BIO_TYPE_SOCKET ? SSL_get_SSL_CTX(s) : NULL;
  if (ctx && BIO_up_ref(b) && SSL_CTX_up_ref(ctx)) SSL_free(s);
  return rc;
}
