/*
 * The service object: creation of the nta agent on the bridged root,
 * dispatch of incoming requests to the registrar or the proxy, lifecycle,
 * and what the admin socket shows.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <linux/sock_diag.h>

#include <sofia-sip/hostdomain.h>
#include <sofia-sip/sofia_features.h>
#include <sofia-sip/sip_tag.h>
#include <sofia-sip/sresolv.h>
#include <sofia-sip/su_log.h>
#include <sofia-sip/su_tagarg.h>
#include <sofia-sip/su_uniqueid.h>
#include <sofia-sip/tport.h>
#include <sofia-sip/tport_tag.h>

#include "sip/sip_int.h"

static int su_users; /* su_init() is process-wide */

/* sofia's own diagnostics go to our log, one line per message: its logger
 * is called with pieces of a line. */
static void su_logger(void *magic, char const *fmt, va_list ap)
{
  static char line[512];
  size_t len = strlen(line);
  vsnprintf(line + len, sizeof line - len, fmt, ap);
  len = strlen(line);
  if (len == 0 || (line[len - 1] != '\n' && len < sizeof line - 1))
    return;
  while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
    line[--len] = '\0';
  log_debug("sofia: %s", line);
  line[0] = '\0';
}

uint64_t sip__now_ms(const sip_svc_t *s)
{
  return uv_now(s->uv);
}

uint32_t sip__fnv(uint32_t h, const char *p, int fold)
{
  for (; p && *p; p++)
    h = (h ^ (uint8_t)(fold ? tolower((unsigned char)*p) : *p)) * 16777619u;
  return h;
}

uint32_t sip__fnv_n(uint32_t h, const char *p, size_t n)
{
  for (size_t i = 0; i < n; i++)
    h = (h ^ (uint8_t)p[i]) * 16777619u;
  return h;
}

/* The bytes of a message nta sent (it keeps them in the message once
 * serialized), copied to bytes: their length, 0 when over cap. */
static size_t sent_bytes(msg_t *reply, char *bytes, size_t cap)
{
  msg_iovec_t vec[16];
  isize_t n = msg_iovec(reply, vec, 16);
  size_t len = 0;
  for (isize_t i = 0; n > 0 && n <= 16 && i < n; i++) {
    if (vec[i].mv_len > cap - len)
      return 0;
    memcpy(bytes + len, vec[i].mv_base, vec[i].mv_len);
    len += vec[i].mv_len;
  }
  return len;
}

/* nta's UDP transport (the node binds one address). */
static tport_t *udp_tport(const sip_svc_t *s)
{
  return tport_by_protocol(nta_agent_tports(s->agent), "udp");
}

/* A reply's bytes kept under key for the peek to send again (resend.c). */
static void keep_reply(sip_svc_t *s, const char *key, msg_t *reply)
{
  char bytes[SIP_PEEK_BYTES];
  size_t len = sent_bytes(reply, bytes, sizeof bytes);
  if (len)
    sip__resend_keep(s, key, bytes, len);
}

/* What an answer to sip is kept by: as sip__peek_branch() reads it. */
static int resend_key(const sip_t *sip, char *key, size_t len)
{
  if (!sip->sip_call_id || !sip->sip_cseq || !sip->sip_via)
    return 0;
  const char *id = sip->sip_call_id->i_id;
  return sip__key(key, len, id, strlen(id), sip->sip_cseq->cs_seq,
                  sip->sip_via->v_branch ? sip->sip_via->v_branch : "");
}

void sip__reply_stateless(sip_svc_t *s, msg_t *msg, sip_t *sip, int status, const char *phrase,
                          tag_type_t tag, tag_value_t value, ...)
{
  ta_list ta;
  ta_start(ta, tag, value);
  if (sip->sip_to && !sip->sip_to->a_tag)
    sip_to_tag(msg_home(msg), sip->sip_to, s->sl_tag);
  /* Answers to REGISTERs (not the 503s of shedding) are kept as sent;
   * the reply takes msg (and sip with it). */
  char key[700];
  int keep = status != 503 && sip->sip_request &&
             sip->sip_request->rq_method == sip_method_register && resend_key(sip, key, sizeof key);
  msg_t *reply = keep ? nta_msg_create(s->agent, 0) : NULL;
  if (reply) {
    msg_ref_create(reply);
    if (nta_msg_mreply(s->agent, reply, sip_object(reply), status, phrase, msg, ta_tags(ta)) == 0)
      keep_reply(s, key, reply);
    msg_unref(reply);
  } else {
    nta_msg_treply(s->agent, msg, status, phrase, ta_tags(ta));
  }
  ta_end(ta);
}

int sip__host_is_overlay(const sip_svc_t *s, const char *host)
{
  return host && strcasecmp(host, s->overlay) == 0;
}

int sip__uri_is_overlay(const sip_svc_t *s, const url_t *u)
{
  return u && (u->url_type == url_sip || u->url_type == url_sips) && !u->url_user &&
         sip__host_is_overlay(s, u->url_host);
}

/* True when u names this node's own SIP address: one of the agent's Via
 * sent-by values (host and port, 5060 when absent), or, behind a NAT, the
 * reflexive address the node's flow learnt (records and Record-Routes
 * name it, so requests from outside carry it in their Route). */
int sip__uri_is_self(const sip_svc_t *s, const url_t *u)
{
  if (!u || !u->url_host || (u->url_type != url_sip && u->url_type != url_sips))
    return 0;
  if (sip__flow_is_reflexive(s, u))
    return 1;
  const char *port = u->url_port && u->url_port[0] ? u->url_port : "5060";
  for (const sip_via_t *v = nta_agent_via(s->agent); v; v = v->v_next) {
    const char *vport = v->v_port ? v->v_port : "5060";
    if (host_cmp(u->url_host, v->v_host) == 0 && strcmp(port, vport) == 0)
      return 1;
  }
  return 0;
}

int sip__parse_hostport(const char *str, unsigned default_port, struct sockaddr_storage *out)
{
  char spec[96];
  size_t colons = 0;
  for (const char *p = str; *p; p++)
    colons += *p == ':';
  if (strlen(str) > 80)
    return -EINVAL;
  if (colons == 0)
    snprintf(spec, sizeof spec, "%s:%u", str, default_port);
  else if (colons > 1 && str[0] != '[')
    snprintf(spec, sizeof spec, "[%s]:%u", str, default_port);
  else if (str[0] == '[' && str[strlen(str) - 1] == ']')
    snprintf(spec, sizeof spec, "%s:%u", str, default_port);
  else
    snprintf(spec, sizeof spec, "%s", str);
  return dht_addr_parse(spec, out) < 0 ? -EINVAL : 0;
}

const char *sip__peer_next(const sip_svc_t *s, const sip_peer_t *p)
{
  return s->tls_hostport[0] && p->tls[0] ? p->tls : p->uri;
}

/* The address msg came from into *ss (zeroed first); 0 when it has none
 * of a known family (messages nta makes itself). */
static int msg_source_addr(msg_t *msg, struct sockaddr_storage *ss)
{
  su_addrinfo_t *ai = msg_addrinfo(msg);
  memset(ss, 0, sizeof *ss);
  if (!ai || !ai->ai_addr || ai->ai_addrlen > sizeof *ss ||
      (ai->ai_addr->sa_family != AF_INET && ai->ai_addr->sa_family != AF_INET6))
    return 0;
  memcpy(ss, ai->ai_addr, ai->ai_addrlen);
  return 1;
}

void sip__msg_source(msg_t *msg, char *out, size_t len)
{
  struct sockaddr_storage ss;
  snprintf(out, len, "%s", "");
  if (msg_source_addr(msg, &ss))
    dht_addr_str(&ss, out, len);
}

void sip__addr_ip(const struct sockaddr_storage *ss, char *ip, size_t len, unsigned *port)
{
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a->sin_addr, ip, (socklen_t)len);
    *port = ntohs(a->sin_port);
  } else {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a->sin6_addr, ip, (socklen_t)len);
    *port = ntohs(a->sin6_port);
  }
}

/* Writes a resolv.conf naming cfg->dns ("IP[:PORT]") for sofia's resolver:
 * it takes no server address in any other way (DESIGN.md). */
static int write_resolv_conf(sip_svc_t *s, const char *dns)
{
  struct sockaddr_storage ss;
  if (sip__parse_hostport(dns, 53, &ss) < 0)
    return -EINVAL;
  char ip[INET6_ADDRSTRLEN];
  unsigned port;
  sip__addr_ip(&ss, ip, sizeof ip, &port);
  snprintf(s->resolv_conf, sizeof s->resolv_conf, "/tmp/p2psip-resolv-XXXXXX");
  int fd = mkstemp(s->resolv_conf);
  if (fd < 0) {
    s->resolv_conf[0] = '\0';
    return -errno;
  }
  FILE *f = fdopen(fd, "w");
  if (!f) {
    close(fd);
    return -errno;
  }
  fprintf(f, "nameserver %s\nport %u\noptions timeout:2 attempts:2\n", ip, port);
  return fclose(f) == 0 ? 0 : -EIO;
}

static char *lower_dup(const char *in)
{
  char *out = strdup(in);
  for (char *p = out; p && *p; p++)
    *p = (char)tolower((unsigned char)*p);
  return out;
}

