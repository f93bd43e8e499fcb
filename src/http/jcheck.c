/*
 * jcheck.c - the publish-body check; see jcheck.h.
 *
 * A recursive descent over RFC 8259 with jansson's extra rules: strings
 * hold well-formed UTF-8 (no overlong forms, no surrogates, nothing past
 * U+10FFFF) and no raw control characters; an object holds no key twice;
 * numbers must fit a double.  Every function returns 1 when the value is
 * accepted (k->p just past it) or 0 when it is not decided.
 */
#include "jcheck.h"

#include <errno.h>
#include <string.h>

#define MAX_OPEN_KEYS 256   /* keys of all objects open at once */
#define MAX_OBJECT_KEYS 24  /* keys compared pairwise; more: jansson decides */
#define MAX_NUMBER_BYTES 200

/* Roles of a value by position: an event object, the top-level object, a
 * list of events. */
#define R_EVENT 1
#define R_TOP 2
#define R_LIST 4

struct ck {
  const unsigned char *p, *end;
  const unsigned char *copied; /* envelope holds the text up to here */
  struct sd_buf *out;
  uint32_t depth, max_depth;
  size_t nkeys;
  struct {
    const unsigned char *p;
    size_t len;
  } keys[MAX_OPEN_KEYS];
  int oom;
};

static int ck_value(struct ck *k, int role);

