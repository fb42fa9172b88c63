"""Reading features and labels for the downstream tools, block by block.

Tools read any imgfeat output (file or store) through :func:`iter_blocks`; they never reach
back into the extraction pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .._errors import ImgfeatError, bad_param

DEFAULT_BLOCK = 65536


def iter_blocks(path: str | Path, rows: int = DEFAULT_BLOCK) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, float32 block) pairs covering the whole output in order, ``rows`` at a time.

    Stores, .npy, .h5 and .parquet are streamed; .tsv and .pkl (small formats) are read whole."""
    p = Path(path)
    if not p.exists():
        raise bad_param("features", "an imgfeat output file or feature store", str(path))
    suffix = p.suffix.lower()
    if p.is_dir():
        from .._store import FeatureStore

        for ids, _, vectors in FeatureStore(p).iter_shards():
            for s in range(0, len(ids), rows):
                yield ids[s:s + rows], np.asarray(vectors[s:s + rows], dtype=np.float32)
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(p, "r") as f:
            feats, ids = f["features"], f["ids"]
            for s in range(0, len(ids), rows):
                yield ids[s:s + rows].astype(str).tolist(), feats[s:s + rows].astype(np.float32)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(p)
        for batch in pf.iter_batches(batch_size=rows, columns=["id", "feature"]):
            col = batch.column(1)
            yield batch.column(0).to_pylist(), \
                col.flatten().to_numpy(zero_copy_only=False).reshape(len(batch), col.type.list_size).astype(np.float32)
    else:
        from .._sinks import load

        ids, mat = load(p)
        for s in range(0, len(ids), rows):
            yield ids[s:s + rows], np.asarray(mat[s:s + rows], dtype=np.float32)


def read_features(path: str | Path) -> tuple[list[str], np.ndarray]:
    """All ids and a float32 matrix (for tools that need the data in memory, e.g. a probe)."""
    ids: list[str] = []
    blocks = []
    for bids, block in iter_blocks(path):
        ids.extend(bids)
        blocks.append(block)
    if not blocks:
        raise ImgfeatError(f"{path} holds no feature vectors")
    return ids, np.concatenate(blocks)


def open_matrix(path: str | Path):
    """``(ids, matrix)`` without reading the vectors: stores and .npy come memory-mapped (tools
    that index or scan them read blocks); the other formats are read into memory."""
    from .._sinks import load

    if not Path(path).exists():
        raise bad_param("features", "an imgfeat output file or feature store", str(path))
    ids, X = load(path)
    if len(ids) == 0:
        raise ImgfeatError(f"{path} holds no feature vectors")
    return ids, X


def read_paths(path: str | Path) -> dict[str, str]:
    """id -> image path, where the output records paths (stores, .h5, .parquet)."""
    p = Path(path)
    if p.is_dir():
        from .._store import FeatureStore

        return {i: q for ids, paths, _ in FeatureStore(p).iter_shards() for i, q in zip(ids, paths)}
    if p.suffix.lower() in (".h5", ".hdf5"):
        import h5py

        with h5py.File(p, "r") as f:
            return dict(zip(f["ids"][:].astype(str).tolist(), f["paths"][:].astype(str).tolist()))
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(p, columns=["id", "path"])
        return dict(zip(t.column("id").to_pylist(), t.column("path").to_pylist()))
    raise ImgfeatError(f"{path} does not record image paths (use a feature store, .h5 or .parquet output)")


def read_labels(path: str | Path) -> dict[str, str]:
    """``id<TAB>label`` lines -> dict; a header ``id<TAB>label`` is skipped; bad lines are errors."""
    labels: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if n == 1 and [x.lower() for x in parts] == ["id", "label"]:
                continue
            if len(parts) != 2:
                raise ImgfeatError(f"{path} line {n}: expected 'id<TAB>label', got {line!r}")
            labels[parts[0]] = parts[1]
    if not labels:
        raise ImgfeatError(f"{path} holds no labels")
    return labels


def align(ids: list[str], X: np.ndarray, labels: dict[str, str], what: str = "labels",
          require_all: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of X that have a label, their labels, and their ids. Labelled ids missing from the
    features are an error (they usually mean the wrong file), unless ``require_all`` is False."""
    index = {rid: i for i, rid in enumerate(ids)}
    missing = [rid for rid in labels if rid not in index]
    if missing and require_all:
        raise ImgfeatError(f"{len(missing)} id(s) of the {what} file have no feature vector, e.g. {missing[:5]}")
    keep = [rid for rid in labels if rid in index]
    if not keep:
        raise ImgfeatError(f"no id of the {what} file is in the features")
    rows = np.fromiter((index[r] for r in keep), dtype=np.int64, count=len(keep))
    return X[rows], np.array([labels[r] for r in keep]), keep


def check_dim(name: str, expected: int, got: int, hint: Optional[str] = None) -> None:
    if expected != got:
        raise bad_param(name, f"features of dimension {expected}" + (f" ({hint})" if hint else ""),
                        f"dimension {got}")
