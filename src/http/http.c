/*
 * http.c - libmicrohttpd inside the libuv loop.
 *
 * MHD runs in external-epoll mode: its epoll descriptor is watched by a
 * uv_poll handle and its timeout by a uv_timer; every MHD_run happens on
 * the loop thread, so handlers call the engine directly.  Owns the
 * daemon, the request-context free list and the list of suspended
 * requests.
 *
 * Request flow: first access-handler call -> context from the free list,
 * route matched (early errors such as 404 or 413 answered here); body
 * chunks appended to req->body up to max_body_bytes; final call ->
 * sd_routes_dispatch.  A suspended request comes back through
 * sd_req_finish, which resumes the connection; the next handler call
 * queues the response prepared then.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "http_internal.h"
#include "streamd/err.h"
#include "streamd/log.h"

#define FREE_REQS_MAX 1024
/* Connections accepted past max_connections only to be answered 503; past
 * these libmicrohttpd stops accepting and new clients wait in the backlog. */
#define CONNECTION_SLACK 64
#define KEEP_BUF_BYTES (256u * 1024u)

static void schedule(struct sd_http *h);
static void on_timer(uv_timer_t *t);
static void conn_request_done(struct sd_http *h, struct MHD_Connection *c);
static void conn_upgraded(struct MHD_Connection *c);

/* Makes MHD run soon: after a resume or when an upgraded socket returns. */
static void kick(void *arg) {
  struct sd_http *h = arg;
  if (h->daemon) uv_timer_start(&h->timer, on_timer, 0, 0);
}

/* With TLS, libmicrohttpd relays an upgraded connection through a
 * socketpair and, once the WebSocket side hands it back, still has to
 * forward what is left and then close the TCP connection on a later
 * MHD_run, for which it reports no timeout.  For TLS_LINGER_MS after a
 * hand-back MHD runs at least every TLS_TICK_MS. */
#define TLS_LINGER_MS 2000
#define TLS_TICK_MS 20

static void ws_returned(void *arg) {
  struct sd_http *h = arg;
  if (h->tls_cert) h->linger_until = uv_now(h->loop) + TLS_LINGER_MS;
  kick(h);
}

/* ---- the loop side ------------------------------------------------------ */

static void run_mhd(struct sd_http *h) {
  if (h->daemon == NULL) return;
  MHD_run(h->daemon);
  schedule(h);
}

static void on_timer(uv_timer_t *t) { run_mhd(t->data); }

static void on_poll(uv_poll_t *p, int status, int events) {
  (void)status;
  (void)events;
  run_mhd(p->data);
}

/* Arms the timer with MHD's next timeout. */
static void schedule(struct sd_http *h) {
  MHD_UNSIGNED_LONG_LONG ms;
  if (h->daemon == NULL) return;
  int lingering = h->linger_until > uv_now(h->loop);
  if (MHD_get_timeout(h->daemon, &ms) == MHD_YES)
    uv_timer_start(&h->timer, on_timer, lingering && ms > TLS_TICK_MS ? TLS_TICK_MS : ms, 0);
  else if (lingering)
    uv_timer_start(&h->timer, on_timer, TLS_TICK_MS, 0);
  else
    uv_timer_stop(&h->timer);
}

/* ---- request contexts --------------------------------------------------- */

static struct sd_req *req_get(struct sd_http *h) {
  struct sd_req *r;
  if (!sd_list_empty(&h->free_reqs)) {
    r = SD_CONTAINER_OF(h->free_reqs.next, struct sd_req, node);
    sd_list_remove(&r->node);
    h->nfree--;
  } else {
    r = calloc(1, sizeof(*r));
    if (r == NULL) return NULL;
    sd_list_init(&r->node);
  }
  r->h = h;
  r->t0 = uv_hrtime();
  r->path_len = 0;
  h->in_flight++;
  return r;
}

static void wait_timer_closed(uv_handle_t *t) {
  struct sd_req *r = t->data;
  free(r);
}

