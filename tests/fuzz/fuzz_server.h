/*
 * fuzz_server.h - the real HTTP server (engine, libmicrohttpd, WebSocket
 * layer) inside a fuzz harness: one per process, on a temporary data
 * directory, serving connections handed to it over socketpairs.
 *
 * A request is exchanged by giving libmicrohttpd one end of a socketpair
 * (MHD_add_connection), writing the bytes to the other end, closing its
 * write side and running the loop until the server closes the connection.
 * No listening socket is used, so no ports or TIME_WAIT states pile up.
 *
 * Fixtures (present before every input, recreated when an input deleted
 * them): stream "fz" with 2 partitions and a few events, and its
 * consumer groups "g" (shared, explicit acks) and "gp" (partitioned).
 * Other streams an input creates are deleted by fz_server_reset.
 */
#ifndef STREAMD_FUZZ_SERVER_H
#define STREAMD_FUZZ_SERVER_H

#include <stddef.h>
#include <uv.h>

#include "streamd/buf.h"
#include "streamd/config.h"
#include "streamd/engine.h"
#include "streamd/http.h"

struct fz_server {
  uv_loop_t loop;
  struct sd_config cfg;
  struct sd_engine *engine;
  struct sd_http *http;
  char dir[512];
};

/* The process's server, started on the first call (aborts on failure). */
struct fz_server *fz_server(void);

/* Sends len bytes as one client connection and collects everything the
 * server writes until it closes the connection.  Aborts when the server
 * keeps the connection open for seconds after the client's EOF: a
 * connection the server never lets go of is a finding. */
void fz_exchange(struct fz_server *sv, const void *req, size_t len, struct sd_buf *resp);

/* The same, with the bytes past `first` sent only once the server has
 * read the first ones (a request, then what follows it on the socket). */
void fz_exchange_split(struct fz_server *sv, const void *req, size_t len, size_t first, struct sd_buf *resp);

/* The status code of the first response in resp, 0 when there is none. */
int fz_status(const struct sd_buf *resp);

/* Deletes every stream but the fixtures, and recreates missing fixtures. */
void fz_server_reset(struct fz_server *sv);

/* Runs the loop until nothing is immediately ready. */
void fz_server_settle(struct fz_server *sv);

#endif
