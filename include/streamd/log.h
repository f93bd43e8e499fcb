/*
 * log.h - leveled logging to stderr, one line per event, as text or as
 * JSON lines, and the access log (one line per request).
 *
 * text: 2026-11-27T18:30:00.123Z INFO  message
 * json: {"ts":"2026-11-27T18:30:00.123Z","level":"info","msg":"message"}
 *
 * A line is written with a single write(2) (stderr is unbuffered), so
 * lines never interleave.  Control characters in a message become spaces
 * in text lines and are escaped in JSON lines: a line is always one line.
 * Level and format are process state, set once at start-up.
 */
#ifndef STREAMD_LOG_H
#define STREAMD_LOG_H

#include <stddef.h>
#include <stdint.h>

enum sd_log_level { SD_LOG_DEBUG, SD_LOG_INFO, SD_LOG_WARN, SD_LOG_ERROR };

void sd_log_set_level(enum sd_log_level lvl);
/* Parses "debug", "info", "warn", "error"; returns 0 or SD_E_INVALID_PARAMETER. */
int sd_log_parse_level(const char *s, enum sd_log_level *out);
void sd_log(enum sd_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

enum sd_log_format { SD_LOG_TEXT, SD_LOG_JSON };
void sd_log_set_format(enum sd_log_format f);
/* Parses "text", "json"; returns 0 or SD_E_INVALID_PARAMETER. */
int sd_log_parse_format(const char *s, enum sd_log_format *out);

/* One finished request.  Strings are borrowed for the call. */
struct sd_log_access {
  const char *method;
  const char *path;      /* not NUL-terminated */
  size_t path_len;
  unsigned status;       /* 0: the client left before a response */
  uint64_t bytes;        /* response body bytes */
  uint64_t duration_us;  /* from the request's headers to its completion */
  const char *peer;      /* "addr:port", "[v6]:port" or "-" */
};
/* Writes the access line of a, whatever the log level:
 * text: <ts> INFO  access method=GET path=/x status=200 bytes=2 duration_ms=0.120 peer=127.0.0.1:40000
 * json: {"ts":..,"level":"info","msg":"access","method":"GET","path":"/x","status":200,"bytes":2,
 *        "duration_ms":0.120,"peer":"127.0.0.1:40000"}
 * In text lines, path bytes outside printable ASCII, double quotes,
 * backslashes and spaces are written as \xNN; JSON lines escape them. */
void sd_log_access(const struct sd_log_access *a);

#define SD_DEBUG(...) sd_log(SD_LOG_DEBUG, __VA_ARGS__)
#define SD_INFO(...) sd_log(SD_LOG_INFO, __VA_ARGS__)
#define SD_WARN(...) sd_log(SD_LOG_WARN, __VA_ARGS__)
#define SD_ERROR(...) sd_log(SD_LOG_ERROR, __VA_ARGS__)

/* Invariant check kept in every build: logs file, line and expression, then aborts. */
#define SD_ASSERT(e) \
  ((e) ? (void)0 : sd_assert_fail(#e, __FILE__, __LINE__))
void sd_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));

#endif
