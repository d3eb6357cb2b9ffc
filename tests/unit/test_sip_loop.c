/*
 * sip/loop.c: sofia's timers and socket events run from a libuv loop.
 * Timers fire once each, in deadline order, not before their deadline; an
 * fd registered with sofia wakes it through libuv; a deferred call runs
 * from libuv; the flush hook runs after the poll's I/O callbacks and
 * before a poll that may block (what a timer queued does not wait for the
 * next event); after sip__loop_free() the loop closes with no handle left.
 */
#include <sys/socket.h>
#include <unistd.h>

#include "sip/sip_int.h"
#include "tests/unit/test.h"

#define NT 64

static int fired, order_ok = 1, early;
static su_duration_t last_delay = -1;
static uint64_t t0;
static uv_loop_t *uv;
static su_duration_t delays[NT];
static int io_seen, deferred;
static uint64_t queued_at, flushed_at; /* by a uv timer; by the flush hook */
static int flushes, flushes_at_io = -1;

static void on_su_timer(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  su_duration_t d = *(su_duration_t *)arg;
  uv_update_time(uv);
  if ((su_duration_t)(uv_now(uv) - t0) + 1 < d) /* 1 ms of rounding */
    early++;
  if (d < last_delay)
    order_ok = 0;
  last_delay = d;
  fired++;
  su_timer_destroy(t);
}

static int on_readable(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg)
{
  char buf[16];
  if (read(*(int *)arg, buf, sizeof buf) > 0)
    io_seen++;
  flushes_at_io = flushes;
  return 0;
}

static int fds[2];

static void on_write(uv_timer_t *t)
{
  ASSERT_EQ(write(fds[1], "x", 1), 1);
}

static void on_deferred(void *arg)
{
  deferred = *(int *)arg;
}

/* As a DHT timeout answering a REGISTER does: from a timer, with nothing
 * else due before the stop timer. */
static void on_queue(uv_timer_t *t)
{
  queued_at = uv_now(t->loop);
}

static void on_flush(void *arg)
{
  flushes++;
  if (queued_at && !flushed_at)
    flushed_at = uv_now(uv);
}

static void on_stop(uv_timer_t *t)
{
  uv_stop(t->loop);
}

int main(void)
{
  su_init();
  uv = uv_default_loop();
  sip_loop_t *l = NULL;
  ASSERT_OK(sip__loop_new(uv, &l));
  su_root_t *root = sip__loop_root(l);
  ASSERT(root != NULL);
  uv_update_time(uv);
  t0 = uv_now(uv);
  for (int i = 0; i < NT; i++) {
    delays[i] = (su_duration_t)(1 + (i * 37) % 120); /* 1..120 ms, shuffled */
    su_timer_t *t = su_timer_create(su_root_task(root), delays[i]);
    ASSERT(t != NULL);
    ASSERT_OK(su_timer_set(t, on_su_timer, (su_timer_arg_t *)&delays[i]));
  }
  ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, fds));
  su_wait_t w[1];
  ASSERT_OK(su_wait_create(w, fds[0], SU_WAIT_IN));
  int idx = su_root_register(root, w, on_readable, (su_wakeup_arg_t *)&fds[0], 0);
  ASSERT_GT(idx, 0);
  uv_timer_t wr, stop, queue;
  uv_timer_init(uv, &wr);
  uv_timer_start(&wr, on_write, 30, 0);
  uv_timer_init(uv, &queue);
  uv_timer_start(&queue, on_queue, 150, 0);
  sip__loop_flush(l, on_flush, NULL);
  int magic = 42;
  ASSERT_OK(sip__loop_defer(l, on_deferred, &magic));
  uv_timer_init(uv, &stop);
  uv_timer_start(&stop, on_stop, 300, 0);
  uv_run(uv, UV_RUN_DEFAULT);

  ASSERT_EQ(fired, NT);
  ASSERT_EQ(order_ok, 1);
  ASSERT_EQ(early, 0);
  ASSERT_EQ(io_seen, 1);
  ASSERT_EQ(deferred, 42);
  ASSERT_GT(flushes, flushes_at_io); /* after the I/O callback */
  ASSERT_GT(flushed_at, 0);
  ASSERT_LT(flushed_at - queued_at, 100); /* not at the stop timer, 150 ms on */

  ASSERT_GE(su_root_deregister(root, idx), 0);
  sip__loop_free(l);
  uv_close((uv_handle_t *)&wr, NULL);
  uv_close((uv_handle_t *)&stop, NULL);
  uv_close((uv_handle_t *)&queue, NULL);
  ASSERT_OK(uv_run(uv, UV_RUN_DEFAULT));
  ASSERT_OK(uv_loop_close(uv));
  close(fds[0]), close(fds[1]);
  su_deinit();
  return 0;
}
