/*
 * fuzz_server.c - the in-process server of the fuzz harnesses; see
 * fuzz_server.h.
 */
#include "fuzz_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>
#include <unistd.h>

#include "http/http_internal.h"
#include "streamd/group.h"
#include "streamd/log.h"

#define STALL_NS (5ull * 1000 * 1000 * 1000)

static struct fz_server *server;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static void remove_dir(void) {
  if (server && server->dir[0]) nftw(server->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void set(struct sd_config *c, const char *k, const char *v) {
  char err[256];
  if (sd_config_set(c, k, v, err, sizeof(err)) != 0) {
    fprintf(stderr, "fuzz: config %s: %s\n", k, err);
    abort();
  }
}

void fz_server_settle(struct fz_server *sv) {
  for (int i = 0; i < 4; i++) uv_run(&sv->loop, UV_RUN_NOWAIT);
}

void fz_exchange(struct fz_server *sv, const void *req, size_t len, struct sd_buf *resp) {
  fz_exchange_split(sv, req, len, len, resp);
}

void fz_exchange_split(struct fz_server *sv, const void *req, size_t len, size_t first, struct sd_buf *resp) {
  struct sd_http *h = sv->http;
  int fds[2];
  char buf[16384];
  sd_buf_reset(resp);
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) abort();
  struct sockaddr_in peer;
  memset(&peer, 0, sizeof(peer));
  peer.sin_family = AF_INET;
  peer.sin_port = htons(40000);
  peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (MHD_add_connection(h->daemon, fds[1], (struct sockaddr *)&peer, sizeof(peer)) != MHD_YES) {
    fprintf(stderr, "fuzz: MHD_add_connection failed\n");
    abort();
  }
  /* In external-epoll mode the new socket joins MHD's epoll set on its next run. */
  MHD_run(h->daemon);
  size_t off = 0;
  int shut = 0, stuck = 0;
  uint64_t start = uv_hrtime();
  for (;;) {
    /* The bytes past `first` wait until the server has read the first ones. */
    int unread = 0;
    size_t upto = off < first || (ioctl(fds[0], SIOCOUTQ, &unread) == 0 && unread > 0) ? first : len;
    while (off < upto) {
      ssize_t w = send(fds[0], (const char *)req + off, upto - off, MSG_NOSIGNAL);
      if (w > 0) {
        off += (size_t)w;
      } else {
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) break;
        off = len; /* the server closed: the rest cannot be sent */
        break;
      }
    }
    uv_run(&sv->loop, UV_RUN_NOWAIT);
    /* The EOF goes once the server has read everything (or stopped
     * reading): arriving with the last bytes in one edge-triggered wakeup
     * it would be noticed only by the server's periodic sweep. */
    if (off == len && !shut && (ioctl(fds[0], SIOCOUTQ, &unread) != 0 || unread == 0 || ++stuck > 4)) {
      shutdown(fds[0], SHUT_WR);
      shut = 1;
    }
    ssize_t r;
    while ((r = recv(fds[0], buf, sizeof(buf), 0)) > 0)
      if (sd_buf_append(resp, buf, (size_t)r) != 0) abort();
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) break; /* closed by the server */
    if (uv_hrtime() - start > STALL_NS) {
      fprintf(stderr, "fuzz: the server kept the connection open %llu s after the client's EOF\n",
              (unsigned long long)(STALL_NS / 1000000000ull));
      abort();
    }
    struct pollfd p[2] = {{uv_backend_fd(&sv->loop), POLLIN, 0}, {fds[0], (short)(POLLIN | (off < len ? POLLOUT : 0)), 0}};
    int t = uv_backend_timeout(&sv->loop);
    if (t < 0 || t > 20) t = 20;
    poll(p, 2, t);
  }
  close(fds[0]);
  fz_server_settle(sv);
}

int fz_status(const struct sd_buf *resp) {
  int status = 0;
  if (resp->len < 12 || memcmp(resp->data, "HTTP/1.", 7) != 0) return 0;
  for (int i = 9; i < 12; i++) {
    if (resp->data[i] < '0' || resp->data[i] > '9') return 0;
    status = status * 10 + (resp->data[i] - '0');
  }
  return status;
}

