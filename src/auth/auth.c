/*
 * auth.c - the keyring of API keys; see auth.h.
 *
 * Owns the parsed keys: for each, its name, the 32-byte SHA-256 of the
 * clear key and its grants (permission bits, stream-name glob).  Clear
 * keys exist only in the request being checked and are hashed at once;
 * lookups compare every stored hash with memeql_sec, so the time taken
 * depends on the number of keys, not on how much of a hash matched.
 *
 * Invariants: names and hashes are unique within a keyring; every key has
 * at least one grant; every grant has a non-empty pattern and perms != 0.
 */
#include "streamd/auth.h"
#include "streamd/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fnmatch.h>
#include <nettle/memops.h>
#include <nettle/sha2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamd/err.h"

struct grant {
  unsigned perms;
  char *pattern;
};

struct sd_auth_key {
  char *name;
  uint8_t hash[SHA256_DIGEST_SIZE];
  struct grant *grants;
  size_t ngrants;
};

struct sd_auth {
  int refs;
  struct sd_auth_key *keys;
  size_t n, cap;
};

static void key_clear(struct sd_auth_key *k) {
  for (size_t i = 0; i < k->ngrants; i++) free(k->grants[i].pattern);
  free(k->grants);
  free(k->name);
  memset(k, 0, sizeof(*k));
}

struct sd_auth *sd_auth_ref(struct sd_auth *a) {
  a->refs++;
  return a;
}

void sd_auth_unref(struct sd_auth *a) {
  if (a == NULL || --a->refs > 0) return;
  for (size_t i = 0; i < a->n; i++) key_clear(&a->keys[i]);
  free(a->keys);
  free(a);
}

size_t sd_auth_count(const struct sd_auth *a) { return a ? a->n : 0; }

const char *sd_auth_key_name(const struct sd_auth_key *k) { return k->name; }

/* ---- hashing ------------------------------------------------------------- */

static void digest(const char *key, size_t len, uint8_t out[SHA256_DIGEST_SIZE]) {
  struct sha256_ctx ctx;
  sha256_init(&ctx);
  sha256_update(&ctx, len, (const uint8_t *)key);
  sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
}

void sd_auth_hash(const char *key, size_t len, char out[SD_AUTH_HASH_LINE]) {
  static const char hex[] = "0123456789abcdef";
  uint8_t d[SHA256_DIGEST_SIZE];
  digest(key, len, d);
  memcpy(out, "sha256:", 7);
  for (size_t i = 0; i < sizeof(d); i++) {
    out[7 + 2 * i] = hex[d[i] >> 4];
    out[8 + 2 * i] = hex[d[i] & 15];
  }
  out[7 + 2 * sizeof(d)] = '\0';
}

static int key_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '~' || c == '-';
}

int sd_auth_key_check(const char *key, size_t len, char *err, size_t cap) {
  if (len < SD_AUTH_KEY_MIN || len > SD_AUTH_KEY_MAX) {
    snprintf(err, cap, "a key must be %d to %d characters long (got %zu); make one with: openssl rand -hex 32",
             SD_AUTH_KEY_MIN, SD_AUTH_KEY_MAX, len);
    return SD_E_INVALID_PARAMETER;
  }
  for (size_t i = 0; i < len; i++) {
    if (!key_char(key[i])) {
      snprintf(err, cap, "a key may hold only A-Z a-z 0-9 . _ ~ - (character %zu is not one)", i + 1);
      return SD_E_INVALID_PARAMETER;
    }
  }
  return 0;
}

const struct sd_auth_key *sd_auth_find(const struct sd_auth *a, const char *key, size_t len) {
  uint8_t d[SHA256_DIGEST_SIZE];
  const struct sd_auth_key *found = NULL;
  if (a == NULL || a->n == 0) return NULL;
  digest(key, len, d);
  for (size_t i = 0; i < a->n; i++) {
    int eq = memeql_sec(d, a->keys[i].hash, sizeof(d));
    if (eq && found == NULL) found = &a->keys[i];
  }
  return found;
}

/* ---- checks --------------------------------------------------------------- */

