/*
 * util.c - errors, logging, buffers and the clock: the small pieces every
 * module uses.  The log level is process state set once at start-up.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "streamd/buf.h"
#include "streamd/engine.h"
#include "streamd/err.h"
#include "streamd/log.h"

/* ---- errors ---- */

const char *sd_strerror(int err) {
  switch (err) {
#define SD_ERR_MSG(name, code, http, mcode, msg) \
  case code:                                     \
    return msg;
    SD_ERR_MAP(SD_ERR_MSG)
#undef SD_ERR_MSG
  case 0:
    return "success";
  case -ENOSPC: /* answered 507: a message a client can act on */
    return "the disk is full (no space left on device)";
  case -EDQUOT:
    return "the disk quota is exhausted";
  default:
    return err < 0 ? strerror(-err) : "unknown error";
  }
}

const char *sd_err_code(int err) {
  switch (err) {
#define SD_ERR_CODE(name, code, http, mcode, msg) \
  case code:                                      \
    return mcode;
    SD_ERR_MAP(SD_ERR_CODE)
#undef SD_ERR_CODE
  case -ENOSPC:
  case -EDQUOT:
    return "insufficient_storage";
  case -ENOMEM:
    return "out_of_memory";
  default:
    return "io_error";
  }
}

int sd_err_http_status(int err) {
  switch (err) {
#define SD_ERR_HTTP(name, code, http, mcode, msg) \
  case code:                                      \
    return http;
    SD_ERR_MAP(SD_ERR_HTTP)
#undef SD_ERR_HTTP
  case -ENOSPC:
  case -EDQUOT:
    return 507;
  case -ENOMEM:
    return 503;
  default:
    return 500;
  }
}

/* ---- logging ---- */

static enum sd_log_level log_level = SD_LOG_INFO;
static enum sd_log_format log_format = SD_LOG_TEXT;
static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
static const char *const level_json[] = {"debug", "info", "warn", "error"};

void sd_log_set_level(enum sd_log_level lvl) { log_level = lvl; }
void sd_log_set_format(enum sd_log_format f) { log_format = f; }

int sd_log_parse_level(const char *s, enum sd_log_level *out) {
  for (int i = 0; i < 4; i++)
    if (strcmp(s, level_json[i]) == 0) {
      *out = (enum sd_log_level)i;
      return 0;
    }
  return SD_E_INVALID_PARAMETER;
}

int sd_log_parse_format(const char *s, enum sd_log_format *out) {
  if (strcmp(s, "text") == 0) {
    *out = SD_LOG_TEXT;
    return 0;
  }
  if (strcmp(s, "json") == 0) {
    *out = SD_LOG_JSON;
    return 0;
  }
  return SD_E_INVALID_PARAMETER;
}

/* A line under construction: bytes past the capacity are dropped, and two
 * bytes stay free for the closing brace and the newline.  The capacity
 * holds a whole message (2047 bytes) or path (1023 bytes) even when every
 * byte is escaped as \u00NN, so JSON lines are never cut. */
#define LINE_CAP 16384
struct line {
  char b[LINE_CAP];
  size_t n;
};

static void put(struct line *l, const char *p, size_t n) {
  if (n > LINE_CAP - 2 - l->n) n = LINE_CAP - 2 - l->n;
  memcpy(l->b + l->n, p, n);
  l->n += n;
}

static void putf(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct line *l, const char *fmt, ...) {
  va_list ap;
  if (l->n >= LINE_CAP - 3) return;
  va_start(ap, fmt);
  int m = vsnprintf(l->b + l->n, LINE_CAP - 2 - l->n, fmt, ap);
  va_end(ap);
  if (m > 0) l->n += (size_t)m < LINE_CAP - 2 - l->n ? (size_t)m : LINE_CAP - 3 - l->n;
}

/* A JSON string body (no quotes): '"', '\\' and bytes outside printable
 * ASCII escaped, so the line is valid JSON whatever the input bytes. */
static void put_json(struct line *l, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      put(l, e, 2);
    } else if (c < 0x20 || c >= 0x7f) {
      putf(l, "\\u%04x", c);
    } else {
      put(l, (const char *)&c, 1);
    }
  }
}

