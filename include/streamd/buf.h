/*
 * buf.h - growable byte buffer.  Owned by whoever embeds it; reused across
 * requests (sd_buf_reset keeps the allocation), freed with sd_buf_free.
 */
#ifndef STREAMD_BUF_H
#define STREAMD_BUF_H

#include <stddef.h>
#include <stdint.h>

struct sd_buf {
  char *data;
  size_t len;
  size_t cap;
};

/* Ensures room for `extra` more bytes.  0 or -ENOMEM. */
int sd_buf_reserve(struct sd_buf *b, size_t extra);
int sd_buf_append(struct sd_buf *b, const void *p, size_t n);
int sd_buf_printf(struct sd_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends a string literal (its length known at compile time). */
#define SD_BUF_LIT(b, lit) sd_buf_append((b), (lit), sizeof(lit) - 1)

/* Writes v in decimal at dst (room for 20 bytes) and returns its length:
 * the per-event numbers are formatted without printf. */
size_t sd_fmt_u64(char *dst, uint64_t v);
/* Appends v in decimal.  0 or -ENOMEM. */
int sd_buf_u64(struct sd_buf *b, uint64_t v);

static inline void sd_buf_reset(struct sd_buf *b) { b->len = 0; }
/* Frees the storage; the buffer is empty and reusable afterwards. */
void sd_buf_free(struct sd_buf *b);

#endif
