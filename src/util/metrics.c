/*
 * metrics.c - fixed-bucket histograms and the server-wide request
 * counters, and their Prometheus text form (exposition format 0.0.4).
 *
 * Invariants: for every struct sd_hist, count == sum of counts[] and
 * sum_ns is the sum of the observed durations; written out, the buckets
 * are cumulative, so each `le` bucket is >= the one before and the +Inf
 * bucket equals _count.
 */
#include "streamd/metrics.h"

#include <errno.h>
#include <stdio.h>

/* The bounds in nanoseconds (compared) and as written in the `le` label. */
static const uint64_t bound_ns[SD_HIST_BOUNDS] = {
    100000ull,     250000ull,     500000ull,      1000000ull,     2500000ull,     5000000ull,
    10000000ull,   25000000ull,   50000000ull,    100000000ull,   250000000ull,   500000000ull,
    1000000000ull, 2500000000ull, 5000000000ull,  10000000000ull, 30000000000ull, 60000000000ull,
};
static const char *const bound_text[SD_HIST_BOUNDS] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1",    "0.25",    "0.5",    "1",     "2.5",    "5",     "10",   "30",    "60",
};

static const char *const route_names[SD_METRICS_ROUTES] = {
    "health", "metrics", "streams", "publish", "consume", "websocket", "groups", "group_consume", "group_ack", "other",
};
static const char *const status_names[SD_METRICS_STATUS_CLASSES] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};

void sd_hist_observe_ns(struct sd_hist *h, uint64_t ns) {
  unsigned i = 0;
  while (i < SD_HIST_BOUNDS && ns > bound_ns[i]) i++;
  h->counts[i]++;
  h->count++;
  h->sum_ns += ns;
}

int sd_hist_write(struct sd_buf *b, const char *name, const char *labels, const struct sd_hist *h) {
  const char *sep = labels[0] ? "," : "";
  uint64_t cum = 0;
  int rc = 0;
  for (unsigned i = 0; i < SD_HIST_BOUNDS && rc == 0; i++) {
    cum += h->counts[i];
    rc = sd_buf_printf(b, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels, sep, bound_text[i], (unsigned long long)cum);
  }
  if (rc == 0)
    rc = sd_buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)h->count);
  if (rc == 0)
    rc = sd_buf_printf(b, "%s_sum%s%s%s %llu.%09llu\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
                       (unsigned long long)(h->sum_ns / 1000000000ull), (unsigned long long)(h->sum_ns % 1000000000ull));
  if (rc == 0)
    rc = sd_buf_printf(b, "%s_count%s%s%s %llu\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
                       (unsigned long long)h->count);
  return rc;
}

void sd_metrics_request(struct sd_metrics *m, enum sd_metrics_route route, unsigned status, uint64_t ns) {
  unsigned cls = status >= 100 && status < 600 ? status / 100 : 0;
  if ((unsigned)route >= SD_METRICS_ROUTES) route = SD_METRICS_ROUTE_OTHER;
  sd_hist_observe_ns(&m->requests[route][cls], ns);
}

int sd_metrics_family(struct sd_buf *b, const char *name, const char *type, const char *help) {
  return sd_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

int sd_metrics_write_requests(struct sd_buf *b, const struct sd_metrics *m) {
  static const char name[] = "streamd_http_request_duration_seconds";
  int rc = sd_metrics_family(b, name, "histogram",
                             "Time from a request's headers to its completion, by route family and status class.");
  for (unsigned r = 0; r < SD_METRICS_ROUTES && rc == 0; r++)
    for (unsigned c = 0; c < SD_METRICS_STATUS_CLASSES && rc == 0; c++) {
      if (m->requests[r][c].count == 0) continue;
      char labels[64];
      snprintf(labels, sizeof(labels), "route=\"%s\",status=\"%s\"", route_names[r], status_names[c]);
      rc = sd_hist_write(b, name, labels, &m->requests[r][c]);
    }
  return rc;
}
