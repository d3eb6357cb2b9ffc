/* p2psipctl: send one admin request, pretty-print the answer.
 * Exit 0 on "ok":true, 1 on "ok":false or no answer, 2 on bad usage. */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CTL_TIMEOUT_MS 15000
#define CTL_MAX_REPLY (16 * 1024 * 1024)

static void usage(FILE *f) {
  fprintf(f, "usage: p2psipctl -s SOCKET COMMAND [ARGS]\n\n"
             "commands:\n"
             "  status                 the node's id, ring neighbours, fingers, roles\n"
             "  put KEY JSON [TTL]     store a JSON value under KEY (TTL seconds, default 3600)\n"
             "  get KEY [--local]      the values stored under KEY (--local: only this\n"
             "                         node's own copy, no message sent)\n"
             "  remove KEY [VALUE_ID]  withdraw a value this node put (default value id: the node's id)\n"
             "  lookup KEY             the node responsible for KEY, and the path to it\n"
             "  stats                  message, lookup and memory counters\n"
             "  leave                  leave the overlay gracefully and exit\n"
             "  relays                 the relay agent peers (TURN) the overlay offers\n"
             "  turn-credentials USER [TTL]  mint TURN credentials for a UA\n"
             "  phone-config USER [TTL] [--format baresip|json] [--media relay|ice]\n"
             "                         a phone's settings: this node as registrar and outbound\n"
             "                         proxy, an overlay relay and a fresh TURN credential (TTL\n"
             "                         seconds, default a day); media through the relay always,\n"
             "                         or as an ICE candidate; baresip: an accounts file,\n"
             "                         json: the admin answer\n"
             "  check-public           ask peers again now whether this node is public\n"
             "  check-split            look for another ring through every bootstrap address now\n"
             "  CMD                    any other admin command without arguments\n"
             "  raw JSON               send a request object as given\n");
}

/* phone-config --format baresip prints an accounts file, not JSON. */
static int as_accounts;

static json_t *build_phone_config(int argc, char **argv) {
  const char *format = "baresip", *media = "relay", *ttl = NULL, *user = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--format") == 0 && i + 1 < argc)
      format = argv[++i];
    else if (strcmp(argv[i], "--media") == 0 && i + 1 < argc)
      media = argv[++i];
    else if (!user)
      user = argv[i];
    else if (!ttl)
      ttl = argv[i];
    else
      return NULL;
  }
  char *end = NULL;
  long t = ttl ? strtol(ttl, &end, 10) : 0;
  if (!user || (ttl && (*end || t <= 0)) || (strcmp(format, "baresip") && strcmp(format, "json")))
    return NULL;
  as_accounts = strcmp(format, "baresip") == 0;
  json_t *req =
      json_pack("{s:s, s:s, s:s, s:s}", "cmd", argv[0], "user", user, "format", format, "media", media);
  if (ttl) json_object_set_new(req, "ttl", json_integer(t));
  return req;
}

/* The answer as a baresip accounts file: what it is, then the line. */
static void print_accounts(json_t *r) {
  json_t *turn = json_object_get(r, "turn"), *relays = json_object_get(r, "relays"), *e;
  time_t exp = (time_t)json_integer_value(json_object_get(turn, "expires"));
  char when[64];
  size_t i;
  strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&exp));
  printf("# %s through %s; TURN credential valid until %s\n# relays:", json_string_value(json_object_get(r, "aor")),
         json_string_value(json_object_get(r, "registrar")), when);
  json_array_foreach(relays, i, e) {
    const char *a = json_string_value(json_object_get(e, "addr"));
    printf(" %s%s", a, strcmp(a, json_string_value(json_object_get(r, "relay"))) ? "" : " (this account's)");
  }
  printf("\n%s\n", json_string_value(json_object_get(r, "account")));
}

