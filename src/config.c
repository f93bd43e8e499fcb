/*
 * config.c - the table of configuration keys, the file parser and the
 * command-line parser.  One table drives all three and --help.
 */
#include "streamd/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamd/err.h"

enum kind { K_STR, K_U16, K_U32, K_U64, K_BOOL, K_DURABILITY, K_LIST };

struct key {
  const char *name;
  enum kind kind;
  size_t off;   /* offset in struct sd_config */
  size_t size;  /* for strings */
  uint64_t min, max;
  const char *help;
};

#define F(field) offsetof(struct sd_config, field), sizeof(((struct sd_config *)0)->field)
static const struct key keys[] = {
    {"host", K_STR, F(host), 0, 0, "address to listen on (default 127.0.0.1)"},
    {"port", K_U16, F(port), 1, 65535, "TCP port (default 15500)"},
    {"data_dir", K_STR, F(data_dir), 0, 0, "data directory (default ./streamd-data)"},
    {"durability", K_DURABILITY, F(engine.durability), 0, 0, "always | interval | never (default always)"},
    {"sync_interval_ms", K_U32, F(engine.interval_ms), 1, 3600000, "sync period in interval mode (default 1000)"},
    {"segment_bytes", K_U64, F(engine.segment_bytes), 4096, 1073741824, "segment file size (default 64 MiB)"},
    {"default_partitions", K_U32, F(engine.defaults.partitions), 1, SD_MAX_PARTITIONS,
     "partitions of auto-created streams (default 1)"},
    {"default_retention_hours", K_U64, F(engine.defaults.retention_hours), 0, 24u * 365 * 1000,
     "retention_hours of streams created without one (default 24, 0 = unlimited)"},
    {"default_retention_bytes", K_U64, F(engine.defaults.retention_bytes), 0, UINT64_MAX,
     "retention_bytes per partition by default (default 0 = unlimited)"},
    {"default_max_events", K_U64, F(engine.defaults.max_events), 0, UINT64_MAX,
     "max_events per partition by default (default 0 = unlimited)"},
    {"retention_check_ms", K_U64, F(engine.retention_check_ms), 10, 86400000,
     "how often retention runs (default 5000)"},
    {"dedup_window_ms", K_U64, F(engine.dedup_window_ms), 0, 86400000,
     "window in which a repeated event id is a duplicate (default 120000)"},
    {"max_streams", K_U32, F(engine.max_streams), 0, UINT32_MAX, "most streams (default 10000, 0 = unlimited)"},
    {"max_consumers_tracked", K_U32, F(engine.max_consumers_tracked), 0, UINT32_MAX,
     "consumer positions kept per stream (default 10000)"},
    {"max_event_bytes", K_U32, F(engine.max_event_bytes), 64, 64u << 20,
     "largest event JSON object as received (default 1 MiB)"},
    {"max_body_bytes", K_U64, F(max_body_bytes), 1024, 1u << 30, "largest request body (default 16 MiB)"},
    {"max_batch_events", K_U32, F(max_batch_events), 1, 1000000, "most events in one publish (default 10000)"},
    {"max_connections", K_U32, F(max_connections), 1, 1000000, "most open connections (default 10000)"},
    {"per_ip_connections", K_U32, F(per_ip_connections), 0, 1000000,
     "most connections from one address (default 0 = no limit)"},
    {"connection_timeout_s", K_U32, F(connection_timeout_s), 1, 86400,
     "idle connection timeout in seconds (default 90)"},
    {"connection_memory_bytes", K_U32, F(connection_memory_bytes), 4096, 1u << 20,
     "memory per HTTP connection, bounding the request line and headers (default 8192)"},
    {"header_timeout_s", K_U32, F(header_timeout_s), 1, 86400,
     "time a new connection has to send its first request, in seconds (default 10)"},
    {"max_json_depth", K_U32, F(max_json_depth), 2, 1000, "deepest nesting of request JSON (default 32)"},
    {"max_wait_ms", K_U32, F(max_wait_ms), 0, 3600000, "longest long poll (default 60000)"},
    {"max_waiting", K_U32, F(max_waiting), 1, 10000000,
     "long polls and publishes waiting at once (default 100000)"},
    {"ws_ping_interval_ms", K_U32, F(ws_ping_interval_ms), 100, 3600000,
     "WebSocket ping period; a peer that misses one is dropped (default 30000)"},
    {"ws_window_bytes", K_U32, F(ws_window_bytes), 4096, 1u << 30,
     "unsent bytes kept per WebSocket connection before it stops reading ahead (default 262144)"},
    {"ws_max_message_bytes", K_U32, F(ws_max_message_bytes), 125, 16u << 20,
     "largest message a WebSocket client may send (default 65536)"},
    {"auto_create_streams", K_BOOL, F(auto_create_streams), 0, 0, "publish creates missing streams (default true)"},
    {"allowed_origins", K_STR, F(allowed_origins), 0, 0,
     "comma-separated browser origins allowed besides same-host ones, * for any (default none)"},
    {"log_level", K_STR, F(log_level), 0, 0, "debug | info | warn | error (default info)"},
    {"log_format", K_STR, F(log_format), 0, 0, "text | json: log lines as text or JSON objects (default text)"},
    {"access_log", K_BOOL, F(access_log), 0, 0, "on | off: one log line per request (default off)"},
    {"key", K_LIST, F(keys), 0, 0,
     "an API key, repeatable: NAME sha256:HEX PERMS:PATTERN ... (see docs/security.md; default none)"},
    {"keys_file", K_STR, F(keys_file), 0, 0, "file of more key lines, re-read on SIGHUP (default none)"},
    {"protected_mode", K_BOOL, F(protected_mode), 0, 0,
     "without keys, refuse to listen on a non-loopback host (default true)"},
    {"tls_cert_file", K_STR, F(tls_cert_file), 0, 0, "PEM certificate chain: serve HTTPS and WSS (default none)"},
    {"tls_key_file", K_STR, F(tls_key_file), 0, 0, "PEM private key of tls_cert_file (default none)"},
    {"verify_on_start", K_BOOL, F(engine.verify_on_start), 0, 0,
     "check every stored record's checksum in the background after start-up (default true)"},
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

void sd_config_default(struct sd_config *c) {
  memset(c, 0, sizeof(*c));
  snprintf(c->host, sizeof(c->host), "127.0.0.1");
  c->port = 15500;
  snprintf(c->data_dir, sizeof(c->data_dir), "./streamd-data");
  sd_engine_options_default(&c->engine);
  c->max_body_bytes = 16u << 20;
  c->max_batch_events = 10000;
  c->max_connections = 10000;
  c->per_ip_connections = 0;
  c->connection_timeout_s = 90;
  c->header_timeout_s = 10;
  c->connection_memory_bytes = 8192;
  c->max_json_depth = 32;
  c->max_wait_ms = 60000;
  c->max_waiting = 100000;
  c->auto_create_streams = 1;
  c->ws_ping_interval_ms = 30000;
  c->ws_window_bytes = 256u * 1024u;
  c->ws_max_message_bytes = 64u * 1024u;
  snprintf(c->log_level, sizeof(c->log_level), "info");
  snprintf(c->log_format, sizeof(c->log_format), "text");
  c->protected_mode = 1;
}

static const struct key *find_key(const char *name) {
  for (size_t i = 0; i < NKEYS; i++)
    if (strcmp(keys[i].name, name) == 0) return &keys[i];
  return NULL;
}

int sd_config_set(struct sd_config *c, const char *name, const char *value, char *err, size_t cap) {
  const struct key *k = find_key(name);
  char *field;
  if (k == NULL) {
    snprintf(err, cap, "unknown configuration key '%s'", name);
    return SD_E_INVALID_PARAMETER;
  }
  field = (char *)c + k->off;
  switch (k->kind) {
  case K_STR:
    if (strlen(value) >= k->size) {
      snprintf(err, cap, "%s: value too long (at most %zu bytes)", name, k->size - 1);
      return SD_E_INVALID_PARAMETER;
    }
    memcpy(field, value, strlen(value) + 1);
    return 0;
  case K_LIST: {
    /* Each value is appended as one line. */
    size_t used = strlen(field), n = strlen(value);
    if (strchr(value, '\n') != NULL || used + n + 2 > k->size) {
      snprintf(err, cap, "%s: too many or too long values (at most %zu bytes in all; use a file)", name, k->size - 1);
      return SD_E_INVALID_PARAMETER;
    }
    memcpy(field + used, value, n);
    memcpy(field + used + n, "\n", 2);
    return 0;
  }
  case K_BOOL:
    if (strcmp(value, "true") == 0 || strcmp(value, "yes") == 0 || strcmp(value, "1") == 0 ||
        strcmp(value, "on") == 0)
      *(int *)field = 1;
    else if (strcmp(value, "false") == 0 || strcmp(value, "no") == 0 || strcmp(value, "0") == 0 ||
             strcmp(value, "off") == 0)
      *(int *)field = 0;
    else {
      snprintf(err, cap, "%s: expected true or false, got '%s'", name, value);
      return SD_E_INVALID_PARAMETER;
    }
    return 0;
  case K_DURABILITY:
    if (strcmp(value, "always") == 0)
      *(enum sd_durability *)field = SD_DURABILITY_ALWAYS;
    else if (strcmp(value, "interval") == 0)
      *(enum sd_durability *)field = SD_DURABILITY_INTERVAL;
    else if (strcmp(value, "never") == 0)
      *(enum sd_durability *)field = SD_DURABILITY_NEVER;
    else {
      snprintf(err, cap, "%s: expected always, interval or never, got '%s'", name, value);
      return SD_E_INVALID_PARAMETER;
    }
    return 0;
  default: {
    char *end;
    errno = 0;
    if (value[0] == '-' || value[0] == '\0') goto bad_number;
    unsigned long long v = strtoull(value, &end, 10);
    if (errno != 0 || *end != '\0') goto bad_number;
    if (v < k->min || v > k->max) {
      snprintf(err, cap, "%s: %llu is outside %llu..%llu", name, v, (unsigned long long)k->min,
               (unsigned long long)k->max);
      return SD_E_INVALID_PARAMETER;
    }
    if (k->kind == K_U16)
      *(uint16_t *)field = (uint16_t)v;
    else if (k->kind == K_U32)
      *(uint32_t *)field = (uint32_t)v;
    else
      *(uint64_t *)field = (uint64_t)v;
    return 0;
  bad_number:
    snprintf(err, cap, "%s: expected a whole number, got '%s'", name, value);
    return SD_E_INVALID_PARAMETER;
  }
  }
}

char *sd_config_trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) s[--n] = '\0';
  return s;
}