int sd_auth_allows(const struct sd_auth_key *k, unsigned perms, const char *name) {
  unsigned held = 0;
  for (size_t i = 0; i < k->ngrants; i++) {
    const struct grant *g = &k->grants[i];
    if (name == NULL ? strcmp(g->pattern, "*") == 0 : fnmatch(g->pattern, name, 0) == 0) held |= g->perms;
  }
  return (held & perms) == perms;
}

int sd_auth_any(const struct sd_auth_key *k, const char *name) {
  for (size_t i = 0; i < k->ngrants; i++)
    if (fnmatch(k->grants[i].pattern, name, 0) == 0) return 1;
  return 0;
}

int sd_auth_is_loopback(const char *host) {
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, host, &a6) == 1) {
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (IN6_IS_ADDR_LOOPBACK(&a6)) return 1;
    return memcmp(a6.s6_addr, v4mapped, 12) == 0 && a6.s6_addr[12] == 127;
  }
  return 0;
}

/* ---- parsing -------------------------------------------------------------- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int pattern_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("._:-*?[]!^", c);
}

/* Parses "read+write:PATTERN" into g.  0 or SD_E_INVALID_PARAMETER. */
static int parse_grant(const char *tok, struct grant *g, char *err, size_t cap) {
  const char *colon = strchr(tok, ':');
  if (colon == NULL) {
    snprintf(err, cap, "grant '%.100s' is not PERMS:PATTERN (e.g. read+write:orders.*)", tok);
    return SD_E_INVALID_PARAMETER;
  }
  g->perms = 0;
  for (const char *p = tok;;) {
    const char *e = p;
    while (e < colon && *e != '+') e++;
    size_t n = (size_t)(e - p);
    if (n == 0) {
      snprintf(err, cap, "grant '%.100s' has an empty permission (read, write or admin, joined by +)", tok);
      return SD_E_INVALID_PARAMETER;
    } else if (n == 4 && strncmp(p, "read", 4) == 0)
      g->perms |= SD_AUTH_READ;
    else if (n == 5 && strncmp(p, "write", 5) == 0)
      g->perms |= SD_AUTH_WRITE;
    else if (n == 5 && strncmp(p, "admin", 5) == 0)
      g->perms |= SD_AUTH_ADMIN;
    else {
      snprintf(err, cap, "unknown permission '%.*s' in grant '%.100s' (read, write or admin, joined by +)",
               (int)(n > 40 ? 40 : n), p, tok);
      return SD_E_INVALID_PARAMETER;
    }
    if (e == colon) break;
    p = e + 1;
  }
  const char *pat = colon + 1;
  if (g->perms == 0 || *pat == '\0' || strlen(pat) > 255) {
    snprintf(err, cap, "grant '%.100s' needs a permission and a stream pattern of 1 to 255 bytes", tok);
    return SD_E_INVALID_PARAMETER;
  }
  for (const char *p = pat; *p; p++) {
    if (!pattern_char(*p)) {
      snprintf(err, cap, "pattern '%.100s' may hold only stream-name characters and * ? [ ] ! ^", pat);
      return SD_E_INVALID_PARAMETER;
    }
  }
  g->pattern = strdup(pat);
  return g->pattern ? 0 : -ENOMEM;
}

/* Parses one key line (a writable copy, tokens split in place) and adds
 * the key to a.  0, SD_E_INVALID_PARAMETER or -ENOMEM. */
