/*
 * The JSON admin socket: a unix stream socket, mode 0600, one request
 * object per line in, one response object per line out.  Requests on one
 * connection are answered in order: the next line is not read until the
 * current request has its answer.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "dht/log.h"
#include "node/node.h"

#define ADMIN_MAX_LINE (64 * 1024)

struct node_admin {
  uv_pipe_t server;
  bool server_init;
  char *path;
  int clients;
};

typedef struct client {
  uv_pipe_t pipe;
  node_t *node;
  char *buf;
  size_t len, cap;
  bool busy;    /* a request is waiting for its answer */
  bool closing; /* freed when closed and not busy */
} client_t;

static void client_parse(client_t *c);

static void client_closed(uv_handle_t *h) {
  client_t *c = h->data;
  c->node->admin->clients--;
  c->closing = true;
  if (!c->busy) {
    free(c->buf);
    free(c);
  }
}

static void client_close(client_t *c) {
  if (!uv_is_closing((uv_handle_t *)&c->pipe)) uv_close((uv_handle_t *)&c->pipe, client_closed);
}

typedef struct {
  uv_write_t req;
  client_t *c;
  bool close_after;
  char *text;
} awrite_t;

static void write_done(uv_write_t *req, int status) {
  awrite_t *w = (awrite_t *)req;
  if (status < 0 || w->close_after) client_close(w->c);
  free(w->text);
  free(w);
}

static void client_send(client_t *c, json_t *resp, bool close_after) {
  char *text = json_dumps(resp, JSON_COMPACT | JSON_ENCODE_ANY);
  json_decref(resp);
  awrite_t *w = malloc(sizeof(*w));
  if (!text || !w) {
    free(text);
    free(w);
    client_close(c);
    return;
  }
  size_t n = strlen(text);
  text[n] = '\n'; /* json_dumps leaves room for the NUL; it becomes the newline */
  w->c = c;
  w->text = text;
  w->close_after = close_after;
  uv_buf_t buf = uv_buf_init(text, (unsigned)n + 1);
  if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, write_done)) {
    free(text);
    free(w);
    client_close(c);
  }
}

static json_t *error_reply(const char *msg) {
  return json_pack("{s:b, s:s}", "ok", 0, "error", msg);
}

static void on_reply(node_t *n, json_t *resp, void *arg) {
  client_t *c = arg;
  c->busy = false;
  if (c->closing) { /* the client went away while we worked */
    json_decref(resp);
    free(c->buf);
    free(c);
    return;
  }
  client_send(c, resp, false);
  client_parse(c); /* lines that arrived meanwhile */
}

/* Handle complete lines until one needs to wait for an answer. */
static void client_parse(client_t *c) {
  while (!c->busy && !c->closing) {
    char *nl = memchr(c->buf, '\n', c->len);
    if (!nl) {
      if (c->len >= ADMIN_MAX_LINE) {
        client_send(c, error_reply("request line too long"), true);
        c->len = 0;
      }
      return;
    }
    size_t line = (size_t)(nl - c->buf);
    char msg[300];
    json_t *req = line ? node_request_parse(c->buf, line, node_role_commands, msg, sizeof(msg)) : NULL;
    memmove(c->buf, nl + 1, c->len - line - 1);
    c->len -= line + 1;
    if (line == 0) continue; /* blank lines are harmless */
    if (!req) {
      client_send(c, error_reply(msg), false);
      continue;
    }
    c->busy = true;
    node_admin_dispatch(c->node, req, on_reply, c);
    json_decref(req);
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  client_t *c = h->data;
  if (c->cap - c->len < 4096) {
    size_t cap = c->cap ? c->cap * 2 : 8192;
    if (cap > ADMIN_MAX_LINE + 8192) cap = ADMIN_MAX_LINE + 8192;
    char *nb = cap > c->cap ? realloc(c->buf, cap) : NULL;
    if (nb) {
      c->buf = nb;
      c->cap = cap;
    }
  }
  *buf = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  client_t *c = s->data;
  if (n < 0) {
    client_close(c);
    return;
  }
  c->len += (size_t)n;
  client_parse(c);
  if (!c->closing && c->len == c->cap && c->len >= ADMIN_MAX_LINE) {
    /* Still no newline in a full buffer: the line is oversized. */
    client_send(c, error_reply("request line too long"), true);
    c->len = 0;
  }
}

static void on_connection(uv_stream_t *server, int status) {
  node_t *n = server->data;
  if (status < 0) return;
  client_t *c = calloc(1, sizeof(*c));
  if (!c) return;
  c->node = n;
  uv_pipe_init(n->loop, &c->pipe, 0);
  c->pipe.data = c;
  n->admin->clients++;
  if (uv_accept(server, (uv_stream_t *)&c->pipe) ||
      uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read))
    client_close(c);
}

/* A socket file left by a node that crashed is removed; one that answers
 * belongs to a live node, and we refuse to steal it. */
static int clear_stale(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0) return 0;
  if (!S_ISSOCK(st.st_mode)) return -EEXIST;
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
  int live = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
  if (fd >= 0) close(fd);
  if (live) return -EADDRINUSE;
  return unlink(path) == 0 ? 0 : -errno;
}

int node_admin_start(node_t *n, const char *path) {
  struct node_admin *a = calloc(1, sizeof(*a));
  if (!a || !(a->path = strdup(path))) {
    free(a);
    return -ENOMEM;
  }
  n->admin = a;
  int err = clear_stale(path);
  if (err) return err;
  uv_pipe_init(n->loop, &a->server, 0);
  a->server_init = true;
  a->server.data = n;
  /* The umask makes the socket 0600 from the moment it exists. */
  mode_t old = umask(0177);
  err = uv_pipe_bind(&a->server, path);
  umask(old);
  if (err) return err;
  return uv_listen((uv_stream_t *)&a->server, 64, on_connection);
}

void node_admin_close(node_t *n) {
  struct node_admin *a = n->admin;
  if (!a) return;
  if (a->server_init && !uv_is_closing((uv_handle_t *)&a->server))
    uv_close((uv_handle_t *)&a->server, NULL);
  if (a->server_init && a->path) unlink(a->path);
  free(a->path);
  a->path = NULL;
}