static int copy_config(sip_svc_t *s, const sip_config_t *cfg)
{
  if (!cfg->overlay || !cfg->overlay[0] || strlen(cfg->overlay) > 253 ||
      strpbrk(cfg->overlay, " \t\r\n;:@<>\"/"))
    return -EINVAL;
  if (cfg->listen.ss_family != AF_INET && cfg->listen.ss_family != AF_INET6)
    return -EAFNOSUPPORT;
  s->overlay = lower_dup(cfg->overlay);
  s->dns = cfg->dns ? strdup(cfg->dns) : NULL;
  s->dns_update = cfg->dns_update ? strdup(cfg->dns_update) : NULL;
  s->tsig = cfg->tsig ? strdup(cfg->tsig) : NULL;
  s->dns_address = cfg->dns_address ? strdup(cfg->dns_address) : NULL;
  s->gateway = cfg->gateway != 0;
  s->locate_cache_ms = cfg->locate_cache_ms < 0    ? 0
                       : cfg->locate_cache_ms == 0 ? SIP_LOCATE_CACHE_MS
                                                   : (unsigned)cfg->locate_cache_ms;
  s->listen = cfg->listen;
  s->ca = cfg->ca;
  s->allow_loopback = cfg->allow_loopback != 0;
  if (cfg->n_allow_targets < 0 || cfg->n_allow_targets > SIP_MAX_ALLOW)
    return -EINVAL;
  s->n_allow = cfg->n_allow_targets;
  if (s->n_allow)
    memcpy(s->allow, cfg->allow_targets, sizeof *s->allow * (size_t)s->n_allow);
  if (cfg->n_trusted < 0 || cfg->n_trusted > SIP_MAX_ALLOW)
    return -EINVAL;
  s->n_trusted = cfg->n_trusted;
  if (s->n_trusted)
    memcpy(s->trusted, cfg->trusted, sizeof *s->trusted * (size_t)s->n_trusted);
  if (!s->overlay || (cfg->dns && !s->dns) || (cfg->dns_update && !s->dns_update) ||
      (cfg->tsig && !s->tsig) || (cfg->dns_address && !s->dns_address))
    return -ENOMEM;
  return 0;
}

/* sofia's UDP socket bound to our SIP address. */
static int is_our_udp(int fd, void *arg)
{
  const sip_svc_t *s = arg;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int type = 0;
  socklen_t tlen = sizeof type;
  return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_DGRAM &&
         getsockname(fd, (struct sockaddr *)&ss, &len) == 0 && dht_addr_eq(&ss, &s->listen);
}

/* Bytes waiting in a socket's receive queue (kernel accounting). */
static unsigned socket_queue(int fd)
{
  uint32_t mem[SK_MEMINFO_VARS];
  socklen_t len = sizeof mem;
  if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) < 0)
    return 0;
  return mem[SK_MEMINFO_RMEM_ALLOC];
}

/* Bytes waiting in the SIP UDP sockets (sofia's and the REGISTER one),
 * read at most once per SIP_QUEUE_READ_NS: every REGISTER asked twice, and
 * the getsockopt() calls were a sixth of the registrar's system calls.
 * Returns uv_hrtime(). */
static uint64_t read_queues(sip_svc_t *s)
{
  uint64_t hr = uv_hrtime();
  if (s->q_hr && hr - s->q_hr < SIP_QUEUE_READ_NS)
    return hr;
  s->q_hr = hr;
  s->q_bytes = socket_queue(s->udp_fd);
  s->q_reg_bytes = socket_queue(sip__regsock_fd(s->regsock));
  return hr;
}

/* The rate the node takes messages at when it works, messages/ms
 * (windows of SIP_RATE_WINDOW_MS, smoothed: nta's messages over the time
 * the loop was not waiting for events).  Bytes alone cannot say how long
 * a queue takes: a call's messages cost a tenth of a REGISTER's.  Nor can
 * the rate messages arrived at: a node a third busy that was descheduled
 * for 50 ms drains that backlog in 17 ms, and taking the arrival rate for
 * its speed shed calls it would have carried (bench-sip at 2,060
 * calls/s: 9,511 requests shed, 3,850 calls failed). */
static double take_rate(sip_svc_t *s)
{
  uint64_t now = sip__now_ms(s);
  if (now - s->rx_at >= SIP_RATE_WINDOW_MS) {
    usize_t recv = 0;
    nta_agent_get_stats(s->agent, NTATAG_S_RECV_MSG_REF(recv), TAG_END());
    /* Datagrams read past nta (the peek's, the REGISTER socket's) too. */
    recv += s->rx_taken;
    uint64_t hr = uv_hrtime(), idle = uv_metrics_idle_time(s->uv);
    if (s->rx_at) {
      int64_t busy_ns = (int64_t)(hr - s->rx_hr) - (int64_t)(idle - s->rx_idle);
      double busy_ms = (double)busy_ns / 1e6;
      double r = (double)(recv - s->rx_count) / (busy_ms > 1.0 ? busy_ms : 1.0);
      /* A window with little work says little of the node's speed: taken
       * in, a quiet while brought the estimate down to the floor, and the
       * first burst after it was shed (bench-sip's calls steps, which
       * follow kamailio's: 18-22 calls failed at bob's node). */
      if (busy_ms >= SIP_RATE_MIN_BUSY_MS && recv - s->rx_count >= SIP_RATE_MIN_MSGS)
        s->rx_rate = s->rx_rate > 0 ? 0.7 * s->rx_rate + 0.3 * r : r;
    }
    s->rx_count = recv, s->rx_at = now, s->rx_hr = hr, s->rx_idle = idle;
  }
  if (s->rx_rate == 0)
    return SIP_RATE_UNMEASURED;
  return s->rx_rate > SIP_RATE_FLOOR ? s->rx_rate : SIP_RATE_FLOOR;
}

/* How long a queue of bytes takes to drain at rate, in ms (datagrams of
 * SIP_QUEUE_TRUESIZE bytes each, about). */
static double drain_ms(unsigned bytes, double rate)
{
  return (double)bytes / SIP_QUEUE_TRUESIZE / rate;
}

/* The share of new REGISTERs to shed for the REGISTER socket's queue,
 * delay_ms long now (hr): none until the queue has stood longer than
 * SIP_SHED_DELAY_MS for SIP_SHED_STANDING_MS, then as the delay steers it
 * (SIP_SHED_ALPHA, SIP_SHED_BETA) while the queue is long, until it is
 * back to none with the queue short.  The clock is read afresh, not the
 * loop's: a node stopped mid-iteration would find the stop in its own
 * standing time. */
static double register_shed_share(sip_svc_t *s, double delay_ms, uint64_t hr)
{
  sip_shedctl_t *c = &s->reg_shed;
  if (!c->update_hr) {
    if (delay_ms <= SIP_SHED_DELAY_MS) {
      c->above_hr = 0;
      return 0;
    }
    if (!c->above_hr)
      c->above_hr = hr;
    if (hr - c->above_hr < (uint64_t)SIP_SHED_STANDING_MS * 1000000)
      return 0;
    c->update_hr = hr, c->share = 0, c->delay_ms = delay_ms;
  }
  if (hr - c->update_hr >= (uint64_t)SIP_SHED_UPDATE_MS * 1000000) {
    double p = c->share + SIP_SHED_ALPHA * (delay_ms - SIP_SHED_DELAY_MS) / 1000 +
               SIP_SHED_BETA * (delay_ms - c->delay_ms) / 1000;
    /* With the queue half short, the overload is over: the share halves
     * each update (at 0.125 a second it stayed for seconds after). */
    if (delay_ms <= SIP_SHED_DELAY_MS / 2)
      p = c->share / 2;
    c->share = p < 0.001 ? 0 : p > 1 ? 1 : p;
    c->update_hr = hr, c->delay_ms = delay_ms;
    if (c->share == 0 && delay_ms <= SIP_SHED_DELAY_MS)
      c->update_hr = c->above_hr = 0;
  }
  /* A short queue sheds nothing, whatever the share. */
  return delay_ms > SIP_SHED_DELAY_MS ? c->share : 0;
}

/* Whether the REGISTER of this Call-ID falls in the share shed: by its
 * hash, so that each copy of it, and each look at it (the peek's, then
 * sofia's), is judged alike. */
static int in_shed_share(const sip_svc_t *s, const char *callid, size_t n)
{
  return (double)sip__fnv_n(SIP_FNV_INIT, callid, n) < s->reg_shed.share * 4294967296.0;
}

/* Work we cannot take now, by what overloaded() says: with sofia's
 * socket's queue long (what waits behind in it, an ACK, an OPTIONS, would
 * wait too) new REGISTERs and dialog-creating requests; with the DHT
 * behind on our REGISTERs, new REGISTERs; with the REGISTER socket's
 * queue standing long, a share of new REGISTERs (in_shed_share()).  They
 * get 503 with Retry-After before any state exists; requests of dialogs
 * under way and OPTIONS still go through.  SHED_QUEUE says a queue was
 * the reason. */
enum { SHED_NEW = 1, SHED_REGISTER = 2, SHED_QUEUE = 4, SHED_REGISTER_SHARE = 8 };

