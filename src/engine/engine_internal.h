/*
 * engine_internal.h - what engine.c offers the other modules of the
 * engine (consumer groups) and nothing else should use.
 */
#ifndef STREAMD_ENGINE_INTERNAL_H
#define STREAMD_ENGINE_INTERNAL_H

#include "streamd/engine.h"
#include "streamd/group.h"

/* The stream's consumer groups (never NULL for a live stream). */
struct sd_groups *sd_stream_groups(const struct sd_stream *s);
/* The loop the stream's engine runs on. */
uv_loop_t *sd_stream_loop(const struct sd_stream *s);
/* Asks for a sync job of the stream (the groups log changed). */
void sd_stream_request_sync(struct sd_stream *s);
/* Whether the groups log has changes not yet handed to a sync. */
int sd_groups_dirty(const struct sd_groups *gs);

#endif
