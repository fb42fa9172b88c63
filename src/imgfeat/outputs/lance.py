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
written ``BLOCK`` at a time.

The dataset is a copy, so an export also heals it: every row's content is compared with the store's row of its key
(id, path, labels; the vectors too with ``verify``, which is the default while the store's vectors are under
``VERIFY_BYTES``), and a row that differs, a key held twice, or a second row of an id is deleted and written again
from the store (``repaired``). A first export is written into a hidden folder beside the path and renamed into place
when whole, so an interrupted one leaves nothing; the path is checked like every output (``check_lance_output``)."""

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
VERIFY_BYTES = 2 * 2**30  # vectors compared on every export up to this size of the store's vectors (else --verify)
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
                 block: int = BLOCK, verify: Optional[bool] = None) -> None:
        self.lance = require("lance", "lance", "imgfeat export --to lance")
        self.store_path, self.uri, self.block = Path(store), str(uri), block
        self.store = FeatureStore.existing(store)
        from .checks import check_lance_output

        check_lance_output(self.uri)
        m = self.store.manifest
        self.verify = verify
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

    def _create(self, table, X, keys):
        """A first export: written whole into a hidden folder beside the path, then renamed into place (a local
        path), so an interrupted one leaves nothing under the name. None where another export created it first."""
        if "://" in self.uri:
            return self.lance.write_dataset(self._reader(table, X, None, keys), self.uri, schema=self.schema,
                                            mode="create")
        import os
        import shutil

        from ..files import writer_tag

        final = Path(self.uri)
        staging = final.with_name(f".{final.name}.{writer_tag()}.partial")
        interrupted = []

        def batches():  # Lance turns an exception of the reader into its own: a Ctrl-C is told apart here
            try:
                yield from self._batches(table, X, None, keys)
            except KeyboardInterrupt:
                interrupted.append(True)
                raise

        import pyarrow as pa

        try:
            try:
                self.lance.write_dataset(pa.RecordBatchReader.from_batches(self.schema, batches()), str(staging),
                                         schema=self.schema, mode="create")
            except Exception:
                if interrupted:
                    raise KeyboardInterrupt from None
                raise
            if final.is_dir() and not any(final.iterdir()):
                final.rmdir()  # an empty folder the user made for it
            try:
                os.rename(staging, final)
            except OSError:  # another export was first (the folder is there now): follow it
                return None
            return self.lance.dataset(self.uri)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def run(self) -> dict:
        table, X = self.store.load_columns(("id", "path"))
        keys = self.store.live_keys()
        ds = self._open()
        if ds is None:
            try:
                ds = self._create(table, X, keys)
                if ds is not None:
                    return self._summary(ds, None, added=len(keys), updated=0, removed=0)
            except (OSError, ValueError) as exc:  # another export created it first: follow it as below
                if self._open() is None:
                    raise ImgfeatError(f"could not create the Lance dataset {self.uri}: {exc}") from None
            ds = self._open()
            if ds is None:
                raise ImgfeatError(f"could not create the Lance dataset {self.uri}")
        before = ds.version
        recorded = _recorded(ds)
        self._check(ds, recorded)
        relabel = recorded.get("labels", {}) != self.meta["labels"]
        verify = self.verify if self.verify is not None else X.shape[0] * X.shape[1] * X.dtype.itemsize <= VERIFY_BYTES
        scan = self._scan(ds, table, X, keys, verify and not relabel)
        repaired = 0
        if len(scan["bad_keys"]):  # rows that differ from the store, or repeat a key or an id: out first
            repaired = self._delete(ds, scan["bad_keys"])
            ds = self.lance.dataset(self.uri)
        new = np.union1d(np.flatnonzero(~scan["present"]), scan["rewrite"]) if not relabel else np.arange(len(keys))
        gone = scan["gone"]
        if not len(new) and not len(gone):
            if recorded.get("generation") != self.meta["generation"]:
                self._record(ds)
            return self._summary(self.lance.dataset(self.uri), before, added=0, updated=0, removed=0,
                                 repaired=repaired, verified=bool(verify))
        stats = {"num_inserted_rows": 0, "num_updated_rows": 0}
        if len(new):
            stats = (ds.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
                     .execute(self._reader(table, X, new, keys)))
            ds = self.lance.dataset(self.uri)
        removed = self._delete(ds, gone) if len(gone) else 0
        ds = self.lance.dataset(self.uri)
        self._record(ds)
        inserted = int(stats["num_inserted_rows"]) - len(scan["rewrite"])  # a repaired row is written again
        return self._summary(self.lance.dataset(self.uri), before, added=max(inserted, 0),
                             updated=int(stats["num_updated_rows"]), removed=removed, repaired=repaired,
                             verified=bool(verify))

    def _delete(self, ds, keys: np.ndarray) -> int:
        """Delete the rows of ``keys``; returns the rows deleted."""
        removed = 0
        for s in range(0, len(keys), DELETE_BATCH):
            part = keys[s:s + DELETE_BATCH]
            before_rows = ds.count_rows()
            ds = self._committed(lambda d: d.delete(f"{KEY} IN ({', '.join(str(int(k)) for k in part)})"), ds)
            removed += max(0, before_rows - ds.count_rows())
        return removed

    def _committed(self, change, ds, attempts: int = 20):
        """Apply ``change`` to the dataset and return it at its new version. Another export committing at the same
        moment (two exports at once) is a conflict Lance reports rather than retries for some operations (a schema
        metadata update, a delete): the change is applied again to the version that won, a bounded number of
        times."""
        for attempt in range(attempts):
            try:
                change(ds)
                return self.lance.dataset(self.uri)
            except Exception as exc:  # noqa: BLE001 - Lance raises OSError or its own errors for a conflict
                if "onflict" not in str(exc) or attempt == attempts - 1:
                    raise
                ds = self.lance.dataset(self.uri)
        return ds

    def _scan(self, ds, table, X, keys: np.ndarray, verify: bool) -> dict:
        """The dataset compared with the store, ``block`` rows at a time: ``present`` (store rows the dataset holds
        once, as the store has them), ``rewrite`` (store rows whose copy differs or is held twice), ``bad_keys``
        (dataset keys to delete before they are written again: differing or repeated rows, and rows of a key the
        store no longer holds whose id another row holds as well), ``gone`` (keys of removed images)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        seen = np.zeros(len(keys), np.int32)
        differs = np.zeros(len(keys), bool)
        strays_k, strays_id = [], []
        ids_col, paths_col = table.column("id"), table.column("path")
        columns = [KEY, "id", "path", *self.labels] + (["vector"] if verify else [])
        for batch in ds.to_batches(columns=columns, batch_size=self.block):
            k = batch.column(0).to_numpy(zero_copy_only=False)
            idx = np.minimum(np.searchsorted(sorted_keys, k), max(len(keys) - 1, 0))
            found = (sorted_keys[idx] == k) if len(keys) else np.zeros(len(k), bool)
            if (~found).any():
                strays_k.append(k[~found])
                strays_id += batch.column(1).filter(pa.array(~found)).to_pylist()
            pos = order[idx[found]]
            np.add.at(seen, pos, 1)
            if not len(pos):
                continue
            mask = pa.array(found)
            take = pa.array(pos)
            same = pc.and_(pc.equal(batch.column(1).filter(mask), ids_col.take(take).combine_chunks()),
                           pc.equal(batch.column(2).filter(mask), paths_col.take(take).combine_chunks()))
            same = same.fill_null(False).to_numpy(zero_copy_only=False)
            if self.labels:
                want_ids = ids_col.take(take).to_pylist()
                for j, (name, lab) in enumerate(self.labels.items()):
                    got = batch.column(3 + j).filter(mask).to_pylist()
                    same &= np.array([g == lab.get(i) for g, i in zip(got, want_ids)], bool)
            if verify:
                vec = batch.column(len(columns) - 1).filter(mask)
                flat = vec.flatten().to_numpy(zero_copy_only=False).reshape(len(pos), self.dim)
                want = np.asarray(X[pos])
                same &= (flat.view(np.uint8).reshape(len(pos), -1) ==
                         np.ascontiguousarray(want, dtype=flat.dtype).view(np.uint8).reshape(len(pos), -1)).all(axis=1)
            differs[pos[~same]] = True
        rewrite = np.flatnonzero(differs | (seen > 1))
        gone = np.concatenate(strays_k) if strays_k else np.zeros(0, np.int64)
        # a stray row whose id the store holds under a key the dataset holds too is a second row of that id
        from .idindex import StringColumn

        rows = StringColumn(ids_col).id_index().rows(strays_id) if strays_id else np.zeros(0, np.int64)
        extra = np.zeros(len(gone), bool)
        extra[rows >= 0] = seen[rows[rows >= 0]] > 0
        bad = np.union1d(keys[rewrite], gone[extra])
        return {"present": (seen == 1) & ~differs, "rewrite": rewrite, "bad_keys": bad, "gone": np.setdiff1d(gone, bad)}

    def _record(self, ds) -> None:
        """The generation exported (and the label files' digests) into the schema metadata: one more version."""
        self._committed(lambda d: d.update_schema_metadata({META: json.dumps(self.meta, sort_keys=True)}), ds)

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

    def _summary(self, ds, before: Optional[int], repaired: int = 0, verified: bool = True, **counts) -> dict:
        return {"uri": self.uri, "rows": ds.count_rows(), "version": ds.version, "previous_version": before,
                "written": before is None or ds.version != before, "generation": self.meta["generation"],
                "repaired": repaired, "verified": verified, **counts}


def export_lance(store: str | Path, uri: str, labels: Optional[Mapping[str, Mapping[str, str]]] = None,
                 block: int = BLOCK, verify: Optional[bool] = None) -> dict:
    """Bring the Lance dataset at ``uri`` to the live rows of ``store`` (see the module); returns what was done:
    ``rows``, ``added``, ``updated``, ``removed``, ``repaired`` (rows that differed from the store, written again),
    ``verified`` (whether the vectors were compared too), ``version``, ``previous_version`` and ``written``.
    ``verify`` None: the vectors are compared while the store's are under ``VERIFY_BYTES``."""
    return LanceExport(store, uri, labels, block, verify).run()
