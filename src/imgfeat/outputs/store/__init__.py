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

from .integrity import Damage, StoreDamagedError
from .inventory import empty_inventory, inputs_schema, write_inputs
from .layout import DEFAULT_SHARD_SIZE, FORMAT, IDENTITY, LOCK, MANIFEST, StoreLockedError, StoreMismatchError, \
    is_store_path
from .matrix import StoreMatrix
from .queries import query_weights
from .store import FeatureStore
from .writer import ShardWriter

__all__ = ["DEFAULT_SHARD_SIZE", "Damage", "StoreDamagedError", "FORMAT", "IDENTITY", "LOCK", "MANIFEST",
           "FeatureStore", "ShardWriter",
           "StoreLockedError", "StoreMatrix", "StoreMismatchError", "empty_inventory", "inputs_schema",
           "is_store_path", "query_weights", "write_inputs"]
