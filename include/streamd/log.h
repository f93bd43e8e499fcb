/*
 * log.h - leveled logging to stderr, one line per event.
 * Format: "2026-11-27T18:30:00.123Z LEVEL message".
 */
#ifndef STREAMD_LOG_H
#define STREAMD_LOG_H

enum sd_log_level { SD_LOG_DEBUG, SD_LOG_INFO, SD_LOG_WARN, SD_LOG_ERROR };

void sd_log_set_level(enum sd_log_level lvl);
/* Parses "debug", "info", "warn", "error"; returns 0 or SD_E_INVALID_PARAMETER. */
int sd_log_parse_level(const char *s, enum sd_log_level *out);
void sd_log(enum sd_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define SD_DEBUG(...) sd_log(SD_LOG_DEBUG, __VA_ARGS__)
#define SD_INFO(...) sd_log(SD_LOG_INFO, __VA_ARGS__)
#define SD_WARN(...) sd_log(SD_LOG_WARN, __VA_ARGS__)
#define SD_ERROR(...) sd_log(SD_LOG_ERROR, __VA_ARGS__)

/* Invariant check kept in every build: logs file, line and expression, then aborts. */
#define SD_ASSERT(e) \
  ((e) ? (void)0 : sd_assert_fail(#e, __FILE__, __LINE__))
void sd_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));

#endif
