/*
 * catchup.c - reads a whole partition page by page on one keep-alive HTTP
 * connection, each request starting where the last page ended, and prints
 * events/s.  Blocking sockets: the walk is sequential by nature, and a C
 * client keeps the client side out of the figure (a wrk Lua response()
 * callback copies each ~180 KB page into Lua and caps the rate well below
 * what the server sends).
 *
 *   catchup PORT PATH LIMIT EVENTS
 *   -> BENCH_RESULT ops=<events> seconds=<s> rate=<events/s> pages=<n> bad=<n>
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Reads one HTTP/1.1 response with Content-Length into *buf; returns the
 * body length, or -1. */
static long read_response(int fd, char **buf, size_t *cap, int *status) {
  size_t len = 0;
  char *hend = NULL;
  for (;;) {
    if (len + 65536 > *cap) {
      *cap = (len + 65536) * 2;
      *buf = realloc(*buf, *cap);
    }
    ssize_t n = recv(fd, *buf + len, *cap - len - 1, 0);
    if (n <= 0) return -1;
    len += (size_t)n;
    (*buf)[len] = '\0';
    if ((hend = strstr(*buf, "\r\n\r\n")) != NULL) break;
  }
  *status = atoi(*buf + 9);
  const char *cl = strcasestr(*buf, "\r\nContent-Length:");
  if (cl == NULL) return -1;
  size_t body = strtoul(cl + 17, NULL, 10);
  size_t head = (size_t)(hend + 4 - *buf);
  while (len < head + body) {
    if (head + body + 1 > *cap) {
      *cap = head + body + 1;
      *buf = realloc(*buf, *cap);
    }
    ssize_t n = recv(fd, *buf + len, head + body - len, 0);
    if (n <= 0) return -1;
    len += (size_t)n;
  }
  memmove(*buf, *buf + head, body);
  (*buf)[body] = '\0';
  return (long)body;
}

/* The last "offset": value in a page, or -1 for an empty page. */
static long long last_offset(const char *body, long len) {
  static const char key[] = "\"offset\":";
  for (long i = len - (long)sizeof(key); i >= 0; i--)
    if (body[i] == '"' && memcmp(body + i, key, sizeof(key) - 1) == 0) return atoll(body + i + sizeof(key) - 1);
  return -1;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: catchup PORT PATH LIMIT EVENTS\n");
    return 2;
  }
  int port = atoi(argv[1]);
  const char *path = argv[2];
  long limit = atol(argv[3]);
  long long expected = atoll(argv[4]);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    perror("connect");
    return 1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  char req[1024], *buf = NULL;
  size_t cap = 0;
  long long offset = 0, events = 0, pages = 0, bad = 0;
  double t0 = now();
  while (expected == 0 || offset < expected) {
    int n = snprintf(req, sizeof(req), "GET %s?from_offset=%lld&limit=%ld HTTP/1.1\r\nHost: bench\r\n\r\n", path,
                     offset, limit);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
      bad++;
      break;
    }
    int status = 0;
    long len = read_response(fd, &buf, &cap, &status);
    pages++;
    if (len < 0 || status != 200) {
      bad++;
      break;
    }
    long long last = last_offset(buf, len);
    if (last < 0) break; /* the end */
    if (last < offset) {
      bad++;
      break;
    }
    events += last - offset + 1; /* offsets are dense in a partition */
    offset = last + 1;
  }
  double dt = now() - t0;
  printf("BENCH_RESULT ops=%lld seconds=%.6f rate=%.2f pages=%lld bad=%lld\n", events, dt, events / dt, pages, bad);
  free(buf);
  close(fd);
  return bad ? 1 : 0;
}