int sd_config_load(struct sd_config *c, const char *path, char *err, size_t cap) {
  FILE *f = fopen(path, "r");
  char line[4096];
  int lineno = 0, rc = 0;
  if (f == NULL) {
    snprintf(err, cap, "cannot read config file %s: %s", path, strerror(errno));
    return -errno;
  }
  while (fgets(line, sizeof(line), f) != NULL) {
    lineno++;
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *s = sd_config_trim(line);
    if (*s == '\0') continue;
    char *eq = strchr(s, '=');
    if (eq == NULL) {
      snprintf(err, cap, "%s:%d: expected 'key = value'", path, lineno);
      rc = SD_E_INVALID_PARAMETER;
      break;
    }
    *eq = '\0';
    char msg[512];
    if ((rc = sd_config_set(c, sd_config_trim(s), sd_config_trim(eq + 1), msg, sizeof(msg))) != 0) {
      snprintf(err, cap, "%s:%d: %s", path, lineno, msg);
      break;
    }
  }
  fclose(f);
  return rc;
}

static void usage(void) {
  printf("usage: streamd [--config FILE] [--host ADDR] [--port N] [--data-dir DIR]\n"
         "               [--durability always|interval|never] [--KEY VALUE ...] [--help] [--version]\n\n"
         "Flags override the config file, which overrides the defaults.  Every config key is a flag:\n\n");
  for (size_t i = 0; i < NKEYS; i++) {
    char flag[64];
    size_t j;
    for (j = 0; keys[i].name[j] && j < sizeof(flag) - 1; j++) flag[j] = keys[i].name[j] == '_' ? '-' : keys[i].name[j];
    flag[j] = '\0';
    printf("  --%-26s %s\n", flag, keys[i].help);
  }
  printf("  --%-26s %s\n", "config", "read settings from FILE (\"key = value\" lines)");
  printf("  --%-26s %s\n", "hash-key KEY", "print the sha256: hash of KEY for a key line, and exit (- reads stdin)");
}

