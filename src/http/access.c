/*
 * access.c - who may make a request: the API key a request carries, its
 * lookup in the server's keyring, the 401/403 answers, and the WebSocket
 * subprotocol chosen in a 101.
 *
 * Where a key is taken from, first found wins:
 *   1. "Authorization: Bearer KEY" (any route);
 *   2. a "streamd.key.KEY" value of Sec-WebSocket-Protocol (upgrade routes);
 *   3. the "token" query parameter (upgrade routes only: query strings end
 *      up in logs and browser history).
 * The clear key is hashed at once by sd_auth_find and never copied.
 *
 * Invariant: a request that passed the check holds a reference on the
 * keyring it was checked against (req->auth) and its key (req->key) until
 * sd_req_access_release, so a reload while it is suspended frees nothing
 * it points at.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http_internal.h"
#include "streamd/auth.h"
#include "streamd/err.h"
#include "streamd/log.h"

#define KEY_PROTOCOL "streamd.key."
#define KEY_PROTOCOL_LEN (sizeof(KEY_PROTOCOL) - 1)

void sd_http_set_auth(struct sd_http *h, struct sd_auth *a) {
  sd_auth_unref(h->auth);
  h->auth = a;
}

size_t sd_http_key_count(const struct sd_http *h) { return sd_auth_count(h->auth); }

/* Walks the comma-separated Sec-WebSocket-Protocol values. */
struct protocols {
  int plain;            /* "streamd" was offered */
  const char *key;      /* first "streamd.key.KEY" value: points at KEY */
  size_t key_len;
};

static enum MHD_Result scan_protocols(void *cls, enum MHD_ValueKind kind, const char *name, const char *value) {
  struct protocols *p = cls;
  (void)kind;
  if (name == NULL || strcasecmp(name, "Sec-WebSocket-Protocol") != 0 || value == NULL) return MHD_YES;
  for (const char *s = value; *s;) {
    while (*s == ' ' || *s == '\t' || *s == ',') s++;
    const char *e = s;
    while (*e && *e != ',') e++;
    const char *t = e;
    while (t > s && (t[-1] == ' ' || t[-1] == '\t')) t--;
    size_t n = (size_t)(t - s);
    if (n == 7 && strncmp(s, "streamd", 7) == 0) p->plain = 1;
    if (p->key == NULL && n > KEY_PROTOCOL_LEN && strncmp(s, KEY_PROTOCOL, KEY_PROTOCOL_LEN) == 0) {
      p->key = s + KEY_PROTOCOL_LEN;
      p->key_len = n - KEY_PROTOCOL_LEN;
    }
    s = e;
  }
  return MHD_YES;
}

size_t sd_req_subprotocol(struct sd_req *req, char *out, size_t cap) {
  struct protocols p = {0, NULL, 0};
  MHD_get_connection_values(req->conn, MHD_HEADER_KIND, scan_protocols, &p);
  out[0] = '\0';
  if (p.plain) return (size_t)snprintf(out, cap, "streamd");
  if (p.key && KEY_PROTOCOL_LEN + p.key_len < cap)
    return (size_t)snprintf(out, cap, "%s%.*s", KEY_PROTOCOL, (int)p.key_len, p.key);
  return 0;
}

/* The key the request presents, or NULL; *bad is set when a credential is
 * there but malformed (an Authorization header that is not Bearer). */
static const char *credential(struct sd_req *req, int ws, size_t *len, int *bad) {
  const char *a = sd_req_header(req, MHD_HTTP_HEADER_AUTHORIZATION);
  *bad = 0;
  if (a != NULL) {
    while (*a == ' ') a++;
    if (strncasecmp(a, "Bearer ", 7) != 0) {
      *bad = 1;
      return NULL;
    }
    a += 7;
    while (*a == ' ') a++;
    size_t n = strlen(a);
    while (n > 0 && (a[n - 1] == ' ' || a[n - 1] == '\t')) n--;
    *len = n;
    return a;
  }
  if (!ws) return NULL;
  struct protocols p = {0, NULL, 0};
  MHD_get_connection_values(req->conn, MHD_HEADER_KIND, scan_protocols, &p);
  if (p.key) {
    *len = p.key_len;
    return p.key;
  }
  const char *t = sd_req_arg(req, "token");
  if (t != NULL) *len = strlen(t);
  return t;
}

int sd_req_authorize(struct sd_req *req, unsigned perms, const char *stream, int ws) {
  struct sd_http *h = req->h;
  size_t len = 0;
  int bad;
  if (sd_auth_count(h->auth) == 0) return 0; /* open mode */
  const char *k = credential(req, ws, &len, &bad);
  const struct sd_auth_key *key = NULL;
  if (k != NULL && len > 0 && len <= SD_AUTH_KEY_MAX) key = sd_auth_find(h->auth, k, len);
  if (key == NULL) {
    req->www_auth = (k == NULL && !bad) ? "Bearer realm=\"streamd\""
                                       : "Bearer realm=\"streamd\", error=\"invalid_token\"";
    sd_req_error(req, SD_E_UNAUTHORIZED,
                 k == NULL && !bad ? "an API key is required (Authorization: Bearer KEY)" : "the API key is not valid",
                 NULL);
    return -1;
  }
  int ok = stream == NULL && perms == 0 ? 1 : sd_auth_allows(key, perms, stream);
  if (!ok) {
    static const char *const names[] = {"", "read", "write", "read+write", "admin"};
    const char *what = perms < 5 ? names[perms] : "admin";
    char msg[400], extra[64];
    if (stream)
      snprintf(msg, sizeof(msg), "key '%s' may not %s stream '%s'", sd_auth_key_name(key), what, stream);
    else
      snprintf(msg, sizeof(msg), "key '%s' needs %s on every stream (a %s:* grant)", sd_auth_key_name(key), what,
               what);
    snprintf(extra, sizeof(extra), "\"permission\":\"%s\"", what);
    SD_DEBUG("auth: key '%s' refused %s on %s", sd_auth_key_name(key), what, stream ? stream : "*");
    sd_req_error(req, SD_E_FORBIDDEN, msg, extra);
    return -1;
  }
  req->auth = sd_auth_ref(h->auth);
  req->key = key;
  return 0;
}

void sd_req_access_release(struct sd_req *req) {
  sd_auth_unref(req->auth);
  req->auth = NULL;
  req->key = NULL;
  req->www_auth = NULL;
  req->auth_checked = 0;
}