static json_t *build(int argc, char **argv) {
  const char *cmd = argv[0];
  json_error_t je;
  if (strcmp(cmd, "raw") == 0 && argc == 2) return json_loads(argv[1], 0, &je);
  if (strcmp(cmd, "put") == 0 && (argc == 3 || argc == 4)) {
    json_t *v = json_loads(argv[2], JSON_DECODE_ANY, &je);
    if (!v) {
      fprintf(stderr, "p2psipctl: put: value is not JSON: %s\n", je.text);
      return NULL;
    }
    char *end;
    long ttl = argc == 4 ? strtol(argv[3], &end, 10) : 3600;
    if (argc == 4 && (*end || ttl <= 0)) {
      fprintf(stderr, "p2psipctl: put: TTL must be a positive integer\n");
      json_decref(v);
      return NULL;
    }
    return json_pack("{s:s, s:s, s:o, s:I}", "cmd", "put", "key", argv[1], "value", v, "ttl",
                     (json_int_t)ttl);
  }
  if (strcmp(cmd, "turn-credentials") == 0 && (argc == 2 || argc == 3))
    return json_pack("{s:s, s:s, s:I}", "cmd", cmd, "user", argv[1], "ttl",
                     (json_int_t)(argc == 3 ? strtol(argv[2], NULL, 10) : 86400));
  if (strcmp(cmd, "phone-config") == 0) return build_phone_config(argc, argv);
  if (strcmp(cmd, "remove") == 0 && (argc == 2 || argc == 3))
    return argc == 2 ? json_pack("{s:s, s:s}", "cmd", cmd, "key", argv[1])
                     : json_pack("{s:s, s:s, s:s}", "cmd", cmd, "key", argv[1], "value_id", argv[2]);
  if ((strcmp(cmd, "get") == 0 || strcmp(cmd, "lookup") == 0) && argc == 2)
    return json_pack("{s:s, s:s}", "cmd", cmd, "key", argv[1]);
  if (strcmp(cmd, "get") == 0 && argc == 3 && strcmp(argv[2], "--local") == 0)
    return json_pack("{s:s, s:s, s:b}", "cmd", cmd, "key", argv[1], "local", 1);
  if (argc == 1 && strcmp(cmd, "put") && strcmp(cmd, "get") && strcmp(cmd, "lookup") && strcmp(cmd, "remove") &&
      strcmp(cmd, "raw"))
    return json_pack("{s:s}", "cmd", cmd);
  return NULL;
}

static int connect_to(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof(sa.sun_path)) return -ENAMETOOLONG;
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

/* Read up to the first newline, within the timeout. */
static char *read_line(int fd) {
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  struct pollfd p = {.fd = fd, .events = POLLIN};
  while (buf) {
    if (poll(&p, 1, CTL_TIMEOUT_MS) <= 0) break;
    if (len + 1 >= cap) {
      if (cap >= CTL_MAX_REPLY) break;
      char *nb = realloc(buf, cap *= 2);
      if (!nb) break;
      buf = nb;
    }
    ssize_t n = read(fd, buf + len, cap - len - 1);
    if (n <= 0) break;
    len += (size_t)n;
    buf[len] = '\0';
    if (memchr(buf, '\n', len)) return buf;
  }
  free(buf);
  return NULL;
}

int main(int argc, char **argv) {
  const char *sock = NULL;
  int i = 1;
  if (i < argc && (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)) {
    usage(stdout);
    return 0;
  }
  if (i + 1 < argc && strcmp(argv[i], "-s") == 0) {
    sock = argv[i + 1];
    i += 2;
  }
  if (!sock || i >= argc) {
    usage(stderr);
    return 2;
  }
  json_t *req = build(argc - i, argv + i);
  if (!req) {
    usage(stderr);
    return 2;
  }
  int fd = connect_to(sock);
  if (fd < 0) {
    fprintf(stderr, "p2psipctl: %s: %s\n", sock, strerror(-fd));
    json_decref(req);
    return 1;
  }
  char *text = json_dumps(req, JSON_COMPACT);
  json_decref(req);
  size_t tl = strlen(text);
  int ok = write(fd, text, tl) == (ssize_t)tl && write(fd, "\n", 1) == 1;
  free(text);
  char *line = ok ? read_line(fd) : NULL;
  close(fd);
  if (!line) {
    fprintf(stderr, "p2psipctl: no answer from %s\n", sock);
    return 1;
  }
  json_error_t je;
  json_t *resp = json_loads(line, JSON_DISABLE_EOF_CHECK, &je);
  free(line);
  if (!resp) {
    fprintf(stderr, "p2psipctl: answer is not JSON: %s\n", je.text);
    return 1;
  }
  int rc = json_is_true(json_object_get(resp, "ok")) ? 0 : 1;
  if (rc == 0 && as_accounts && json_is_string(json_object_get(resp, "account"))) {
    print_accounts(resp);
  } else {
    json_dumpf(resp, stdout, JSON_INDENT(2));
    putchar('\n');
  }
  json_decref(resp);
  return rc;
}