static void req_destroy(struct sd_req *r) {
  sd_buf_free(&r->body);
  sd_buf_free(&r->out);
  sd_buf_free(&r->scratch);
  sd_buf_free(&r->envelope);
  free(r->events);
  free(r->results);
  free(r->spans);
  free(r->last_read);
  if (r->wait_timer_init)
    uv_close((uv_handle_t *)&r->wait_timer, wait_timer_closed);
  else
    free(r);
}

static void shrink(struct sd_buf *b) {
  if (b->cap > KEEP_BUF_BYTES) sd_buf_free(b);
  sd_buf_reset(b);
}

static void req_put(struct sd_http *h, struct sd_req *r) {
  sd_routes_release(r);
  sd_req_access_release(r);
  h->in_flight--;
  sd_list_remove(&r->node);
  if (h->nfree >= FREE_REQS_MAX || h->daemon == NULL) {
    req_destroy(r);
    return;
  }
  shrink(&r->body);
  shrink(&r->out);
  shrink(&r->scratch);
  shrink(&r->envelope);
  /* Reset the per-request fields; buffers and arrays are kept. */
  r->conn = NULL;
  r->method = NULL;
  r->nparts = 0;
  r->route = 0;
  r->body_error = 0;
  r->responded = 0;
  r->pending = 0;
  r->suspended = 0;
  r->status = 0;
  r->nevents = 0;
  r->batch = 0;
  r->consumer[0] = '\0';
  r->content_type = NULL;
  r->events_out = 0;
  r->observed = 0;
  sd_list_push_back(&h->free_reqs, &r->node);
  h->nfree++;
}

/* "addr:port" of the request's peer into out, or "-". */
static void peer_name(struct sd_req *r, char *out, size_t cap) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  char a[INET6_ADDRSTRLEN];
  snprintf(out, cap, "-");
  if (ci == NULL || ci->client_addr == NULL) return;
  if (ci->client_addr->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ci->client_addr;
    if (inet_ntop(AF_INET, &in->sin_addr, a, sizeof(a))) snprintf(out, cap, "%s:%u", a, ntohs(in->sin_port));
  } else if (ci->client_addr->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ci->client_addr;
    if (inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof(a))) snprintf(out, cap, "[%s]:%u", a, ntohs(in6->sin6_port));
  }
}

/* A request is over (answered and sent, upgraded, or abandoned by its
 * client): once into the histogram and counters, once into the access log. */
static void req_observe(struct sd_http *h, struct sd_req *r) {
  if (r->observed) return;
  r->observed = 1;
  unsigned status = r->responded ? r->status : 0;
  uint64_t ns = uv_hrtime() - r->t0;
  sd_metrics_request(&h->metrics, sd_routes_family(r), status, ns);
  sd_routes_count(r, status);
  if (!h->cfg->access_log) return;
  /* The router split the path in place: put its slashes back. */
  char path[sizeof(r->path)], peer[INET6_ADDRSTRLEN + 16];
  size_t n = r->path_len < sizeof(path) ? r->path_len : 0;
  for (size_t i = 0; i < n; i++) path[i] = r->path[i] ? r->path[i] : '/';
  peer_name(r, peer, sizeof(peer));
  struct sd_log_access a = {r->method ? r->method : "-", path, n, status, r->responded ? r->out.len : 0,
                            ns / 1000, peer};
  sd_log_access(&a);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
  struct sd_http *h = cls;
  struct sd_req *r = *con_cls;
  if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) conn_request_done(h, c);
  if (r == NULL) return;
  *con_cls = NULL;
  req_observe(h, r);
  req_put(h, r);
}

/* ---- responses ---------------------------------------------------------- */

