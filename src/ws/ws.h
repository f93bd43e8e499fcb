/*
 * ws.h - WebSocket subscribers: RFC 6455 connections, upgraded by
 * libmicrohttpd, framed by wslay, driven by the libuv loop, fed from the
 * log by offset.
 *
 * A subscriber holds one cursor per partition and reads the log itself:
 * the replay and the live tail are the same read, so there is no seam.  At
 * most ws_window_bytes of unsent frames exist per connection; past that the
 * connection stops reading ahead and resumes from its cursor as the socket
 * drains, so a slow subscriber lags but never grows the server's memory.
 */
#ifndef STREAMD_WS_H
#define STREAMD_WS_H

#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "streamd/config.h"
#include "streamd/engine.h"

struct sd_ws_server;
struct sd_ws_conn;

/* kick is called when MHD needs a run (after an upgraded socket is given
 * back); arg is passed to it. */
int sd_ws_server_new(uv_loop_t *loop, const struct sd_config *cfg, void (*kick)(void *), void *arg,
                     struct sd_ws_server **out);
/* Closes every connection with 1001 and frees the server once their
 * handles are closed (runs the loop briefly). */
void sd_ws_server_free(struct sd_ws_server *srv);
/* Sends 1001 to every subscriber; they close as their frames drain. */
void sd_ws_server_shutdown(struct sd_ws_server *srv);
/* Open WebSocket connections. */
size_t sd_ws_server_count(const struct sd_ws_server *srv);
/* Events queued to subscribers since start-up: out[0] stream subscribers,
 * out[1] group consumers. */
void sd_ws_server_events(const struct sd_ws_server *srv, uint64_t out[2]);

/* Checks an upgrade request's key and computes Sec-WebSocket-Accept into
 * accept (29 bytes with the NUL).  0 or SD_E_INVALID_PARAMETER. */
int sd_ws_accept_key(const char *key, char accept[29]);

/* A subscriber about to be upgraded: starts[p] is the first offset to send
 * of each partition (partition >= 0: only that one).  Takes a reference on
 * s.  Free with sd_ws_conn_discard if the upgrade never happens. */
struct sd_ws_conn *sd_ws_conn_new(struct sd_ws_server *srv, struct sd_stream *s, int32_t partition,
                                  const uint64_t *starts, const char *consumer);
void sd_ws_conn_discard(struct sd_ws_conn *c);

/* A group consumer about to be upgraded: events are fetched from the group
 * for consumer, at most prefetch unacked at a time; acks come back as text
 * frames {"ack":{"partition":P,"offset":O}} (or "from"/"to", or an array).
 * Takes references on the group and its stream. */
struct sd_group;
struct sd_ws_conn *sd_ws_conn_new_group(struct sd_ws_server *srv, struct sd_group *g, const char *consumer,
                                        uint32_t prefetch);

/* The MHD upgrade handler; cls is the sd_ws_conn. */
void sd_ws_upgraded(void *cls, struct MHD_Connection *connection, void *con_cls, const char *extra_in,
                    size_t extra_in_size, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh);

#endif
