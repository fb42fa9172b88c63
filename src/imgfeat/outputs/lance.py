"""A feature store kept in step with a Lance dataset (``imgfeat export STORE --to lance PATH``), where DuckDB, Polars,
pandas, Ray Data and LanceDB read it. The store stays the source of truth; the dataset is a copy that follows it.

The dataset holds ``id`` (Lance's unenforced primary key, so a repeated or concurrent merge never duplicates an
id), ``path``, ``vector`` (a fixed-size list of the store's dtype), one string column per label file, and
``_imgfeat_key``: the store's stable key of the row (``shard << 32 | row``, ``FeatureStore.live_keys``). A changed
image is a new row of the store under the same id, so comparing keys tells the rows to add or update from the rows
unchanged since the last export without reading a vector. The schema metadata ``imgfeat`` records the vectors'
identity (model, layer, pool, weights hash, dim, ...), the store generation exported and a digest of each label
file; a dataset of another identity is refused with both named.

An export writes the rows whose key the dataset lacks through one ``merge_insert`` on ``id`` (added and changed
images), deletes the keys the store no longer holds (removed images, and renamed ones' old ids), then records the
generation. An export with nothing to change writes nothing: the dataset's version stays as it is. Rows are read and
written ``BLOCK`` at a time."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator, Mapping, Optional

import numpy as np

from ..errors import ImgfeatError, require
from .identity import VectorIdentity
from .store import FeatureStore


KEY = "_imgfeat_key"
META = "imgfeat"
PRIMARY_KEY = {"lance-schema:unenforced-primary-key": "true"}
BLOCK = 65536
DELETE_BATCH = 8192  # keys a delete predicate names at a time


def _schema(dim: int, dtype: str, label_names, meta: dict):
    import pyarrow as pa

    value = pa.float16() if np.dtype(dtype) == np.float16 else pa.float32()
    fields = [pa.field("id", pa.string(), nullable=False, metadata=PRIMARY_KEY), pa.field("path", pa.string()),
              pa.field("vector", pa.list_(value, dim))]
    fields += [pa.field(name, pa.string()) for name in label_names]
    fields.append(pa.field(KEY, pa.int64(), nullable=False))
    return pa.schema(fields, metadata={META: json.dumps(meta, sort_keys=True)})


def _digest(labels: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for rid in sorted(labels):
        h.update(f"{rid}\t{labels[rid]}\n".encode())
    return h.hexdigest()


def _recorded(ds) -> dict:
    raw = (ds.schema.metadata or {}).get(META.encode())
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def _identity_words(identity: Mapping) -> str:
    return ", ".join(f"{k} {identity.get(k)}" for k in ("model", "layer", "pool", "weights", "dim", "dtype", "relu",
                                                         "l2", "precision"))


class LanceExport:
    """Export ``store`` to the Lance dataset at ``uri`` (created, or brought to the store's live rows); ``labels``:
    column name -> {id: label} (ids without one get null)."""

    def __init__(self, store: str | Path, uri: str, labels: Optional[Mapping[str, Mapping[str, str]]] = None,
                 block: int = BLOCK) -> None:
        self.lance = require("lance", "lance", "imgfeat export --to lance")
        self.store_path, self.uri, self.block = Path(store), str(uri), block
        self.store = FeatureStore.existing(store)
        m = self.store.manifest
        self.identity = VectorIdentity.from_manifest(m).as_dict()
        self.dim, self.dtype = int(m["dim"]), str(m["dtype"])
        labels = dict(labels or {})
        for name in labels:
            if name in ("id", "path", "vector", KEY):
                raise ImgfeatError(f"--labels {name}=...: {name!r} is a column of its own; name the labels otherwise")
        self.labels = labels
        self.meta = {"identity": self.identity, "generation": self.store.generation,
                     "labels": {name: _digest(lab) for name, lab in labels.items()}}
        self.schema = _schema(self.dim, self.dtype, list(self.labels), self.meta)

    # ------------------------------------------------------------------ rows
    def _batches(self, table, X, rows: Optional[np.ndarray], keys: np.ndarray) -> Iterator:
        """Record batches of the store's live rows (all, or the positions ``rows``), ``block`` at a time."""
        import pyarrow as pa

        n = len(keys) if rows is None else len(rows)
        value = self.schema.field("vector").type.value_type
        for s in range(0, n, self.block):
            # a block of all the rows is a slice (the matrix read part by part), of chosen rows a take
            sel = slice(s, min(n, s + self.block)) if rows is None else rows[s:s + self.block]
            part = table.slice(s, self.block) if rows is None else table.take(pa.array(sel))
            flat = pa.array(np.ascontiguousarray(np.asarray(X[sel])).reshape(-1), type=value)
            columns = [part.column("id").combine_chunks(), part.column("path").combine_chunks(),
                       pa.FixedSizeListArray.from_arrays(flat, self.dim)]
            if self.labels:
                id_list = columns[0].to_pylist()
                columns += [pa.array([lab.get(i) for i in id_list], pa.string()) for lab in self.labels.values()]
            columns.append(pa.array(keys[sel], pa.int64()))
            yield pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _reader(self, table, X, rows, keys):
        import pyarrow as pa

        return pa.RecordBatchReader.from_batches(self.schema, self._batches(table, X, rows, keys))

    # ------------------------------------------------------------------ the export
    def _open(self):
        try:
            return self.lance.dataset(self.uri)
        except (ValueError, FileNotFoundError, OSError):
            return None

    def run(self) -> dict:
        table, X = self.store.load_columns(("id", "path"))
        keys = self.store.live_keys()
        ds = self._open()
        if ds is None:
            try:
                ds = self.lance.write_dataset(self._reader(table, X, None, keys), self.uri, schema=self.schema,
                                              mode="create")
                return self._summary(ds, None, added=len(keys), updated=0, removed=0)
            except (OSError, ValueError) as exc:  # another export created it first: follow it as below
                ds = self._open()
                if ds is None:
                    raise ImgfeatError(f"could not create the Lance dataset {self.uri}: {exc}") from None
        before = ds.version
        recorded = _recorded(ds)
        self._check(ds, recorded)
        relabel = recorded.get("labels", {}) != self.meta["labels"]
        old_keys = np.concatenate([b.column(0).to_numpy() for b in ds.to_batches(columns=[KEY])] or
                                  [np.zeros(0, np.int64)])
        new = np.flatnonzero(~np.isin(keys, old_keys)) if not relabel else np.arange(len(keys))
        gone = np.setdiff1d(old_keys, keys)
        if not len(new) and not len(gone):
            if recorded.get("generation") != self.meta["generation"]:
                self._record(ds)
            return self._summary(self.lance.dataset(self.uri), before, added=0, updated=0, removed=0)
        stats = {"num_inserted_rows": 0, "num_updated_rows": 0}
        if len(new):
            stats = (ds.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
                     .execute(self._reader(table, X, new, keys)))
            ds = self.lance.dataset(self.uri)
        removed = 0
        for s in range(0, len(gone), DELETE_BATCH):
            part = gone[s:s + DELETE_BATCH]
            before_rows = ds.count_rows()
            ds.delete(f"{KEY} IN ({', '.join(str(int(k)) for k in part)})")
            ds = self.lance.dataset(self.uri)
            removed += before_rows - ds.count_rows()
        self._record(ds)
        return self._summary(self.lance.dataset(self.uri), before, added=int(stats["num_inserted_rows"]),
                             updated=int(stats["num_updated_rows"]), removed=removed)

    def _record(self, ds) -> None:
        """The generation exported (and the label files' digests) into the schema metadata: one more version."""
        ds.update_schema_metadata({META: json.dumps(self.meta, sort_keys=True)})

    def _check(self, ds, recorded: dict) -> None:
        theirs = recorded.get("identity")
        if theirs is None:
            raise ImgfeatError(f"{self.uri} is a Lance dataset that imgfeat did not write (no '{META}' schema "
                               "metadata): export to a new path")
        if theirs != self.identity:
            raise ImgfeatError(f"{self.uri} holds vectors of another identity ({_identity_words(theirs)}) than "
                               f"{self.store_path} ({_identity_words(self.identity)}): export to a new path")
        have = [f.name for f in ds.schema]
        if have != [f.name for f in self.schema]:
            raise ImgfeatError(f"{self.uri} has the columns {have}; this export writes "
                               f"{[f.name for f in self.schema]} (other --labels): export to a new path")

    def _summary(self, ds, before: Optional[int], **counts) -> dict:
        return {"uri": self.uri, "rows": ds.count_rows(), "version": ds.version, "previous_version": before,
                "written": before is None or ds.version != before, "generation": self.meta["generation"], **counts}


def export_lance(store: str | Path, uri: str, labels: Optional[Mapping[str, Mapping[str, str]]] = None,
                 block: int = BLOCK) -> dict:
    """Bring the Lance dataset at ``uri`` to the live rows of ``store`` (see the module); returns what was done:
    ``rows``, ``added``, ``updated``, ``removed``, ``version``, ``previous_version`` and ``written``."""
    return LanceExport(store, uri, labels, block).run()