int sd_req_origin_allowed(struct sd_req *req, const char *origin) {
  const struct sd_config *cfg = req->h->cfg;
  const char *list = cfg->allowed_origins;
  size_t olen = strlen(origin);
  /* Listed origins, or "*". */
  for (const char *p = list; *p;) {
    while (*p == ' ' || *p == ',') p++;
    const char *e = p;
    while (*e && *e != ',') e++;
    const char *t = e;
    while (t > p && t[-1] == ' ') t--;
    if ((size_t)(t - p) == 1 && *p == '*') return 1;
    if ((size_t)(t - p) == olen && strncmp(p, origin, olen) == 0) return 1;
    p = e;
  }
  /* Same host name as the Host header, any port. */
  const char *host = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
  const char *sep = strstr(origin, "://");
  if (host == NULL || sep == NULL) return 0;
  const char *oh = sep + 3;
  size_t ohl = strcspn(oh, ":/");
  size_t hl = host[0] == '[' ? strcspn(host, "]") + 1 : strcspn(host, ":");
  if (oh[0] == '[') ohl = strcspn(oh, "]") + 1;
  return ohl == hl && strncasecmp(oh, host, hl) == 0;
}

static void add_cors(struct sd_req *req, struct MHD_Response *resp) {
  const char *origin = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Origin");
  if (origin == NULL || !sd_req_origin_allowed(req, origin)) return;
  MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin);
  MHD_add_response_header(resp, "Vary", "Origin");
  if (strcmp(req->method, "OPTIONS") == 0) {
    MHD_add_response_header(resp, "Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS");
    MHD_add_response_header(resp, "Access-Control-Allow-Headers", "Content-Type, Authorization");
    MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
  }
}

static void queue_response(struct sd_req *req) {
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(req->out.len, req->out.len ? req->out.data : (void *)"", MHD_RESPMEM_PERSISTENT);
  if (resp == NULL) return; /* MHD closes the connection */
  if (req->status == 503) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
  if (req->status == 401 && req->www_auth) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, req->www_auth);
  if (req->out.len)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            req->content_type ? req->content_type : "application/json");
  add_cors(req, resp);
  MHD_queue_response(req->conn, req->status, resp);
  MHD_destroy_response(resp);
  req->responded = 1;
}

void sd_req_suspend(struct sd_req *req) {
  SD_ASSERT(!req->suspended);
  req->suspended = 1;
  req->h->waiting++;
  sd_list_push_back(&req->h->suspended, &req->node);
  MHD_suspend_connection(req->conn);
}

void sd_req_finish(struct sd_req *req, unsigned status) {
  req->status = status;
  if (!req->suspended) {
    queue_response(req);
    return;
  }
  req->suspended = 0;
  req->h->waiting--;
  sd_list_remove(&req->node);
  req->pending = 1; /* queued on the next access-handler call */
  MHD_resume_connection(req->conn);
  /* The resume is seen by MHD_run; make sure one happens soon. */
  kick(req->h);
}

int sd_json_dump(struct sd_buf *b, const json_t *v) {
  for (;;) {
    size_t room = b->cap - b->len;
    size_t n = json_dumpb(v, room ? b->data + b->len : NULL, room, JSON_ENCODE_ANY | JSON_COMPACT);
    if (n == 0) return -EINVAL;
    if (n <= room) {
      b->len += n;
      return 0;
    }
    int rc = sd_buf_reserve(b, n);
    if (rc != 0) return rc;
  }
}

int sd_json_str(struct sd_buf *b, const char *s, size_t len) {
  json_t *j = json_stringn_nocheck(s, len);
  if (j == NULL) return -ENOMEM;
  int rc = sd_json_dump(b, j);
  json_decref(j);
  return rc;
}

void sd_req_error(struct sd_req *req, int err, const char *message, const char *extra) {
  struct sd_buf *b = &req->out;
  sd_buf_reset(b);
  sd_buf_printf(b, "{\"error\":\"%s\",\"message\":", sd_err_code(err));
  const char *m = message ? message : sd_strerror(err);
  sd_json_str(b, m, strlen(m));
  if (extra && *extra) sd_buf_printf(b, ",%s", extra);
  SD_BUF_LIT(b, "}");
  sd_req_finish(req, (unsigned)sd_err_http_status(err));
}