static int overloaded(sip_svc_t *s)
{
  double rate = take_rate(s);
  uint64_t hr = read_queues(s);
  int why = s->n_rtx >= SIP_MAX_REGISTERING ? SHED_REGISTER : 0;
  if (drain_ms(s->q_bytes, rate) > SIP_SHED_DELAY_MS)
    why |= SHED_NEW | SHED_REGISTER | SHED_QUEUE;
  if (register_shed_share(s, drain_ms(s->q_reg_bytes, rate), hr) > 0)
    why |= SHED_REGISTER_SHARE;
  return why;
}

/* Whether overloaded()'s answer why sheds a REGISTER of this Call-ID: why
 * with SHED_REGISTER | SHED_QUEUE added when its share says so.  The
 * share sheds only REGISTERs without credentials: one with them answers
 * our challenge, whose work is spent, and is the one a registration
 * needs to finish (shed by the share, 37,000-51,000 of them in a 30 s
 * step 1.25 times past the knee; docs/BENCHMARKS.md, session 24). */
static int register_shed(const sip_svc_t *s, int why, int credentials, const char *callid,
                         size_t n)
{
  if (!credentials && !(why & SHED_REGISTER) && (why & SHED_REGISTER_SHARE) &&
      in_shed_share(s, callid, n))
    why |= SHED_REGISTER | SHED_QUEUE;
  return why;
}

/* overloaded()'s answer when sip must be shed, else 0. */
static int must_shed(sip_svc_t *s, const sip_t *sip)
{
  sip_method_t m = sip->sip_request->rq_method;
  if ((sip->sip_to && sip->sip_to->a_tag) || m == sip_method_ack || m == sip_method_cancel ||
      m == sip_method_bye || m == sip_method_options)
    return 0;
  int why = overloaded(s);
  if (m == sip_method_register && sip->sip_call_id)
    why = register_shed(s, why, sip->sip_authorization != NULL, sip->sip_call_id->i_id,
                        strlen(sip->sip_call_id->i_id));
  return why & (m == sip_method_register ? SHED_REGISTER : SHED_NEW) ? why : 0;
}

/* New work was shed (a 503, or none: shed_unanswered()); why says why
 * (overloaded()). */
static void count_shed(sip_svc_t *s, int why, int peeked)
{
  s->c.shed++;
  s->c.shed_peeked += peeked != 0;
  if (why & SHED_QUEUE)
    s->c.shed_queue++;
  else
    s->c.shed_dht_behind++;
}

/* A copy of a REGISTER shed lately came from sa: it counts towards
 * judging the source deaf to our 503s (SIP_DEAF_COPIES), said once when
 * it is. */
static void shed_copy_from(sip_svc_t *s, const struct sockaddr_storage *sa)
{
  char who[INET6_ADDRSTRLEN + 8];
  if (!sip__resend_shed_copy(s, (const struct sockaddr *)sa))
    return;
  s->c.shed_deaf_sources++;
  dht_addr_str(sa, who, sizeof who);
  log_info("%s sends REGISTERs again after their 503 (it ignores Retry-After): what is shed "
           "from it gets no answer for %d s",
           who, SIP_SHED_MEMORY_MS / 1000);
}

/* Whether new work from sa, to be shed (why), goes unanswered: its
 * source ignores our 503s (counted as shed all the same, and a REGISTER's
 * key, when it has one, remembered as a 503's would be). */
static int shed_unanswered(sip_svc_t *s, int why, int peeked, const struct sockaddr_storage *sa,
                           const char *key)
{
  if (!sip__resend_shed_deaf(s, (const struct sockaddr *)sa))
    return 0;
  count_shed(s, why, peeked);
  s->c.shed_silent++;
  if (key)
    sip__resend_shed_note(s, key);
  return 1;
}

static int on_stateless(nta_agent_magic_t *magic, nta_agent_t *agent, msg_t *msg, sip_t *sip);

/* sofia's message parser over a datagram's bytes, as tport reads one, the
 * source address noted in the message; NULL when it is no whole message. */
static msg_t *datagram_msg(sip_svc_t *s, const char *buf, size_t len,
                           const struct sockaddr_storage *sa, socklen_t salen)
{
  msg_t *msg = nta_msg_create(s->agent, 0);
  msg_iovec_t iov[2];
  /* One block for the parse's many small allocations (as msg_make()),
   * with room for what it makes of a REGISTER with credentials: with
   * 1 KB, several were allocations of their own, 3.5 % of a loaded
   * registrar's CPU (docs/BENCHMARKS.md, session 23). */
  if (msg)
    su_home_preload(msg_home(msg), 1, len + 4096);
  if (!msg || msg_recv_iovec(msg, iov, 2, len, 1) < 0 || iov[0].mv_len != len) {
    msg_destroy(msg);
    return NULL;
  }
  memcpy(iov[0].mv_base, buf, len);
  msg_recv_commit(msg, len, 1);
  if (msg_extract(msg) <= 0) {
    msg_destroy(msg);
    return NULL;
  }
  su_addrinfo_t *ai = msg_addrinfo(msg);
  ai->ai_family = sa->ss_family, ai->ai_socktype = SOCK_DGRAM, ai->ai_protocol = IPPROTO_UDP;
  msg_set_address(msg, (const su_sockaddr_t *)sa, salen);
  return msg;
}

/* What nta requires of a request before it reaches on_stateless(), and
 * does to it: 0 when it parsed without error, passed sip_sanity_check()
 * and is SIP/2.0 (received/rport are then set on its top Via), else the
 * status nta answers (400, 505). */
static int request_check(msg_t *msg, sip_t *sip, const struct sockaddr_storage *sa)
{
  char ip[INET6_ADDRSTRLEN];
  unsigned port;
  if (msg_has_error(msg) || sip->sip_error || sip_sanity_check(sip) < 0)
    return 400;
  if (!su_casematch(sip->sip_request->rq_version, sip_version_2_0))
    return 505;
  sip__addr_ip(sa, ip, sizeof ip, &port);
  return sip__peek_via_source(msg_home(msg), sip->sip_via, ip, port) < 0 ? 400 : 0;
}

/* A REGISTER for this node over UDP with nothing the peek leaves to sofia
 * but its credentials (no Route, Require, body): sofia's message parser
 * reads it from the peek's bytes, as tport would, and on_stateless()
 * takes it as it takes what nta passes on, the same checks and answers,
 * without tport reading the datagram again and nta's dispatch around it.
 * A request the parser finds any error in, or that is not for this
 * node's registrar after all, is left to sofia (0). */
static int register_direct(sip_svc_t *s, const char *buf, size_t len,
                           const struct sockaddr_storage *sa, socklen_t salen)
{
  msg_t *msg = datagram_msg(s, buf, len, sa, salen);
  sip_t *sip = msg ? sip_object(msg) : NULL;
  int ours;
  if (!sip || !sip->sip_request || sip->sip_request->rq_method != sip_method_register ||
      request_check(msg, sip, sa) || sip__peek_hop(s, sip, &ours) != SIP_HOP_SELF) {
    msg_destroy(msg);
    return 0;
  }
  s->c.register_direct++;
  s->head_left = 1; /* the registrar takes the lines the peek read (sip__lines_take) */
  on_stateless((nta_agent_magic_t *)s, s->agent, msg, sip);
  s->head_left = 0;
  return 1;
}

/* Our own answers on sofia's UDP socket (the peek's 401s and 503s, the
 * registrar's 200s, copies for retransmissions) wait in s->txq and leave
 * together twice a loop turn (flush_answers, sip__loop_flush):
 * one system call, and one wake-up of a sleeping client, for a batch
 * instead of one each.  The order of our answers is kept; sofia's own
 * sends on the socket may pass them within a turn, as the network may. */
static void send_answer(sip_svc_t *s, const void *p, size_t n, const struct sockaddr *to,
                        socklen_t tolen)
{
  if (s->txq)
    udpq_send(s->txq, p, n, to, tolen);
  else
    sendto(s->udp_fd, p, n, MSG_DONTWAIT, to, tolen);
}

static void flush_answers(void *arg)
{
  udpq_flush(((sip_svc_t *)arg)->txq);
}

/* A REGISTER for this node (no Route, the Request-URI names the overlay
 * or us, as the edge's sip__peek_hop() decides) without credentials or
 * anything else only sofia judges, on a node with users: the edge would
 * only challenge it. */
static int challenge_only(sip_svc_t *s, const sip_peek_t *pk)
{
  char copy[SIP_PEEK_URI];
  url_t url[1];
  if (!s->auth || pk->sofia || pk->auth || pk->ruri.n >= sizeof copy)
    return 0;
  memcpy(copy, pk->ruri.p, pk->ruri.n);
  copy[pk->ruri.n] = '\0';
  memset(url, 0, sizeof url);
  return url_d(url, copy) >= 0 && sip__ruri_hop(s, url) == SIP_HOP_SELF;
}

/* The answer peek_act() builds in out: a 401 when challenge (kept for
 * retransmissions under key), else a 503.  Its length, or negative when
 * sofia should answer. */
