/*
 * metrics.h - server-wide counters and latency histograms for /metrics
 * (Prometheus text exposition format 0.0.4).
 *
 * Everything here is a fixed-size array: observing a value is a bucket
 * search over SD_HIST_BOUNDS doubles and three increments, with no
 * allocation and no lock.  All updates run on the loop thread; work done
 * on the thread pool measures its own duration and the loop thread folds
 * it in when the work completes.
 *
 * The caller owns every struct (usually embedded in a longer-lived one);
 * nothing here frees or keeps pointers.
 */
#ifndef STREAMD_METRICS_H
#define STREAMD_METRICS_H

#include <stdint.h>

#include "streamd/buf.h"

/* Upper bounds of the histogram buckets, in seconds (the +Inf bucket is
 * implicit): 100 us to 60 s, which covers a page-cache hit as well as a
 * long poll held to max_wait_ms. */
#define SD_HIST_BOUNDS 18

/* counts[i] holds observations in (bound[i-1], bound[i]]; counts[SD_HIST_BOUNDS]
 * those above the last bound.  Cumulated only when written out. */
struct sd_hist {
  uint64_t counts[SD_HIST_BOUNDS + 1];
  uint64_t count;
  uint64_t sum_ns;
};

/* Records one duration in nanoseconds. */
void sd_hist_observe_ns(struct sd_hist *h, uint64_t ns);

/* Appends the _bucket, _sum and _count samples of h for family name, with
 * labels (a label list without braces such as `route="publish"`, or "")
 * added to each.  No HELP/TYPE lines.  0 or -ENOMEM. */
int sd_hist_write(struct sd_buf *b, const char *name, const char *labels, const struct sd_hist *h);

/* Route families: the `route` label of the request histogram.  A fixed
 * set, so that the label's cardinality stays bounded whatever the paths. */
enum sd_metrics_route {
  SD_METRICS_ROUTE_HEALTH,
  SD_METRICS_ROUTE_METRICS,
  SD_METRICS_ROUTE_STREAMS,       /* list, create, delete, info, stats, consumers */
  SD_METRICS_ROUTE_PUBLISH,
  SD_METRICS_ROUTE_CONSUME,
  SD_METRICS_ROUTE_WEBSOCKET,     /* stream and group upgrades (the handshake only) */
  SD_METRICS_ROUTE_GROUPS,        /* list, create, delete, info, dead, leave */
  SD_METRICS_ROUTE_GROUP_CONSUME,
  SD_METRICS_ROUTE_GROUP_ACK,
  SD_METRICS_ROUTE_OTHER,         /* unknown paths, preflights */
  SD_METRICS_ROUTES
};

/* Status classes: the `status` label.  0 is "none": the client went away
 * before any response was queued. */
#define SD_METRICS_STATUS_CLASSES 6

struct sd_metrics {
  struct sd_hist requests[SD_METRICS_ROUTES][SD_METRICS_STATUS_CLASSES];
  uint64_t publish_requests;         /* publishes answered 2xx */
  uint64_t published_events;         /* events those publishes appended (duplicates excluded) */
  uint64_t publish_duplicates;       /* events those publishes found already appended */
  uint64_t consume_requests[2];      /* consumes answered 2xx: [0] stream, [1] group */
  uint64_t consumed_events[2];       /* events those consumes returned: [0] stream, [1] group */
};

/* Counts one finished request of route family route with HTTP status
 * (0: no response) that took ns nanoseconds. */
void sd_metrics_request(struct sd_metrics *m, enum sd_metrics_route route, unsigned status, uint64_t ns);

/* Appends the request histogram family (HELP, TYPE, then one series per
 * route and status class seen at least once).  0 or -ENOMEM. */
int sd_metrics_write_requests(struct sd_buf *b, const struct sd_metrics *m);

/* Appends "# HELP name help\n# TYPE name type\n".  0 or -ENOMEM. */
int sd_metrics_family(struct sd_buf *b, const char *name, const char *type, const char *help);

#endif