const char *sd_req_header(struct sd_req *req, const char *name) {
  return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

/* MHD hands the socket over before it reports the request complete: from
 * here the WebSocket connection owns itself, the request no longer does. */
static void on_upgraded(void *cls, struct MHD_Connection *connection, void *con_cls, const char *extra_in,
                        size_t extra_in_size, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh) {
  struct sd_req *req = con_cls;
  conn_upgraded(connection);
  if (req) {
    req->ws = NULL;
    req_observe(req->h, req); /* the handshake is the request; the session is not timed */
  }
  sd_ws_upgraded(cls, connection, con_cls, extra_in, extra_in_size, sock, urh);
}

void sd_req_upgrade(struct sd_req *req, struct sd_ws_conn *c, const char *accept) {
  struct MHD_Response *resp = MHD_create_response_for_upgrade(on_upgraded, c);
  if (resp == NULL) {
    sd_ws_conn_discard(c);
    sd_req_error(req, -ENOMEM, NULL, NULL);
    return;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_UPGRADE, "websocket");
  MHD_add_response_header(resp, "Sec-WebSocket-Accept", accept);
  char proto[SD_AUTH_KEY_MAX + 16];
  if (sd_req_subprotocol(req, proto, sizeof(proto)) > 0) MHD_add_response_header(resp, "Sec-WebSocket-Protocol", proto);
  /* libmicrohttpd refuses an upgrade it cannot make (an HTTP/1.0 request);
   * it must then get another answer, or it calls the handler again and
   * again for one. */
  req->ws = c;
  req->status = MHD_HTTP_SWITCHING_PROTOCOLS;
  sd_buf_reset(&req->out);
  if (MHD_queue_response(req->conn, MHD_HTTP_SWITCHING_PROTOCOLS, resp) != MHD_YES) {
    MHD_destroy_response(resp);
    req->ws = NULL;
    sd_ws_conn_discard(c);
    sd_req_error(req, SD_E_INVALID_HANDSHAKE, "a WebSocket upgrade needs HTTP/1.1", NULL);
    return;
  }
  MHD_destroy_response(resp);
  req->responded = 1;
}

const char *sd_req_arg(struct sd_req *req, const char *name) {
  return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

/* ---- connections -------------------------------------------------------- */

/* A new connection gets header_timeout_s to send a complete first request
 * (headers and body); once one is complete the longer idle timeout
 * applies.  Clients that never finish a request (garbage, stalled, or gone
 * with a half-sent body that MHD does not always notice) are cut early.
 *
 * The idle timeouts restart with every byte, so a client that trickles its
 * headers (slowloris) would never meet them: request headers also have a
 * deadline, header_timeout_s from the connect for the first request and
 * connection_timeout_s from the previous answer for a later one.  A
 * connection is on h->heading, ordered by nothing, while its deadline runs;
 * the sweep shuts down those past it.
 *
 * The struct is the connection's socket context, from MHD's start notice
 * to its close notice. */
struct fresh {
  struct sd_list node;   /* h->fresh while the first request is incomplete */
  struct sd_list hnode;  /* h->heading while request headers are awaited */
  uint64_t deadline;     /* uv_now() by which the headers must be complete */
  int fd;
  int over;              /* opened past max_connections: every request is 503 */
  int upgraded;          /* a WebSocket owns the socket: no deadline any more */
};

static struct fresh *conn_ctx(struct MHD_Connection *c) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return ci ? ci->socket_context : NULL;
}

/* Starts the deadline for the headers of the connection's next request. */
static void heading_start(struct sd_http *h, struct fresh *f, unsigned seconds) {
  f->deadline = uv_now(h->loop) + (uint64_t)seconds * 1000u;
  sd_list_remove(&f->hnode);
  sd_list_push_back(&h->heading, &f->hnode);
}

/* A request was answered and the connection is kept: its next request's
 * headers are awaited. */
static void conn_request_done(struct sd_http *h, struct MHD_Connection *c) {
  struct fresh *f = conn_ctx(c);
  if (f && !f->upgraded) heading_start(h, f, h->cfg->connection_timeout_s);
}

/* The socket belongs to a WebSocket from now on. */
static void conn_upgraded(struct MHD_Connection *c) {
  struct fresh *f = conn_ctx(c);
  if (f == NULL) return;
  f->upgraded = 1;
  sd_list_remove(&f->hnode);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
  struct sd_http *h = cls;
  struct fresh *f = *socket_context;
  if (toe == MHD_CONNECTION_NOTIFY_STARTED)
    h->connections++;
  else
    h->connections--;
  if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned int)h->cfg->header_timeout_s);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci && (f = calloc(1, sizeof(*f))) != NULL) {
      f->fd = ci->connect_fd;
      /* Decided once: a connection within the limit stays served. */
      f->over = h->connections > h->cfg->max_connections;
      sd_list_push_back(&h->fresh, &f->node);
      sd_list_init(&f->hnode);
      heading_start(h, f, h->cfg->header_timeout_s);
      *socket_context = f;
    }
  } else if (f != NULL) {
    sd_list_remove(&f->node);
    sd_list_remove(&f->hnode);
    free(f);
    *socket_context = NULL;
  }
}