static int peek_answer(sip_svc_t *s, const sip_peek_t *pk, size_t len, int challenge,
                       int shed, const char *key, const struct sockaddr_storage *sa, char *out,
                       size_t outlen)
{
  char ip[INET6_ADDRSTRLEN], lines[SIP_AUTH_LINES];
  unsigned port;
  sip__addr_ip(sa, ip, sizeof ip, &port);
  if (!challenge) {
    int m = sip__peek_503(pk, len, s->sl_tag, ip, port, out, outlen);
    if (m >= 0)
      count_shed(s, shed, 1);
    return m;
  }
  if (sip__auth_challenge_lines(s, 0, 0, lines, sizeof lines) < 0)
    return -EINVAL;
  int m = sip__peek_401(pk, len, lines, s->sl_tag, ip, port, out, outlen);
  if (m < 0)
    return m;
  s->c.auth_challenges++, s->c.challenged_peeked++;
  sip__resend_keep(s, key, out, (size_t)m);
  return m;
}

/* What the peek does with the head datagram (buf, got of its len bytes,
 * from sa): 1 when it was answered or dropped here (it is then taken off
 * the socket), 0 when sofia reads it.  In this order: a retransmission of
 * a REGISTER under way is dropped; one of a REGISTER answered lately gets
 * the answer's bytes again; while we shed, a copy of a REGISTER shed
 * lately is dropped, and a new REGISTER, INVITE, SUBSCRIBE or REFER gets
 * a 503 built from its own header lines (peek.c);
 * a REGISTER that would only be challenged gets its 401 built the same
 * way; one with credentials goes to the registrar from here
 * (register_direct(): SIP_LOOP_TOOK, a registration's work, as much as
 * the step sofia would have read it in).  The answers pass the source's
 * rate check first, as sofia's would. */
static int peek_act(sip_svc_t *s, const char *buf, size_t got, size_t len,
                    const struct sockaddr_storage *sa, socklen_t salen, int shed)
{
  sip_peek_t pk;
  char key[700];
  s->head->len = 0;
  if (sip__peek_read(buf, got, &pk) < 0)
    return 0;
  int reg = sip__peek_is(&pk, "REGISTER");
  s->head->pk = pk, s->head->len = reg && got == len ? len : 0;
  /* Where credentials are required, a REGISTER without any is only ever
   * challenged, never under way: the look-up would be a cold miss for
   * the first REGISTER of every registration. */
  int may_run = reg && (pk.auth || pk.sofia || !s->auth);
  if (may_run && sip__peek_key(&pk, key, sizeof key) && sip__reg_key_underway(s, key)) {
    s->c.register_repeats++;
    s->c.register_repeats_peeked++;
    return 1;
  }
  size_t n = 0;
  const void *again = NULL;
  int keyed = reg && sip__peek_branch(&pk, key, sizeof key) == 0;
  if (keyed)
    again = sip__resend_find(s, key, &n);
  if (reg)
    shed = register_shed(s, shed, pk.auth, pk.callid.p, pk.callid.n);
  int shedding = (shed & (reg ? SHED_REGISTER : SHED_NEW)) != 0;
  /* A copy of a REGISTER shed lately: its 503 went out, and a 503 for
   * every copy cost a fair share of the work shed (docs/BENCHMARKS.md,
   * session 13).  Within the 503's Retry-After it is dropped even once we
   * take work again: sipp, which ignores a 503, sent its copies 0.5 and
   * 1.5 s later into a node that had just stopped shedding, and each
   * burst of them started the shedding again (session 24).  Past that,
   * while we do not shed, a copy is served like any REGISTER. */
  if (!again && keyed &&
      sip__resend_shed_seen(s, key, shedding ? SIP_SHED_MEMORY_MS : SIP_SHED_RETRY_AFTER_MS)) {
    s->c.shed_repeats_dropped++;
    shed_copy_from(s, sa);
    return 1;
  }
  int challenge = !again && !shedding && keyed && got == len && challenge_only(s, &pk);
  if (!again && !shedding && !challenge)
    return keyed && got == len && !pk.sofia && s->started && !s->stopping &&
                   register_direct(s, buf, len, sa, salen)
               ? SIP_LOOP_TOOK
               : 0;
  if (!again && !challenge && shed_unanswered(s, shed, 1, sa, keyed ? key : NULL))
    return 1;
  char out[SIP_PEEK_BYTES];
  int rc = sip__limit_peek(s, (const struct sockaddr *)sa, salen);
  if (rc)
    return rc > 0;
  if (!again) {
    int m = peek_answer(s, &pk, len, challenge, shed, key, sa, out, sizeof out);
    if (m < 0)
      return 0;
    if (!challenge && keyed)
      sip__resend_shed_note(s, key);
    again = out, n = (size_t)m;
  } else {
    s->c.register_repeats++, s->c.register_resent_peeked++;
  }
  send_answer(s, again, n, (const struct sockaddr *)sa, salen);
  return 1;
}

/* The buffer a datagram is read into before it is handed on (s->head),
 * made at the first one; NULL when memory is short. */
static sip_lines_t *head_buffer(sip_svc_t *s)
{
  if (!s->head)
    s->head = malloc(sizeof *s->head + SIP_PEEK_BYTES);
  return s->head;
}

/* Before sofia reads the next datagram: the head of the socket's queue
 * is peeked at (MSG_PEEK) and what peek_act() answers or drops is taken
 * off it unparsed: sofia's parse and reply builder cost as much as the
 * work, and past the knee sipp's retransmissions and new REGISTERs came
 * faster than sofia could even shed them.  1 when a datagram is left for
 * sofia and the bridge should step again (REGISTERs under way, or
 * shedding); SIP_LOOP_TOOK after a REGISTER given to the registrar here,
 * the work of a step.  shed: what overloaded() said, once per call. */
static int peek_head(void *arg)
{
  sip_svc_t *s = arg;
  s->head_left = 0;
  if (s->udp_fd < 0 || !head_buffer(s))
    return 0;
  char *buf = s->head->bytes;
  int shed = s->udp_fd >= 0 ? overloaded(s) : 0;
  for (int i = 0; i < SIP_PEEK_MAX && s->udp_fd >= 0; i++) {
    struct sockaddr_storage *sa = &s->head->from;
    socklen_t salen = sizeof *sa;
    ssize_t n = recvfrom(s->udp_fd, buf, SIP_PEEK_BYTES, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC,
                         (struct sockaddr *)sa, &salen);
    if (n < 0 || (sa->ss_family != AF_INET && sa->ss_family != AF_INET6))
      return 0;
    size_t got = (size_t)n < SIP_PEEK_BYTES ? (size_t)n : SIP_PEEK_BYTES;
    s->head->fromlen = salen;
    int took = peek_act(s, buf, got, (size_t)n, sa, salen, shed);
    if (!took) {
      s->head_left = s->head->len > 0;
      return s->n_rtx > 0 || shed;
    }
    if (recv(s->udp_fd, buf, 1, MSG_DONTWAIT) < 0)
      return 0;
    s->rx_taken++;
    if (took == SIP_LOOP_TOOK)
      return SIP_LOOP_TOOK;
  }
  return 0;
}

/* The last answer of nta's transaction irq sent again to sa: a copy of
 * its request read from the REGISTER socket, which nta never sees. */
static void resend_irq(sip_svc_t *s, nta_incoming_t *irq, const struct sockaddr_storage *sa,
                       socklen_t salen)
{
  msg_t *reply = nta_incoming_getresponse(irq);
  char bytes[SIP_PEEK_BYTES];
  size_t n = reply ? sent_bytes(reply, bytes, sizeof bytes) : 0;
  if (n)
    send_answer(s, bytes, n, (const struct sockaddr *)sa, salen);
  msg_destroy(reply);
}

/* What the peek leaves to sofia, read from the REGISTER socket, where
 * sofia never reads: parsed and checked as nta does (a 400 to a request
 * it cannot take), a copy of a request nta holds a transaction for gets
 * the transaction's last answer again, and any other request goes to
 * on_stateless().  A response can only come here in the moment the
 * socket is set up (regsock.c): nothing of ours waits for one. */
static void to_sofia(sip_svc_t *s, const char *buf, size_t len,
                     const struct sockaddr_storage *sa, socklen_t salen)
{
  msg_t *msg = datagram_msg(s, buf, len, sa, salen);
  sip_t *sip = msg ? sip_object(msg) : NULL;
  if (!sip || !sip->sip_request) {
    s->c.bad_requests += !sip;
    msg_destroy(msg);
    return;
  }
  int status = request_check(msg, sip, sa);
  if (status) {
    s->c.bad_requests++;
    if (sip->sip_via && sip->sip_call_id && sip->sip_cseq && sip->sip_from && sip->sip_to &&
        sip->sip_request->rq_method != sip_method_ack)
      sip__reply_stateless(s, msg, sip, status, sip_status_phrase(status), TAG_END());
    else
      msg_destroy(msg);
    return;
  }
  nta_incoming_t *irq = nta_incoming_find(s->agent, sip, sip->sip_via);
  if (irq) {
    resend_irq(s, irq, sa, salen);
    msg_destroy(msg);
    return;
  }
  s->head_left = s->head->len > 0; /* a REGISTER the peek read whole */
  on_stateless((nta_agent_magic_t *)s, s->agent, msg, sip);
  s->head_left = 0;
}

/* A REGISTER longer than the REGISTER socket reads (over UDP, where
 * RFC 3261 18.1.1 wants one so long on TCP): a 513 built from the lines
 * read when they hold what it needs (and the source's rate allows it),
 * else nothing. */
