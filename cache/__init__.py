"""`sr_augment.cache`: the on-disk cache of generated SR images (see `SRCache`)."""

from sr_augment.cache.codec import CODECS, DamagedEntry
from sr_augment.cache.disk import CacheReadOnly, CacheWriteError
from sr_augment.cache.filesystem import NetworkFilesystemWarning, default_cache_dir
from sr_augment.cache.keys import CACHE_FORMAT_VERSION
from sr_augment.cache.results import CacheMiss, CacheStats, EntryRequest
from sr_augment.cache.rows import DatabaseDamaged, UntrustedRow
from sr_augment.cache.store import DEFAULT_SIZE_LIMIT, SRCache

__all__ = ["CACHE_FORMAT_VERSION", "CODECS", "CacheMiss", "CacheReadOnly", "CacheStats", "CacheWriteError", "DatabaseDamaged",
           "UntrustedRow", "DEFAULT_SIZE_LIMIT", "DamagedEntry",
           "EntryRequest", "NetworkFilesystemWarning", "SRCache", "default_cache_dir"]