static void ck_ws(struct ck *k) {
  while (k->p < k->end && (*k->p == ' ' || *k->p == '\n' || *k->p == '\r' || *k->p == '\t')) k->p++;
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* k->p at '"'.  *escaped is set when the string holds a backslash. */
static int ck_string(struct ck *k, int *escaped) {
  const unsigned char *s = k->p + 1, *end = k->end;
  *escaped = 0;
  while (s < end) {
    unsigned c = *s;
    if (c == '"') {
      k->p = s + 1;
      return 1;
    }
    if (c < 0x20) return 0;
    if (c < 0x80 && c != '\\') {
      s++;
      continue;
    }
    if (c == '\\') {
      *escaped = 1;
      if (end - s < 2) return 0;
      switch (s[1]) {
      case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        s += 2;
        continue;
      case 'u': {
        if (end - s < 6) return 0;
        int v = 0;
        for (int i = 2; i < 6; i++) {
          int h = hexval(s[i]);
          if (h < 0) return 0;
          v = v * 16 + h;
        }
        if (v >= 0xD800 && v <= 0xDFFF) return 0; /* pairs: jansson decides */
        s += 6;
        continue;
      }
      default:
        return 0;
      }
    }
    size_t len;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      v = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      v = c & 0x07;
    } else {
      return 0;
    }
    if ((size_t)(end - s) < len) return 0;
    for (size_t i = 1; i < len; i++) {
      if ((s[i] & 0xC0) != 0x80) return 0;
      v = (v << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && v < 0x800) || (len == 4 && v < 0x10000) || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
      return 0;
    s += len;
  }
  return 0;
}

static int is_digit(const unsigned char *s, const unsigned char *end) { return s < end && *s >= '0' && *s <= '9'; }

static int ck_number(struct ck *k) {
  const unsigned char *s = k->p, *end = k->end;
  if (s < end && *s == '-') s++;
  if (!is_digit(s, end)) return 0;
  if (*s == '0') {
    s++;
  } else {
    while (is_digit(s, end)) s++;
  }
  if (s < end && *s == '.') {
    s++;
    if (!is_digit(s, end)) return 0;
    while (is_digit(s, end)) s++;
  }
  if (s < end && (*s == 'e' || *s == 'E')) {
    s++;
    if (s < end && (*s == '+' || *s == '-')) s++;
    const unsigned char *d = s;
    while (is_digit(s, end)) s++;
    if (s == d || s - d > 2) return 0; /* |exponent| < 100: no overflow */
  }
  if (s - k->p > MAX_NUMBER_BYTES) return 0;
  k->p = s;
  return 1;
}

static int ck_literal(struct ck *k, const char *word, size_t n) {
  if ((size_t)(k->end - k->p) < n || memcmp(k->p, word, n) != 0) return 0;
  k->p += n;
  return 1;
}

static int key_is(const unsigned char *p, size_t len, const char *name) {
  return len == strlen(name) && memcmp(p, name, len) == 0;
}

/* Appends the text from k->copied to `upto`, then "null". */
static void ck_blank(struct ck *k, const unsigned char *upto) {
  if (sd_buf_append(k->out, (const char *)k->copied, (size_t)(upto - k->copied)) != 0 ||
      sd_buf_append(k->out, "null", 4) != 0)
    k->oom = 1;
}

static int ck_object(struct ck *k, int role) {
  size_t first = k->nkeys;
  int ok = 0;
  k->p++;
  ck_ws(k);
  if (k->p < k->end && *k->p == '}') {
    k->p++;
    return 1;
  }
  for (;;) {
    int escaped;
    ck_ws(k);
    if (k->p >= k->end || *k->p != '"') goto out;
    const unsigned char *ks = k->p + 1;
    if (!ck_string(k, &escaped) || escaped) goto out;
    size_t klen = (size_t)(k->p - 1 - ks);
    if (k->nkeys - first >= MAX_OBJECT_KEYS || k->nkeys == MAX_OPEN_KEYS) goto out;
    for (size_t i = first; i < k->nkeys; i++)
      if (k->keys[i].len == klen && memcmp(k->keys[i].p, ks, klen) == 0) goto out;
    k->keys[k->nkeys].p = ks;
    k->keys[k->nkeys].len = klen;
    k->nkeys++;
    ck_ws(k);
    if (k->p >= k->end || *k->p != ':') goto out;
    k->p++;
    ck_ws(k);
    const unsigned char *vs = k->p;
    int child = (role & R_TOP) && key_is(ks, klen, "events") ? R_LIST : 0;
    if (!ck_value(k, child)) goto out;
    if ((role & R_EVENT) && key_is(ks, klen, "data")) {
      ck_blank(k, vs);
      k->copied = k->p;
    }
    ck_ws(k);
    if (k->p < k->end && *k->p == ',') {
      k->p++;
      continue;
    }
    if (k->p < k->end && *k->p == '}') {
      k->p++;
      ok = 1;
    }
    goto out;
  }
out:
  k->nkeys = first;
  return ok;
}

static int ck_array(struct ck *k, int role) {
  k->p++;
  ck_ws(k);
  if (k->p < k->end && *k->p == ']') {
    k->p++;
    return 1;
  }
  for (;;) {
    ck_ws(k);
    if (!ck_value(k, (role & R_LIST) ? R_EVENT : 0)) return 0;
    ck_ws(k);
    if (k->p < k->end && *k->p == ',') {
      k->p++;
      continue;
    }
    if (k->p < k->end && *k->p == ']') {
      k->p++;
      return 1;
    }
    return 0;
  }
}

static int ck_value(struct ck *k, int role) {
  int escaped, ok;
  if (k->p >= k->end) return 0;
  switch (*k->p) {
  case '{':
  case '[':
    if (++k->depth > k->max_depth) return 0;
    ok = *k->p == '{' ? ck_object(k, role & (R_EVENT | R_TOP)) : ck_array(k, role & R_LIST);
    k->depth--;
    return ok;
  case '"':
    return ck_string(k, &escaped);
  case 't':
    return ck_literal(k, "true", 4);
  case 'f':
    return ck_literal(k, "false", 5);
  case 'n':
    return ck_literal(k, "null", 4);
  default:
    return ck_number(k);
  }
}

int sd_jcheck_publish(const char *p, size_t n, uint32_t max_depth, struct sd_buf *envelope) {
  struct ck k;
  k.p = k.copied = (const unsigned char *)p;
  k.end = k.p + n;
  k.out = envelope;
  k.depth = 0;
  k.max_depth = max_depth;
  k.nkeys = 0;
  k.oom = 0;
  sd_buf_reset(envelope);
  ck_ws(&k);
  if (k.p >= k.end || (*k.p != '{' && *k.p != '[')) return 0;
  if (!ck_value(&k, R_EVENT | R_TOP | R_LIST)) return 0;
  ck_ws(&k);
  if (k.p != k.end) return 0;
  if (sd_buf_append(envelope, (const char *)k.copied, (size_t)(k.end - k.copied)) != 0) k.oom = 1;
  return k.oom ? -ENOMEM : 1;
}