/* A request from the harness itself, which must be answered with a 2xx. */
static void must(struct fz_server *sv, const char *method, const char *path, const char *body) {
  char req[2048];
  struct sd_buf resp = {0};
  int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\n\r\n%s", method, path, strlen(body), body);
  fz_exchange(sv, req, (size_t)n, &resp);
  int st = fz_status(&resp);
  if (st < 200 || st > 299) {
    fprintf(stderr, "fuzz: fixture %s %s: %.*s\n", method, path, (int)resp.len, resp.data);
    abort();
  }
  sd_buf_free(&resp);
}

struct names {
  char (*v)[SD_MAX_NAME + 1];
  size_t n, cap;
};

static void collect(void *arg, struct sd_stream *s) {
  struct names *x = arg;
  if (strcmp(sd_stream_name(s), "fz") == 0) return;
  if (x->n == x->cap) {
    x->cap = x->cap ? x->cap * 2 : 16;
    x->v = realloc(x->v, x->cap * sizeof(*x->v));
    if (x->v == NULL) abort();
  }
  snprintf(x->v[x->n++], SD_MAX_NAME + 1, "%s", sd_stream_name(s));
}

static void deleted(struct sd_durable_op *op, int status) {
  (void)status;
  (*(int *)op->data)--;
}

void fz_server_reset(struct fz_server *sv) {
  struct names x = {0};
  sd_engine_foreach(sv->engine, collect, &x);
  if (x.n) {
    struct sd_durable_op *ops = calloc(x.n, sizeof(*ops));
    int waiting = 0;
    if (ops == NULL) abort();
    for (size_t i = 0; i < x.n; i++) {
      ops[i].cb = deleted;
      ops[i].data = &waiting;
      if (sd_engine_delete(sv->engine, x.v[i], &ops[i]) == 0) waiting++;
    }
    while (waiting > 0) uv_run(&sv->loop, UV_RUN_ONCE);
    free(ops);
  }
  free(x.v);
  struct sd_stream *s = sd_engine_find(sv->engine, "fz");
  if (s == NULL) {
    must(sv, "PUT", "/stream/fz", "{\"partitions\":2}");
    must(sv, "POST", "/stream/fz/publish",
         "[{\"event\":\"a\",\"data\":{\"n\":1}},{\"event\":\"b\",\"data\":[1,2],\"partition_key\":\"k\"},"
         "{\"event\":\"c\",\"data\":\"x\",\"id\":\"i1\"},{\"event\":\"d\",\"data\":null,\"partition\":1}]");
    s = sd_engine_find(sv->engine, "fz");
  }
  if (s && sd_group_find(s, "g") == NULL) must(sv, "POST", "/stream/fz/group/g", "{\"ack\":\"explicit\"}");
  if (s && sd_group_find(s, "gp") == NULL) must(sv, "POST", "/stream/fz/group/gp", "{\"mode\":\"partitioned\"}");
}

struct fz_server *fz_server(void) {
  if (server) return server;
  struct fz_server *sv = calloc(1, sizeof(*sv));
  if (sv == NULL) abort();
  server = sv;
  signal(SIGPIPE, SIG_IGN);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  const char *tmp = getenv("TMPDIR");
  snprintf(sv->dir, sizeof(sv->dir), "%s/streamd-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (mkdtemp(sv->dir) == NULL) abort();
  atexit(remove_dir);
  sd_config_default(&sv->cfg);
  set(&sv->cfg, "host", "127.0.0.1");
  sv->cfg.port = 0; /* any free port: connections come over socketpairs */
  set(&sv->cfg, "data_dir", sv->dir);
  set(&sv->cfg, "durability", "never");
  set(&sv->cfg, "segment_bytes", "65536");
  set(&sv->cfg, "default_retention_bytes", "262144");
  set(&sv->cfg, "retention_check_ms", "100");
  set(&sv->cfg, "max_wait_ms", "20");
  set(&sv->cfg, "max_body_bytes", "65536");
  set(&sv->cfg, "ws_ping_interval_ms", "200");
  set(&sv->cfg, "log_level", "error");
  sv->cfg.engine.data_dir = sv->cfg.data_dir;
  sd_log_set_level(SD_LOG_ERROR);
  if (uv_loop_init(&sv->loop) != 0) abort();
  if (sd_engine_open(&sv->loop, &sv->cfg.engine, &sv->engine) != 0) abort();
  if (sd_http_start(&sv->loop, sv->engine, &sv->cfg, &sv->http) != 0) abort();
  fz_server_reset(sv);
  return sv;
}
