/*
 * http_internal.h - what the MHD glue (http.c) and the route handlers
 * (routes.c) share: the server, the per-request context, response helpers.
 *
 * A request context lives from the first access-handler call to MHD's
 * completion notice; it is taken from a free list and returned to it, so
 * its buffers are reused across requests.  A handler either queues a
 * response at once, or suspends the connection (long poll, wait for a sync)
 * and later calls sd_req_finish, which resumes it; the response prepared
 * then is queued on the next access-handler call.
 */
#ifndef STREAMD_HTTP_INTERNAL_H
#define STREAMD_HTTP_INTERNAL_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdint.h>

#include "streamd/auth.h"
#include "streamd/buf.h"
#include "streamd/config.h"
#include "streamd/engine.h"
#include "streamd/http.h"
#include "streamd/list.h"
#include "streamd/metrics.h"
#include "jspan.h"
#include "ws/ws.h"

struct sd_http {
  uv_loop_t *loop;
  struct sd_engine *engine;
  const struct sd_config *cfg;
  struct MHD_Daemon *daemon;
  uv_poll_t poll;
  uv_timer_t timer;
  uint16_t port;
  int quiescing;
  int closing; /* sd_http_free has begun: nothing may suspend any more */
  uint64_t started_ms;
  size_t in_flight;      /* contexts between first call and completion */
  size_t connections;    /* open connections, WebSocket ones included */
  size_t waiting;        /* suspended contexts */
  struct sd_list suspended;
  struct sd_list free_reqs;
  size_t nfree;
  struct sd_ws_server *ws;
  uv_timer_t sweep;           /* checks fresh connections for a lost EOF */
  struct sd_list fresh;       /* connections without a complete first request */
  struct sd_metrics metrics;  /* request histograms and publish/consume counters */
  struct sd_list heading;     /* connections whose request headers have a deadline */
  struct sd_auth *auth;       /* API keys (one reference); NULL or empty: open */
  char *tls_cert, *tls_key;   /* PEM text given to MHD, NULL without TLS; wiped when freed */
  uint64_t linger_until;      /* loop time until which MHD runs every few ms (TLS hand-backs) */
};

#define SD_PATH_MAX_PARTS 8

struct sd_req {
  struct sd_http *h;
  struct MHD_Connection *conn;
  struct sd_list node;        /* free list or suspended list */
  const char *method;
  char path[1024];            /* copy of the URL path, split in place */
  char *parts[SD_PATH_MAX_PARTS];
  int nparts;
  int route;                  /* matched route, see routes.c */
  int body_error;             /* an error met while the body streamed in */
  int responded;              /* a response was queued */
  int pending;                /* a response waits for the resumed handler call */
  int suspended;
  struct sd_buf body;         /* request body */
  struct sd_buf out;          /* response body */
  struct sd_buf scratch;      /* encoded event members */
  struct sd_buf envelope;     /* publish body with each event's data replaced by null */
  unsigned status;            /* of the pending response */
  const char *content_type;   /* static string; NULL: application/json */
  struct sd_stream *stream;   /* referenced while suspended */
  struct sd_group *group;     /* referenced while suspended */
  struct sd_durable_op dop;
  struct sd_waiter waiter;
  uv_timer_t wait_timer;
  int wait_timer_init;
  int wait_closing;
  /* consume state kept across a long poll */
  int64_t from;
  uint32_t limit;
  int32_t partition;
  char consumer[SD_MAX_NAME + 1];
  /* publish state */
  struct sd_event_in *events;
  struct sd_append_result *results;
  struct sd_span *spans;      /* each event's object as received */
  size_t nevents, events_cap;
  int batch;
  json_t *json;               /* parsed body, owned */
  uint64_t *last_read;        /* per partition offset read + 1, for consumer positions */
  uint32_t last_read_cap;
  struct sd_ws_conn *ws;      /* a subscriber waiting for its upgrade */
  /* metrics and access log */
  uint64_t t0;                /* uv_hrtime() at the first access-handler call */
  size_t path_len;            /* of the path before it was split */
  uint32_t events_out;        /* events a consume returned */
  int observed;               /* counted and logged (at the upgrade, or at completion) */
  struct sd_auth *auth;       /* keyring the request was checked against (a reference), or NULL */
  const struct sd_auth_key *key; /* its key in auth; NULL in open mode */
  const char *www_auth;       /* static WWW-Authenticate value of a 401, or NULL */
  int auth_checked;           /* sd_routes_authorize ran (before the body) */
};

