/*
 * service.c - the sd_notify datagram protocol (see service.h).  Owns
 * nothing between calls.
 */
#include "streamd/service.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int sd_service_notify(const char *state) {
  const char *name = getenv("NOTIFY_SOCKET");
  struct sockaddr_un sa;
  socklen_t salen;
  size_t n;
  int fd, rc = 0;
  if (name == NULL || name[0] == '\0') return 0;
  if (name[0] != '/' && name[0] != '@') return -EAFNOSUPPORT;
  n = strlen(name);
  if (n > sizeof(sa.sun_path) - 1) return -EINVAL;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, name, n);
  if (name[0] == '@') sa.sun_path[0] = '\0'; /* abstract: the length below counts the name bytes only */
  salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (name[0] == '/' ? 1 : 0));
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0) rc = -errno;
  close(fd);
  return rc;
}

int sd_service_ready(const char *status) {
  char msg[512];
  snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status);
  return sd_service_notify(msg);
}

int sd_service_stopping(void) { return sd_service_notify("STOPPING=1\nSTATUS=shutting down"); }

int sd_service_reloading(void) {
  char msg[128];
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
           (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000u);
  return sd_service_notify(msg);
}
