"""``ShardWriter``: one shard's files written under temporary names, made visible by ``commit`` (the done-marker
last)."""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from ...files import commit, error_row, fsync_path, npy_header, partial_path, stale_partials, write_atomic, \
    writer_tag
from .integrity import file_entry
from .inventory import write_inputs


class ShardWriter:
    """Streams one shard's vectors to a temporary .npy; ``commit`` makes the shard visible."""

    def __init__(self, store, index: int) -> None:  # store: the FeatureStore it writes into
        self.store, self.index = store, index
        self.name = f"{index:06d}"
        folder = store.shard_dir
        for stale in stale_partials(folder, f"{self.name}."):  # left by a killed writer of this shard
            stale.unlink(missing_ok=True)
        tag = writer_tag()
        self.final = {"vectors": folder / f"{self.name}.npy", "ids": folder / f"{self.name}.ids.parquet",
                      "errors": folder / f"{self.name}.errors.tsv", "inputs": folder / f"{self.name}.inputs.parquet"}
        self.tmp = {k: partial_path(p, tag) for k, p in self.final.items()}
        self.dim, self.dtype = store.manifest["dim"], np.dtype(store.manifest["dtype"])
        self._vec = open(self.tmp["vectors"], "wb")
        self._vec.write(npy_header(0, self.dim, self.dtype))
        self._err = open(self.tmp["errors"], "w", encoding="utf-8", newline="\n")
        self.ids: list[str] = []
        self.paths: list[str] = []
        self.error_ids: list[str] = []
        self.n_errors = 0
        self.n_inputs = 0
        # (id, fingerprint) of every input record of this shard in input order, when the run knows them (an
        # update plan); written as NNNNNN.inputs.parquet, the store's inventory for the next diff
        self.inputs: Optional[list[tuple[str, str]]] = None

    def write(self, ids: Sequence[str], paths: Sequence[str], features: np.ndarray) -> None:
        self._vec.write(np.ascontiguousarray(features, dtype=self.dtype).tobytes())
        self.ids.extend(ids)
        self.paths.extend(paths)

    def errors(self, rows: Sequence[tuple[str, str, str]]) -> None:
        self._err.write("".join(error_row(row) for row in rows))
        self.error_ids.extend(str(row[0]) for row in rows)
        self.n_errors += len(rows)

    def commit(self) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._vec.seek(0)
        self._vec.write(npy_header(len(self.ids), self.dim, self.dtype))
        for fh in (self._vec, self._err):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        pq.write_table(pa.table({"id": pa.array(self.ids, pa.string()), "path": pa.array(self.paths, pa.string())}),
                       self.tmp["ids"])
        fsync_path(self.tmp["ids"])
        keys = ["vectors", "ids", "errors"]
        if self.inputs is not None:
            keys.append("inputs")
            write_inputs(self.tmp["inputs"], self.inputs, self.ids)
        files = {}
        for key in keys:
            files[key] = {**file_entry(self.tmp[key]), "name": self.final[key].name}
            commit(self.tmp[key], self.final[key])
        self.store.verified.remember(self.final[k] for k in keys)  # checked as written: the first read pays a stat
        marker = {"shard": self.index, "rows": len(self.ids), "errors": self.n_errors,
                  "inputs": self.n_inputs, "first_input": self.index * self.store.manifest["shard_size"],
                  "files": files}
        write_atomic(self.store.marker(self.index), json.dumps(marker, indent=1).encode())
        return marker

    def abort(self) -> None:
        for fh in (self._vec, self._err):
            fh.close()
        for p in self.tmp.values():
            p.unlink(missing_ok=True)
