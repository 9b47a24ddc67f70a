#ifndef SLUICE_DKIM_KEY_CACHE_H
#define SLUICE_DKIM_KEY_CACHE_H

#include <stddef.h>

/// Public keys libopendkim got from the cache instead of decoding them again.
size_t sluice_dkim_key_cache_hits(void);

/// Keys decoded and kept.
size_t sluice_dkim_key_cache_misses(void);

#endif
