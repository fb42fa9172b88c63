"""Targets: what an engine hands each decoded batch to.

A :class:`FileTarget` is one sink (or memory, for the API) plus its ``.errors.tsv``; a
:class:`StoreTarget` routes each batch to its shard's writer and commits the shard on its last
batch. Both take the same calls, so one batch loop serves files, stores, ``--shard I/N`` and Ray.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .formats import open_sink
from .sinks import ErrorLog, MemorySink
from .store import FeatureStore, ShardWriter


class FileTarget:
    """A single-file sink plus its ``.errors.tsv`` (or memory, when ``out`` is None)."""

    total_inputs: Optional[int] = None  # set by the batch loop at the end of the input

    def __init__(self, out: Optional[str]) -> None:
        self.sink = open_sink(out) if out is not None else MemorySink()  # a bad extension fails here, early
        self.error_log = ErrorLog(out)

    def open(self, dim: int, dtype: np.dtype) -> None:
        self.sink.open(dim, dtype)

    def write(self, shard, ids, paths, rows) -> int:
        rejected = self.sink.write(ids, paths, rows) or []
        self.error_log.write([(ids[i], paths[i], reason) for i, reason in rejected])
        return len(ids) - len(rejected)

    def errors(self, shard, rows) -> None:
        self.error_log.write(rows)

    def end_shard(self, shard, n_inputs: int) -> None:
        pass

    def close(self) -> None:
        self.sink.close()
        self.error_log.close()

    def abort(self) -> None:
        self.sink.abort()
        self.error_log.abort()

    @property
    def n_failed(self) -> int:
        return self.error_log.count

    @property
    def errors_path(self) -> Optional[str]:
        log = self.error_log
        return str(log.path) if log.path and log.count else None


class StoreTarget:
    """Routes each batch to its shard's writer and commits the shard on its last batch."""

    total_inputs: Optional[int] = None  # set by the batch loop at the end of the input

    def __init__(self, store: FeatureStore, plan: Optional[str] = None, base: int = 0) -> None:
        # plan: the update plan (a Parquet file, one row group per shard, shard ``base`` first) whose ids and
        # fingerprints each shard records as its inventory
        self.store, self.plan, self.base = store, plan, base
        self.writers: dict[int, ShardWriter] = {}
        self.n_failed = 0
        self.n_written = 0
        self.shards_written = 0

    def open(self, dim: int, dtype: np.dtype) -> None:
        pass

    def _writer(self, shard: int) -> ShardWriter:
        if shard not in self.writers:
            writer = self.store.shard_writer(shard)
            if self.plan is not None:
                import pyarrow.parquet as pq

                group = pq.ParquetFile(self.plan).read_row_group(shard - self.base, columns=["id", "fp"])
                writer.inputs = list(zip(group.column("id").to_pylist(), group.column("fp").to_pylist()))
            self.writers[shard] = writer
        return self.writers[shard]

    def write(self, shard, ids, paths, rows) -> int:
        self._writer(shard).write(ids, paths, rows)
        self.n_written += len(ids)
        return len(ids)

    def errors(self, shard, rows) -> None:
        if rows:
            self._writer(shard).errors(rows)
            self.n_failed += len(rows)

    def end_shard(self, shard, n_inputs: int) -> None:
        writer = self._writer(shard)
        writer.n_inputs = n_inputs
        writer.commit()
        del self.writers[shard]
        self.shards_written += 1

    def close(self) -> None:
        for writer in self.writers.values():  # cannot happen: every shard ends with a last batch
            writer.abort()

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()

    @property
    def errors_path(self) -> Optional[str]:
        return str(self.store.shard_dir / "*.errors.tsv") if self.n_failed else None
