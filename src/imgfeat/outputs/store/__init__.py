"""The feature store: a directory of fixed-size shards for jobs too large for one file.

    features/
      manifest.json              identity of the run + the shard list (refreshed after each run)
      shards/000012.npy          vectors of input records 12*S .. 13*S-1 that decoded
      shards/000012.ids.parquet  their ids and paths
      shards/000012.errors.tsv   id<TAB>path<TAB>reason of the records that did not
      shards/000012.inputs.parquet  its inventory: each input's id, fingerprint and vector row
      shards/000012.done.json    row counts, sizes, sha256 and xxh3 of the shard's files, written LAST
      shards/000012.dead.g3.npy  inputs of the shard removed or superseded as of generation 3

A shard's files are written under temporary names and renamed; the done-marker goes last,
so after ``kill -9`` at any moment a shard is either complete (marker present, checksums
match) or absent and redone. The manifest publishes a generation: the segments readers see,
each with its files' sizes and checksums, which every reader checks (once per file state)
before it hands a vector on (``integrity``); a damaged shard is re-extracted from its images
by ``imgfeat repair`` or a rerun (``engines.update``). A run whose identity (model, layer,
weights, preprocessing, input, shard size...) differs is refused. Several writers
(``--shard I/N``, Ray actors) may fill one store: each shard is written by exactly one of them.
"""

import importlib

_LAZY = {"Damage": ".integrity", "StoreDamagedError": ".integrity", "empty_inventory": ".inventory",
         "inputs_schema": ".inventory", "write_inputs": ".inventory", "DEFAULT_SHARD_SIZE": ".layout", "FORMAT": ".layout",
         "IDENTITY": ".layout", "LOCK": ".layout", "MANIFEST": ".layout", "StoreLockedError": ".layout",
         "StoreMismatchError": ".layout", "is_store_path": ".layout", "StoreMatrix": ".matrix",
         "query_weights": ".queries", "FeatureStore": ".store", "ShardWriter": ".writer"}


def __getattr__(name: str):
    """The names below imported on first use (PEP 562): ``layout`` (what tells a store path, read by the options the
    command line declares) does not pay for NumPy."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
