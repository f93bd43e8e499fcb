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
static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void sd_log_set_level(enum sd_log_level lvl) { log_level = lvl; }

int sd_log_parse_level(const char *s, enum sd_log_level *out) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  for (int i = 0; i < 4; i++)
    if (strcmp(s, names[i]) == 0) {
      *out = (enum sd_log_level)i;
      return 0;
    }
  return SD_E_INVALID_PARAMETER;
}

void sd_log(enum sd_log_level lvl, const char *fmt, ...) {
  if (lvl < log_level) return;
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ", tm.tm_year + 1900,
                   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                   level_names[lvl]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
  if (len > sizeof(line) - 2) len = sizeof(line) - 2;
  line[len++] = '\n';
  fwrite(line, 1, len, stderr);
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