/* A connection that has not completed its first request is no longer
 * watched for a lost EOF. */
static void fresh_done(struct MHD_Connection *c) {
  struct fresh *f = conn_ctx(c);
  if (f) sd_list_remove(&f->node);
}

/* MHD's edge-triggered epoll can miss a client's EOF that arrives together
 * with a partial request, and would then hold the connection until
 * header_timeout_s.  Every sweep, connections still without a complete
 * first request whose socket holds nothing but the EOF (MHD has read the
 * bytes) are shut down, which MHD does see. */
static void on_sweep(uv_timer_t *t) {
  struct sd_http *h = t->data;
  uint64_t now = uv_now(h->loop);
  int cut = 0;
  for (struct sd_list *n = h->heading.next; n != &h->heading;) {
    struct fresh *f = SD_CONTAINER_OF(n, struct fresh, hnode);
    n = n->next;
    if (now >= f->deadline) {
      SD_DEBUG("http: request headers not complete in time; connection closed");
      shutdown(f->fd, SHUT_RDWR);
      sd_list_remove(&f->hnode);
      cut = 1;
    }
  }
  if (cut) kick(h);
  struct sd_list *n = h->fresh.next;
  while (n != &h->fresh) {
    struct fresh *f = SD_CONTAINER_OF(n, struct fresh, node);
    n = n->next;
    char b;
    if (recv(f->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
      shutdown(f->fd, SHUT_RDWR);
      sd_list_remove(&f->node);
    }
  }
  if (!sd_list_empty(&h->fresh)) kick(h);
}

/* With a body still incomplete, whether the client has already closed its
 * side.  MHD (edge-triggered epoll) can miss an EOF that arrives together
 * with the last body bytes and then holds the connection until it times
 * out; a peek at the socket catches that case. */
static int peer_gone(struct sd_req *req) {
  const char *cl = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  if (cl == NULL || req->body.len >= strtoull(cl, NULL, 10)) return 0;
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  char b;
  return ci != NULL && recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* ---- the access handler ------------------------------------------------- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
  struct sd_http *h = cls;
  struct sd_req *req = *con_cls;
  (void)version;

  if (req == NULL) {
    struct fresh *f = conn_ctx(c);
    if (f) sd_list_remove(&f->hnode); /* the headers are complete */
    req = req_get(h);
    if (req == NULL) return MHD_NO;
    *con_cls = req;
    req->conn = c;
    req->method = method;
    size_t n = strlen(url);
    if (n >= sizeof(req->path)) {
      sd_req_error(req, SD_E_NOT_FOUND, "path too long", NULL);
      return MHD_YES;
    }
    memcpy(req->path, url, n + 1);
    req->path_len = n;
    if (f && f->over) {
      /* libmicrohttpd accepts a few past the limit so they can be told. */
      sd_req_error(req, SD_E_BUSY, "too many connections (max_connections)", NULL);
      return MHD_YES;
    }
    if (sd_routes_match(req) != 0) return MHD_YES; /* answered */
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    /* A request with a body has its key checked before the body is taken
     * in; one without is checked when complete, so that a 401 or 403
     * leaves the connection open. */
    if ((cl != NULL && strcmp(cl, "0") != 0) ||
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL) {
      req->auth_checked = 1;
      if (sd_routes_authorize(req) != 0) return MHD_YES; /* 401 or 403 answered */
    }
    if (cl && strtoull(cl, NULL, 10) > h->cfg->max_body_bytes) {
      char msg[128];
      snprintf(msg, sizeof(msg), "request body larger than max_body_bytes (%llu)",
               (unsigned long long)h->cfg->max_body_bytes);
      sd_req_error(req, SD_E_TOO_LARGE, msg, NULL);
    }
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    if (!req->responded && !req->body_error) {
      if (req->body.len == 0) fresh_done(c);
      if (req->body.len + *upload_data_size > req->h->cfg->max_body_bytes)
        req->body_error = SD_E_TOO_LARGE;
      else if (sd_buf_append(&req->body, upload_data, *upload_data_size) != 0)
        req->body_error = -ENOMEM;
    }
    *upload_data_size = 0;
    if (peer_gone(req)) return MHD_NO; /* closes the connection */
    return MHD_YES;
  }
  if (req->pending) {
    /* A response prepared while suspended, queued now that we are resumed. */
    req->pending = 0;
    queue_response(req);
    return MHD_YES;
  }
  if (req->responded) return MHD_YES;
  if (req->body_error) {
    char msg[128];
    snprintf(msg, sizeof(msg), "request body larger than max_body_bytes (%llu)",
             (unsigned long long)h->cfg->max_body_bytes);
    sd_req_error(req, req->body_error, req->body_error == SD_E_TOO_LARGE ? msg : NULL, NULL);
    return MHD_YES;
  }
  if (req->suspended) return MHD_YES;
  if (h->closing) {
    /* MHD_stop_daemon refuses suspended connections: answer at once. */
    sd_req_error(req, SD_E_SHUTTING_DOWN, NULL, NULL);
    return MHD_YES;
  }
  fresh_done(c);
  /* The request is complete: from now on the idle timeout applies. */
  MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned int)h->cfg->connection_timeout_s);
  if (!req->auth_checked && sd_routes_authorize(req) != 0) return MHD_YES;
  sd_routes_dispatch(req);
  return MHD_YES;
}