static int add_line(struct sd_auth *a, char *line, char *err, size_t cap) {
  char *save = NULL;
  char *name = strtok_r(line, " \t", &save);
  char *hash = strtok_r(NULL, " \t", &save);
  struct sd_auth_key k;
  int rc;
  memset(&k, 0, sizeof(k));
  if (name == NULL || hash == NULL) {
    snprintf(err, cap, "expected 'NAME sha256:HEX PERMS:PATTERN ...'");
    return SD_E_INVALID_PARAMETER;
  }
  if (strlen(name) > 64 || strncmp(name, "sha256:", 7) == 0) {
    snprintf(err, cap, "key name '%.70s' must come first and be at most 64 bytes", name);
    return SD_E_INVALID_PARAMETER;
  }
  if (strncmp(hash, "sha256:", 7) != 0 || strlen(hash) != 7 + 2 * SHA256_DIGEST_SIZE) {
    snprintf(err, cap, "key '%s': the hash must be sha256: and 64 hex digits (streamd --hash-key prints it)", name);
    return SD_E_INVALID_PARAMETER;
  }
  for (size_t i = 0; i < SHA256_DIGEST_SIZE; i++) {
    int hi = hexval(hash[7 + 2 * i]), lo = hexval(hash[8 + 2 * i]);
    if (hi < 0 || lo < 0) {
      snprintf(err, cap, "key '%s': the hash must be sha256: and 64 hex digits", name);
      return SD_E_INVALID_PARAMETER;
    }
    k.hash[i] = (uint8_t)(hi * 16 + lo);
  }
  for (size_t i = 0; i < a->n; i++) {
    if (strcmp(a->keys[i].name, name) == 0 || memcmp(a->keys[i].hash, k.hash, sizeof(k.hash)) == 0) {
      snprintf(err, cap, "key '%s': %s", name,
               strcmp(a->keys[i].name, name) == 0 ? "a key of this name is already defined"
                                                  : "the same hash is already defined for another key");
      return SD_E_INVALID_PARAMETER;
    }
  }
  if ((k.name = strdup(name)) == NULL) return -ENOMEM;
  for (char *tok; (tok = strtok_r(NULL, " \t", &save)) != NULL;) {
    struct grant *ng = realloc(k.grants, (k.ngrants + 1) * sizeof(*ng));
    if (ng == NULL) {
      rc = -ENOMEM;
      goto fail_key;
    }
    k.grants = ng;
    char msg[256];
    if ((rc = parse_grant(tok, &k.grants[k.ngrants], msg, sizeof(msg))) != 0) {
      snprintf(err, cap, "key '%s': %s", name, msg);
      goto fail_key;
    }
    k.ngrants++;
  }
  if (k.ngrants == 0) {
    snprintf(err, cap, "key '%s' has no grant (e.g. read:orders.*)", name);
    rc = SD_E_INVALID_PARAMETER;
    goto fail_key;
  }
  if (a->n == a->cap) {
    size_t ncap = a->cap ? a->cap * 2 : 8;
    struct sd_auth_key *nk = realloc(a->keys, ncap * sizeof(*nk));
    if (nk == NULL) {
      rc = -ENOMEM;
      goto fail_key;
    }
    a->keys = nk;
    a->cap = ncap;
  }
  a->keys[a->n++] = k;
  return 0;

fail_key:
  key_clear(&k);
  return rc;
}


int sd_auth_new(const char *lines, const char *keys_file, struct sd_auth **out, char *err, size_t cap) {
  struct sd_auth *a = calloc(1, sizeof(*a));
  char msg[384];
  int rc = 0, lineno = 0;
  if (a == NULL) return -ENOMEM;
  a->refs = 1;
  for (const char *p = lines; p && *p;) {
    const char *e = strchr(p, '\n');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    char *copy = strndup(p, n);
    lineno++;
    if (copy == NULL) {
      rc = -ENOMEM;
      goto fail;
    }
    char *s = sd_config_trim(copy);
    rc = *s ? add_line(a, s, msg, sizeof(msg)) : 0;
    free(copy);
    if (rc != 0) {
      snprintf(err, cap, "key (definition %d): %s", lineno, rc == -ENOMEM ? "out of memory" : msg);
      goto fail;
    }
    p = e ? e + 1 : p + n;
  }
  if (keys_file && *keys_file) {
    FILE *f = fopen(keys_file, "r");
    char line[8192];
    if (f == NULL) {
      rc = -errno;
      snprintf(err, cap, "cannot read keys_file %s: %s", keys_file, strerror(errno));
      goto fail;
    }
    lineno = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
      lineno++;
      char *hash = strchr(line, '#');
      if (hash) *hash = '\0';
      char *s = sd_config_trim(line);
      if (*s == '\0') continue;
      if ((rc = add_line(a, s, msg, sizeof(msg))) != 0) {
        snprintf(err, cap, "%s:%d: %s", keys_file, lineno, rc == -ENOMEM ? "out of memory" : msg);
        break;
      }
    }
    fclose(f);
    if (rc != 0) goto fail;
  }
  *out = a;
  return 0;

fail:
  sd_auth_unref(a);
  return rc;
}