int sd_config_from_args(struct sd_config *c, int argc, char **argv, char *err, size_t cap) {
  int rc;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage();
      return 1;
    }
    if (strcmp(argv[i], "--version") == 0) {
      printf("streamd %s\n", STREAMD_VERSION);
      return 1;
    }
  }
  /* The config file first, so that flags win wherever they stand. */
  for (int i = 1; i < argc; i++) {
    const char *file;
    if (strncmp(argv[i], "--config=", 9) == 0) {
      file = argv[i] + 9;
    } else if (strcmp(argv[i], "--config") == 0) {
      if (i + 1 >= argc) {
        snprintf(err, cap, "--config needs a file name");
        return SD_E_INVALID_PARAMETER;
      }
      file = argv[++i];
    } else {
      continue;
    }
    snprintf(c->config_file, sizeof(c->config_file), "%s", file);
    if ((rc = sd_config_load(c, file, err, cap)) != 0) return SD_E_INVALID_PARAMETER;
  }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strncmp(a, "--", 2) != 0) {
      snprintf(err, cap, "unexpected argument '%s' (see --help)", a);
      return SD_E_INVALID_PARAMETER;
    }
    char name[64], value_buf[8];
    const char *value;
    const char *eq = strchr(a, '=');
    size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
    if (n >= sizeof(name)) n = sizeof(name) - 1;
    for (size_t j = 0; j < n; j++) name[j] = a[2 + j] == '-' ? '_' : a[2 + j];
    name[n] = '\0';
    if (eq) {
      value = eq + 1;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      snprintf(err, cap, "%s needs a value", a);
      return SD_E_INVALID_PARAMETER;
    }
    (void)value_buf;
    if (strcmp(name, "config") == 0) continue;
    if ((rc = sd_config_set(c, name, value, err, cap)) != 0) return rc;
  }
  c->engine.data_dir = c->data_dir;
  return 0;
}

