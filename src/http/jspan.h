/*
 * jspan.h - byte spans of values inside a JSON text that jansson has
 * already accepted, so that an event's "data" is stored exactly as it was
 * received (big integers, number spelling and key order kept) and the size
 * of each event "as received" is known.
 *
 * These functions assume valid JSON: on invalid input they never read
 * outside [p, end) but their result is unspecified.
 */
#ifndef STREAMD_JSPAN_H
#define STREAMD_JSPAN_H

#include <stddef.h>

struct sd_span {
  const char *p;
  size_t len;
};

/* Skips whitespace; returns the first other byte (or end). */
const char *sd_jspan_ws(const char *p, const char *end);

/* Returns the byte just past the value starting at p. */
const char *sd_jspan_skip(const char *p, const char *end);

/* In the object spanning obj, finds the value of member `key` (compared
 * after unescaping).  1 when found, 0 when not. */
int sd_jspan_member(struct sd_span obj, const char *key, struct sd_span *value);

/* Fills out[0..max) with the spans of the elements of the array spanning
 * arr; returns how many elements it has. */
size_t sd_jspan_elements(struct sd_span arr, struct sd_span *out, size_t max);

#endif
