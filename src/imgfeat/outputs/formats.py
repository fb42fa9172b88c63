"""The registry of output formats: which sink writes a path, and how each format is read back.

One entry per extension holds both directions, so a format cannot be writable and unreadable.
Tools and the API read features only through this module: :func:`load` (ids and a matrix, memory-
mapped for ``.npy`` and stores), :func:`iter_blocks` (bounded memory, any size), :func:`read_paths`.
"""

from __future__ import annotations

import json
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..errors import DamagedFileError, ImgfeatError, bad_param
from .idindex import StringColumn, read_lines
from .names import FORMAT_EXTENSIONS
from .parquet import read_table
from .sinks import H5Sink, NpySink, ParquetSink, PickleSink, Sink, TsvSink, npy_ids_path
from .store import FeatureStore

DEFAULT_BLOCK = 65536
Blocks = Iterator[tuple[list[str], np.ndarray]]


class FeaturesFileError(DamagedFileError):
    """A features file or store that cannot be read as one: said in one line, never a traceback (exit status 1: the
    file is damaged or foreign, not the command wrong)."""


def _bad(path, what: str) -> FeaturesFileError:
    return FeaturesFileError(f"{path}: {what}")


@contextmanager
def reading(path):
    """Turn whatever a reader raises on a damaged, truncated or foreign file into one clear line."""
    try:
        yield
    except ImgfeatError:
        raise
    except FileNotFoundError as exc:
        raise _bad(path, f"{exc.filename or exc} is missing" + (
            f" (a file of a published shard; `imgfeat info` shows the store's state, and `imgfeat repair {path}` "
            "re-extracts it from its images)" if Path(path).is_dir() else "")) from None
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, pickle.UnpicklingError) as exc:
        raise _bad(path, f"not readable as imgfeat features ({type(exc).__name__}: {str(exc)[:200]})") from None


def _checked(path, ids: Sequence[str], X):
    """ids and matrix agree: a 2-D matrix with one row per id."""
    if getattr(X, "ndim", 2) != 2:
        raise _bad(path, f"holds a {X.ndim}-d array of shape {tuple(X.shape)}, not N x D feature vectors")
    if len(ids) != len(X):
        raise _bad(path, f"{len(ids)} ids for {len(X)} vectors: the ids and the vectors do not belong together")
    return ids, X


@dataclass(frozen=True)
class Format:
    """``sink(path)`` writes it; ``load(path)`` reads (ids, matrix); ``blocks(path, rows)`` streams it
    (default: slices of ``load``); ``paths(path)`` gives id -> image path where the format records them;
    ``columnar(path)`` is ``load`` with the ids as a ``StringColumn`` where the format keeps them so (default: ``load``).
    """

    sink: Callable[[str | Path], Sink]
    load: Callable[[Path], tuple[list[str], object]]
    blocks: Optional[Callable[[Path, int], Blocks]] = None
    paths: Optional[Callable[[Path], dict[str, str]]] = None
    columnar: Optional[Callable[[Path], tuple[Sequence[str], object]]] = None


def _load_tsv(path: Path):
    ids, rows = [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t", 1)
            try:
                rows.append(json.loads(parts[1]))
            except (IndexError, ValueError):
                raise _bad(path, f"line {lineno} is not 'id<TAB>[json vector]'") from None
            ids.append(parts[0])
    if len({len(r) if isinstance(r, list) else -1 for r in rows}) > 1:
        raise _bad(path, "its vectors do not all have the same length")
    if not ids:
        return ids, np.zeros((0, 0), np.float32)
    return ids, np.asarray(rows, dtype=np.float32)


def _load_pkl(path: Path):
    with open(path, "rb") as fh:
        data = pickle.load(fh)  # imgfeat's own output; never load pickles from untrusted sources
    ids = list(data)
    return ids, (np.stack([data[i] for i in ids]) if ids else np.zeros((0, 0), np.float32))


def _h5_text(values) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else s for s in values]


def _h5_datasets(path: Path, f) -> tuple:
    missing = [k for k in ("features", "ids") if k not in f]
    if missing:
        raise _bad(path, f"no {' and no '.join(repr(k) for k in missing)} dataset (it holds {sorted(f.keys())}); "
                         "imgfeat's .h5 files have 'features' (N x D) and 'ids'")
    feats, ids = f["features"], f["ids"]
    if len(feats.shape) != 2 or feats.shape[0] != ids.shape[0]:
        raise _bad(path, f"'features' has shape {feats.shape} for {ids.shape[0]} ids, not one row per id")
    return feats, ids


