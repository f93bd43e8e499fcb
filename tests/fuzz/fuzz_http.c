/*
 * fuzz_http.c - raw client bytes (one or more HTTP requests) sent to the
 * real server over one connection: libmicrohttpd's parsing, our path
 * unescaping, the router (sd_routes_match), query-parameter parsing and
 * every handler behind them, against the fixture stream "fz".
 *
 * Checks: no sanitizer report, no connection left open after the client's
 * EOF, and whatever the server answers starts with an HTTP status line.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static struct sd_buf resp;
  static unsigned runs;
  struct fz_server *sv = fz_server();
  if (++runs % 64 == 0) fz_server_reset(sv);
  fz_exchange(sv, data, size, &resp);
  if (resp.len > 0 && fz_status(&resp) == 0) {
    fprintf(stderr, "fuzz_http: the answer does not start with a status line: %.*s\n",
            (int)(resp.len < 200 ? resp.len : 200), resp.data);
    abort();
  }
  return 0;
}
