/*
 * routes.c - the REST routes of API.md: streams, publish, consume by
 * offset, consumer positions, health, CORS preflight.
 *
 * Handlers run on the loop thread.  Each one answers through sd_req_finish
 * or sd_req_error, at once or after a suspension: a publish in `always`
 * mode waits for its group-commit sync, a consume with wait_ms waits for
 * new events.  While suspended a request holds a reference on its stream.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_internal.h"
#include "jcheck.h"
#include "jspan.h"
#include "streamd/err.h"
#include "streamd/group.h"
#include "streamd/log.h"

enum route {
  R_NONE,
  R_OPTIONS,
  R_HEALTH,
  R_LIST,
  R_STREAM,
  R_INFO,
  R_STATS,
  R_CONSUMERS,
  R_PUBLISH,
  R_CONSUME,
  R_METRICS,
  R_WS,
  R_GROUPS,
  R_GROUP,
  R_GROUP_INFO,
  R_GROUP_CONSUME,
  R_GROUP_ACK,
  R_GROUP_DEAD,
  R_GROUP_LEAVE,
  R_GROUP_WS,
};

#define MAX_LIMIT 10000
#define DEFAULT_LIMIT 10
#define MAX_KEY_BYTES 1024

/* ---- small helpers ----------------------------------------------------------- */

static int is(const char *a, const char *b) { return strcmp(a, b) == 0; }

static void bad_param(struct sd_req *req, const char *name, const char *why) {
  char msg[256], extra[128];
  snprintf(msg, sizeof(msg), "query parameter '%s' %s", name, why);
  snprintf(extra, sizeof(extra), "\"parameter\":\"%s\"", name);
  sd_req_error(req, SD_E_INVALID_PARAMETER, msg, extra);
}

static void bad_field(struct sd_req *req, int err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void bad_field(struct sd_req *req, int err, const char *field, const char *fmt, ...) {
  char msg[512], extra[128];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  extra[0] = '\0';
  if (field) snprintf(extra, sizeof(extra), "\"field\":\"%s\"", field);
  sd_req_error(req, err, msg, extra);
}

/* Whole number, optionally negative; 0 or -1. */
static int parse_int(const char *s, int64_t *out) {
  int neg = 0;
  uint64_t v = 0;
  if (*s == '-') {
    neg = 1;
    s++;
  }
  if (*s == '\0') return -1;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return -1;
    if (v > (uint64_t)INT64_MAX / 10) return -1;
    v = v * 10 + (uint64_t)(*s - '0');
    if (v > (uint64_t)INT64_MAX) return -1;
  }
  *out = neg ? -(int64_t)v : (int64_t)v;
  return 0;
}

/* Reads an optional whole-number query parameter into *out (unchanged when
 * absent).  Answers 400 and returns -1 when it is not one or below min. */
static int arg_int(struct sd_req *req, const char *name, int64_t min, int64_t *out) {
  const char *v = sd_req_arg(req, name);
  int64_t x;
  if (v == NULL) return 0;
  if (parse_int(v, &x) != 0) {
    bad_param(req, name, "must be a whole number");
    return -1;
  }
  if (x < min) {
    char why[64];
    snprintf(why, sizeof(why), "must be at least %lld", (long long)min);
    bad_param(req, name, why);
    return -1;
  }
  *out = x;
  return 0;
}

/* Nesting depth of a JSON text, strings skipped. */
static uint32_t json_depth(const char *p, size_t n) {
  uint32_t depth = 0, max = 0;
  int in_str = 0;
  for (size_t i = 0; i < n; i++) {
    char c = p[i];
    if (in_str) {
      if (c == '\\')
        i++;
      else if (c == '"')
        in_str = 0;
    } else if (c == '"') {
      in_str = 1;
    } else if (c == '[' || c == '{') {
      if (++depth > max) max = depth;
    } else if (c == ']' || c == '}') {
      if (depth) depth--;
    }
  }
  return max;
}

/* A parse_body flag beside jansson's: the body is a publish body, whose
 * events' data members are checked but not parsed into req->json (there
 * they are null; the raw bytes are read from req->body). */
#define PARSE_PUBLISH ((size_t)1 << 30)

/* Parses req->body into req->json; answers 400 and returns -1 on failure.
 * An empty body gives req->json NULL and 0 when allow_empty. */
