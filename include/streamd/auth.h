/*
 * auth.h - API keys: a keyring built from the `key` lines of the config
 * and the lines of `keys_file`, and the checks made against it.
 *
 * A key line is "NAME sha256:HEX GRANT [GRANT ...]": NAME labels the key
 * in logs, HEX is the SHA-256 of the key (64 hex digits; the clear key is
 * never stored), and each GRANT is "PERMS:PATTERN" with PERMS one or more
 * of read, write, admin joined by '+' and PATTERN a glob over stream names
 * (fnmatch: '*', '?', '[...]').  docs/security.md has the model.
 *
 * A keyring is immutable once built and reference-counted: the HTTP layer
 * holds one and swaps in a new one on reload; a request that looked its
 * key up holds a reference until it completes.  Single-threaded.
 */
#ifndef STREAMD_AUTH_H
#define STREAMD_AUTH_H

#include <stddef.h>

enum {
  SD_AUTH_READ = 1,   /* consume, WebSocket, info, stats, groups as a consumer */
  SD_AUTH_WRITE = 2,  /* publish */
  SD_AUTH_ADMIN = 4,  /* create and delete streams and groups */
};

/* Longest key accepted in a request, in bytes. */
#define SD_AUTH_KEY_MAX 512
/* Shortest key --hash-key accepts (bytes); keys must be random. */
#define SD_AUTH_KEY_MIN 16
/* "sha256:" and 64 hex digits, plus the NUL. */
#define SD_AUTH_HASH_LINE 72

struct sd_auth;
struct sd_auth_key;

/* Builds a keyring from key lines (each line of `lines`, '\n'-separated,
 * may be NULL) and from the file `keys_file` (NULL or "" for none; '#'
 * starts a comment there, blank lines are skipped).  An empty keyring is
 * valid (no keys: open mode).  *out has one reference.
 * Errors: SD_E_INVALID_PARAMETER (err names the line and what is wrong:
 * bad hash, unknown permission, empty pattern, duplicate name or hash),
 * -errno when keys_file cannot be read, -ENOMEM. */
int sd_auth_new(const char *lines, const char *keys_file, struct sd_auth **out, char *err, size_t cap);

/* Reference counting; sd_auth_unref frees at zero and accepts NULL. */
struct sd_auth *sd_auth_ref(struct sd_auth *a);
void sd_auth_unref(struct sd_auth *a);

/* Number of keys (0: open mode). */
size_t sd_auth_count(const struct sd_auth *a);

/* The key whose hash is the SHA-256 of key[0..len), or NULL.  Every
 * stored hash is compared, in constant time, whichever matches. The
 * pointer is valid while the caller holds a reference on a. */
const struct sd_auth_key *sd_auth_find(const struct sd_auth *a, const char *key, size_t len);

/* Whether k holds every permission in perms on stream `name`; with name
 * NULL, whether it holds them on every stream (a grant whose pattern is
 * exactly "*"). */
int sd_auth_allows(const struct sd_auth_key *k, unsigned perms, const char *name);

/* Whether k holds any permission at all on `name`. */
int sd_auth_any(const struct sd_auth_key *k, const char *name);

/* The key's label from its line.  Valid as long as the key. */
const char *sd_auth_key_name(const struct sd_auth_key *k);

/* Writes "sha256:<64 lower-case hex digits>" of key[0..len) into out
 * (SD_AUTH_HASH_LINE bytes). */
void sd_auth_hash(const char *key, size_t len, char out[SD_AUTH_HASH_LINE]);

/* Whether key[0..len) can be used as a key: SD_AUTH_KEY_MIN to
 * SD_AUTH_KEY_MAX bytes of [A-Za-z0-9._~-] (usable as a bearer token, a
 * WebSocket subprotocol and a query value without escaping).  0 or
 * SD_E_INVALID_PARAMETER with a sentence in err. */
int sd_auth_key_check(const char *key, size_t len, char *err, size_t cap);

/* Whether host (a numeric address as in the config) is a loopback
 * address: 127.0.0.0/8, ::1 or ::ffff:127.0.0.0/104. */
int sd_auth_is_loopback(const char *host);

#endif
