/*
 * http.h - the REST transport: libmicrohttpd driven by the libuv loop (no
 * MHD threads), routing requests to the engine.
 */
#ifndef STREAMD_HTTP_H
#define STREAMD_HTTP_H

#include <uv.h>

#include "streamd/config.h"
#include "streamd/engine.h"

struct sd_http;

/* Binds host:port and starts serving on loop.  cfg and engine must outlive
 * the server.  Errors: -errno (e.g. -EADDRINUSE), -ENOMEM, SD_E_INVALID_PARAMETER
 * (bad host). */
int sd_http_start(uv_loop_t *loop, struct sd_engine *engine, const struct sd_config *cfg, struct sd_http **out);

/* Replaces the API keys (takes the caller's reference on a, which may be
 * NULL or empty for open mode) and drops the server's reference on the old
 * keyring.  Requests checked against the old one keep it until they end;
 * WebSocket connections, checked at their handshake, stay open. */
struct sd_auth;
void sd_http_set_auth(struct sd_http *h, struct sd_auth *a);

/* Number of API keys in force (0: open mode). */
size_t sd_http_key_count(const struct sd_http *h);

/* The port actually bound (useful with port 0). */
uint16_t sd_http_port(const struct sd_http *h);

/* Shutdown, step 1: stops accepting connections and answers waiting long
 * polls at once.  Requests in flight go on. */
void sd_http_quiesce(struct sd_http *h);

/* Requests received and not yet answered. */
size_t sd_http_in_flight(const struct sd_http *h);

/* Shutdown, step 2: closes every connection and frees the server.  Runs
 * the loop briefly to close its handles. */
void sd_http_free(struct sd_http *h);

#endif
