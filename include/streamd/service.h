/*
 * service.h - notifications to the service manager: systemd's readiness
 * protocol (sd_notify(3)), spoken directly.
 *
 * The protocol is one datagram of newline-separated KEY=VALUE assignments
 * sent to the AF_UNIX datagram socket named by $NOTIFY_SOCKET (a path, or
 * '@' then a name in the abstract namespace).  Without NOTIFY_SOCKET every
 * call does nothing and returns 0, so the server runs the same under
 * systemd (Type=notify), another supervisor, or a terminal.
 *
 * Call from the loop thread; each call opens, sends on and closes its own
 * socket (a handful of calls per process lifetime).
 */
#ifndef STREAMD_SERVICE_H
#define STREAMD_SERVICE_H

/* Sends state ("READY=1\nSTATUS=...") as one datagram.  0 (also when
 * NOTIFY_SOCKET is unset), -EINVAL (a name too long for sun_path),
 * -EAFNOSUPPORT (an address that is neither a path nor '@name'), or the
 * -errno of socket(2)/sendto(2).  A failure changes nothing else: the
 * caller logs it and goes on. */
int sd_service_notify(const char *state);

/* READY=1 with a STATUS= line: the server accepts connections. */
int sd_service_ready(const char *status);

/* STOPPING=1: the shutdown sequence has begun. */
int sd_service_stopping(void);

/* RELOADING=1 with MONOTONIC_USEC= (CLOCK_MONOTONIC now, as
 * Type=notify-reload asks); send sd_service_ready once the reload is done. */
int sd_service_reloading(void);

#endif