/* ---- daemon life cycle ---------------------------------------------------- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decoding that leaves "%2F" and "%00" encoded: a decoded '/' must
 * not split a path segment, and the '%' left in place makes such a name
 * invalid instead of silently routing elsewhere. */
static size_t unescape(void *cls, struct MHD_Connection *c, char *s) {
  char *w = s;
  (void)cls;
  (void)c;
  for (const char *r = s; *r;) {
    int hi, lo;
    if (r[0] == '%' && (hi = hexval(r[1])) >= 0 && (lo = hexval(r[2])) >= 0) {
      char ch = (char)(hi * 16 + lo);
      if (ch != '/' && ch != '\0') {
        *w++ = ch;
        r += 3;
        continue;
      }
    }
    *w++ = *r++;
  }
  *w = '\0';
  return (size_t)(w - s);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
  char msg[512];
  (void)cls;
  vsnprintf(msg, sizeof(msg), fmt, ap);
  size_t n = strlen(msg);
  while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
  SD_DEBUG("http: %s", msg);
}

/* Reads a whole PEM file into a NUL-terminated buffer (*out, freed by the
 * caller).  0 or -errno, logged. */
static int read_pem(const char *what, const char *path, char **out) {
  FILE *f = fopen(path, "r");
  char *b = NULL;
  size_t len = 0, cap = 0;
  int rc = 0;
  if (f == NULL) {
    rc = -errno;
    SD_ERROR("cannot read %s %s: %s", what, path, strerror(errno));
    return rc;
  }
  for (;;) {
    if (cap - len < 4096) {
      char *nb = realloc(b, cap + 16384);
      if (nb == NULL) {
        rc = -ENOMEM;
        break;
      }
      b = nb;
      cap += 16384;
    }
    size_t n = fread(b + len, 1, cap - len - 1, f);
    len += n;
    if (n == 0) break;
    if (len > (1u << 20)) {
      rc = -EFBIG;
      SD_ERROR("%s %s is larger than 1 MiB", what, path);
      break;
    }
  }
  if (rc == 0 && ferror(f)) {
    rc = -EIO;
    SD_ERROR("cannot read %s %s", what, path);
  }
  fclose(f);
  if (rc != 0) {
    if (b) explicit_bzero(b, cap);
    free(b);
    return rc;
  }
  b[len] = '\0';
  *out = b;
  return 0;
}

