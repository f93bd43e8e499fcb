/*
 * config.h - server configuration: built-in defaults, overridden by the
 * config file, overridden by command-line flags.
 *
 * The file holds "key = value" lines; '#' starts a comment.  Every key is
 * also a flag: --key-with-dashes VALUE.  docs/configuration.md lists them.
 */
#ifndef STREAMD_CONFIG_H
#define STREAMD_CONFIG_H

#include <stdint.h>

#include "streamd/engine.h"

struct sd_config {
  char host[64];
  uint16_t port;
  char data_dir[1024];
  struct sd_engine_options engine;  /* engine.data_dir points at data_dir */
  uint64_t max_body_bytes;          /* largest request body */
  uint32_t max_batch_events;        /* events in one publish */
  uint32_t max_connections;         /* open HTTP connections */
  uint32_t per_ip_connections;      /* 0 = no per-address limit */
  uint32_t connection_timeout_s;    /* idle connection timeout */
  uint32_t connection_memory_bytes; /* libmicrohttpd's per-connection pool: request head + response head */
  uint32_t header_timeout_s;        /* time for a new connection's first request */
  uint32_t max_json_depth;          /* nesting depth of request JSON */
  uint32_t max_wait_ms;             /* long-poll cap */
  uint32_t max_waiting;             /* long polls and pending publishes at once */
  uint32_t ws_ping_interval_ms;     /* WebSocket keep-alive ping period */
  uint32_t ws_window_bytes;         /* unsent bytes per WebSocket connection */
  uint32_t ws_max_message_bytes;    /* largest message a WebSocket client may send */
  int auto_create_streams;
  char allowed_origins[2048];       /* comma-separated origins, "*" for any */
  char log_level[16];
  char log_format[16];              /* text | json */
  int access_log;                   /* one log line per request */
  char config_file[1024];
  char keys[16384];                 /* `key` lines, each ended by '\n' */
  char keys_file[1024];             /* more key lines, "" for none */
  int protected_mode;               /* no keys: loopback hosts only */
  char tls_cert_file[1024];         /* "" for plain HTTP */
  char tls_key_file[1024];
};

/* Fills c with the built-in defaults. */
void sd_config_default(struct sd_config *c);

/* Sets one key from its text value.  0, or SD_E_INVALID_PARAMETER with a
 * sentence in err (cap bytes) naming the key. */
int sd_config_set(struct sd_config *c, const char *key, const char *value, char *err, size_t cap);

/* Reads a config file.  0, -errno, or SD_E_INVALID_PARAMETER (err says
 * which line). */
int sd_config_load(struct sd_config *c, const char *path, char *err, size_t cap);

/* Parses argv: --config FILE is read first, then the other flags apply on
 * top.  Returns 0, 1 when --help or --version was printed (exit 0), or
 * SD_E_INVALID_PARAMETER with err set. */
int sd_config_from_args(struct sd_config *c, int argc, char **argv, char *err, size_t cap);

/* Strips blanks (and a line's CR/LF) from both ends of s, in place;
 * returns the first kept byte.  The config and key-file parsers share it. */
char *sd_config_trim(char *s);

/* A reload: copies into `running` the keys that apply to a running server
 * (logging, origins, request limits; docs/configuration.md lists them)
 * from `fresh`, and writes into `restart` (cap bytes) the comma-separated
 * names of the other keys whose values differ, which take effect at the
 * next start.  API keys are not among either: the caller reloads them. */
void sd_config_apply_live(struct sd_config *running, const struct sd_config *fresh, char *restart, size_t cap);

#endif