def _load_h5(path: Path):
    import h5py

    with h5py.File(path, "r") as f:
        feats, ids = _h5_datasets(path, f)
        return _h5_text(ids[:]), feats[:]


def _blocks_h5(path: Path, rows: int) -> Blocks:
    import h5py

    with h5py.File(path, "r") as f:
        feats, ids = _h5_datasets(path, f)
        for s in range(0, len(ids), rows):
            yield _h5_text(ids[s:s + rows]), feats[s:s + rows].astype(np.float32)


def _paths_h5(path: Path) -> dict[str, str]:
    import h5py

    with h5py.File(path, "r") as f:
        return dict(zip(_h5_text(f["ids"][:]), _h5_text(f["paths"][:])))


def _npy(path: Path):
    """An .npy output's matrix, memory-mapped, and its ids as a ``StringColumn`` (no Python object per row)."""
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise _bad(path, "not a NumPy .npy file (no .npy header)")
    X = np.load(path, mmap_mode="r")
    ids_path = npy_ids_path(path)
    if not ids_path.is_file():
        raise _bad(path, f"its ids file {ids_path} is missing (imgfeat writes an .npy output with its .ids.txt "
                         "beside it; a bare array has no ids)")
    return read_lines(ids_path), X


def _load_npy(path: Path):
    ids, X = _npy(path)
    return list(ids), X


def _parquet_matrix(column) -> np.ndarray:
    """The ``feature`` column (fixed-size lists) as an N x D array."""
    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def _load_parquet(path: Path):
    table = read_table(path, columns=["id", "feature"])
    return table.column("id").to_pylist(), _parquet_matrix(table.column("feature"))


def _blocks_parquet(path: Path, rows: int) -> Blocks:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=["id", "feature"]):
        yield batch.column(0).to_pylist(), _parquet_matrix(batch.column(1)).astype(np.float32)


def _paths_parquet(path: Path) -> dict[str, str]:
    t = read_table(path, columns=["id", "path"])
    return dict(zip(t.column("id").to_pylist(), t.column("path").to_pylist()))


_FORMATS: dict[str, Format] = {}


def register_format(ext: str, fmt: Format) -> None:
    """Make ``ext`` an output format; a second registration of the same extension is an error, and so is one the
    command line does not declare (``outputs.names``: the help is printed without importing this module)."""
    if ext in _FORMATS:
        raise ValueError(f"a format is already registered for {ext!r}")
    if ext not in FORMAT_EXTENSIONS:
        raise ValueError(f"{ext!r} is not in outputs.names.FORMAT_EXTENSIONS: declare it there too")
    _FORMATS[ext] = fmt


register_format(".tsv", Format(TsvSink, _load_tsv))
register_format(".pkl", Format(PickleSink, _load_pkl))
register_format(".h5", Format(H5Sink, _load_h5, _blocks_h5, _paths_h5))
register_format(".hdf5", Format(H5Sink, _load_h5, _blocks_h5, _paths_h5))
register_format(".npy", Format(NpySink, _load_npy, columnar=_npy))
register_format(".parquet", Format(ParquetSink, _load_parquet, _blocks_parquet, _paths_parquet))


def extensions() -> list[str]:
    return sorted(_FORMATS)


def _format(path: str | Path, name: str) -> Format:
    ext = Path(path).suffix.lower()
    if ext not in _FORMATS:
        raise bad_param(name, f"a file name ending in one of {extensions()}", str(path))
    return _FORMATS[ext]


def open_sink(path: str | Path) -> Sink:
    """The sink for ``path``'s extension (not opened yet)."""
    return _format(path, "out").sink(path)


def write_blocks(path: str | Path, dim: int, dtype, blocks: Iterable[tuple[Sequence[str], Sequence[str], np.ndarray]]) -> int:
    """Stream ``(ids, paths, rows)`` blocks into a new output file at ``path`` (format by extension).
    The file appears only when complete; on any error, one raised by ``blocks`` included, the
    partial file is removed. Returns the rows written."""
    sink = open_sink(path)
    sink.open(dim, np.dtype(dtype))
    n = 0
    try:
        for ids, paths, rows in blocks:
            sink.write(ids, paths, rows)
            n += len(ids)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return n


