/*
 * jspan.c - spans of values in validated JSON text; see jspan.h.
 */
#include "jspan.h"

#include <jansson.h>
#include <string.h>

const char *sd_jspan_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

static const char *skip_string(const char *p, const char *end) {
  for (p++; p < end; p++) {
    if (*p == '\\')
      p++;
    else if (*p == '"')
      return p + 1;
  }
  return end;
}

const char *sd_jspan_skip(const char *p, const char *end) {
  int depth = 0;
  if (p >= end) return end;
  if (*p == '"') return skip_string(p, end);
  if (*p != '{' && *p != '[') {
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') p++;
    return p;
  }
  while (p < end) {
    char c = *p;
    if (c == '"') {
      p = skip_string(p, end);
      continue;
    }
    if (c == '{' || c == '[') depth++;
    if (c == '}' || c == ']') {
      if (--depth == 0) return p + 1;
    }
    p++;
  }
  return end;
}

/* Compares the JSON string at [s, e) (quotes included) with key. */
static int key_equals(const char *s, const char *e, const char *key) {
  size_t n = (size_t)(e - s);
  if (memchr(s, '\\', n) == NULL) return n - 2 == strlen(key) && memcmp(s + 1, key, n - 2) == 0;
  json_t *j = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
  int eq = j && json_is_string(j) && json_string_length(j) == strlen(key) &&
           memcmp(json_string_value(j), key, strlen(key)) == 0;
  json_decref(j);
  return eq;
}

int sd_jspan_member(struct sd_span obj, const char *key, struct sd_span *value) {
  const char *end = obj.p + obj.len;
  const char *p = sd_jspan_ws(obj.p, end);
  if (p >= end || *p != '{') return 0;
  p++;
  for (;;) {
    p = sd_jspan_ws(p, end);
    if (p >= end || *p != '"') return 0;
    const char *ks = p;
    p = skip_string(p, end);
    const char *ke = p;
    p = sd_jspan_ws(p, end);
    if (p >= end || *p != ':') return 0;
    p = sd_jspan_ws(p + 1, end);
    const char *vs = p;
    p = sd_jspan_skip(p, end);
    if (key_equals(ks, ke, key)) {
      value->p = vs;
      value->len = (size_t)(p - vs);
      return 1;
    }
    p = sd_jspan_ws(p, end);
    if (p >= end || *p != ',') return 0;
    p++;
  }
}

size_t sd_jspan_elements(struct sd_span arr, struct sd_span *out, size_t max) {
  const char *end = arr.p + arr.len;
  const char *p = sd_jspan_ws(arr.p, end);
  size_t n = 0;
  if (p >= end || *p != '[') return 0;
  p = sd_jspan_ws(p + 1, end);
  if (p < end && *p == ']') return 0;
  while (p < end) {
    p = sd_jspan_ws(p, end);
    const char *vs = p;
    p = sd_jspan_skip(p, end);
    if (n < max) out[n] = (struct sd_span){vs, (size_t)(p - vs)};
    n++;
    p = sd_jspan_ws(p, end);
    if (p >= end || *p != ',') break;
    p++;
  }
  return n;
}
