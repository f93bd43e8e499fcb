/*
 * list.h - intrusive doubly linked list (circular, with a sentinel head).
 * The node is embedded in the owner's struct; no allocation ever.
 */
#ifndef STREAMD_LIST_H
#define STREAMD_LIST_H

#include <stddef.h>

struct sd_list {
  struct sd_list *prev, *next;
};

#define SD_CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr) - offsetof(type, field)))

static inline void sd_list_init(struct sd_list *h) { h->prev = h->next = h; }
static inline int sd_list_empty(const struct sd_list *h) { return h->next == h; }
static inline int sd_list_linked(const struct sd_list *n) { return n->next != NULL && n->next != n; }

static inline void sd_list_push_back(struct sd_list *h, struct sd_list *n) {
  n->prev = h->prev;
  n->next = h;
  h->prev->next = n;
  h->prev = n;
}

/* Unlinks n and leaves it self-linked, so removing twice is harmless. */
static inline void sd_list_remove(struct sd_list *n) {
  if (n->next == NULL) return;
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->prev = n->next = n;
}

/* Moves every node of src to the end of dst; src ends empty. */
static inline void sd_list_splice(struct sd_list *dst, struct sd_list *src) {
  if (sd_list_empty(src)) return;
  src->next->prev = dst->prev;
  dst->prev->next = src->next;
  src->prev->next = dst;
  dst->prev = src->prev;
  sd_list_init(src);
}

#endif