static void free_pem(char *b) {
  if (b) explicit_bzero(b, strlen(b));
  free(b);
}

int sd_http_start(uv_loop_t *loop, struct sd_engine *engine, const struct sd_config *cfg, struct sd_http **out) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  int rc;
  memset(&ss, 0, sizeof(ss));
  struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
  unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG;
  if (inet_pton(AF_INET, cfg->host, &sin->sin_addr) == 1) {
    sin->sin_family = AF_INET;
    sin->sin_port = htons(cfg->port);
    sslen = sizeof(*sin);
  } else if (inet_pton(AF_INET6, cfg->host, &sin6->sin6_addr) == 1) {
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(cfg->port);
    sslen = sizeof(*sin6);
    flags |= MHD_USE_IPv6;
  } else {
    SD_ERROR("host '%s' is not an IPv4 or IPv6 address", cfg->host);
    return SD_E_INVALID_PARAMETER;
  }
  (void)sslen;
  if ((cfg->tls_cert_file[0] != '\0') != (cfg->tls_key_file[0] != '\0')) {
    SD_ERROR("TLS needs both tls_cert_file and tls_key_file");
    return SD_E_INVALID_PARAMETER;
  }

  struct sd_http *h = calloc(1, sizeof(*h));
  if (h == NULL) return -ENOMEM;
  /* TLS: libmicrohttpd's GnuTLS; upgraded (WebSocket) connections are then
   * relayed by MHD through a socketpair, so ws.c sees a plain socket. */
  struct MHD_OptionItem tls[3] = {{MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}};
  if (cfg->tls_cert_file[0] != '\0') {
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
      SD_ERROR("this libmicrohttpd was built without TLS support");
      free(h);
      return SD_E_INVALID_PARAMETER;
    }
    if ((rc = read_pem("tls_cert_file", cfg->tls_cert_file, &h->tls_cert)) != 0 ||
        (rc = read_pem("tls_key_file", cfg->tls_key_file, &h->tls_key)) != 0) {
      free_pem(h->tls_cert);
      free(h);
      return rc;
    }
    flags |= MHD_USE_TLS;
    tls[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, h->tls_cert};
    tls[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, h->tls_key};
  }
  h->loop = loop;
  h->engine = engine;
  h->cfg = cfg;
  h->started_ms = sd_now_ms();
  sd_list_init(&h->suspended);
  sd_list_init(&h->free_reqs);
  sd_list_init(&h->fresh);
  sd_list_init(&h->heading);

  h->daemon = MHD_start_daemon(
      flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->max_connections + CONNECTION_SLACK, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
      (unsigned int)cfg->per_ip_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)cfg->connection_timeout_s,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)cfg->connection_memory_bytes, MHD_OPTION_CONNECTION_MEMORY_INCREMENT,
      (size_t)4096, MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int)1024, MHD_OPTION_STRICT_FOR_CLIENT, (int)1, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_UNESCAPE_CALLBACK, unescape, h,
      MHD_OPTION_ARRAY, tls, MHD_OPTION_END);
  if (h->daemon == NULL) {
    rc = errno ? -errno : -EADDRINUSE;
    if (h->tls_cert)
      SD_ERROR("cannot listen on %s:%u with TLS (%s): check that tls_cert_file and tls_key_file are a matching PEM "
               "certificate and key", cfg->host, cfg->port, sd_strerror(rc));
    else
      SD_ERROR("cannot listen on %s:%u: %s", cfg->host, cfg->port, sd_strerror(rc));
    free_pem(h->tls_cert);
    free_pem(h->tls_key);
    free(h);
    return rc;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
  h->port = info ? info->port : cfg->port;
  info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_EPOLL_FD);
  SD_ASSERT(info != NULL);
  uv_poll_init(loop, &h->poll, info->epoll_fd);
  h->poll.data = h;
  uv_poll_start(&h->poll, UV_READABLE, on_poll);
  uv_timer_init(loop, &h->timer);
  h->timer.data = h;
  uv_timer_init(loop, &h->sweep);
  h->sweep.data = h;
  uv_timer_start(&h->sweep, on_sweep, 500, 500);
  if ((rc = sd_ws_server_new(loop, cfg, ws_returned, h, &h->ws)) != 0) {
    uv_close((uv_handle_t *)&h->poll, NULL);
    uv_close((uv_handle_t *)&h->timer, NULL);
    uv_close((uv_handle_t *)&h->sweep, NULL);
    MHD_stop_daemon(h->daemon);
    uv_run(loop, UV_RUN_NOWAIT);
    free_pem(h->tls_cert);
    free_pem(h->tls_key);
    free(h);
    return rc;
  }
  schedule(h);
  *out = h;
  return 0;
}