static int parse_body(struct sd_req *req, int allow_empty, size_t flags) {
  const struct sd_config *cfg = req->h->cfg;
  json_error_t jerr;
  size_t n = req->body.len;
  const char *p = req->body.data;
  while (n > 0 && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++, n--;
  if (n == 0) {
    if (allow_empty) return 0;
    sd_req_error(req, SD_E_INVALID_JSON, "request body is empty; a JSON object is expected", NULL);
    return -1;
  }
  if (json_depth(p, n) > cfg->max_json_depth) {
    char msg[128];
    snprintf(msg, sizeof(msg), "JSON nested deeper than max_json_depth (%u)", cfg->max_json_depth);
    sd_req_error(req, SD_E_INVALID_JSON, msg, NULL);
    return -1;
  }
  if (flags & PARSE_PUBLISH) {
    /* Most bodies: jansson parses only the envelope (see jcheck.h). */
    flags &= ~(size_t)PARSE_PUBLISH;
    int rc = sd_jcheck_publish(p, n, cfg->max_json_depth, &req->envelope);
    if (rc == 1) {
      req->json = json_loadb(req->envelope.data, req->envelope.len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | flags, &jerr);
      if (req->json != NULL) return 0;
      /* Cannot happen (jcheck accepts only what jansson accepts); if it
       * does, the whole body decides. */
      SD_WARN("publish body check accepted a body whose envelope jansson refused");
    }
  }
  req->json = json_loadb(p, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | flags, &jerr);
  if (req->json == NULL) {
    char msg[320];
    snprintf(msg, sizeof(msg), "malformed JSON at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    sd_req_error(req, SD_E_INVALID_JSON, msg, NULL);
    return -1;
  }
  return 0;
}

static struct sd_stream *find_stream(struct sd_req *req) {
  struct sd_stream *s = sd_engine_find(req->h->engine, req->parts[1]);
  if (s == NULL) {
    char msg[320];
    snprintf(msg, sizeof(msg), "stream '%s' does not exist", req->parts[1]);
    sd_req_error(req, SD_E_STREAM_NOT_FOUND, msg, NULL);
  }
  return s;
}

static void hold_stream(struct sd_req *req, struct sd_stream *s) {
  SD_ASSERT(req->stream == NULL);
  sd_stream_ref(s);
  req->stream = s;
}

/* ---- matching ------------------------------------------------------------------ */

static int check_name(struct sd_req *req, const char *name, const char *what) {
  if (sd_name_check(name, strlen(name)) == 0 && !(is(what, "stream") && is(name, "list"))) return 0;
  char msg[400];
  snprintf(msg, sizeof(msg), "invalid %s name '%.255s': 1 to 255 bytes of [A-Za-z0-9._:-], not starting with '.'%s",
           what, name, is(name, "list") ? " ('list' is reserved)" : "");
  sd_req_error(req, SD_E_INVALID_NAME, msg, NULL);
  return -1;
}

int sd_routes_match(struct sd_req *req) {
  char *p = req->path;
  const char *m = req->method;
  int route = R_NONE, allowed = 0;
  req->nparts = 0;
  if (*p == '/') p++;
  for (;;) {
    if (req->nparts == SD_PATH_MAX_PARTS) {
      route = R_NONE;
      goto not_found;
    }
    req->parts[req->nparts++] = p;
    char *slash = strchr(p, '/');
    if (slash == NULL) break;
    *slash = '\0';
    p = slash + 1;
  }
  char **v = req->parts;
  int n = req->nparts;

  if (is(m, "OPTIONS")) {
    req->route = R_OPTIONS;
    return 0;
  }
  if (n == 1 && (is(v[0], "health") || is(v[0], "metrics"))) {
    route = is(v[0], "health") ? R_HEALTH : R_METRICS;
    allowed = is(m, "GET") || is(m, "HEAD");
  } else if (n >= 2 && is(v[0], "stream")) {
    if (n == 2 && is(v[1], "list") && (is(m, "GET") || is(m, "HEAD"))) {
      req->route = R_LIST;
      return 0;
    }
    if (n == 2) {
      route = R_STREAM;
      allowed = is(m, "POST") || is(m, "PUT") || is(m, "DELETE");
    } else if (n == 3 && (is(v[2], "info") || is(v[2], "stats") || is(v[2], "consumers"))) {
      route = is(v[2], "info") ? R_INFO : is(v[2], "stats") ? R_STATS : R_CONSUMERS;
      allowed = is(m, "GET") || is(m, "HEAD");
    } else if (n == 3 && is(v[2], "publish")) {
      route = R_PUBLISH;
      allowed = is(m, "POST");
    } else if (n == 4 && is(v[2], "consume")) {
      route = R_CONSUME;
      allowed = is(m, "GET") || is(m, "HEAD");
    } else if (n == 4 && is(v[2], "ws")) {
      route = R_WS;
      allowed = is(m, "GET");
    } else if (n == 3 && is(v[2], "groups")) {
      route = R_GROUPS;
      allowed = is(m, "GET") || is(m, "HEAD");
    } else if (n == 4 && is(v[2], "group")) {
      route = R_GROUP;
      allowed = is(m, "POST") || is(m, "DELETE");
    } else if (n == 5 && is(v[2], "group")) {
      if (is(v[4], "info") || is(v[4], "consume") || is(v[4], "dead")) {
        route = is(v[4], "info") ? R_GROUP_INFO : is(v[4], "consume") ? R_GROUP_CONSUME : R_GROUP_DEAD;
        allowed = is(m, "GET") || is(m, "HEAD");
      } else if (is(v[4], "ack")) {
        route = R_GROUP_ACK;
        allowed = is(m, "POST");
      }
    } else if (n == 6 && is(v[2], "group") && is(v[4], "consumer")) {
      route = R_GROUP_LEAVE;
      allowed = is(m, "DELETE");
    } else if (n == 6 && is(v[2], "group") && is(v[4], "ws")) {
      route = R_GROUP_WS;
      allowed = is(m, "GET");
    }
    if (route != R_NONE) {
      if (check_name(req, v[1], "stream") != 0) return -1;
      if ((route == R_CONSUME || route == R_WS) && check_name(req, v[3], "consumer") != 0) return -1;
      if (route >= R_GROUP && check_name(req, v[3], "group") != 0) return -1;
      if ((route == R_GROUP_LEAVE || route == R_GROUP_WS) && check_name(req, v[5], "consumer") != 0) return -1;
    }
  }
not_found:
  if (route == R_NONE) {
    sd_req_error(req, SD_E_NOT_FOUND, "no such route", NULL);
    return -1;
  }
  if (!allowed) {
    char msg[128];
    snprintf(msg, sizeof(msg), "method %s is not allowed on this route", m);
    sd_req_error(req, SD_E_METHOD_NOT_ALLOWED, msg, NULL);
    return -1;
  }
  req->route = route;
  return 0;
}

/* ---- access --------------------------------------------------------------------- */

/* The permission each route needs (docs/security.md lists them):
 * /health and CORS preflights are open; /stream/list takes any valid key
 * and lists the streams it holds a grant on; /metrics needs read on every
 * stream; creating and deleting streams and groups needs admin; publish
 * needs write; everything else on a stream, group consumers and acks
 * included, needs read. */
int sd_routes_authorize(struct sd_req *req) {
  const char *stream = req->nparts >= 2 ? req->parts[1] : NULL;
  unsigned perms;
  switch (req->route) {
  case R_OPTIONS:
  case R_HEALTH:
    return 0;
  case R_LIST:
    return sd_req_authorize(req, 0, NULL, 0);
  case R_METRICS:
    return sd_req_authorize(req, SD_AUTH_READ, NULL, 0);
  case R_STREAM:
  case R_GROUP:
    perms = SD_AUTH_ADMIN;
    break;
  case R_PUBLISH:
    perms = SD_AUTH_WRITE;
    break;
  default:
    perms = SD_AUTH_READ;
    break;
  }
  SD_ASSERT(stream != NULL);
  return sd_req_authorize(req, perms, stream, req->route == R_WS || req->route == R_GROUP_WS);
}

/* ---- streams ------------------------------------------------------------------- */

/* Reads an optional whole-number member of the body object.  *got says
 * whether it was there.  Answers 400 naming it and returns -1 when it is
 * not a whole number within min..max. */
static int body_uint(struct sd_req *req, const char *name, int64_t min, int64_t max, uint64_t *out, int *got) {
  json_t *x = json_object_get(req->json, name);
  *got = x != NULL;
  if (x == NULL) return 0;
  if (!json_is_integer(x) || json_integer_value(x) < min || json_integer_value(x) > max) {
    bad_field(req, SD_E_INVALID_PARAMETER, name, "'%s' must be a whole number from %lld to %lld", name,
              (long long)min, (long long)max);
    return -1;
  }
  *out = (uint64_t)json_integer_value(x);
  return 0;
}

struct cfg_given {
  int partitions, retention_hours, retention_bytes, max_events;
};

static int parse_stream_config(struct sd_req *req, struct sd_stream_config *cfg, struct cfg_given *given) {
  *cfg = sd_engine_options(req->h->engine)->defaults;
  memset(given, 0, sizeof(*given));
  if (req->json == NULL) return 0;
  if (!json_is_object(req->json)) {
    sd_req_error(req, SD_E_INVALID_JSON, "the body must be a JSON object", NULL);
    return -1;
  }
  uint64_t v;
  int got;
  if (body_uint(req, "partitions", 1, SD_MAX_PARTITIONS, &v, &got) != 0) return -1;
  if ((given->partitions = got)) cfg->partitions = (uint32_t)v;
  if (body_uint(req, "retention_hours", 0, 24 * 365 * 1000, &v, &got) != 0) return -1;
  if ((given->retention_hours = got)) cfg->retention_hours = v;
  if (body_uint(req, "retention_bytes", 0, INT64_MAX, &v, &got) != 0) return -1;
  if ((given->retention_bytes = got)) cfg->retention_bytes = v;
  if (body_uint(req, "max_events", 0, INT64_MAX, &v, &got) != 0) return -1;
  if ((given->max_events = got)) cfg->max_events = v;
  return 0;
}

static void created_response(struct sd_req *req, struct sd_stream *s, int put) {
  const struct sd_stream_config *c = sd_stream_config(s);
  sd_buf_reset(&req->out);
  SD_BUF_LIT(&req->out, "{\"success\":true,\"stream\":");
  sd_json_str(&req->out, sd_stream_name(s), strlen(sd_stream_name(s)));
  sd_buf_printf(&req->out, ",%s\"partitions\":%u,\"retention_hours\":%llu}", put ? "\"created\":true," : "",
                c->partitions, (unsigned long long)c->retention_hours);
}

static void on_create_durable(struct sd_durable_op *op, int status) {
  struct sd_req *req = op->data;
  if (status != 0 && status != SD_E_STREAM_DELETED) {
    sd_req_error(req, status, "stream created but its metadata could not be synced", NULL);
    return;
  }
  created_response(req, req->stream, is(req->method, "PUT"));
  sd_req_finish(req, 201);
}

static void on_delete_durable(struct sd_durable_op *op, int status) {
  struct sd_req *req = op->data;
  if (status != 0 && status != SD_E_STREAM_DELETED) {
    sd_req_error(req, status, "the stream was deleted but the deletion could not be synced", NULL);
    return;
  }
  sd_buf_reset(&req->out);
  SD_BUF_LIT(&req->out, "{\"success\":true}");
  sd_req_finish(req, 200);
}

static void handle_stream(struct sd_req *req) {
  struct sd_engine *e = req->h->engine;
  const char *name = req->parts[1];
  struct sd_stream_config cfg;
  struct cfg_given given;
  struct sd_stream *s;
  int created = 0, rc;

  if (is(req->method, "DELETE")) {
    if (find_stream(req) == NULL) return;
    /* Answer once the deletion is durable. */
    req->dop.cb = on_delete_durable;
    req->dop.data = req;
    rc = sd_engine_delete(e, name, &req->dop);
    if (rc != 0)
      sd_req_error(req, rc, NULL, NULL);
    else
      sd_req_suspend(req);
    return;
  }
  if (parse_body(req, 1, 0) != 0 || parse_stream_config(req, &cfg, &given) != 0) return;
  int put = is(req->method, "PUT");
  if (put && (s = sd_engine_find(e, name)) != NULL) {
    const struct sd_stream_config *have = sd_stream_config(s);
    if ((given.partitions && have->partitions != cfg.partitions) ||
        (given.retention_hours && have->retention_hours != cfg.retention_hours) ||
        (given.retention_bytes && have->retention_bytes != cfg.retention_bytes) ||
        (given.max_events && have->max_events != cfg.max_events)) {
      char msg[400];
      snprintf(msg, sizeof(msg), "stream '%s' exists with other settings (partitions %u, retention_hours %llu)",
               name, have->partitions, (unsigned long long)have->retention_hours);
      sd_req_error(req, SD_E_CONFIG_MISMATCH, msg, NULL);
      return;
    }
    sd_buf_reset(&req->out);
    SD_BUF_LIT(&req->out, "{\"success\":true,\"stream\":");
    sd_json_str(&req->out, name, strlen(name));
    sd_buf_printf(&req->out, ",\"created\":false}");
    sd_req_finish(req, 200);
    return;
  }
  rc = sd_engine_create(e, name, &cfg, 1, &s, &created);
  if (rc != 0) {
    char msg[320];
    snprintf(msg, sizeof(msg), "stream '%s' already exists", name);
    sd_req_error(req, rc, rc == SD_E_STREAM_EXISTS ? msg : NULL, NULL);
    return;
  }
  if (sd_engine_options(e)->durability == SD_DURABILITY_NEVER) {
    created_response(req, s, put);
    sd_req_finish(req, 201);
    return;
  }
  /* Answer once the stream's files and directory entries are synced. */
  hold_stream(req, s);
  req->dop.cb = on_create_durable;
  req->dop.data = req;
  sd_req_suspend(req);
  sd_stream_when_durable(s, &req->dop);
}

static void list_one(void *arg, struct sd_stream *s) {
  struct sd_req *req = arg;
  if (req->key != NULL && !sd_auth_any(req->key, sd_stream_name(s))) return; /* a key sees what it may use */
  if (req->out.data[req->out.len - 1] != '[') SD_BUF_LIT(&req->out, ",");
  sd_json_str(&req->out, sd_stream_name(s), strlen(sd_stream_name(s)));
}

static void handle_list(struct sd_req *req) {
  sd_buf_reset(&req->out);
  SD_BUF_LIT(&req->out, "{\"streams\":[");
  sd_engine_foreach(req->h->engine, list_one, req);
  SD_BUF_LIT(&req->out, "]}");
  sd_req_finish(req, 200);
}

/* The last offset held, -1 when the partition holds nothing. */
static long long max_offset(const struct sd_partition_stat *ps) {
  return ps->next_offset > ps->min_offset ? (long long)ps->next_offset - 1 : -1;
}

struct totals {
  uint64_t count;
  uint64_t min;    /* minimum over partitions of min_offset */
  int64_t max;     /* maximum over partitions of max_offset (-1 when all empty) */
};

static void stream_totals(struct sd_stream *s, struct totals *t) {
  const struct sd_stream_config *c = sd_stream_config(s);
  t->count = 0;
  t->min = UINT64_MAX;
  t->max = -1;
  for (uint32_t p = 0; p < c->partitions; p++) {
    struct sd_partition_stat ps;
    sd_stream_partition_stat(s, p, &ps);
    t->count += ps.next_offset - ps.min_offset;
    if (ps.min_offset < t->min) t->min = ps.min_offset;
    if (ps.next_offset > ps.min_offset && (int64_t)ps.next_offset - 1 > t->max) t->max = (int64_t)ps.next_offset - 1;
  }
}

static void handle_info(struct sd_req *req, struct sd_stream *s) {
  const struct sd_stream_config *c = sd_stream_config(s);
  struct sd_stream_stat st;
  struct totals t;
  sd_stream_stat(s, &st);
  stream_totals(s, &t);
  sd_buf_reset(&req->out);
  SD_BUF_LIT(&req->out, "{\"name\":");
  sd_json_str(&req->out, sd_stream_name(s), strlen(sd_stream_name(s)));
  sd_buf_printf(&req->out,
                ",\"partitions\":%u,\"retention_hours\":%llu,\"retention_bytes\":%llu,\"max_events\":%llu,"
                "\"message_count\":%llu,\"min_offset\":%llu,\"max_offset\":%lld,\"created_at\":%llu,"
                "\"generation\":%llu}",
                c->partitions, (unsigned long long)c->retention_hours, (unsigned long long)c->retention_bytes,
                (unsigned long long)c->max_events, (unsigned long long)t.count, (unsigned long long)t.min,
                (long long)t.max, (unsigned long long)st.created_at_ms, (unsigned long long)st.generation);
  sd_req_finish(req, 200);
}

static void handle_stats(struct sd_req *req, struct sd_stream *s) {
  const struct sd_stream_config *c = sd_stream_config(s);
  struct sd_stream_stat st;
  struct totals t;
  sd_stream_stat(s, &st);
  stream_totals(s, &t);
  struct sd_buf *b = &req->out;
  sd_buf_reset(b);
  SD_BUF_LIT(b, "{\"name\":");
  sd_json_str(b, sd_stream_name(s), strlen(sd_stream_name(s)));
  sd_buf_printf(b,
                ",\"message_count\":%llu,\"min_offset\":%llu,\"max_offset\":%lld,\"subscriber_count\":%u,"
                "\"total_published\":%llu,\"total_consumed\":%llu,\"dropped\":0,\"created_at\":%llu,"
                "\"generation\":%llu,\"partition_count\":%u,\"partitions\":[",
                (unsigned long long)t.count, (unsigned long long)t.min, (long long)t.max, st.subscribers,
                (unsigned long long)st.total_published, (unsigned long long)st.total_consumed,
                (unsigned long long)st.created_at_ms, (unsigned long long)st.generation, c->partitions);
  for (uint32_t p = 0; p < c->partitions; p++) {
    struct sd_partition_stat ps;
    sd_stream_partition_stat(s, p, &ps);
    sd_buf_printf(b, "%s{\"partition\":%u,\"message_count\":%llu,\"min_offset\":%llu,\"max_offset\":%lld,\"bytes\":%llu",
                  p ? "," : "", p, (unsigned long long)(ps.next_offset - ps.min_offset),
                  (unsigned long long)ps.min_offset, max_offset(&ps), (unsigned long long)ps.bytes);
    const char *ro = sd_stream_read_only_reason(s, p);
    if (ro) {
      SD_BUF_LIT(b, ",\"read_only\":");
      sd_json_str(b, ro, strlen(ro));
    }
    const char *dmg = sd_stream_damage(s, p);
    if (dmg) {
      SD_BUF_LIT(b, ",\"damage\":");
      sd_json_str(b, dmg, strlen(dmg));
    }
    SD_BUF_LIT(b, "}");
  }
  SD_BUF_LIT(b, "]}");
  sd_req_finish(req, 200);
}

struct consumers_ctx {
  struct sd_req *req;
  struct sd_stream *s;
  int n;
};

static void consumer_one(void *arg, const struct sd_consumer_pos *p) {
  struct consumers_ctx *x = arg;
  struct sd_partition_stat ps;
  sd_stream_partition_stat(x->s, p->partition, &ps);
  uint64_t lag = ps.next_offset > p->offset + 1 ? ps.next_offset - p->offset - 1 : 0;
  struct sd_buf *b = &x->req->out;
  if (x->n++ > 0) SD_BUF_LIT(b, ",");
  SD_BUF_LIT(b, "{\"consumer\":");
  sd_json_str(b, p->consumer, strlen(p->consumer));
  sd_buf_printf(b, ",\"partition\":%u,\"offset\":%llu,\"lag\":%llu,\"last_seen\":%llu}", p->partition,
                (unsigned long long)p->offset, (unsigned long long)lag, (unsigned long long)p->last_seen_ms);
}

static void handle_consumers(struct sd_req *req, struct sd_stream *s) {
  struct consumers_ctx x = {req, s, 0};
  sd_buf_reset(&req->out);
  SD_BUF_LIT(&req->out, "{\"consumers\":[");
  sd_stream_consumers_foreach(s, consumer_one, &x);
  SD_BUF_LIT(&req->out, "]}");
  sd_req_finish(req, 200);
}

/* ---- publish -------------------------------------------------------------------- */

static int events_reserve(struct sd_req *req, size_t n) {
  if (n <= req->events_cap) return 0;
  size_t cap = req->events_cap ? req->events_cap : 16;
  while (cap < n) cap *= 2;
  struct sd_event_in *ev = realloc(req->events, cap * sizeof(*ev));
  if (ev == NULL) return -ENOMEM;
  req->events = ev;
  struct sd_append_result *r = realloc(req->results, cap * sizeof(*r));
  if (r == NULL) return -ENOMEM;
  req->results = r;
  struct sd_span *sp = realloc(req->spans, cap * sizeof(*sp));
  if (sp == NULL) return -ENOMEM;
  req->spans = sp;
  req->events_cap = cap;
  return 0;
}

/* Validates one event object and appends its members to req->scratch.
 * Pointers into scratch are fixed up once every event is encoded, since
 * scratch may move while it grows.  Answers 400/413 and returns -1. */
static int encode_event(struct sd_req *req, json_t *o, size_t idx, int batch, struct sd_span raw,
                        struct sd_event_in *ev) {
  const struct sd_config *cfg = req->h->cfg;
  char where[48] = "";
  struct sd_buf *b = &req->scratch;
  if (batch) snprintf(where, sizeof(where), "event %zu: ", idx);
  if (!json_is_object(o)) {
    bad_field(req, SD_E_INVALID_EVENT, NULL, "%san event must be a JSON object", where);
    return -1;
  }
  json_t *event = json_object_get(o, "event");
  json_t *data = json_object_get(o, "data");
  json_t *key = json_object_get(o, "partition_key");
  json_t *part = json_object_get(o, "partition");
  json_t *headers = json_object_get(o, "headers");
  json_t *id = json_object_get(o, "id");
  if (event == NULL) {
    bad_field(req, SD_E_INVALID_EVENT, "event", "%smissing field 'event'", where);
    return -1;
  }
  if (!json_is_string(event) || json_string_length(event) < 1 || json_string_length(event) > 255) {
    bad_field(req, SD_E_INVALID_EVENT, "event", "%sfield 'event' must be a string of 1 to 255 bytes", where);
    return -1;
  }
  if (data == NULL) {
    bad_field(req, SD_E_INVALID_EVENT, "data", "%smissing field 'data'", where);
    return -1;
  }
  if (key && (!json_is_string(key) || json_string_length(key) < 1 || json_string_length(key) > MAX_KEY_BYTES)) {
    bad_field(req, SD_E_INVALID_EVENT, "partition_key", "%sfield 'partition_key' must be a string of 1 to %d bytes",
              where, MAX_KEY_BYTES);
    return -1;
  }
  /* Numbers were read as reals (so that any integer in data is accepted). */
  double pv = part && json_is_number(part) ? json_number_value(part) : -1;
  if (part && (pv < 0 || pv >= SD_MAX_PARTITIONS || pv != (double)(int32_t)pv)) {
    bad_field(req, SD_E_INVALID_EVENT, "partition", "%sfield 'partition' must be a partition number", where);
    return -1;
  }
  if (headers) {
    const char *hk;
    json_t *hv;
    int ok = json_is_object(headers);
    if (ok) json_object_foreach(headers, hk, hv) ok = ok && json_is_string(hv);
    if (!ok) {
      bad_field(req, SD_E_INVALID_EVENT, "headers", "%sfield 'headers' must be an object of strings", where);
      return -1;
    }
  }
  if (id && (!json_is_string(id) || json_string_length(id) < 1 || json_string_length(id) > SD_MAX_ID)) {
    bad_field(req, SD_E_INVALID_EVENT, "id", "%sfield 'id' must be a string of 1 to %d bytes", where, SD_MAX_ID);
    return -1;
  }
  size_t start = b->len;
  int rc = SD_BUF_LIT(b, "\"event\":");
  if (rc == 0) rc = sd_json_dump(b, event);
  if (rc == 0 && key) rc = SD_BUF_LIT(b, ",\"key\":") ?: sd_json_dump(b, key);
  if (rc == 0 && headers) rc = SD_BUF_LIT(b, ",\"headers\":") ?: sd_json_dump(b, headers);
  if (rc == 0 && id) rc = SD_BUF_LIT(b, ",\"id\":") ?: sd_json_dump(b, id);
  /* data is kept byte for byte as received. */
  struct sd_span dspan;
  if (rc == 0) rc = SD_BUF_LIT(b, ",\"data\":");
  if (rc == 0) rc = sd_jspan_member(raw, "data", &dspan) ? sd_buf_append(b, dspan.p, dspan.len) : -EINVAL;
  if (rc != 0) {
    sd_req_error(req, rc, NULL, NULL);
    return -1;
  }
  size_t size = raw.len;
  if (size > cfg->engine.max_event_bytes) {
    char extra[64];
    snprintf(extra, sizeof(extra), "\"max_event_bytes\":%u", cfg->engine.max_event_bytes);
    char msg[160];
    snprintf(msg, sizeof(msg), "%sevent of %zu bytes is larger than max_event_bytes (%u)", where, size,
             cfg->engine.max_event_bytes);
    sd_req_error(req, SD_E_EVENT_TOO_LARGE, msg, extra);
    return -1;
  }
  ev->members = (const char *)(uintptr_t)start; /* fixed up later */
  ev->members_len = b->len - start;
  ev->key = key ? json_string_value(key) : NULL;
  ev->key_len = key ? json_string_length(key) : 0;
  ev->id = id ? json_string_value(id) : NULL;
  ev->id_len = id ? json_string_length(id) : 0;
  ev->partition = part ? (int32_t)pv : -1;
  return 0;
}

static void publish_response(struct sd_req *req) {
  struct sd_buf *b = &req->out;
  sd_buf_reset(b);
  if (!req->batch) {
    struct sd_append_result *r = &req->results[0];
    SD_BUF_LIT(b, "{\"success\":true,\"offset\":");
    sd_buf_u64(b, r->offset);
    SD_BUF_LIT(b, ",\"partition\":");
    sd_buf_u64(b, r->partition);
    if (r->duplicate) SD_BUF_LIT(b, ",\"duplicate\":true");
    SD_BUF_LIT(b, "}");
  } else {
    SD_BUF_LIT(b, "{\"success\":true,\"results\":[");
    for (size_t i = 0; i < req->nevents; i++) {
      struct sd_append_result *r = &req->results[i];
      sd_buf_printf(b, "%s{\"partition\":%u,\"offset\":%llu%s}", i ? "," : "", r->partition,
                    (unsigned long long)r->offset, r->duplicate ? ",\"duplicate\":true" : "");
    }
    SD_BUF_LIT(b, "]}");
  }
  sd_req_finish(req, 200);
}

static void on_publish_durable(struct sd_durable_op *op, int status) {
  struct sd_req *req = op->data;
  if (status != 0) {
    char msg[300];
    snprintf(msg, sizeof(msg), "the events could not be synced (%s); they may not be stored", sd_strerror(status));
    if (status == SD_E_STREAM_DELETED) snprintf(msg, sizeof(msg), "the stream was deleted before the events were synced");
    sd_req_error(req, status, msg, NULL);
    return;
  }
  publish_response(req);
}

static void handle_publish(struct sd_req *req) {
  const struct sd_config *cfg = req->h->cfg;
  struct sd_engine *e = req->h->engine;
  struct sd_stream *s;
  json_t *list = NULL;
  int rc;

  if (parse_body(req, 0, JSON_DECODE_INT_AS_REAL | PARSE_PUBLISH) != 0) return;
  struct sd_span body = {sd_jspan_ws(req->body.data, req->body.data + req->body.len), 0};
  body.len = (size_t)(req->body.data + req->body.len - body.p);
  struct sd_span list_span = body;
  if (json_is_array(req->json)) {
    list = req->json;
  } else if (json_is_object(req->json) && json_object_get(req->json, "event") == NULL &&
             json_is_array(json_object_get(req->json, "events"))) {
    list = json_object_get(req->json, "events");
    sd_jspan_member(body, "events", &list_span);
  } else if (!json_is_object(req->json)) {
    sd_req_error(req, SD_E_INVALID_EVENT, "the body must be an event object, an array of events or {\"events\":[...]}",
                 NULL);
    return;
  }
  req->batch = list != NULL;
  size_t n = list ? json_array_size(list) : 1;
  if (n == 0) {
    sd_req_error(req, SD_E_INVALID_EVENT, "the batch holds no events", NULL);
    return;
  }
  if (n > cfg->max_batch_events) {
    char msg[128];
    snprintf(msg, sizeof(msg), "batch of %zu events is larger than max_batch_events (%u)", n, cfg->max_batch_events);
    sd_req_error(req, SD_E_BATCH_TOO_LARGE, msg, NULL);
    return;
  }
  if ((rc = events_reserve(req, n)) != 0) {
    sd_req_error(req, rc, NULL, NULL);
    return;
  }
  if (list == NULL)
    req->spans[0] = body;
  else if (sd_jspan_elements(list_span, req->spans, n) != n) {
    sd_req_error(req, SD_E_INVALID_JSON, "the batch could not be split into events", NULL);
    return;
  }
  sd_buf_reset(&req->scratch);
  for (size_t i = 0; i < n; i++) {
    json_t *o = list ? json_array_get(list, i) : req->json;
    if (encode_event(req, o, i, list != NULL, req->spans[i], &req->events[i]) != 0) return;
  }
  for (size_t i = 0; i < n; i++) req->events[i].members = req->scratch.data + (uintptr_t)req->events[i].members;
  req->nevents = n;

  s = sd_engine_find(e, req->parts[1]);
  if (s == NULL) {
    int created;
    if (!cfg->auto_create_streams) {
      find_stream(req);
      return;
    }
    if ((rc = sd_engine_create(e, req->parts[1], NULL, 0, &s, &created)) != 0) {
      sd_req_error(req, rc, NULL, NULL);
      return;
    }
  }
  for (size_t i = 0; i < n; i++) {
    if (req->events[i].partition >= (int32_t)sd_stream_config(s)->partitions) {
      char extra[64];
      snprintf(extra, sizeof(extra), "\"field\":\"partition\",\"partitions\":%u", sd_stream_config(s)->partitions);
      char msg[160];
      snprintf(msg, sizeof(msg), "partition %d does not exist (the stream has %u)", req->events[i].partition,
               sd_stream_config(s)->partitions);
      sd_req_error(req, SD_E_INVALID_PARAMETER, msg, extra);
      return;
    }
  }
  if ((size_t)req->h->waiting >= cfg->max_waiting) {
    sd_req_error(req, SD_E_BUSY, NULL, NULL);
    return;
  }
  rc = sd_stream_append(s, req->events, n, req->results);
  if (rc < 0) {
    const char *msg = NULL;
    char buf[400];
    if (rc == SD_E_READ_ONLY) {
      for (size_t i = 0; i < n && msg == NULL; i++)
        for (uint32_t p = 0; p < sd_stream_config(s)->partitions && msg == NULL; p++)
          msg = sd_stream_read_only_reason(s, p);
      if (msg) {
        snprintf(buf, sizeof(buf), "partition stopped accepting writes: %s", msg);
        msg = buf;
      }
    } else if (rc == -ENOSPC || rc == -EDQUOT) {
      msg = "the disk is full; nothing was stored";
    }
    sd_req_error(req, rc, msg, NULL);
    return;
  }
  if (rc == 0) {
    publish_response(req);
    return;
  }
  hold_stream(req, s);
  req->dop.cb = on_publish_durable;
  req->dop.data = req;
  sd_req_suspend(req);
  sd_stream_when_durable(s, &req->dop);
}

/* ---- consume -------------------------------------------------------------------- */

static int append_record(void *arg, const struct sd_record *rec) {
  struct sd_req *req = arg;
  struct sd_buf *b = &req->out;
  if (sd_buf_reserve(b, rec->json_len + 2) != 0) return 1;
  if (b->data[b->len - 1] != '[') b->data[b->len++] = ',';
  memcpy(b->data + b->len, rec->json, rec->json_len);
  b->len += rec->json_len;
  if (rec->partition < req->last_read_cap) req->last_read[rec->partition] = rec->offset + 1;
  return 0;
}

/* Answers 416 for req->from on req->partition (or every partition): the
 * min_offset given is the first offset from which the read succeeds. */
static void out_of_range(struct sd_req *req, struct sd_stream *s) {
  const struct sd_stream_config *c = sd_stream_config(s);
  uint64_t lo = 0;
  int64_t hi = -1;
  char extra[128], msg[200];
  for (uint32_t p = 0; p < c->partitions; p++) {
    if (req->partition >= 0 && p != (uint32_t)req->partition) continue;
    struct sd_partition_stat ps;
    sd_stream_partition_stat(s, p, &ps);
    if (ps.min_offset > lo) lo = ps.min_offset;
    if (max_offset(&ps) > hi) hi = max_offset(&ps);
  }
  snprintf(extra, sizeof(extra), "\"min_offset\":%llu,\"max_offset\":%lld", (unsigned long long)lo, (long long)hi);
  snprintf(msg, sizeof(msg), "offset %lld was removed by retention; the oldest offset is %llu", (long long)req->from,
           (unsigned long long)lo);
  sd_req_error(req, SD_E_OFFSET_OUT_OF_RANGE, msg, extra);
}

static void consume_timer_cb(uv_timer_t *t);
static void consume_wake_cb(struct sd_waiter *w, int status);

/* Reads what is there; answers, or waits when nothing is and time remains.
 * Returns nothing: the request is answered or suspended. */
static void consume_run(struct sd_req *req, int final) {
  struct sd_stream *s = req->stream;
  const struct sd_stream_config *c = sd_stream_config(s);
  size_t max_bytes = req->h->cfg->max_body_bytes;
  int rc;

  memset(req->last_read, 0, req->last_read_cap * sizeof(*req->last_read));
  sd_buf_reset(&req->out);
  SD_BUF_LIT(&req->out, "[");
  if (req->partition >= 0 || c->partitions == 1) {
    uint32_t p = req->partition >= 0 ? (uint32_t)req->partition : 0;
    uint64_t from;
    rc = sd_stream_resolve_offset(s, p, req->from, &from);
    if (rc == 0) {
      rc = sd_stream_read(s, p, from, req->limit, max_bytes, append_record, req);
      /* A long poll keeps its resolved start, so "-N" or the end stays put. */
      req->from = (int64_t)from;
    }
  } else {
    rc = sd_stream_read_merged(s, req->from, req->limit, max_bytes, append_record, req);
  }
  if (rc == SD_E_OFFSET_OUT_OF_RANGE) {
    out_of_range(req, s);
    return;
  }
  if (rc < 0) {
    sd_req_error(req, rc, rc == SD_E_CORRUPT ? "a stored record failed its checksum" : NULL, NULL);
    return;
  }
  if (rc == 0 && !final && !req->h->quiescing) {
    /* Nothing yet: wait for an append (or the timer armed by handle_consume). */
    if (!req->suspended) sd_req_suspend(req);
    req->waiter.cb = consume_wake_cb;
    req->waiter.data = req;
    sd_stream_wait(s, &req->waiter);
    return;
  }
  if (rc > 0) {
    uint64_t now = sd_now_ms();
    for (uint32_t p = 0; p < req->last_read_cap && p < c->partitions; p++)
      if (req->last_read[p]) sd_stream_consumer_seen(s, req->consumer, p, req->last_read[p] - 1, now);
    sd_stream_count_consumed(s, (uint64_t)rc);
    req->events_out += (uint32_t)rc;
  }
  SD_BUF_LIT(&req->out, "]");
  uv_timer_stop(&req->wait_timer);
  sd_req_finish(req, 200);
}

static void consume_timer_cb(uv_timer_t *t) {
  struct sd_req *req = t->data;
  sd_stream_wait_cancel(&req->waiter);
  consume_run(req, 1);
}

static void consume_wake_cb(struct sd_waiter *w, int status) {
  struct sd_req *req = w->data;
  if (status != 0) {
    uv_timer_stop(&req->wait_timer);
    if (status == SD_E_STREAM_DELETED) {
      char msg[320];
      snprintf(msg, sizeof(msg), "stream '%s' was deleted", sd_stream_name(req->stream));
      sd_req_error(req, SD_E_STREAM_NOT_FOUND, msg, NULL);
    } else {
      sd_req_error(req, status, NULL, NULL);
    }
    return;
  }
  consume_run(req, 0);
}

/* Runs a read now; with wait_ms > 0 it may wait (run(req, 0) suspends when
 * it finds nothing) until timer_cb fires at the deadline. */
static void long_poll(struct sd_req *req, int64_t wait_ms, uv_timer_cb timer_cb, void (*run)(struct sd_req *, int)) {
  if (wait_ms <= 0) {
    run(req, 1);
    return;
  }
  if (req->h->waiting >= req->h->cfg->max_waiting) {
    sd_req_error(req, SD_E_BUSY, NULL, NULL);
    return;
  }
  if (!req->wait_timer_init) {
    uv_timer_init(req->h->loop, &req->wait_timer);
    req->wait_timer.data = req;
    req->wait_timer_init = 1;
  }
  uv_timer_start(&req->wait_timer, timer_cb, (uint64_t)wait_ms, 0);
  run(req, 0);
}

static void handle_consume(struct sd_req *req, struct sd_stream *s) {
  const struct sd_config *cfg = req->h->cfg;
  const struct sd_stream_config *c = sd_stream_config(s);
  int64_t from = 0, limit = DEFAULT_LIMIT, partition = -1, wait_ms = 0;
  if (arg_int(req, "from_offset", INT64_MIN, &from) != 0 || arg_int(req, "limit", 1, &limit) != 0 ||
      arg_int(req, "partition", 0, &partition) != 0 || arg_int(req, "wait_ms", 0, &wait_ms) != 0)
    return;
  if (partition >= (int64_t)c->partitions) {
    char why[96];
    snprintf(why, sizeof(why), "names partition %lld, but the stream has %u", (long long)partition, c->partitions);
    bad_param(req, "partition", why);
    return;
  }
  if (limit > MAX_LIMIT) limit = MAX_LIMIT;
  if (wait_ms > cfg->max_wait_ms) wait_ms = cfg->max_wait_ms;
  if (req->last_read_cap < c->partitions) {
    uint64_t *lr = realloc(req->last_read, c->partitions * sizeof(*lr));
    if (lr == NULL) {
      sd_req_error(req, -ENOMEM, NULL, NULL);
      return;
    }
    req->last_read = lr;
    req->last_read_cap = c->partitions;
  }
  snprintf(req->consumer, sizeof(req->consumer), "%s", req->parts[3]);
  req->from = from;
  req->limit = (uint32_t)limit;
  req->partition = (int32_t)partition;
  hold_stream(req, s);
  long_poll(req, wait_ms, consume_timer_cb, consume_run);
}

static void group_consume_run(struct sd_req *req, int final);

void sd_routes_wake(struct sd_req *req) {
  if (!req->suspended) return;
  if (req->route == R_CONSUME) {
    sd_stream_wait_cancel(&req->waiter);
    consume_run(req, 1);
  } else if (req->route == R_GROUP_CONSUME && req->group) {
    sd_stream_wait_cancel(&req->waiter);
    group_consume_run(req, 1);
  }
}

/* ---- WebSocket subscribe ------------------------------------------------------------ */

/* Whether a comma-separated header value holds token (case-insensitive). */
static int has_token(const char *value, const char *token) {
  size_t tl = strlen(token);
  for (const char *p = value; p && *p;) {
    while (*p == ' ' || *p == ',' || *p == '\t') p++;
    const char *e = p;
    while (*e && *e != ',') e++;
    const char *t = e;
    while (t > p && (t[-1] == ' ' || t[-1] == '\t')) t--;
    if ((size_t)(t - p) == tl && strncasecmp(p, token, tl) == 0) return 1;
    p = e;
  }
  return 0;
}

/* Checks the upgrade request and computes the accept key; answers the
 * error and returns -1 when it is not acceptable. */
static int ws_handshake(struct sd_req *req, char accept[29]) {
  const char *upgrade = sd_req_header(req, "Upgrade");
  const char *connection = sd_req_header(req, "Connection");
  const char *version = sd_req_header(req, "Sec-WebSocket-Version");
  const char *origin = sd_req_header(req, "Origin");
  if (upgrade == NULL || strcasecmp(upgrade, "websocket") != 0 || connection == NULL ||
      !has_token(connection, "upgrade")) {
    sd_req_error(req, SD_E_INVALID_HANDSHAKE, "this route needs a WebSocket upgrade (Upgrade: websocket)", NULL);
    return -1;
  }
  if (version == NULL || strcmp(version, "13") != 0) {
    sd_req_error(req, SD_E_INVALID_HANDSHAKE, "Sec-WebSocket-Version must be 13", NULL);
    return -1;
  }
  if (sd_ws_accept_key(sd_req_header(req, "Sec-WebSocket-Key"), accept) != 0) {
    sd_req_error(req, SD_E_INVALID_HANDSHAKE, "Sec-WebSocket-Key must be 16 bytes in base64", NULL);
    return -1;
  }
  if (origin != NULL && !sd_req_origin_allowed(req, origin)) {
    char msg[400];
    snprintf(msg, sizeof(msg), "Origin '%.300s' is not allowed", origin);
    sd_req_error(req, SD_E_FORBIDDEN_ORIGIN, msg, NULL);
    return -1;
  }
  return 0;
}

static void handle_ws(struct sd_req *req, struct sd_stream *s) {
  const struct sd_stream_config *c = sd_stream_config(s);
  char accept[29];
  int64_t from = 0, partition = -1;
  int rc;

  if (ws_handshake(req, accept) != 0) return;
  int has_from = sd_req_arg(req, "from_offset") != NULL;
  if (arg_int(req, "from_offset", INT64_MIN, &from) != 0 || arg_int(req, "partition", 0, &partition) != 0) return;
  if (partition >= (int64_t)c->partitions) {
    char why[96];
    snprintf(why, sizeof(why), "names partition %lld, but the stream has %u", (long long)partition, c->partitions);
    bad_param(req, "partition", why);
    return;
  }
  uint64_t *starts = malloc(c->partitions * sizeof(*starts));
  if (starts == NULL) {
    sd_req_error(req, -ENOMEM, NULL, NULL);
    return;
  }
  /* Default: the end of each partition (new events only). */
  for (uint32_t p = 0; p < c->partitions; p++) {
    struct sd_partition_stat ps;
    sd_stream_partition_stat(s, p, &ps);
    starts[p] = ps.next_offset;
  }
  rc = 0;
  if (has_from && partition >= 0)
    rc = sd_stream_resolve_offset(s, (uint32_t)partition, from, &starts[partition]);
  else if (has_from)
    rc = sd_stream_resolve_all(s, from, starts);
  if (rc != 0) {
    free(starts);
    req->from = from;
    req->partition = (int32_t)partition;
    if (rc == SD_E_OFFSET_OUT_OF_RANGE)
      out_of_range(req, s);
    else
      sd_req_error(req, rc, NULL, NULL);
    return;
  }
  struct sd_ws_conn *conn = sd_ws_conn_new(req->h->ws, s, (int32_t)partition, starts, req->parts[3]);
  free(starts);
  if (conn == NULL) {
    sd_req_error(req, -ENOMEM, NULL, NULL);
    return;
  }
  sd_req_upgrade(req, conn, accept);
}

/* ---- consumer groups -------------------------------------------------------------- */

static void groups_one(void *arg, struct sd_group *g) {
  struct sd_req *req = arg;
  if (req->out.data[req->out.len - 1] != '[') SD_BUF_LIT(&req->out, ",");
  sd_json_str(&req->out, sd_group_name(g), strlen(sd_group_name(g)));
}

static void handle_groups(struct sd_req *req, struct sd_stream *s) {
  sd_buf_reset(&req->out);
  SD_BUF_LIT(&req->out, "{\"groups\":[");
  sd_group_foreach(s, groups_one, req);
  SD_BUF_LIT(&req->out, "]}");
  sd_req_finish(req, 200);
}

static void on_group_durable(struct sd_durable_op *op, int status) {
  struct sd_req *req = op->data;
  if (status != 0) {
    sd_req_error(req, status, status == SD_E_STREAM_DELETED ? "the stream was deleted" : "the change could not be synced",
                 NULL);
    return;
  }
  sd_req_finish(req, req->status);
}

/* Answers with req->out and status once the groups log is synced (in
 * `always` and `interval` modes), at once in `never` mode. */
static void finish_durable(struct sd_req *req, struct sd_stream *s, unsigned status) {
  if (sd_engine_options(req->h->engine)->durability == SD_DURABILITY_NEVER) {
    sd_req_finish(req, status);
    return;
  }
  req->status = status;
  if (req->stream == NULL) hold_stream(req, s);
  req->dop.cb = on_group_durable;
  req->dop.data = req;
  if (!req->suspended) sd_req_suspend(req); /* a long poll already is */
  sd_stream_when_durable(s, &req->dop);
}

static int parse_group_config(struct sd_req *req, struct sd_group_config *cfg) {
  sd_group_config_default(cfg);
  if (req->json == NULL) return 0;
  if (!json_is_object(req->json)) {
    sd_req_error(req, SD_E_INVALID_JSON, "the body must be a JSON object", NULL);
    return -1;
  }
  static const struct {
    const char *name, *a, *b;
  } choices[] = {{"start", "earliest", "latest"}, {"mode", "shared", "partitioned"}, {"ack", "auto", "explicit"}};
  int *fields[] = {&cfg->start_latest, &cfg->partitioned, &cfg->explicit_ack};
  for (int i = 0; i < 3; i++) {
    json_t *x = json_object_get(req->json, choices[i].name);
    if (x == NULL) continue;
    const char *v = json_string_value(x);
    if (v == NULL || (!is(v, choices[i].a) && !is(v, choices[i].b))) {
      bad_field(req, SD_E_INVALID_PARAMETER, choices[i].name, "'%s' must be \"%s\" or \"%s\"", choices[i].name,
                choices[i].a, choices[i].b);
      return -1;
    }
    *fields[i] = is(v, choices[i].b);
  }
  uint64_t v;
  int got;
  if (body_uint(req, "ack_timeout_ms", 1, 86400000, &v, &got) != 0) return -1;
  if (got) cfg->ack_timeout_ms = v;
  if (body_uint(req, "max_deliveries", 0, 65535, &v, &got) != 0) return -1;
  if (got) cfg->max_deliveries = (uint32_t)v;
  if (body_uint(req, "session_timeout_ms", 1, 86400000, &v, &got) != 0) return -1;
  if (got) cfg->session_timeout_ms = v;
  return 0;
}

static void handle_group(struct sd_req *req, struct sd_stream *s) {
  const char *name = req->parts[3];
  struct sd_group_config cfg;
  struct sd_group *g;
  int rc;
  if (is(req->method, "DELETE")) {
    rc = sd_group_delete(s, name);
    if (rc != 0) {
      char msg[320];
      snprintf(msg, sizeof(msg), "group '%s' does not exist", name);
      sd_req_error(req, rc, rc == SD_E_GROUP_NOT_FOUND ? msg : NULL, NULL);
      return;
    }
    sd_buf_reset(&req->out);
    SD_BUF_LIT(&req->out, "{\"success\":true}");
    finish_durable(req, s, 200);
    return;
  }
  if (parse_body(req, 1, 0) != 0 || parse_group_config(req, &cfg) != 0) return;
  rc = sd_group_create(s, name, &cfg, &g);
  if (rc != 0) {
    char msg[320];
    snprintf(msg, sizeof(msg), "group '%s' already exists", name);
    sd_req_error(req, rc, rc == SD_E_GROUP_EXISTS ? msg : NULL, NULL);
    return;
  }
  sd_buf_reset(&req->out);
  SD_BUF_LIT(&req->out, "{\"success\":true,\"group\":");
  sd_json_str(&req->out, name, strlen(name));
  SD_BUF_LIT(&req->out, "}");
  finish_durable(req, s, 201);
}

struct group_info_ctx {
  struct sd_buf *b;
  int n;
};

static void info_consumer_name(void *arg, const char *name, uint64_t last_seen, const uint32_t *parts, uint32_t np) {
  struct group_info_ctx *x = arg;
  (void)last_seen;
  (void)parts;
  (void)np;
  if (x->n++) SD_BUF_LIT(x->b, ",");
  sd_json_str(x->b, name, strlen(name));
}

static void info_assignment(void *arg, const char *name, uint64_t last_seen, const uint32_t *parts, uint32_t np) {
  struct group_info_ctx *x = arg;
  (void)last_seen;
  if (x->n++) SD_BUF_LIT(x->b, ",");
  sd_json_str(x->b, name, strlen(name));
  SD_BUF_LIT(x->b, ":[");
  for (uint32_t i = 0; i < np; i++) sd_buf_printf(x->b, "%s%u", i ? "," : "", parts[i]);
  SD_BUF_LIT(x->b, "]");
}

static void info_consumer_seen(void *arg, const char *name, uint64_t last_seen, const uint32_t *parts, uint32_t np) {
  struct group_info_ctx *x = arg;
  (void)parts;
  (void)np;
  if (x->n++) SD_BUF_LIT(x->b, ",");
  SD_BUF_LIT(x->b, "{\"consumer\":");
  sd_json_str(x->b, name, strlen(name));
  sd_buf_printf(x->b, ",\"last_seen\":%llu}", (unsigned long long)last_seen);
}

static void handle_group_info(struct sd_req *req, struct sd_stream *s, struct sd_group *g) {
  const struct sd_group_config *c = sd_group_config(g);
  struct sd_group_stat st;
  struct sd_buf *b = &req->out;
  struct group_info_ctx x = {b, 0};
  sd_group_stat(g, &st);
  sd_buf_reset(b);
  SD_BUF_LIT(b, "{\"group\":");
  sd_json_str(b, sd_group_name(g), strlen(sd_group_name(g)));
  sd_buf_printf(b, ",\"mode\":\"%s\",\"ack\":\"%s\",\"ack_timeout_ms\":%llu,\"max_deliveries\":%u,"
                   "\"session_timeout_ms\":%llu,\"consumers\":[",
                c->partitioned ? "partitioned" : "shared", c->explicit_ack ? "explicit" : "auto",
                (unsigned long long)c->ack_timeout_ms, c->max_deliveries, (unsigned long long)c->session_timeout_ms);
  sd_group_consumers(g, info_consumer_name, &x);
  sd_buf_printf(b, "],\"pending_messages\":%llu,\"dead_messages\":%llu,\"skipped_messages\":%llu,\"partitions\":[",
                (unsigned long long)st.pending, (unsigned long long)st.dead, (unsigned long long)st.skipped);
  for (uint32_t p = 0; p < sd_stream_config(s)->partitions; p++) {
    struct sd_partition_stat ps;
    sd_stream_partition_stat(s, p, &ps);
    uint64_t committed = sd_group_committed(g, p);
    sd_buf_printf(b, "%s{\"partition\":%u,\"committed_offset\":%llu,\"lag\":%llu}", p ? "," : "", p,
                  (unsigned long long)committed,
                  (unsigned long long)(ps.next_offset > committed ? ps.next_offset - committed : 0));
  }
  SD_BUF_LIT(b, "],\"assignments\":{");
  x.n = 0;
  if (c->partitioned) sd_group_consumers(g, info_assignment, &x);
  SD_BUF_LIT(b, "},\"consumer_details\":[");
  x.n = 0;
  sd_group_consumers(g, info_consumer_seen, &x);
  SD_BUF_LIT(b, "]}");
  sd_req_finish(req, 200);
}

/* An event as served, with "deliveries" added before the closing brace. */
static int append_group_record(void *arg, const struct sd_record *rec, uint32_t deliveries) {
  struct sd_req *req = arg;
  struct sd_buf *b = &req->out;
  if (sd_buf_reserve(b, rec->json_len + 32) != 0) return 1;
  if (b->data[b->len - 1] != '[') b->data[b->len++] = ',';
  memcpy(b->data + b->len, rec->json, rec->json_len - 1);
  b->len += rec->json_len - 1;
  sd_buf_printf(b, ",\"deliveries\":%u}", deliveries);
  sd_stream_count_consumed(sd_group_stream(req->group), 1);
  req->events_out++;
  return 0;
}

static void group_wake_cb(struct sd_waiter *w, int status);
static void group_timer_cb(uv_timer_t *t);

static void group_consume_run(struct sd_req *req, int final) {
  struct sd_group *g = req->group;
  const char *consumer = req->consumer[0] ? req->consumer : NULL;
  if (sd_group_deleted(g)) {
    uv_timer_stop(&req->wait_timer);
    sd_req_error(req, SD_E_GROUP_NOT_FOUND, "the group or its stream was deleted", NULL);
    return;
  }
  sd_buf_reset(&req->out);
  SD_BUF_LIT(&req->out, "[");
  int rc = sd_group_fetch(g, consumer, req->limit, req->h->cfg->max_body_bytes, append_group_record, req);
  if (rc < 0) {
    if (req->wait_timer_init) uv_timer_stop(&req->wait_timer);
    sd_req_error(req, rc, rc == SD_E_CONSUMER_REQUIRED ? "a partitioned group needs ?consumer=NAME" : NULL, NULL);
    return;
  }
  if (rc == 0 && !final && !req->h->quiescing) {
    if (!req->suspended) sd_req_suspend(req);
    req->waiter.cb = group_wake_cb;
    req->waiter.data = req;
    sd_group_wait(g, &req->waiter);
    return;
  }
  SD_BUF_LIT(&req->out, "]");
  if (req->wait_timer_init) uv_timer_stop(&req->wait_timer);
  /* In auto-ack mode delivery is the commit: answer once it is synced. */
  if (rc > 0 && !sd_group_config(g)->explicit_ack)
    finish_durable(req, sd_group_stream(g), 200);
  else
    sd_req_finish(req, 200);
}

static void group_timer_cb(uv_timer_t *t) {
  struct sd_req *req = t->data;
  sd_stream_wait_cancel(&req->waiter);
  group_consume_run(req, 1);
}

static void group_wake_cb(struct sd_waiter *w, int status) {
  struct sd_req *req = w->data;
  if (status != 0) {
    uv_timer_stop(&req->wait_timer);
    sd_req_error(req, status == SD_E_STREAM_DELETED ? SD_E_STREAM_NOT_FOUND : status, NULL, NULL);
    return;
  }
  group_consume_run(req, 0);
}

static void handle_group_consume(struct sd_req *req, struct sd_stream *s, struct sd_group *g) {
  const struct sd_config *cfg = req->h->cfg;
  int64_t limit = DEFAULT_LIMIT, wait_ms = 0;
  const char *consumer = sd_req_arg(req, "consumer");
  if (arg_int(req, "limit", 1, &limit) != 0 || arg_int(req, "wait_ms", 0, &wait_ms) != 0) return;
  if (consumer && sd_name_check(consumer, strlen(consumer)) != 0) {
    check_name(req, consumer, "consumer");
    return;
  }
  if (limit > MAX_LIMIT) limit = MAX_LIMIT;
  if (wait_ms > cfg->max_wait_ms) wait_ms = cfg->max_wait_ms;
  snprintf(req->consumer, sizeof(req->consumer), "%s", consumer ? consumer : "");
  req->limit = (uint32_t)limit;
  hold_stream(req, s);
  sd_group_ref(g);
  req->group = g;
  long_poll(req, wait_ms, group_timer_cb, group_consume_run);
}

/* One ack: {"partition":P,"offset":O} or {"partition":P,"from":F,"to":T}. */
static int ack_one(struct sd_req *req, struct sd_group *g, const char *consumer, json_t *a, uint64_t *total) {
  json_t *p = json_object_get(a, "partition"), *o = json_object_get(a, "offset");
  json_t *f = json_object_get(a, "from"), *t = json_object_get(a, "to");
  uint64_t acked;
  if (!json_is_object(a) || (p && !json_is_integer(p)) || !(json_is_integer(o) || (json_is_integer(f) && json_is_integer(t)))) {
    bad_field(req, SD_E_INVALID_PARAMETER, "acks",
              "each ack is {\"partition\":P,\"offset\":O} or {\"partition\":P,\"from\":F,\"to\":T}");
    return -1;
  }
  json_int_t pv = p ? json_integer_value(p) : 0;
  json_int_t lo = o ? json_integer_value(o) : json_integer_value(f);
  json_int_t hi = o ? json_integer_value(o) : json_integer_value(t);
  if (pv < 0 || pv >= (json_int_t)sd_stream_config(sd_group_stream(g))->partitions || lo < 0 || hi < lo) {
    bad_field(req, SD_E_INVALID_PARAMETER, "partition", "ack names a partition the stream does not have, or an empty range");
    return -1;
  }
  int rc = sd_group_ack(g, consumer, (uint32_t)pv, (uint64_t)lo, (uint64_t)hi, &acked);
  if (rc != 0) {
    sd_req_error(req, rc, NULL, NULL);
    return -1;
  }
  *total += acked;
  return 0;
}

static void handle_group_ack(struct sd_req *req, struct sd_stream *s, struct sd_group *g) {
  uint64_t total = 0;
  if (parse_body(req, 0, 0) != 0) return;
  if (!json_is_object(req->json)) {
    sd_req_error(req, SD_E_INVALID_JSON, "the body must be a JSON object", NULL);
    return;
  }
  json_t *jc = json_object_get(req->json, "consumer");
  const char *consumer = json_string_value(jc);
  if (jc && (consumer == NULL || sd_name_check(consumer, strlen(consumer)) != 0)) {
    bad_field(req, SD_E_INVALID_NAME, "consumer", "'consumer' must be a consumer name");
    return;
  }
  json_t *acks = json_object_get(req->json, "acks");
  if (acks) {
    size_t i;
    json_t *a;
    if (!json_is_array(acks)) {
      bad_field(req, SD_E_INVALID_PARAMETER, "acks", "'acks' must be an array");
      return;
    }
    json_array_foreach(acks, i, a) if (ack_one(req, g, consumer, a, &total) != 0) return;
  } else if (ack_one(req, g, consumer, req->json, &total) != 0) {
    return;
  }
  sd_buf_reset(&req->out);
  sd_buf_printf(&req->out, "{\"success\":true,\"acked\":%llu}", (unsigned long long)total);
  if (total == 0)
    sd_req_finish(req, 200);
  else
    finish_durable(req, s, 200);
}

static void handle_group_dead(struct sd_req *req, struct sd_group *g) {
  int64_t limit = 100;
  if (arg_int(req, "limit", 1, &limit) != 0) return;
  if (limit > MAX_LIMIT) limit = MAX_LIMIT;
  sd_buf_reset(&req->out);
  SD_BUF_LIT(&req->out, "{\"events\":[");
  req->group = g;
  sd_group_ref(g);
  int rc = sd_group_dead(g, (uint32_t)limit, append_group_record, req);
  if (rc < 0) {
    sd_req_error(req, rc, NULL, NULL);
    return;
  }
  SD_BUF_LIT(&req->out, "]}");
  sd_req_finish(req, 200);
}

static void handle_group_route(struct sd_req *req, struct sd_stream *s) {
  struct sd_group *g = sd_group_find(s, req->parts[3]);
  if (g == NULL) {
    char msg[320];
    snprintf(msg, sizeof(msg), "group '%s' does not exist", req->parts[3]);
    sd_req_error(req, SD_E_GROUP_NOT_FOUND, msg, NULL);
    return;
  }
  switch (req->route) {
  case R_GROUP_INFO:
    handle_group_info(req, s, g);
    break;
  case R_GROUP_CONSUME:
    handle_group_consume(req, s, g);
    break;
  case R_GROUP_ACK:
    handle_group_ack(req, s, g);
    break;
  case R_GROUP_DEAD:
    handle_group_dead(req, g);
    break;
  case R_GROUP_WS: {
    char accept[29];
    int64_t prefetch = 100;
    if (ws_handshake(req, accept) != 0 || arg_int(req, "prefetch", 1, &prefetch) != 0) return;
    if (prefetch > MAX_LIMIT) prefetch = MAX_LIMIT;
    struct sd_ws_conn *conn = sd_ws_conn_new_group(req->h->ws, g, req->parts[5], (uint32_t)prefetch);
    if (conn == NULL) {
      sd_req_error(req, -ENOMEM, NULL, NULL);
      return;
    }
    sd_req_upgrade(req, conn, accept);
    break;
  }
  case R_GROUP_LEAVE: {
    int rc = sd_group_leave(g, req->parts[5]);
    if (rc != 0) {
      char msg[320];
      snprintf(msg, sizeof(msg), "consumer '%s' is not in group '%s'", req->parts[5], req->parts[3]);
      sd_req_error(req, rc, rc == SD_E_CONSUMER_NOT_FOUND ? msg : NULL, NULL);
      return;
    }
    sd_buf_reset(&req->out);
    SD_BUF_LIT(&req->out, "{\"success\":true}");
    finish_durable(req, s, 200);
    break;
  }
  default:
    sd_req_error(req, SD_E_NOT_FOUND, "no such route", NULL);
  }
}

/* ---- metrics -------------------------------------------------------------------- */

/* One metric family: its HELP/TYPE lines, then a sample per stream, per
 * partition or per group, so that each family's samples stay together as
 * the text format requires.  Stream and group names need no escaping in a
 * label value: they are made of [A-Za-z0-9._:-]. */
struct metric {
  const char *name, *type, *help;
  int scope;
  int which;
};

struct metric_ctx {
  struct sd_req *req;
  const struct metric *m;
  struct sd_stream *s;
};

enum { SCOPE_STREAM, SCOPE_PARTITION, SCOPE_GROUP };
enum {
  M_PUBLISHED, M_CONSUMED, M_SUBSCRIBERS, M_EVENTS, M_BYTES, M_MIN, M_MAX, M_SEGMENTS, M_READ_ONLY,
  M_DAMAGE, M_GROUP_LAG, M_GROUP_PENDING, M_GROUP_DEAD
};

static const struct metric metrics[] = {
    {"streamd_stream_published_events_total", "counter", "Events appended to the stream since start-up.", SCOPE_STREAM,
     M_PUBLISHED},
    {"streamd_stream_consumed_events_total", "counter",
     "Events of the stream handed to readers (HTTP, WebSocket, groups) since start-up.", SCOPE_STREAM, M_CONSUMED},
    {"streamd_stream_subscribers", "gauge", "WebSocket connections reading the stream (subscribers and group consumers).",
     SCOPE_STREAM, M_SUBSCRIBERS},
    {"streamd_partition_events", "gauge", "Events held by the partition.", SCOPE_PARTITION, M_EVENTS},
    {"streamd_partition_bytes", "gauge", "Record bytes the partition holds on disk.", SCOPE_PARTITION, M_BYTES},
    {"streamd_partition_min_offset", "gauge", "First readable offset of the partition.", SCOPE_PARTITION, M_MIN},
    {"streamd_partition_max_offset", "gauge", "Last offset the partition holds, -1 when never written.",
     SCOPE_PARTITION, M_MAX},
    {"streamd_partition_segments", "gauge", "Segment files of the partition.", SCOPE_PARTITION, M_SEGMENTS},
    {"streamd_partition_read_only", "gauge", "1 when a failed sync stopped writes to the partition.", SCOPE_PARTITION,
     M_READ_ONLY},
    {"streamd_partition_damage_found", "gauge", "Damage found in the partition's files since start-up.",
     SCOPE_PARTITION, M_DAMAGE},
    {"streamd_group_lag_events", "gauge", "Events of the stream after the group's committed offsets.", SCOPE_GROUP,
     M_GROUP_LAG},
    {"streamd_group_pending_events", "gauge", "Events delivered to the group and not yet settled.", SCOPE_GROUP,
     M_GROUP_PENDING},
    {"streamd_group_dead_events", "gauge", "Events the group set aside after max_deliveries.", SCOPE_GROUP,
     M_GROUP_DEAD},
};

static void metric_group_sample(void *arg, struct sd_group *g) {
  struct metric_ctx *x = arg;
  unsigned long long v = 0;
  if (x->m->which == M_GROUP_LAG) {
    for (uint32_t p = 0; p < sd_stream_config(x->s)->partitions; p++) {
      struct sd_partition_stat ps;
      uint64_t committed = sd_group_committed(g, p);
      sd_stream_partition_stat(x->s, p, &ps);
      if (ps.next_offset > committed) v += ps.next_offset - committed;
    }
  } else {
    struct sd_group_stat st;
    sd_group_stat(g, &st);
    v = x->m->which == M_GROUP_PENDING ? st.pending : st.dead;
  }
  sd_buf_printf(&x->req->out, "%s{stream=\"%s\",group=\"%s\"} %llu\n", x->m->name, sd_stream_name(x->s),
                sd_group_name(g), v);
}

static void metric_samples(void *arg, struct sd_stream *s) {
  struct metric_ctx *x = arg;
  struct sd_buf *b = &x->req->out;
  const char *name = sd_stream_name(s);
  if (x->m->scope == SCOPE_GROUP) {
    x->s = s;
    sd_group_foreach(s, metric_group_sample, x);
    return;
  }
  if (x->m->scope == SCOPE_STREAM) {
    struct sd_stream_stat st;
    sd_stream_stat(s, &st);
    unsigned long long v = x->m->which == M_PUBLISHED ? st.total_published
                           : x->m->which == M_CONSUMED ? st.total_consumed
                                                       : st.subscribers;
    sd_buf_printf(b, "%s{stream=\"%s\"} %llu\n", x->m->name, name, v);
    return;
  }
  for (uint32_t p = 0; p < sd_stream_config(s)->partitions; p++) {
    struct sd_partition_stat ps;
    long long v;
    sd_stream_partition_stat(s, p, &ps);
    switch (x->m->which) {
    case M_EVENTS: v = (long long)(ps.next_offset - ps.min_offset); break;
    case M_BYTES: v = (long long)ps.bytes; break;
    case M_MIN: v = (long long)ps.min_offset; break;
    case M_MAX: v = max_offset(&ps); break;
    case M_SEGMENTS: v = ps.segments; break;
    case M_DAMAGE: v = (long long)ps.damage_found; break;
    default: v = ps.read_only; break;
    }
    sd_buf_printf(b, "%s{stream=\"%s\",partition=\"%u\"} %lld\n", x->m->name, name, p, v);
  }
}

enum sd_metrics_route sd_routes_family(const struct sd_req *req) {
  switch (req->route) {
  case R_HEALTH: return SD_METRICS_ROUTE_HEALTH;
  case R_METRICS: return SD_METRICS_ROUTE_METRICS;
  case R_LIST:
  case R_STREAM:
  case R_INFO:
  case R_STATS:
  case R_CONSUMERS: return SD_METRICS_ROUTE_STREAMS;
  case R_PUBLISH: return SD_METRICS_ROUTE_PUBLISH;
  case R_CONSUME: return SD_METRICS_ROUTE_CONSUME;
  case R_WS:
  case R_GROUP_WS: return SD_METRICS_ROUTE_WEBSOCKET;
  case R_GROUPS:
  case R_GROUP:
  case R_GROUP_INFO:
  case R_GROUP_DEAD:
  case R_GROUP_LEAVE: return SD_METRICS_ROUTE_GROUPS;
  case R_GROUP_CONSUME: return SD_METRICS_ROUTE_GROUP_CONSUME;
  case R_GROUP_ACK: return SD_METRICS_ROUTE_GROUP_ACK;
  default: return SD_METRICS_ROUTE_OTHER;
  }
}

void sd_routes_count(struct sd_req *req, unsigned status) {
  struct sd_metrics *m = &req->h->metrics;
  if (status < 200 || status >= 300) return;
  if (req->route == R_PUBLISH) {
    m->publish_requests++;
    for (size_t i = 0; i < req->nevents; i++) {
      if (req->results[i].duplicate)
        m->publish_duplicates++;
      else
        m->published_events++;
    }
  } else if (req->route == R_CONSUME || req->route == R_GROUP_CONSUME) {
    int k = req->route == R_GROUP_CONSUME;
    m->consume_requests[k]++;
    m->consumed_events[k] += req->events_out;
  }
}

/* Prometheus text exposition format, version 0.0.4. */
static void handle_metrics(struct sd_req *req) {
  struct sd_http *h = req->h;
  struct sd_buf *b = &req->out;
  uint64_t ws_events[2];
  sd_ws_server_events(h->ws, ws_events);
  sd_buf_reset(b);
  sd_buf_printf(b,
                "# HELP streamd_build_info The running version.\n"
                "# TYPE streamd_build_info gauge\n"
                "streamd_build_info{version=\"%s\"} 1\n"
                "# HELP streamd_uptime_seconds Seconds since the server started.\n"
                "# TYPE streamd_uptime_seconds gauge\n"
                "streamd_uptime_seconds %llu\n"
                "# HELP streamd_streams Streams that exist.\n"
                "# TYPE streamd_streams gauge\n"
                "streamd_streams %zu\n"
                "# HELP streamd_http_connections Open client connections, WebSocket ones included.\n"
                "# TYPE streamd_http_connections gauge\n"
                "streamd_http_connections %zu\n"
                "# HELP streamd_http_requests_in_flight Requests received and not yet answered.\n"
                "# TYPE streamd_http_requests_in_flight gauge\n"
                "streamd_http_requests_in_flight %zu\n"
                "# HELP streamd_http_requests_waiting Long polls and publishes waiting for a sync.\n"
                "# TYPE streamd_http_requests_waiting gauge\n"
                "streamd_http_requests_waiting %zu\n"
                "# HELP streamd_websocket_connections Open WebSocket connections (stream and group subscribers).\n"
                "# TYPE streamd_websocket_connections gauge\n"
                "streamd_websocket_connections %zu\n"
                "# HELP streamd_publish_requests_total Publish requests answered with success.\n"
                "# TYPE streamd_publish_requests_total counter\n"
                "streamd_publish_requests_total %llu\n"
                "# HELP streamd_published_events_total Events appended by successful publishes.\n"
                "# TYPE streamd_published_events_total counter\n"
                "streamd_published_events_total %llu\n"
                "# HELP streamd_publish_duplicate_events_total Published events whose id was already appended.\n"
                "# TYPE streamd_publish_duplicate_events_total counter\n"
                "streamd_publish_duplicate_events_total %llu\n"
                "# HELP streamd_consume_requests_total Consume requests answered with success, by kind.\n"
                "# TYPE streamd_consume_requests_total counter\n"
                "streamd_consume_requests_total{kind=\"stream\"} %llu\n"
                "streamd_consume_requests_total{kind=\"group\"} %llu\n"
                "# HELP streamd_consumed_events_total Events handed to readers, by kind and transport.\n"
                "# TYPE streamd_consumed_events_total counter\n"
                "streamd_consumed_events_total{kind=\"stream\",transport=\"http\"} %llu\n"
                "streamd_consumed_events_total{kind=\"group\",transport=\"http\"} %llu\n"
                "streamd_consumed_events_total{kind=\"stream\",transport=\"websocket\"} %llu\n"
                "streamd_consumed_events_total{kind=\"group\",transport=\"websocket\"} %llu\n",
                STREAMD_VERSION, (unsigned long long)((sd_now_ms() - h->started_ms) / 1000),
                sd_engine_stream_count(h->engine), h->connections, h->in_flight, h->waiting,
                sd_ws_server_count(h->ws), (unsigned long long)h->metrics.publish_requests,
                (unsigned long long)h->metrics.published_events, (unsigned long long)h->metrics.publish_duplicates,
                (unsigned long long)h->metrics.consume_requests[0], (unsigned long long)h->metrics.consume_requests[1],
                (unsigned long long)h->metrics.consumed_events[0], (unsigned long long)h->metrics.consumed_events[1],
                (unsigned long long)ws_events[0], (unsigned long long)ws_events[1]);
  sd_metrics_write_requests(b, &h->metrics);
  sd_metrics_family(b, "streamd_fsync_duration_seconds", "histogram",
                    "Duration of the storage sync jobs (fdatasync of segments, group logs and directories).");
  sd_hist_write(b, "streamd_fsync_duration_seconds", "", sd_engine_sync_latency(h->engine));
  for (size_t i = 0; i < sizeof(metrics) / sizeof(metrics[0]); i++) {
    struct metric_ctx x = {req, &metrics[i], NULL};
    sd_metrics_family(b, metrics[i].name, metrics[i].type, metrics[i].help);
    sd_engine_foreach(h->engine, metric_samples, &x);
  }
  req->content_type = "text/plain; version=0.0.4; charset=utf-8";
  sd_req_finish(req, 200);
}

/* ---- dispatch -------------------------------------------------------------------- */

/* A body must be declared JSON: a browser can send other types across
 * origins without a CORS preflight, application/json it cannot. */
static int body_type_ok(struct sd_req *req) {
  if (req->body.len == 0) return 1;
  const char *ct = sd_req_header(req, MHD_HTTP_HEADER_CONTENT_TYPE);
  if (ct != NULL && strncasecmp(ct, "application/json", 16) == 0 && (ct[16] == '\0' || ct[16] == ';' || ct[16] == ' '))
    return 1;
  sd_req_error(req, SD_E_UNSUPPORTED_MEDIA,
               "the body must be sent with Content-Type: application/json", NULL);
  return 0;
}

void sd_routes_dispatch(struct sd_req *req) {
  struct sd_stream *s;
  if ((req->route == R_STREAM || req->route == R_PUBLISH || req->route == R_GROUP || req->route == R_GROUP_ACK) &&
      !body_type_ok(req))
    return;
  switch (req->route) {
  case R_OPTIONS:
    sd_buf_reset(&req->out);
    sd_req_finish(req, 204);
    return;
  case R_HEALTH:
    sd_buf_reset(&req->out);
    sd_buf_printf(&req->out, "{\"status\":\"healthy\",\"uptime_secs\":%llu}",
                  (unsigned long long)((sd_now_ms() - req->h->started_ms) / 1000));
    sd_req_finish(req, 200);
    return;
  case R_LIST:
    handle_list(req);
    return;
  case R_METRICS:
    handle_metrics(req);
    return;
  case R_STREAM:
    handle_stream(req);
    return;
  case R_PUBLISH:
    handle_publish(req);
    return;
  default:
    break;
  }
  if ((s = find_stream(req)) == NULL) return;
  switch (req->route) {
  case R_INFO:
    handle_info(req, s);
    break;
  case R_STATS:
    handle_stats(req, s);
    break;
  case R_CONSUMERS:
    handle_consumers(req, s);
    break;
  case R_CONSUME:
    handle_consume(req, s);
    break;
  case R_WS:
    handle_ws(req, s);
    break;
  case R_GROUPS:
    handle_groups(req, s);
    break;
  case R_GROUP:
    handle_group(req, s);
    break;
  default:
    handle_group_route(req, s);
    break;
  }
}

void sd_routes_release(struct sd_req *req) {
  if (req->group) {
    sd_group_unref(req->group);
    req->group = NULL;
  }
  if (req->ws) {
    sd_ws_conn_discard(req->ws); /* frees it only if the upgrade never happened */
    req->ws = NULL;
  }
  sd_stream_wait_cancel(&req->waiter);
  if (req->wait_timer_init) uv_timer_stop(&req->wait_timer);
  if (req->stream) {
    sd_stream_unref(req->stream);
    req->stream = NULL;
  }
  json_decref(req->json);
  req->json = NULL;
}
