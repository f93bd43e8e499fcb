/*
 * benchcommon.h - what the C benchmark clients of bench/ share (header-only,
 * each client is one translation unit): logging, clocks, the descriptor
 * limit, random bytes and a latency histogram. Included by fancommon.h
 * (wsfan.c, redisfan.c) and groupcommon.h (groupbench.c, redisgroup.c).
 */
#ifndef BENCHCOMMON_H
#define BENCHCOMMON_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <uv.h>

/* helpers a client may not use: no -Wunused-function for them */
#define BENCH_UNUSED __attribute__((unused))

/* ---------------------------------------------------------------- logging */
static int bench_quiet;
static const char *bench_tag = "bench"; /* log prefix: the client's name */
BENCH_UNUSED static void bench_log(const char *fmt, ...) {
  if (bench_quiet) return;
  va_list ap;
  va_start(ap, fmt);
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  fprintf(stderr, "[%s %ld.%03ld] ", bench_tag, (long)ts.tv_sec, ts.tv_nsec / 1000000);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

BENCH_UNUSED static void bench_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[%s] error: ", bench_tag);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

/* ---------------------------------------------------------------- time, fds */
static inline uint64_t now_us(void) { /* CLOCK_REALTIME: comparable across processes */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static inline uint64_t mono_us(void) { /* CLOCK_MONOTONIC: durations */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

BENCH_UNUSED static void raise_nofile(int need) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur != RLIM_INFINITY && (long long)rl.rlim_cur < (long long)need)
    bench_die("RLIMIT_NOFILE is %llu (hard %llu), %d descriptors needed: raise ulimit -Hn",
            (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max, need);
}

static inline void fill_random(void *p, size_t n) {
  uint8_t *b = p;
  while (n > 0) {
    ssize_t r = getrandom(b, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      bench_die("getrandom: %s", strerror(errno));
    }
    b += r;
    n -= (size_t)r;
  }
}

/* ---------------------------------------------------------------- histogram
 * Values below 2048 us are exact; above, 1024 sub-buckets per power of two
 * (0.1% resolution). */
#define H_LINEAR 2048u
#define H_SUB_BITS 10
#define H_MAX_EXP 44
#define H_BUCKETS (H_LINEAR + (H_MAX_EXP - 11 + 1) * (1u << H_SUB_BITS))

struct hist {
  uint64_t b[H_BUCKETS];
  uint64_t count, max;
};

static inline unsigned h_index(uint64_t v) {
  if (v < H_LINEAR) return (unsigned)v;
  unsigned e = 63u - (unsigned)__builtin_clzll(v);
  if (e > H_MAX_EXP) return H_BUCKETS - 1;
  unsigned sub = (unsigned)(v >> (e - H_SUB_BITS)) & ((1u << H_SUB_BITS) - 1);
  return H_LINEAR + (e - 11) * (1u << H_SUB_BITS) + sub;
}

static inline uint64_t h_value(unsigned i) {
  if (i < H_LINEAR) return i;
  unsigned e = (i - H_LINEAR) / (1u << H_SUB_BITS) + 11;
  unsigned sub = (i - H_LINEAR) % (1u << H_SUB_BITS);
  return ((uint64_t)1 << e) + ((uint64_t)sub << (e - H_SUB_BITS));
}

static inline void h_add(struct hist *h, int64_t v) {
  if (v < 0) v = 0;
  h->b[h_index((uint64_t)v)]++;
  h->count++;
  if ((uint64_t)v > h->max) h->max = (uint64_t)v;
}

BENCH_UNUSED static uint64_t h_pct(const struct hist *h, double p) {
  if (h->count == 0) return 0;
  uint64_t rank = (uint64_t)(p / 100.0 * (double)h->count + 0.999999);
  if (rank < 1) rank = 1;
  uint64_t acc = 0;
  for (unsigned i = 0; i < H_BUCKETS; i++) {
    acc += h->b[i];
    if (acc >= rank) {
      uint64_t v = h_value(i);
      return v > h->max ? h->max : v;
    }
  }
  return h->max;
}

/* CPU seconds of this process so far (user + system, all threads) */
BENCH_UNUSED static double bench_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         (double)ru.ru_stime.tv_usec / 1e6;
}

#endif