static void too_large(sip_svc_t *s, const sip_lines_t *h, size_t len)
{
  sip_peek_t pk;
  char ip[INET6_ADDRSTRLEN], out[SIP_PEEK_BYTES], lines[SIP_PEEK_BYTES + 2];
  unsigned port;
  s->c.register_truncated++;
  /* The whole lines read, ended as a header block ends. */
  size_t n = len;
  while (n >= 2 && memcmp(h->bytes + n - 2, "\r\n", 2) != 0)
    n--;
  if (n < 2)
    return;
  memcpy(lines, h->bytes, n);
  memcpy(lines + n, "\r\n", 2);
  if (sip__peek_read(lines, n + 2, &pk) < 0 ||
      sip__limit_peek(s, (const struct sockaddr *)&h->from, h->fromlen))
    return;
  sip__addr_ip(&h->from, ip, sizeof ip, &port);
  int m = sip__peek_513(&pk, n + 2, s->sl_tag, ip, port, out, sizeof out);
  if (m > 0)
    send_answer(s, out, (size_t)m, (const struct sockaddr *)&h->from, h->fromlen);
}

/* sofia exports this (tport.c) without declaring it in the headers it
 * installs: what its UDP transport calls with an error read from its own
 * socket's error queue (nta then fails the transactions to addr). */
void tport_error_report(tport_t *self, int errcode, su_sockaddr_t const *addr);

void sip__regsock_error(sip_svc_t *s, int err, const struct sockaddr_storage *to,
                        socklen_t tolen)
{
  tport_t *udp = udp_tport(s);
  su_sockaddr_t addr;
  if (!udp || tolen > sizeof addr)
    return;
  memset(&addr, 0, sizeof addr);
  memcpy(&addr, to, tolen);
  tport_error_report(udp, err, &addr);
}

void sip__regsock_take(sip_svc_t *s, const char *buf, size_t len, int truncated,
                       const struct sockaddr_storage *sa, socklen_t salen)
{
  s->rx_taken++, s->c.register_socket++;
  sip_lines_t *h = head_buffer(s);
  if (!h)
    return;
  memcpy(h->bytes, buf, len);
  memcpy(&h->from, sa, salen);
  h->fromlen = salen, h->len = 0;
  if (truncated) {
    too_large(s, h, len);
    return;
  }
  if (!peek_act(s, h->bytes, len, len, &h->from, salen, overloaded(s)))
    to_sofia(s, h->bytes, len, &h->from, salen);
}

sip_lines_t *sip__lines_take(sip_svc_t *s, msg_t *msg, const sip_t *sip)
{
  sip_lines_t *h = s->head;
  su_addrinfo_t *ai = msg_addrinfo(msg);
  struct sockaddr_storage src;
  if (!s->head_left || !ai || ai->ai_protocol != IPPROTO_UDP || ai->ai_addrlen > sizeof src ||
      msg_size(msg) != h->len || !sip->sip_call_id || !sip->sip_cseq ||
      sip->sip_cseq->cs_seq != h->pk.cseq || strlen(sip->sip_call_id->i_id) != h->pk.callid.n ||
      memcmp(sip->sip_call_id->i_id, h->pk.callid.p, h->pk.callid.n) != 0)
    return NULL;
  memset(&src, 0, sizeof src);
  memcpy(&src, ai->ai_addr, ai->ai_addrlen);
  sip_lines_t *l = dht_addr_eq(&src, &h->from) ? malloc(sizeof *l + h->len) : NULL;
  if (!l)
    return NULL;
  s->head_left = 0; /* sofia read it: the next one is another */
  memcpy(l, h, sizeof *l + h->len);
  sip__peek_move(&l->pk, h->bytes, l->bytes);
  return l;
}

int sip__lines_reply(sip_svc_t *s, const sip_lines_t *l, const sip_t *sip, int status,
                     const char *phrase, const char *headers)
{
  const sip_via_t *v = sip->sip_via;
  char ip[INET6_ADDRSTRLEN], line[128], extra[SIP_PEEK_BYTES], out[SIP_PEEK_BYTES], key[700];
  unsigned port;
  sip__addr_ip(&l->from, ip, sizeof ip, &port);
  /* sofia sends to the source only where the Via says so (RFC 3581, 18.2.2)
   * and copies a Record-Route: those answers stay sofia's. */
  if (!v || v->v_maddr || sip->sip_record_route || !sip->sip_to ||
      (!v->v_rport && strtoul(v->v_port ? v->v_port : "5060", NULL, 10) != port))
    return -EINVAL;
  int n = snprintf(line, sizeof line, "SIP/2.0 %d %s", status, phrase);
  int x = snprintf(extra, sizeof extra, "%s%s", headers ? headers : "", headers ? "\r\n" : "");
  if (n <= 0 || (size_t)n >= sizeof line || x < 0 || (size_t)x >= sizeof extra)
    return -ENOSPC;
  n = sip__peek_answer(&l->pk, line, v, sip->sip_to->a_tag ? NULL : s->sl_tag, extra, out,
                       sizeof out);
  if (n < 0)
    return n;
  send_answer(s, out, (size_t)n, (const struct sockaddr *)&l->from, l->fromlen);
  if (resend_key(sip, key, sizeof key))
    sip__resend_keep(s, key, out, (size_t)n);
  s->c.register_answers_built++;
  return 0;
}

static int on_request(nta_leg_magic_t *magic, nta_leg_t *leg, nta_incoming_t *irq,
                      sip_t const *sip);
static int on_stray(nta_outgoing_magic_t *magic, nta_outgoing_t *orq, sip_t const *sip);

static void stateful(sip_svc_t *s, msg_t *msg, sip_t *sip, const sip_req_t *rq);
static void stateless(sip_svc_t *s, msg_t *msg, sip_t *sip, int edge);

/* A REGISTER for this node: the registrar answers it without a server
 * transaction (registrar.c says why); what fails the checks here is
 * answered the same way. */
static void register_stateless(sip_svc_t *s, msg_t *msg, sip_t *sip, const sip_req_t *rq)
{
  int status = !s->started || s->stopping ? 503 : sip__check_request(s, msg, sip, rq->hash);
  if (status == 420)
    status = 0; /* Proxy-Require is for proxies; a registrar is none */
  if (status) {
    s->c.bad_requests += status == 400 || status == 416;
    s->c.loops += status == 482;
    s->c.too_many_hops += status == 483;
    sip__reply_stateless(s, msg, sip, status, sip_status_phrase(status), TAG_END());
    return;
  }
  s->c.requests++;
  sip__pop_routes(s, msg, sip);
  sip__register(s, msg, sip, rq);
}

/* A 503 with Retry-After, before any state; as at the peek, the copy of
 * a REGISTER shed lately is dropped instead (the peek takes at most
 * SIP_PEEK_MAX datagrams a step: the copy behind the last comes here). */
static void shed_request(sip_svc_t *s, msg_t *msg, sip_t *sip, int why)
{
  char key[700];
  int keyed = sip->sip_request->rq_method == sip_method_register &&
              resend_key(sip, key, sizeof key);
  struct sockaddr_storage src;
  msg_source_addr(msg, &src); /* none: zeroed, never judged deaf */
  if (keyed && sip__resend_shed_seen(s, key, SIP_SHED_MEMORY_MS)) {
    s->c.shed_repeats_dropped++;
    shed_copy_from(s, &src);
    msg_destroy(msg);
    return;
  }
  if (shed_unanswered(s, why, 0, &src, keyed ? key : NULL)) {
    msg_destroy(msg);
    return;
  }
  count_shed(s, why, 0);
  sip__reply_stateless(s, msg, sip, SIP_503_SERVICE_UNAVAILABLE,
                       SIPTAG_RETRY_AFTER_STR(SIP_SHED_RETRY_AFTER),
                       TAG_END());
  if (keyed)
    sip__resend_shed_note(s, key);
}

/* Every request that matches no transaction comes here (there is no
 * default leg).  The edge (edge.c) answers what it refuses before any
 * state exists.  The last hop to a phone registered through this node and
 * ACKs go on statelessly; everything else gets a server transaction. */
