/*
 * crc.h - CRC32C (Castagnoli), hardware accelerated by ISA-L.
 * sd_crc32c(p, n, 0) starts a checksum; passing a previous result as crc
 * continues it, so a checksum over pieces equals one over their
 * concatenation.
 */
#ifndef STREAMD_CRC_H
#define STREAMD_CRC_H

#include <isa-l/crc.h>
#include <stddef.h>
#include <stdint.h>

static inline uint32_t sd_crc32c(const void *p, size_t n, uint32_t crc) {
  return ~crc32_iscsi((unsigned char *)p, (int)n, ~crc);
}

#endif