/* Prepares the response (status, body in req->out as JSON) and queues it,
 * or, for a suspended request, resumes its connection so that it is queued
 * on the next call.  The body must be in req->out. */
void sd_req_finish(struct sd_req *req, unsigned status);

/* Writes {"error":code,"message":msg} (plus extra members, a JSON text
 * fragment like "\"parameter\":\"limit\"" or NULL) into req->out and
 * finishes with the status of err. */
void sd_req_error(struct sd_req *req, int err, const char *message, const char *extra);

/* Suspends the connection (the handler answers later with sd_req_finish). */
void sd_req_suspend(struct sd_req *req);

/* Queues the 101 response that upgrades to a WebSocket served by c. */
void sd_req_upgrade(struct sd_req *req, struct sd_ws_conn *c, const char *accept);

/* Request header or NULL. */
const char *sd_req_header(struct sd_req *req, const char *name);

/* Whether the request's Origin header (present) is allowed: the same host
 * name as its Host header (any port), or listed in allowed_origins. */
int sd_req_origin_allowed(struct sd_req *req, const char *origin);

/* Query argument or NULL. */
const char *sd_req_arg(struct sd_req *req, const char *name);

/* Checks the request's API key (access.c): open mode (no keys) passes;
 * otherwise the key must be known (else 401, WWW-Authenticate set) and hold
 * perms on stream (NULL: on every stream; perms 0 with stream NULL: any
 * valid key), else 403.  ws: an upgrade route, where the key may also come
 * from Sec-WebSocket-Protocol or ?token.  0, or -1 with the error answered. */
int sd_req_authorize(struct sd_req *req, unsigned perms, const char *stream, int ws);
/* Drops what sd_req_authorize left in req (access.c). */
void sd_req_access_release(struct sd_req *req);
/* The subprotocol to name in a 101 (access.c): "streamd" when offered, else
 * the first "streamd.key.KEY" offered, else none (returns 0, out "").  out
 * has cap bytes. */
size_t sd_req_subprotocol(struct sd_req *req, char *out, size_t cap);
/* Matches the route's permission against the request's key (routes.c):
 * 0, or -1 with 401/403 answered. */
int sd_routes_authorize(struct sd_req *req);

/* Dispatches a complete request (routes.c). */
void sd_routes_dispatch(struct sd_req *req);
/* Matches the route on the first call: sets req->route; 0 or an error
 * already answered (routes.c). */
int sd_routes_match(struct sd_req *req);
/* Releases what a handler left in req (routes.c). */
void sd_routes_release(struct sd_req *req);
/* The route family of a matched request, for the request histogram (routes.c). */
enum sd_metrics_route sd_routes_family(const struct sd_req *req);
/* Adds a finished request to the publish and consume counters (routes.c). */
void sd_routes_count(struct sd_req *req, unsigned status);
/* Answers a waiting long poll at once (shutdown). */
void sd_routes_wake(struct sd_req *req);

/* Appends the compact JSON text of v to b.  0, -ENOMEM or -EINVAL. */
int sd_json_dump(struct sd_buf *b, const json_t *v);

/* Encodes s as a JSON string into b.  0 or -ENOMEM. */
int sd_json_str(struct sd_buf *b, const char *s, size_t len);

#endif