def output_files(path: str | Path) -> list[Path]:
    """The files a sink writes for ``path`` (the .npy sink also writes ``.ids.txt``)."""
    return [Path(path), npy_ids_path(path)] if Path(path).suffix.lower() == ".npy" else [Path(path)]


def _existing(path: str | Path, name: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise bad_param(name, "an imgfeat output file or feature store", str(path))
    return p


def load(path: str | Path):
    """Read any imgfeat output back as ``(ids, matrix)``.

    ``.npy`` matrices are memory-mapped; a feature store gives a :class:`StoreMatrix`, a
    memory-mapped view over its shards that is never read into RAM whole."""
    return _read(path, "path", columnar=False)


def _read(path: str | Path, name: str, columnar: bool):
    """``load`` and ``open_matrix``: (ids, matrix) of a store or a file (``name`` the parameter it came from), the ids
    a list, or where ``columnar`` a ``StringColumn`` where the output keeps them as a column (stores, .npy)."""
    p = _existing(path, name)
    with reading(p):
        if p.is_dir():
            table, X = FeatureStore.existing(p).load_columns(("id",))
            column = table.column("id")
            return _checked(p, StringColumn(column) if columnar else column.to_pylist(), X)
        fmt = _format(p, name)
        return _checked(p, *((columnar and fmt.columnar) or fmt.load)(p))


def iter_blocks(path: str | Path, rows: int = DEFAULT_BLOCK) -> Blocks:
    """(ids, float32 block) pairs covering the whole output in order, ``rows`` at a time.

    Stores, .npy, .h5 and .parquet are streamed; .tsv and .pkl (small formats) are read whole."""
    p = _existing(path, "features")
    with reading(p):
        if p.is_dir():
            for ids, _, vectors in FeatureStore.existing(p).iter_shards():
                _checked(p, ids, vectors)
                for s in range(0, len(ids), rows):
                    yield ids[s:s + rows], np.asarray(vectors[s:s + rows], dtype=np.float32)
            return
        fmt = _format(p, "features")
        if fmt.blocks is not None:
            for ids, block in fmt.blocks(p, rows):
                yield _checked(p, ids, block)
            return
        ids, mat = _checked(p, *fmt.load(p))
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
    """``(ids, matrix)`` without reading the vectors, for the tools: stores and .npy come memory-mapped (tools that
    index or scan them read blocks) with their ids as a ``StringColumn`` (about 25 bytes an id, no Python object per
    row: 100M ids fit); the other formats are read into memory, ids as a list."""
    ids, X = _read(path, "features", columnar=True)
    if len(ids) == 0:
        raise ImgfeatError(f"{path} holds no feature vectors")
    return ids, X


def open_vectors(path: str | Path):
    """``open_matrix``'s matrix without its ids: what a Ray task of a graph reads (each of thousands of tasks would
    otherwise read every id: 100M ids, 2.5 GB, a task)."""
    p = _existing(path, "features")
    with reading(p):
        if p.is_dir():
            return FeatureStore.existing(p).load_columns(())[1]
        if p.suffix == ".npy" and Path(f"{p.with_suffix('')}.ids.txt").is_file():
            return np.load(p, mmap_mode="r")
    return open_matrix(path)[1]


def read_error_ids(path: str | Path) -> set[str]:
    """The ids a features output holds as error rows (a store's live ones, or the ``.errors.tsv`` beside a file)."""
    p = _existing(path, "features")
    if p.is_dir():
        return FeatureStore.existing(p).error_ids()
    log = Path(f"{p}.errors.tsv")
    if not log.is_file():
        return set()
    return {line.split("\t", 1)[0] for line in log.read_text(encoding="utf-8").splitlines() if line}


def read_paths(path: str | Path, wanted: Optional[set] = None) -> dict[str, str]:
    """id -> image path, where the output records paths (stores, .h5, .parquet); only the ``wanted`` ids if given
    (a store's shards read one at a time: no dict of every path)."""
    p = _existing(path, "features")
    with reading(p):
        if p.is_dir():
            return {i: q for ids, paths, _ in FeatureStore.existing(p).iter_shards() for i, q in zip(ids, paths)
                    if wanted is None or i in wanted}
        fmt = _format(p, "features")
        if fmt.paths is None:
            raise ImgfeatError(f"{path} does not record image paths (use a feature store, .h5 or .parquet output)")
        found = fmt.paths(p)
        return found if wanted is None else {i: q for i, q in found.items() if i in wanted}
