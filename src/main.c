/*
 * main.c - argv and config, the loop, signals, and the shutdown sequence:
 *   1. SIGTERM/SIGINT: stop accepting; waiting long polls answer at once
 *   2. requests in flight finish (publishes get their sync), up to a deadline
 *   3. connections close, the engine syncs every partition and closes
 *   4. every handle is closed and the loop must close cleanly; exit 0
 * SIGHUP re-reads the API keys (key lines and keys_file) without touching
 * connections; a new set that does not load is logged and ignored.
 */
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "streamd/auth.h"
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
  uv_signal_t sigterm, sigint, sighup;
  int argc;
  char **argv;
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

/* Builds the keyring of cfg and applies protected mode: no keys on a host
 * that is not loopback is refused unless protected_mode is off.  0 or an
 * error with a sentence in err. */
static int load_keys(const struct sd_config *cfg, const char *host, struct sd_auth **out, char *err, size_t cap) {
  int rc = sd_auth_new(cfg->keys, cfg->keys_file, out, err, cap);
  if (rc != 0) return rc;
  if (sd_auth_count(*out) == 0 && cfg->protected_mode && !sd_auth_is_loopback(host)) {
    snprintf(err, cap,
             "protected mode: no API keys are configured, so streamd listens only on a loopback address, not on %s; "
             "configure keys (key, keys_file; see docs/security.md) or set protected_mode = false to serve "
             "everyone without keys",
             host);
    sd_auth_unref(*out);
    *out = NULL;
    return SD_E_INVALID_PARAMETER;
  }
  return 0;
}

/* SIGHUP: the config file and flags are read again as at start-up; only
 * the keys are taken from them. */
static void on_reload(uv_signal_t *h, int signum) {
  struct server *sv = h->data;
  struct sd_config *cfg = malloc(sizeof(*cfg));
  struct sd_auth *auth = NULL;
  char err[512] = "";
  (void)signum;
  if (sv->stopping) { /* the server may already be freed */
    free(cfg);
    return;
  }
  if (cfg == NULL) {
    SD_ERROR("SIGHUP: out of memory; keys unchanged");
    return;
  }
  (void)sd_service_reloading();
  sd_config_default(cfg);
  enum sd_log_level lvl;
  enum sd_log_format fmt;
  if (sd_config_from_args(cfg, sv->argc, sv->argv, err, sizeof(err)) != 0 ||
      load_keys(cfg, sv->cfg.host, &auth, err, sizeof(err)) != 0) {
    SD_ERROR("SIGHUP: configuration and keys unchanged: %s", err);
  } else if (sd_log_parse_level(cfg->log_level, &lvl) != 0 || sd_log_parse_format(cfg->log_format, &fmt) != 0) {
    sd_auth_unref(auth);
    SD_ERROR("SIGHUP: configuration and keys unchanged: log_level must be debug, info, warn or error and log_format text or json");
  } else {
    char restart[512];
    SD_INFO("SIGHUP: %zu API key(s) in force (were %zu)", sd_auth_count(auth), sd_http_key_count(sv->http));
    sd_http_set_auth(sv->http, auth);
    sd_config_apply_live(&sv->cfg, cfg, restart, sizeof(restart));
    sd_log_set_level(lvl);
    sd_log_set_format(fmt);
    if (restart[0]) SD_WARN("SIGHUP: changed settings that take effect at the next start: %s", restart);
  }
  free(cfg);
  char status[128];
  snprintf(status, sizeof(status), "listening on %s:%u; %zu API key(s)", sv->cfg.host, sd_http_port(sv->http),
           sd_http_key_count(sv->http));
  (void)sd_service_ready(status);
}

/* --hash-key KEY (or - to read it from standard input) prints the hash
 * to put in a key line.  Returns the exit status. */
static int hash_key(const char *arg) {
  char line[SD_AUTH_KEY_MAX + 2], hash[SD_AUTH_HASH_LINE], err[256];
  const char *key = arg;
  if (strcmp(arg, "-") == 0) {
    if (fgets(line, sizeof(line), stdin) == NULL) {
      fprintf(stderr, "streamd: --hash-key -: no key on standard input\n");
      return 2;
    }
    line[strcspn(line, "\r\n")] = '\0';
    key = line;
  }
  if (sd_auth_key_check(key, strlen(key), err, sizeof(err)) != 0) {
    fprintf(stderr, "streamd: --hash-key: %s\n", err);
    return 2;
  }
  sd_auth_hash(key, strlen(key), hash);
  printf("%s\n", hash);
  return 0;
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

  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--hash-key") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "streamd: --hash-key needs a key (or - to read it from standard input)\n");
        return 2;
      }
      return hash_key(argv[i + 1]);
    }
  }
  sv.argc = argc;
  sv.argv = argv;
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
  struct sd_auth *auth = NULL;
  if (load_keys(&sv.cfg, sv.cfg.host, &auth, err, sizeof(err)) != 0) {
    fprintf(stderr, "streamd: %s\n", err);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  /* Every connection holds a descriptor: use all the hard limit allows. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  if ((rc = uv_loop_init(&sv.loop)) != 0) {
    SD_ERROR("uv_loop_init: %s", uv_strerror(rc));
    sd_auth_unref(auth);
    return 1;
  }
  if ((rc = sd_engine_open(&sv.loop, &sv.cfg.engine, &sv.engine)) != 0) {
    SD_ERROR("cannot open data directory %s: %s", sv.cfg.data_dir, sd_strerror(rc));
    sd_auth_unref(auth);
    return 1;
  }
  if ((rc = sd_http_start(&sv.loop, sv.engine, &sv.cfg, &sv.http)) != 0) {
    sd_engine_close(sv.engine);
    sd_auth_unref(auth);
    return 1;
  }
  sd_http_set_auth(sv.http, auth);
  uv_signal_init(&sv.loop, &sv.sigterm);
  uv_signal_init(&sv.loop, &sv.sigint);
  sv.sigterm.data = sv.sigint.data = &sv;
  uv_signal_start(&sv.sigterm, on_signal, SIGTERM);
  uv_signal_start(&sv.sigint, on_signal, SIGINT);
  uv_signal_init(&sv.loop, &sv.sighup);
  sv.sighup.data = &sv;
  uv_signal_start(&sv.sighup, on_reload, SIGHUP);
  uv_timer_init(&sv.loop, &sv.drain);
  sv.drain.data = &sv;

  static const char *const modes[] = {"always", "interval", "never"};
  SD_INFO("streamd %s listening on %s:%u (data %s, durability %s, %s, %zu API key(s)%s)", STREAMD_VERSION,
          sv.cfg.host, sd_http_port(sv.http), sv.cfg.data_dir, modes[sv.cfg.engine.durability],
          sv.cfg.tls_cert_file[0] ? "https" : "http", sd_http_key_count(sv.http),
          sd_http_key_count(sv.http) ? "" : ": open to every client");
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