/* Text value: spaces, quotes, backslashes and bytes outside printable
 * ASCII as \xNN, so a value never splits the line or its fields. */
static void put_text(struct line *l, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\')
      putf(l, "\\x%02x", c);
    else
      put(l, (const char *)&c, 1);
  }
}

static void line_start(struct line *l, enum sd_log_level lvl) {
  struct timespec ts;
  struct tm tm;
  char t[32];
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  snprintf(t, sizeof(t), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
           tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
  l->n = 0;
  if (log_format == SD_LOG_JSON)
    putf(l, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", t, level_json[lvl]);
  else
    putf(l, "%s %-5s ", t, level_names[lvl]);
}

static void line_end(struct line *l, int close_brace) {
  if (close_brace) l->b[l->n++] = '}';
  l->b[l->n++] = '\n';
  fwrite(l->b, 1, l->n, stderr);
}

void sd_log(enum sd_log_level lvl, const char *fmt, ...) {
  if (lvl < log_level) return;
  char msg[2048];
  struct line l;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  size_t len = m < 0 ? 0 : (size_t)m < sizeof(msg) ? (size_t)m : sizeof(msg) - 1;
  line_start(&l, lvl);
  if (log_format == SD_LOG_JSON) {
    put_json(&l, msg, len);
    put(&l, "\"", 1);
  } else {
    for (size_t i = 0; i < len; i++)
      if ((unsigned char)msg[i] < 0x20) msg[i] = ' ';
    put(&l, msg, len);
  }
  line_end(&l, log_format == SD_LOG_JSON);
}

void sd_log_access(const struct sd_log_access *a) {
  struct line l;
  unsigned long long us = (unsigned long long)a->duration_us;
  line_start(&l, SD_LOG_INFO);
  if (log_format == SD_LOG_JSON) {
    put(&l, "access\",\"method\":\"", 18);
    put_json(&l, a->method, strlen(a->method));
    put(&l, "\",\"path\":\"", 10);
    put_json(&l, a->path, a->path_len);
    putf(&l, "\",\"status\":%u,\"bytes\":%llu,\"duration_ms\":%llu.%03llu,\"peer\":\"%s\"", a->status,
         (unsigned long long)a->bytes, us / 1000, us % 1000, a->peer);
  } else {
    put(&l, "access method=", 14);
    put_text(&l, a->method, strlen(a->method));
    put(&l, " path=", 6);
    put_text(&l, a->path, a->path_len);
    putf(&l, " status=%u bytes=%llu duration_ms=%llu.%03llu peer=%s", a->status, (unsigned long long)a->bytes,
         us / 1000, us % 1000, a->peer);
  }
  line_end(&l, log_format == SD_LOG_JSON);
}

void sd_assert_fail(const char *expr, const char *file, int line) {
  sd_log(SD_LOG_ERROR, "assertion failed: %s (%s:%d)", expr, file, line);
  abort();
}

/* ---- buffers ---- */

int sd_buf_reserve(struct sd_buf *b, size_t extra) {
  if (b->cap - b->len >= extra) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < extra) cap *= 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) return -ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int sd_buf_append(struct sd_buf *b, const void *p, size_t n) {
  int rc = sd_buf_reserve(b, n);
  if (rc != 0) return rc;
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

int sd_buf_printf(struct sd_buf *b, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    size_t room = b->cap - b->len;
    va_start(ap, fmt);
    int n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) return -EINVAL;
    if ((size_t)n < room) {
      b->len += (size_t)n;
      return 0;
    }
    int rc = sd_buf_reserve(b, (size_t)n + 1);
    if (rc != 0) return rc;
  }
}

void sd_buf_free(struct sd_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* ---- clock ---- */

uint64_t sd_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

size_t sd_fmt_u64(char *dst, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (size_t i = 0; i < n; i++) dst[i] = tmp[n - 1 - i];
  return n;
}

int sd_buf_u64(struct sd_buf *b, uint64_t v) {
  char d[20];
  return sd_buf_append(b, d, sd_fmt_u64(d, v));
}
