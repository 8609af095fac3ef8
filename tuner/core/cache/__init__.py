"""An on-disk cache of frozen-prefix features, shared by trials, workers and reruns.

A trial that freezes the first k encoder blocks pushes every augmented view through the same
frozen computation as the trial before it. The cache keeps those outputs: one *feature set*
per key (everything the features depend on, hashed), one file per entry in it. It knows
nothing of models or studies; `tuner.core.train` decides what the keys and entries are.

- `FeatureCache`: the folder (size limit, least-recently-used eviction, usage report).
- `FeatureSet`: one key's entries (atomic writes, reads that never return a stale or torn file).
- `Codec`: how entries are stored (float16, float32, or int8 with per-row scales).
- `fingerprint_tensors`, `key_digest`: content hashes for keys.
"""

from tuner.core.cache._codec import Codec
from tuner.core.cache._fingerprint import fingerprint_tensors, key_digest
from tuner.core.cache._folder import DEFAULT_LIMIT, CacheUsage, FeatureCache, parse_size
from tuner.core.cache._set import FeatureSet

__all__ = [
    "DEFAULT_LIMIT",
    "CacheUsage",
    "Codec",
    "FeatureCache",
    "FeatureSet",
    "fingerprint_tensors",
    "key_digest",
    "parse_size",
]