static int on_stateless(nta_agent_magic_t *magic, nta_agent_t *agent, msg_t *msg, sip_t *sip)
{
  sip_svc_t *s = (sip_svc_t *)magic;
  if (!sip || !sip->sip_request) {
    msg_destroy(msg);
    return 0;
  }
  /* Requests for our own phones go on statelessly, one copy per copy
   * (a flood of them reaches the phone as it would reach it directly),
   * and every node forwards its callers' requests for them from one
   * address: they count against no source's rate. */
  sip_method_t m = sip->sip_request->rq_method;
  int node = sip__from_node(s, msg), local = m != sip_method_register && sip__edge_hop(s, sip);
  int src;
  sip_req_t rq;
  if (sip__limit_admit(s, msg, sip, node || local, &src))
    return 0;
  /* A retransmission of a REGISTER we are working on is dropped before
   * the shedding below: its 503 would cost as much as the answer, and
   * tell the phone its registration failed while it goes through. */
  if (m == sip_method_register && sip__reg_underway(s, msg, sip))
    return 0;
  int why = must_shed(s, sip);
  if (why) {
    shed_request(s, msg, sip, why);
    return 0;
  }
  if (sip__edge_admit(s, msg, sip, node, &rq))
    return 0;
  rq.src = src;
  int ours;
  if (m == sip_method_register && sip__peek_hop(s, sip, &ours) == SIP_HOP_SELF) {
    register_stateless(s, msg, sip, &rq);
    return 0;
  }
  int edge = local || (m != sip_method_register && rq.stateless);
  if (m == sip_method_cancel && !edge) { /* it matched no transaction of ours */
    nta_msg_treply(agent, msg, SIP_481_NO_TRANSACTION, TAG_END());
    return 0;
  }
  if (!s->started || s->stopping || (!edge && m != sip_method_ack)) {
    /* Overloaded, or this source holds its share: refuse before making a
     * transaction, whose 503 sofia would retransmit until ACKed, which
     * costs most when we can least afford it. */
    int full = sip__proxy_full(s) && m != sip_method_register;
    if (full || sip__limit_full(s, src)) {
      s->c.overloaded += full;
      s->c.source_limited += !full;
      sip__reply_stateless(s, msg, sip, SIP_503_SERVICE_UNAVAILABLE, SIPTAG_RETRY_AFTER_STR("5"),
                           TAG_END());
    } else {
      stateful(s, msg, sip, &rq);
    }
    return 0;
  }
  stateless(s, msg, sip, edge);
  return 0;
}

/* Learns the bound address (the port may have been picked) from the
 * agent's first Via. */
static int learn_address(sip_svc_t *s)
{
  const sip_via_t *v = nta_agent_via(s->agent);
  if (!v || !v->v_host)
    return -EADDRNOTAVAIL;
  s->port = v->v_port ? (unsigned)atoi(v->v_port) : 5060;
  if (strchr(v->v_host, ':') && v->v_host[0] != '[')
    snprintf(s->host, sizeof s->host, "[%s]", v->v_host);
  else
    snprintf(s->host, sizeof s->host, "%s", v->v_host);
  snprintf(s->hostport, sizeof s->hostport, "%s:%u", s->host, s->port);
  snprintf(s->self_lr, sizeof s->self_lr, "<sip:%s;lr>", s->hostport);
  snprintf(s->overlay_lr, sizeof s->overlay_lr, "<sip:%s;lr>", s->overlay);
  snprintf(s->gw_rr_in, sizeof s->gw_rr_in, "%s, %s", s->self_lr, s->overlay_lr);
  snprintf(s->gw_rr_out, sizeof s->gw_rr_out, "%s, %s", s->overlay_lr, s->self_lr);
  return dht_addr_parse(s->hostport, &s->listen) < 0 ? -EINVAL : 0;
}

/* Writes the contents of a (and b) into a new file out, mode 0600. */
static int concat_files(const char *out, const char *a, const char *b)
{
  int fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  int rc = 0;
  const char *in[2] = {a, b};
  for (int i = 0; i < 2 && in[i] && rc == 0; i++) {
    char buf[8192];
    ssize_t n;
    int src = open(in[i], O_RDONLY | O_CLOEXEC);
    if (src < 0) {
      rc = -errno;
      break;
    }
    while ((n = read(src, buf, sizeof buf)) > 0)
      if (write(fd, buf, (size_t)n) != n) {
        rc = -EIO;
        break;
      }
    close(src);
  }
  return close(fd) < 0 && rc == 0 ? -EIO : rc;
}

/* SIP between nodes over TLS (the secured mode), both ends presenting
 * node certificates that sofia checks against the CA.  sofia reads its
 * certificate, key and CA once, when the transport is made, from
 * agent.pem and cafile.pem in one directory: they are written to a
 * private temporary directory and removed right after. */
static int add_tls(sip_svc_t *s, const sip_config_t *cfg)
{
  char dir[] = "/tmp/p2psip-tls-XXXXXX", agent[64], cafile[64], url[128];
  if (!mkdtemp(dir))
    return -errno;
  snprintf(agent, sizeof agent, "%s/agent.pem", dir);
  snprintf(cafile, sizeof cafile, "%s/cafile.pem", dir);
  int rc = concat_files(agent, cfg->cert_file, cfg->key_file);
  if (rc == 0)
    rc = concat_files(cafile, cfg->ca_file, NULL);
  if (cfg->tls_listen)
    snprintf(url, sizeof url, "sips:%s", cfg->tls_listen);
  else
    snprintf(url, sizeof url, "sips:%s:*", s->host);
  if (rc == 0 && nta_agent_add_tport(s->agent, (url_string_t const *)url, TPTAG_CERTIFICATE(dir),
                                     TPTAG_TLS_VERSION(0),
                                     TPTAG_TLS_VERIFY_POLICY(TPTLS_VERIFY_ALL), TAG_END()) < 0)
    rc = -EADDRINUSE;
  unlink(agent), unlink(cafile), rmdir(dir);
  for (const sip_via_t *v = nta_agent_via(s->agent); rc == 0 && v; v = v->v_next)
    if (v->v_protocol && strcasecmp(v->v_protocol, "SIP/2.0/TLS") == 0 && v->v_port)
      snprintf(s->tls_hostport, sizeof s->tls_hostport, "%s%s%s:%s",
               strchr(v->v_host, ':') && v->v_host[0] != '[' ? "[" : "", v->v_host,
               strchr(v->v_host, ':') && v->v_host[0] != '[' ? "]" : "", v->v_port);
  if (rc == 0 && !s->tls_hostport[0])
    rc = -EADDRNOTAVAIL;
  if (rc < 0)
    log_warn("SIP over TLS on %s: %s", url, strerror(-rc));
  return rc;
}

static int create_agent(sip_svc_t *s)
{
  char ip[INET6_ADDRSTRLEN], host[INET6_ADDRSTRLEN + 2], url[128];
  unsigned port;
  sip__addr_ip(&s->listen, ip, sizeof ip, &port);
  snprintf(host, sizeof host, s->listen.ss_family == AF_INET6 ? "[%s]" : "%s", ip);
  /* No transport parameter: nta binds UDP and TCP (and SCTP where built
   * in).  A list such as transport=udp,tcp crashes sofia 1.12.11, whose
   * nta_agent_add_tport() keeps the split list in an out-of-scope array. */
  if (port)
    snprintf(url, sizeof url, "sip:%s:%u", host, port);
  else
    snprintf(url, sizeof url, "sip:%s:*", host);
  snprintf(s->sl_tag, sizeof s->sl_tag, "p2psl%08x", (unsigned)su_randint(0, 0x7fffffff));
  s->agent = nta_agent_create(sip__loop_root(s->loop), (url_string_t const *)url, on_stateless,
                              (nta_agent_magic_t *)s,
                              NTATAG_UA(0), NTATAG_CANCEL_487(0), NTATAG_SERVER_RPORT(1),
                              NTATAG_CLIENT_RPORT(1), NTATAG_MAXSIZE(SIP_MAX_BODY),
                              /* A single-threaded node that is descheduled
                               * for a moment must not drop a burst of
                               * datagrams: bench-sip lost 180/200/ACKs to
                               * the default 208 KiB at 2,150 calls/s. */
                              TPTAG_UDP_RMEM(SIP_UDP_RCVBUF),
                              TAG_IF(s->resolv_conf[0], SRESTAG_RESOLV_CONF(s->resolv_conf)),
                              TAG_END());
  if (!s->agent)
    return -EADDRINUSE;
  /* Not the default leg (it would take every request before on_stateless
   * could choose): a leg for a name no request carries, which stateful()
   * gives transactions to and flow.c sends its keep-alives through. */
  s->leg = nta_leg_tcreate(s->agent, on_request, (nta_leg_magic_t *)s, NTATAG_NO_DIALOG(1),
                           URLTAG_URL("sip:leg.p2psip.invalid"),
                           TAG_END());
  s->stateless_orq = nta_outgoing_default(s->agent, on_stray, (nta_outgoing_magic_t *)s);
  if (!s->leg || !s->stateless_orq)
    return -ENOMEM;
  int rc = learn_address(s);
  s->udp_fd = rc == 0 ? sip__loop_find_fd(is_our_udp, s) : -1;
  if (rc == 0 && s->udp_fd < 0)
    log_warn("SIP UDP socket not found: no shedding by its queue");
  int err = s->udp_fd >= 0 ? sip__regsock_open(s, s->uv, &s->regsock) : 0;
  if (err < 0)
    log_warn("no REGISTER socket beside sofia's (%s): REGISTERs share its queue",
             strerror(-err));
  if (s->udp_fd >= 0 && (s->txq = udpq_new(s->udp_fd, SIP_TXQ_MAX, SIP_TXQ_BYTES)))
    sip__loop_flush(s->loop, flush_answers, s);
  if (s->udp_fd >= 0)
    sip__loop_before_step(s->loop, peek_head, s);
  return rc;
}