/* Read from the configuration at each use, so a reload may change them. */
static const char *const live_keys[] = {
    "log_level",        "log_format",       "access_log",  "allowed_origins", "max_body_bytes",
    "max_batch_events", "max_json_depth",   "max_wait_ms", "max_waiting",     "ws_window_bytes",
};

static int is_live(const char *name) {
  for (size_t i = 0; i < sizeof(live_keys) / sizeof(live_keys[0]); i++)
    if (strcmp(live_keys[i], name) == 0) return 1;
  return 0;
}

void sd_config_apply_live(struct sd_config *running, const struct sd_config *fresh, char *restart, size_t cap) {
  size_t used = 0;
  if (cap) restart[0] = '\0';
  for (size_t i = 0; i < NKEYS; i++) {
    const struct key *k = &keys[i];
    if (k->kind == K_LIST || strcmp(k->name, "keys_file") == 0) continue;
    char *dst = (char *)running + k->off;
    const char *src = (const char *)fresh + k->off;
    if (memcmp(dst, src, k->size) == 0) continue;
    if (k->kind == K_STR && strcmp(dst, src) == 0) continue; /* same text, different bytes past the NUL */
    if (is_live(k->name)) {
      memcpy(dst, src, k->size);
    } else if (used + strlen(k->name) + 3 < cap) {
      used += (size_t)snprintf(restart + used, cap - used, "%s%s", used ? ", " : "", k->name);
    }
  }
}
