"""`sr_augment.cache`: the on-disk cache of generated SR images (see `SRCache`)."""

from sr_augment.cache.codec import CODECS, DamagedEntry
from sr_augment.cache.keys import CACHE_FORMAT_VERSION
from sr_augment.cache.disk import CacheWriteError
from sr_augment.cache.store import DEFAULT_SIZE_LIMIT, CacheMiss, CacheStats, SRCache, default_cache_dir

__all__ = ["CACHE_FORMAT_VERSION", "CODECS", "CacheMiss", "CacheStats", "CacheWriteError", "DEFAULT_SIZE_LIMIT", "DamagedEntry",
           "SRCache", "default_cache_dir"]
