"""Targets: what an engine hands each decoded batch to.

A :class:`FileTarget` is one sink (or memory, for the API) plus its ``.errors.tsv``; a
:class:`StoreTarget` routes each batch to its shard's writer and commits the shard on its last
batch. Both take the same calls, so one batch loop serves files, stores, ``--shard I/N`` and Ray.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .formats import open_sink
from .sinks import ErrorLog, MemorySink
from .store import FeatureStore, ShardWriter


class SeenIds:
    """The ids a file output has received, so that a repeated id is skipped (the first occurrence wins, as in a
    store, whose listing drops repeats). Kept as 64-bit string hashes (Python's own, cached on the string; the
    set lives in one process for one run) in a few sorted NumPy runs merged as they grow, like an LSM tree: 8 bytes
    an id, 0.8 GB at 100M, never a Python object per id. Two different ids share a hash with probability about
    n^2 / 2^65 (3e-6 at 10M ids); benchmarks/seen_ids.py measures the cost."""

    RECENT = 1 << 16  # hashes kept in a set before they are sorted into a run

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []
        self._recent: set[int] = set()

    def first(self, ids: Sequence[str]) -> np.ndarray:
        """A boolean per id: True for an id not seen before (in earlier calls or earlier in ``ids``); records them."""
        hashes = [hash(str(i)) for i in ids]
        arr = np.array(hashes, dtype=np.int64)
        old = np.zeros(len(arr), bool)
        for run in self._runs:
            pos = np.minimum(np.searchsorted(run, arr), len(run) - 1)
            old |= run[pos] == arr
        out = np.zeros(len(arr), bool)
        recent = self._recent
        for j, h in enumerate(hashes):
            if not old[j] and h not in recent:
                recent.add(h)
                out[j] = True
        if len(recent) >= self.RECENT:
            self._runs.append(np.sort(np.fromiter(recent, np.int64, len(recent))))
            self._recent = set()
            while len(self._runs) > 1 and 2 * len(self._runs[-1]) >= len(self._runs[-2]):
                last = self._runs.pop()
                self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]))
        return out


class FileTarget:
    """A single-file sink plus its ``.errors.tsv`` (or memory, when ``out`` is None). An id the output already
    holds (a vector or an error row) is skipped and counted in ``n_repeated``: one id, one row, as in a store."""

    total_inputs: Optional[int] = None  # set by the batch loop at the end of the input

    def __init__(self, out: Optional[str]) -> None:
        self.sink = open_sink(out) if out is not None else MemorySink()  # a bad extension fails here, early
        self.error_log = ErrorLog(out)
        self.seen = SeenIds()
        self.n_repeated = 0
        self.n_written = 0  # vectors handed to the sink (what a failure after them loses)

    def open(self, dim: int, dtype: np.dtype) -> None:
        self.sink.open(dim, dtype)

    def write(self, shard, ids, paths, rows) -> int:
        first = self.seen.first(ids)
        if not first.all():
            self.n_repeated += int((~first).sum())
            keep = np.flatnonzero(first)
            ids, paths, rows = [ids[i] for i in keep], [paths[i] for i in keep], rows[keep]
        rejected = self.sink.write(ids, paths, rows) or []
        self.error_log.write([(ids[i], paths[i], reason) for i, reason in rejected])
        self.n_written += len(ids) - len(rejected)
        return len(ids) - len(rejected)

    def errors(self, shard, rows) -> None:
        first = self.seen.first([r[0] for r in rows]) if rows else np.zeros(0, bool)
        self.n_repeated += int((~first).sum())
        self.error_log.write([r for r, f in zip(rows, first) if f])

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
        self.inputs_committed = 0  # inputs of the shards committed by this target

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
        self.inputs_committed += n_inputs

    def close(self) -> None:
        for writer in self.writers.values():  # cannot happen: every shard ends with a last batch
            writer.abort()

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()

    @property
    def errors_path(self) -> Optional[str]:
        return str(self.store.shard_dir / "*.errors.tsv") if self.n_failed else None
