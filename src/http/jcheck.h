/*
 * jcheck.h - a fast, allocation-free acceptance check for publish bodies.
 *
 * jansson builds a tree of every value it parses; for a publish body only
 * the envelope of each event (event, key, headers, id) is needed as values,
 * while "data" is stored byte for byte and only has to be valid JSON.
 * sd_jcheck_publish checks the whole text and copies it to `envelope` with
 * the value of each event's "data" member replaced by null, so that jansson
 * parses only the small rest.
 *
 * The check is conservative: it accepts only texts that jansson, with
 * JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL,
 * accepts too, and says "not decided" for anything else and for the rare
 * shapes it leaves to jansson (escaped keys, objects of many keys, \u
 * escapes of surrogates, numbers with long exponents or mantissas).  The
 * caller then parses the whole text with jansson, which gives the verdict
 * and the error message.
 *
 * Event positions: the top-level object; the elements of a top-level
 * array; the elements of the array under the top-level object's "events".
 */
#ifndef STREAMD_JCHECK_H
#define STREAMD_JCHECK_H

#include <stddef.h>
#include <stdint.h>

#include "streamd/buf.h"

/* 1: accepted, envelope filled; 0: not decided (use jansson on the text);
 * -ENOMEM.  max_depth bounds nesting (deeper: not decided). */
int sd_jcheck_publish(const char *p, size_t n, uint32_t max_depth, struct sd_buf *envelope);

#endif
