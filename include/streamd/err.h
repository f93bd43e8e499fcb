/*
 * err.h - the one error space of streamd.
 *
 * Every function that can fail returns int: 0 on success, -errno for a
 * system error, or one of the SD_E_* codes below (a reserved band under
 * -10000, never colliding with errno values).  The X-macro list is the
 * single place where a code gets its machine name (the "error" field of
 * the HTTP error JSON), its HTTP status and its default message.
 */
#ifndef STREAMD_ERR_H
#define STREAMD_ERR_H

/*      name                 code    http  machine code             message */
#define SD_ERR_MAP(X)                                                                                   \
  X(STREAM_NOT_FOUND,      -10001, 404, "stream_not_found",       "stream does not exist")              \
  X(STREAM_EXISTS,         -10002, 409, "stream_exists",          "stream already exists")              \
  X(CONFIG_MISMATCH,       -10003, 409, "stream_config_mismatch", "stream exists with other settings")  \
  X(INVALID_NAME,          -10004, 400, "invalid_name",           "invalid name")                       \
  X(INVALID_PARAMETER,     -10005, 400, "invalid_parameter",      "invalid parameter")                  \
  X(INVALID_JSON,          -10006, 400, "invalid_json",           "malformed JSON body")                \
  X(INVALID_EVENT,         -10007, 400, "invalid_event",          "invalid event")                      \
  X(TOO_LARGE,             -10008, 413, "payload_too_large",      "payload too large")                  \
  X(OFFSET_OUT_OF_RANGE,   -10009, 416, "offset_out_of_range",    "offset removed by retention")        \
  X(READ_ONLY,             -10010, 503, "partition_read_only",    "partition stopped accepting writes") \
  X(CORRUPT,               -10011, 500, "corrupt_record",         "stored record failed its checksum")  \
  X(SHUTTING_DOWN,         -10012, 503, "shutting_down",          "server is shutting down")            \
  X(TOO_MANY_STREAMS,      -10013, 507, "too_many_streams",       "stream limit reached")               \
  X(NOT_FOUND,             -10014, 404, "not_found",              "no such route")                      \
  X(METHOD_NOT_ALLOWED,    -10015, 405, "method_not_allowed",     "method not allowed on this route")   \
  X(EVENT_TOO_LARGE,       -10016, 413, "event_too_large",        "event larger than max_event_bytes")  \
  X(BATCH_TOO_LARGE,       -10017, 413, "batch_too_large",        "batch has too many events")          \
  X(STREAM_DELETED,        -10018, 410, "stream_deleted",         "stream was deleted")                 \
  X(UNSUPPORTED_MEDIA,     -10019, 415, "unsupported_media_type", "body must be application/json")      \
  X(BUSY,                  -10020, 503, "busy",                   "too many requests waiting")          \
  X(CORRUPT_FILE,          -10021, 500, "corrupt_file",           "a data file is damaged")            \
  X(INVALID_HANDSHAKE,     -10022, 400, "invalid_handshake",      "not a valid WebSocket upgrade")      \
  X(FORBIDDEN_ORIGIN,      -10023, 403, "forbidden_origin",       "Origin not allowed")                \
  X(GROUP_NOT_FOUND,       -10024, 404, "group_not_found",        "group does not exist")               \
  X(GROUP_EXISTS,          -10025, 409, "group_exists",           "group already exists")               \
  X(CONSUMER_NOT_FOUND,    -10026, 404, "consumer_not_found",     "consumer is not in the group")       \
  X(CONSUMER_REQUIRED,     -10027, 400, "consumer_required",      "a consumer name is required")        \
  X(UNAUTHORIZED,          -10028, 401, "unauthorized",           "an API key is required")             \
  X(FORBIDDEN,             -10029, 403, "forbidden",              "the API key lacks the permission")

enum {
#define SD_ERR_ENUM(name, code, http, mcode, msg) SD_E_##name = (code),
  SD_ERR_MAP(SD_ERR_ENUM)
#undef SD_ERR_ENUM
};

/* Human-readable text for any code (SD_E_* or -errno).  Never NULL; the
 * string is static. */
const char *sd_strerror(int err);

/* Machine code for the "error" field of an error response: the SD_E_*
 * name for our codes, "insufficient_storage" for -ENOSPC/-EDQUOT,
 * "io_error" for other -errno values.  Static string. */
const char *sd_err_code(int err);

/* HTTP status matching err: the table above; 507 for -ENOSPC/-EDQUOT,
 * 500 for any other -errno. */
int sd_err_http_status(int err);

#endif
