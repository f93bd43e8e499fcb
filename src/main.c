/*
 * main.c - argv and config, the loop, signals, and the shutdown sequence:
 *   1. SIGTERM/SIGINT: stop accepting; waiting long polls answer at once
 *   2. requests in flight finish (publishes get their sync), up to a deadline
 *   3. connections close, the engine syncs every partition and closes
 *   4. every handle is closed and the loop must close cleanly; exit 0
 */
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "streamd/config.h"
#include "streamd/engine.h"
#include "streamd/err.h"
#include "streamd/http.h"
#include "streamd/log.h"
#include "streamd/service.h"

#define SHUTDOWN_DEADLINE_MS 10000

struct server {
  uv_loop_t loop;
  struct sd_config cfg;
  struct sd_engine *engine;
  struct sd_http *http;
  uv_signal_t sigterm, sigint;
  uv_timer_t drain;
  uint64_t drain_started;
  int stopping;
};

static void on_drain(uv_timer_t *t) {
  struct server *sv = t->data;
  size_t left = sd_http_in_flight(sv->http);
  if (left == 0 || uv_now(&sv->loop) - sv->drain_started >= SHUTDOWN_DEADLINE_MS) {
    if (left) SD_WARN("shutdown: %zu request(s) still in flight at the deadline", left);
    uv_timer_stop(t);
    uv_stop(&sv->loop);
  }
}

static void on_signal(uv_signal_t *h, int signum) {
  struct server *sv = h->data;
  int rc;
  if (sv->stopping) return;
  sv->stopping = 1;
  SD_INFO("received %s: shutting down", signum == SIGTERM ? "SIGTERM" : "SIGINT");
  if ((rc = sd_service_stopping()) != 0) SD_WARN("service manager notification failed: %s", sd_strerror(rc));
  sd_http_quiesce(sv->http);
  sv->drain_started = uv_now(&sv->loop);
  uv_timer_start(&sv->drain, on_drain, 0, 10);
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

int main(int argc, char **argv) {
  static struct server sv;
  char err[512] = "";
  int rc;
  enum sd_log_level lvl;

  sd_config_default(&sv.cfg);
  rc = sd_config_from_args(&sv.cfg, argc, argv, err, sizeof(err));
  if (rc == 1) return 0;
  if (rc != 0) {
    fprintf(stderr, "streamd: %s\n", err);
    return 2;
  }
  if (sd_log_parse_level(sv.cfg.log_level, &lvl) != 0) {
    fprintf(stderr, "streamd: log_level must be debug, info, warn or error\n");
    return 2;
  }
  sd_log_set_level(lvl);
  enum sd_log_format fmt;
  if (sd_log_parse_format(sv.cfg.log_format, &fmt) != 0) {
    fprintf(stderr, "streamd: log_format must be text or json\n");
    return 2;
  }
  sd_log_set_format(fmt);
  signal(SIGPIPE, SIG_IGN);
  /* Every connection holds a descriptor: use all the hard limit allows. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  if ((rc = uv_loop_init(&sv.loop)) != 0) {
    SD_ERROR("uv_loop_init: %s", uv_strerror(rc));
    return 1;
  }
  if ((rc = sd_engine_open(&sv.loop, &sv.cfg.engine, &sv.engine)) != 0) {
    SD_ERROR("cannot open data directory %s: %s", sv.cfg.data_dir, sd_strerror(rc));
    return 1;
  }
  if ((rc = sd_http_start(&sv.loop, sv.engine, &sv.cfg, &sv.http)) != 0) {
    sd_engine_close(sv.engine);
    return 1;
  }
  uv_signal_init(&sv.loop, &sv.sigterm);
  uv_signal_init(&sv.loop, &sv.sigint);
  sv.sigterm.data = sv.sigint.data = &sv;
  uv_signal_start(&sv.sigterm, on_signal, SIGTERM);
  uv_signal_start(&sv.sigint, on_signal, SIGINT);
  uv_timer_init(&sv.loop, &sv.drain);
  sv.drain.data = &sv;

  static const char *const modes[] = {"always", "interval", "never"};
  SD_INFO("streamd %s listening on %s:%u (data %s, durability %s)", STREAMD_VERSION, sv.cfg.host,
          sd_http_port(sv.http), sv.cfg.data_dir, modes[sv.cfg.engine.durability]);
  /* Listening and serving from here: the service manager may start what depends on us. */
  char status[128];
  snprintf(status, sizeof(status), "listening on %s:%u", sv.cfg.host, sd_http_port(sv.http));
  if ((rc = sd_service_ready(status)) != 0) SD_WARN("service manager notification failed: %s", sd_strerror(rc));

  uv_run(&sv.loop, UV_RUN_DEFAULT);

  sd_http_free(sv.http);
  rc = sd_engine_close(sv.engine);
  if (rc != 0) SD_ERROR("final sync failed: %s", sd_strerror(rc));
  uv_walk(&sv.loop, close_walk, NULL);
  uv_run(&sv.loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&sv.loop) != 0) SD_WARN("loop closed with handles still open");
  SD_INFO("stopped");
  return rc == 0 ? 0 : 1;
}