uint16_t sd_http_port(const struct sd_http *h) { return h->port; }
size_t sd_http_in_flight(const struct sd_http *h) { return h->in_flight + sd_ws_server_count(h->ws); }

void sd_http_quiesce(struct sd_http *h) {
  if (h->quiescing) return;
  h->quiescing = 1;
  MHD_socket fd = MHD_quiesce_daemon(h->daemon);
  if (fd != MHD_INVALID_SOCKET) close(fd);
  sd_ws_server_shutdown(h->ws);
  /* Long polls answer now with what they have; publishes waiting for
   * their sync finish on their own. */
  struct sd_list *n = h->suspended.next;
  while (n != &h->suspended) {
    struct sd_list *next = n->next;
    sd_routes_wake(SD_CONTAINER_OF(n, struct sd_req, node));
    n = next;
  }
}

static void timer_closed(uv_handle_t *t) {
  struct sd_http *h = t->data;
  while (!sd_list_empty(&h->free_reqs)) {
    struct sd_req *r = SD_CONTAINER_OF(h->free_reqs.next, struct sd_req, node);
    sd_list_remove(&r->node);
    req_destroy(r);
  }
  sd_auth_unref(h->auth);
  free_pem(h->tls_cert);
  free_pem(h->tls_key);
  free(h);
}

void sd_http_free(struct sd_http *h) {
  h->closing = 1;
  /* Anything still suspended is resumed so MHD can close it; requests that
   * complete from here on are refused rather than suspended. */
  while (!sd_list_empty(&h->suspended)) {
    struct sd_req *r = SD_CONTAINER_OF(h->suspended.next, struct sd_req, node);
    sd_req_error(r, SD_E_SHUTTING_DOWN, NULL, NULL);
  }
  /* Upgraded sockets go back to MHD before it stops. */
  sd_ws_server_free(h->ws);
  MHD_run(h->daemon);
  SD_ASSERT(sd_list_empty(&h->suspended));
  uv_poll_stop(&h->poll);
  uv_timer_stop(&h->timer);
  uv_close((uv_handle_t *)&h->sweep, NULL);
  struct MHD_Daemon *d = h->daemon;
  MHD_stop_daemon(d);
  h->daemon = NULL;
  uv_close((uv_handle_t *)&h->poll, NULL);
  uv_close((uv_handle_t *)&h->timer, timer_closed);
  uv_run(h->loop, UV_RUN_NOWAIT);
}