int sip_new(uv_loop_t *loop, dht_t *dht, const sip_config_t *cfg, sip_svc_t **out)
{
  *out = NULL;
  sip_svc_t *s = calloc(1, sizeof *s);
  if (!s)
    return -ENOMEM;
  s->uv = loop, s->dht = dht, s->udp_fd = -1;
  uv_loop_configure(loop, UV_METRICS_IDLE_TIME); /* take_rate() */
  if (su_users++ == 0) {
    su_init();
    su_log_redirect(NULL, su_logger, NULL);
  }
  su_home_init(s->home);
  int rc = copy_config(s, cfg);
  if (rc == 0 && s->dns)
    rc = write_resolv_conf(s, s->dns);
  if (rc == 0 && cfg->users)
    rc = sip__users_new(s, cfg->users, cfg->ca);
  if (rc == 0 && cfg->users)
    rc = sip__auth_new(s, cfg->digest);
  if (rc == 0)
    rc = sip__limit_new(s, cfg->rate < 0 ? 0 : cfg->rate ? (unsigned)cfg->rate : SIP_DEFAULT_RATE,
                        cfg->rate_burst > 0 ? (unsigned)cfg->rate_burst : 0,
                        cfg->source_tx < 0   ? 0
                        : cfg->source_tx ? (unsigned)cfg->source_tx
                                         : SIP_DEFAULT_SOURCE_TX);
  if (rc == 0)
    rc = sip__loop_new(loop, &s->loop);
  if (rc == 0)
    rc = create_agent(s);
  if (rc == 0 && cfg->ca_file && cfg->cert_file && cfg->key_file)
    rc = add_tls(s, cfg);
  if (rc == 0)
    rc = sip__flow_new(s);
  if (rc == 0)
    sip__gateway_watch(s, 1);
  if (rc == 0) {
    s->sweep = su_timer_create(su_root_task(sip__loop_root(s->loop)), 1000);
    s->republish = su_timer_create(su_root_task(sip__loop_root(s->loop)), SIP_PEER_REPUBLISH_MS);
    s->stop_timer = su_timer_create(su_root_task(sip__loop_root(s->loop)), SIP_STOP_MAX_MS);
    if (!s->sweep || !s->republish || !s->stop_timer)
      rc = -ENOMEM;
  }
  if (rc < 0) {
    log_warn("cannot start on the given address: %s", strerror(-rc));
    sip_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

static void on_sweep(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  sip__reg_sweep((sip_svc_t *)arg);
}

int sip_start(sip_svc_t *s)
{
  if (s->started)
    return -EALREADY;
  s->started = 1;
  su_timer_run(s->sweep, on_sweep, (su_timer_arg_t *)s);
  log_info("serving %s for %s%s", s->hostport, s->overlay,
           s->gateway ? " as proxy peer" : "");
  if (s->gateway)
    sip__gateway_start(s);
  sip__flow_update(s);
  return 0;
}

int sip_set_public(sip_svc_t *s, int on)
{
  s->public_known = 1;
  s->is_public = on != 0;
  sip__flow_update(s);
  return 0;
}

int sip_set_gateway(sip_svc_t *s, int on)
{
  on = on != 0;
  if (on == s->gateway)
    return 0;
  s->gateway = on;
  if (!s->started || s->stopping)
    return 0;
  sip__flow_update(s); /* a proxy peer needs no flow to another */
  if (on)
    return sip__gateway_start(s);
  sip__gateway_stop(s, NULL);
  return 0;
}

int sip_is_gateway(const sip_svc_t *s)
{
  return s->gateway;
}

/* FreeSWITCH's sofia-sip (1.13) frees it since 2013; Debian 12 ships a
 * 1.12.11 snapshot of 2011. */
int sip_tls_leaks_ssl(void)
{
  return strncmp(sofia_sip_name_version, "sofia-sip-1.12.", 15) == 0;
}

/* Runs from libuv (sip__loop_defer): the callback may free the service. */
static void stop_done(void *arg)
{
  sip_svc_t *s = arg;
  su_timer_reset(s->stop_timer);
  void (*cb)(sip_svc_t *, void *) = s->stop_cb;
  s->stop_cb = NULL;
  if (cb)
    cb(s, s->stop_arg);
}

static void stop_soon(sip_svc_t *s)
{
  su_timer_reset(s->stop_timer);
  sip__loop_defer(s->loop, stop_done, s);
}

static void on_stop_timer(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  stop_soon((sip_svc_t *)arg); /* a withdrawal took too long: go anyway */
}

static void on_withdrawn(sip_svc_t *s)
{
  if (--s->stop_pending == 0)
    stop_soon(s);
}

void sip_stop(sip_svc_t *s, void (*cb)(sip_svc_t *s, void *arg), void *arg)
{
  s->stop_cb = cb, s->stop_arg = arg;
  if (s->stopping)
    return;
  s->stopping = 1;
  su_timer_reset(s->sweep);
  sip__flow_update(s);
  /* A guard: the callback comes in time whatever the DHT and DNS do. */
  su_timer_set(s->stop_timer, on_stop_timer, (su_timer_arg_t *)s);
  s->stop_pending = 1; /* ourselves, so that nothing finishes inside this call */
  if (s->gateway && s->started) {
    s->stop_pending++;
    sip__gateway_stop(s, on_withdrawn);
  }
  if (--s->stop_pending == 0)
    stop_soon(s);
}

void sip_free(sip_svc_t *s)
{
  if (!s)
    return;
  if (s->loop)
    sip__loop_before_step(s->loop, NULL, NULL), sip__loop_flush(s->loop, NULL, NULL);
  udpq_free(s->txq); /* sends what waits, while sofia's socket is open */
  s->txq = NULL;
  sip__regsock_close(s->regsock);
  s->regsock = NULL;
  if (s->dht)
    sip__gateway_watch(s, 0);
  sip__dht_detach_all(s);
  sip__pings_free(s);
  sip__proxy_free_all(s);
  sip__flow_free(s);
  sip__peers_free(s);
  sip__reg_free_all(s);
  sip__resend_free(s);
  free(s->head);
  s->head = NULL;
  sip__dht_cache_free(s);
  sip__dnsreg_free(s);
  sip__auth_free(s);
  sip__users_free(s);
  sip__limit_free(s);
  su_timer_destroy(s->sweep);
  su_timer_destroy(s->republish);
  su_timer_destroy(s->stop_timer);
  if (s->stateless_orq) /* nta_agent_destroy() leaves the default */
    nta_outgoing_destroy(s->stateless_orq);
  if (s->leg)
    nta_leg_destroy(s->leg);
  if (s->agent)
    nta_agent_destroy(s->agent);
  sip__loop_free(s->loop);
  su_home_deinit(s->home);
  if (s->resolv_conf[0])
    unlink(s->resolv_conf);
  free(s->overlay), free(s->dns), free(s->dns_update), free(s->tsig), free(s->dns_address);
  free(s);
  if (--su_users == 0)
    su_deinit();
}

void sip_addr(const sip_svc_t *s, char *out, size_t len)
{
  snprintf(out, len, "%s", s->hostport);
}

/* ---- requests ---------------------------------------------------------- */

static int answer_options(nta_incoming_t *irq)
{
  nta_incoming_treply(irq, SIP_200_OK,
                      SIPTAG_ALLOW_STR("INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, "
                                       "SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK"),
                      SIPTAG_ACCEPT_STR("application/sdp"), TAG_END());
  return 200;
}

/* A request for this node itself (Request-URI without user part). */
static int serve_self(sip_svc_t *s, nta_incoming_t *irq, msg_t *msg, sip_t *sip,
                      const sip_req_t *rq)
{
  switch (sip->sip_request->rq_method) {
  case sip_method_options: {
    char from[80];
    sip__msg_source(msg, from, sizeof from);
    sip__peer_news(s, sip, from);
    msg_destroy(msg);
    return answer_options(irq);
  }
  default:
    msg_destroy(msg);
    return 404;
  }
}

static int serve(sip_svc_t *s, nta_incoming_t *irq, const sip_req_t *rq);

/* A server transaction for the request, then serve(), whose status is
 * answered as nta answers a leg callback's.  A request read from the
 * REGISTER socket came through no tport: its transaction gets the UDP
 * one (without any, nta 1.12.11 later drops a reference it never took
 * on the tport it answers through, and the agent's end crashed). */
static void stateful(sip_svc_t *s, msg_t *msg, sip_t *sip, const sip_req_t *rq)
{
  tport_t *tp = tport_delivered_by(nta_agent_tports(s->agent), msg);
  if (!tp)
    tp = udp_tport(s);
  nta_incoming_t *irq = nta_incoming_create(s->agent, s->leg, msg, sip, NTATAG_TPORT(tp), TAG_END());
  if (!irq)
    return; /* nta has freed msg */
  int status = serve(s, irq, rq);
  if (status == 0)
    return;
  if (status < 100 || status > 699 ||
      (sip->sip_request->rq_method == sip_method_invite && status < 300 && status >= 200))
    status = 500;
  if (nta_incoming_status(irq) < 200)
    nta_incoming_treply(irq, status, NULL, TAG_END());
  if (status >= 200)
    nta_incoming_destroy(irq);
}

/* An ACK, or a request for one of our phones (sip__edge_hop), that passes
 * the checks: no transaction.  One that fails them goes the stateful way,
 * which answers it. */
static void stateless(sip_svc_t *s, msg_t *msg, sip_t *sip, int edge)
{
  char hash[17];
  sip__loop_hash(sip, hash);
  int ack = sip->sip_request->rq_method == sip_method_ack;
  if (sip__check_request(s, msg, sip, hash) != 0) {
    sip_req_t rq = {.origin = SIP_FROM_OTHER, .src = -1};
    if (ack)
      msg_destroy(msg), s->c.bad_requests++;
    else
      stateful(s, msg, sip, &rq);
    return;
  }
  s->c.requests++;
  sip__pop_routes(s, msg, sip);
  if (edge)
    sip__proxy_edge(s, msg, sip, hash);
  else
    sip__proxy(s, NULL, msg, sip, hash, -1); /* an ACK along its route set */
}

/* The leg's callback: nothing ever matches its URL, but nta must have one. */
static int on_request(nta_leg_magic_t *magic, nta_leg_t *leg, nta_incoming_t *irq,
                      sip_t const *csip)
{
  return 481;
}

static int serve(sip_svc_t *s, nta_incoming_t *irq, const sip_req_t *rq)
{
  if (!s->started || s->stopping)
    return 503;
  s->c.requests++;
  msg_t *msg = nta_incoming_getrequest(irq);
  sip_t *sip = sip_object(msg);
  if (!msg || !sip) {
    msg_destroy(msg);
    return 500;
  }
  sip_method_t method = sip->sip_request->rq_method;
  char hash[17];
  sip__loop_hash(sip, hash);
  int status = sip__check_request(s, msg, sip, hash);
  if (status == 0 && sip->sip_max_forwards && sip->sip_max_forwards->mf_count == 0 &&
      method == sip_method_options) {
    msg_destroy(msg);
    return answer_options(irq);
  }
  if (status == 420 && method != sip_method_ack) {
    /* RFC 3261 16.3 step 6: name what we do not support. */
    char list[512] = "";
    const sip_proxy_require_t *pr = sip->sip_proxy_require;
    for (int i = 0; pr->k_items && pr->k_items[i] && i < 16; i++)
      snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "",
               pr->k_items[i]);
    nta_incoming_treply(irq, SIP_420_BAD_EXTENSION, SIPTAG_UNSUPPORTED_STR(list), TAG_END());
  }
  if (status) {
    s->c.bad_requests += status == 400 || status == 416;
    s->c.loops += status == 482;
    s->c.too_many_hops += status == 483;
    msg_destroy(msg);
    return method == sip_method_ack ? 200 : status;
  }
  sip__pop_routes(s, msg, sip);
  if (sip__next_hop(s, sip) == SIP_HOP_SELF && method != sip_method_ack)
    return serve_self(s, irq, msg, sip, rq);
  return sip__proxy(s, irq, msg, sip, hash, rq->src);
}

static int on_stray(nta_outgoing_magic_t *magic, nta_outgoing_t *orq, sip_t const *sip)
{
  return sip__stray_response((sip_svc_t *)magic, orq, sip);
}

/* ---- admin ------------------------------------------------------------- */

json_t *sip_stats_json(const sip_svc_t *s)
{
  usize_t server_tr = 0, client_tr = 0, bad = 0;
  nta_agent_get_stats(s->agent, NTATAG_S_SERVER_TR_REF(server_tr),
                      NTATAG_S_CLIENT_TR_REF(client_tr), NTATAG_S_BAD_MESSAGE_REF(bad),
                      TAG_END());
  const sip_counters_t *c = &s->c;
  json_t *counters = json_pack(
      "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,"
      "s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
      "requests", (json_int_t)c->requests, "responses_forwarded", (json_int_t)c->responses_fwd,
      "acks_forwarded", (json_int_t)c->acks_fwd, "stray_forwarded", (json_int_t)c->stray_fwd,
      "registers", (json_int_t)c->registers, "register_ok", (json_int_t)c->register_ok,
      "register_failed", (json_int_t)c->register_failed, "unregisters",
      (json_int_t)c->unregisters, "lookups", (json_int_t)c->lookups, "lookup_failed",
      (json_int_t)c->lookup_failed, "not_found", (json_int_t)c->not_found, "expired",
      (json_int_t)c->expired, "proxied", (json_int_t)c->proxied, "via_peer",
      (json_int_t)c->via_peer, "peer_failover", (json_int_t)c->peer_failover, "to_public",
      (json_int_t)c->to_public, "from_public", (json_int_t)c->from_public, "loops",
      (json_int_t)c->loops, "too_many_hops", (json_int_t)c->too_many_hops, "bad_requests",
      (json_int_t)(c->bad_requests + bad), "cancels", (json_int_t)c->cancels, "no_peer",
      (json_int_t)c->no_peer, "dns_updates", (json_int_t)c->dns_updates, "dns_update_failed",
      (json_int_t)c->dns_update_failed, "dns_gc_checks", (json_int_t)c->dns_gc_checks,
      "dns_stale_removed", (json_int_t)c->dns_stale_removed, "transport_bad_messages",
      (json_int_t)bad,
      "lookups_cached", (json_int_t)c->cache_hits, "lookups_stale", (json_int_t)c->stale,
      "stateless_forwarded", (json_int_t)c->stateless);
  const udpq_counts_t none = {0}, *tx = s->txq ? udpq_counts(s->txq) : &none;
  /* A proxy peer found dead (gateway.c, dnsreg.c). */
  const struct { const char *name; uint64_t v; } down[] = {
      {"peer_down_reported", c->down_reported}, {"dns_down_heard", c->down_heard},
      {"dns_down_ignored", c->down_ignored},    {"dns_down_checks", c->down_checks},
      {"dns_down_alive", c->down_alive},        {"dns_down_removed", c->down_removed},
      {"dns_readded", c->dns_readded},          {"dns_refused", c->dns_refused},
      {"dns_missing_checks", c->dns_missing_checks}, {"dns_missing_alive", c->dns_missing_alive},
      /* The edge (auth.c, edge.c). */
      {"auth_challenges", c->auth_challenges}, {"auth_ok", c->auth_ok},
      {"auth_failed", c->auth_failed},          {"auth_wrong_user", c->auth_wrong_user},
      {"acks_absorbed", c->acks_absorbed},      {"no_users", c->no_users},
      {"no_dialog", c->no_dialog},
      {"from_nodes", c->from_nodes},            {"relay_forbidden", c->relay_forbidden},
      {"target_refused", c->target_refused},    {"stateless_in_dialog", c->stateless_in_dialog},
      {"rate_limited", c->rate_limited},        {"rate_dropped", c->rate_dropped},
      {"source_limited", c->source_limited},    {"overloaded", c->overloaded},
      {"register_trimmed", c->register_trimmed}, {"register_too_big", c->register_too_big},
      {"shed", c->shed},                        {"register_repeats", c->register_repeats},
      {"register_repeats_peeked", c->register_repeats_peeked},
      {"register_resent_peeked", c->register_resent_peeked}, {"shed_peeked", c->shed_peeked},
      {"shed_repeats_dropped", c->shed_repeats_dropped}, {"shed_silent", c->shed_silent},
      {"shed_deaf_sources", c->shed_deaf_sources},
      {"shed_queue", c->shed_queue},            {"shed_dht_behind", c->shed_dht_behind},
      {"challenged_peeked", c->challenged_peeked},
      {"register_answers_built", c->register_answers_built},
      {"register_direct", c->register_direct},  {"edge_unknown", c->edge_unknown},
      {"register_socket", c->register_socket},  {"register_truncated", c->register_truncated},
      /* Our answers gathered per loop turn (send_answer). */
      {"udp_answers_sent", tx->sent},           {"udp_answer_batches", tx->batches},
      {"udp_answers_dropped", tx->dropped}};
  for (size_t i = 0; counters && i < sizeof down / sizeof *down; i++)
    json_object_set_new(counters, down[i].name, json_integer((json_int_t)down[i].v));
  json_t *flow = sip__flow_json(s);
  /* What the shedding decides by (overloaded()), as last measured. */
  uint64_t above = s->reg_shed.above_hr ? (uv_hrtime() - s->reg_shed.above_hr) / 1000000 : 0;
  json_t *load = json_pack("{s:f, s:I, s:I, s:I, s:f, s:I}", "rate_per_ms", s->rx_rate,
                           "queue_bytes", (json_int_t)s->q_bytes + s->q_reg_bytes,
                           "register_queue_bytes", (json_int_t)s->q_reg_bytes,
                           "register_queue_long_ms", (json_int_t)above, "register_shed_share",
                           s->reg_shed.share, "registering", (json_int_t)s->n_rtx);
  return json_pack("{s:s, s:s, s:s, s:b, s:I, s:{s:I, s:I, s:I}, s:i, s:o, s:o, s:o, s:o}", "listen",
                   s->hostport, "tls", s->tls_hostport, "overlay", s->overlay, "gateway", s->gateway, "registrations",
                   (json_int_t)sip__regs_count(s), "transactions", "proxy",
                   (json_int_t)s->n_ptx, "server", (json_int_t)server_tr, "client",
                   (json_int_t)client_tr, "proxy_peers_known", s->n_peers, "counters",
                   counters ? counters : json_object(), "flow", flow ? flow : json_object(),
                   "users", sip__users_json(s), "load", load ? load : json_object());
}

json_t *sip_registrations_json(const sip_svc_t *s)
{
  return sip__regs_json(s);
}
