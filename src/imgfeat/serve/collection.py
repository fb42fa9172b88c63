"""What the server serves: one features output (a store, or any file imgfeat writes) opened read-only,
with its ids, image paths, labels, a faiss index for search, 2-D map coordinates and the neighbour
lists duplicate groups are cut from. Everything the server derives (index, map, neighbour lists,
thumbnails) lives under the cache directory, keyed by the features' identity: never in the store.
"""

from __future__ import annotations

import hashlib
import io
import errno
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import DamagedFileError, ImgfeatError, best_effort_cache
from ..files import atomic_paths, cache_dir, mapped_for_writing, seal, seal_broken, unseal, write_atomic
from ..outputs.formats import open_matrix, open_vectors, read_paths
from ..outputs.idindex import StableIdIndex, StringColumn
from ..outputs.store import MANIFEST, FeatureStore
from ..tools.dedup import Groups, groups_at, neighbour_lists
from ..tools.autoindex import build_index, plan_index
from ..tools.exact import RowView, l2_normalise, row_blocks, sample_rows
from ..tools.knn import KNNIndex, faiss_threads
from ..tools.memory import budget, human, release_freed_heap
from ..tools.labels import FolderLabels, LabelSpec, labels_for, read_labels
from .indexes import SEARCH_K, SERVE_MEMORY, IndexCache, follow, lined_up, safe_name

log = logging.getLogger(__name__)

MAP_TSNE_UP_TO = 20_000  # auto map: t-SNE up to this many vectors, PCA above (say so)
UNLABELLED = "(unlabelled)"
MAP_BLOCK = 65536  # rows per block when projecting a large collection for its map
MAP_POINTS = 200_000  # the map of a larger collection is of this many rows drawn at random (the rest found by search):
#                       8 bytes a point to the browser, and points a browser can draw and a person can see


def _cached_array(path: Path, shape: tuple, mmap: bool = False) -> Optional[np.ndarray]:
    """A cached array that holds what was written (its seal) with the ``shape`` expected, or None (said once, the
    file removed): a damaged cache is computed again, never served."""
    broken = seal_broken(path)
    if broken is None:
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None)
            if arr.ndim == len(shape) and all(w is None or w == h for w, h in zip(shape, arr.shape)):
                return arr
            broken = f"holds shape {arr.shape}, not {tuple(shape)}"
        except (OSError, ValueError) as exc:
            broken = f"cannot be read ({exc})"
    log.warning("the cached %s %s: it is computed again", path, broken)
    unseal(path)
    return None


class UnknownLabel(ImgfeatError):
    """A label filter the collection does not have (the API answers 404, as for an unknown id)."""

    param = "label"


@dataclass
class Hit:
    row: int
    score: float


def path_key(path: Path) -> str:
    """The cache folder of one features path, whatever its state: its index and each state's derived data."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


def features_key(path: Path) -> str:
    """Identity of a features output for the cache: a store's manifest (its shard checksums), or a
    file's absolute path, size and modification time."""
    p = path.resolve()
    if p.is_dir():
        blob = (p / MANIFEST).read_bytes()
    else:
        st = p.stat()
        blob = f"{p}\n{st.st_size}\n{st.st_mtime_ns}".encode()
    return hashlib.sha256(str(p).encode() + b"\0" + blob).hexdigest()[:16]


def _stamp(path: Path) -> tuple:
    p = path / MANIFEST if path.is_dir() else path
    try:
        st = p.stat()
    except OSError:
        return ()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class LiveCollection:
    """The collection a server answers from, picking up a new state of its store on the request after it is
    published (one stat per request; the new state is loaded once, by one request, while the others keep
    answering from the old one)."""

    def __init__(self, collection: "Collection") -> None:
        self.current = collection
        self._lock = threading.Lock()
        self._refused = None  # the state on disk found damaged: not loaded again until it changes

    def get(self) -> "Collection":
        current = self.current
        if current.changed() and self._lock.acquire(blocking=False):
            try:
                state = _stamp(current.path)
                if self.current is current and state != self._refused:
                    self.current = current.refreshed()
                    log.info("%s changed: now %d vectors (generation %s)", current.path, self.current.n,
                             self.current.generation)
            except DamagedFileError as exc:  # said once for this state: repair it, and the repaired state is served
                self._refused = state
                log.warning("the new state of %s is not served: %s; still serving the old one", current.path, exc)
            except Exception:  # noqa: BLE001 - a store caught mid-change is read again at the next request
                log.exception("could not load the new state of %s; still serving the old one", current.path)
            finally:
                self._lock.release()
        return self.current


class Job:
    """Something a collection computes once, in a background thread, while requests go on (the map, the neighbour
    lists): ``start()`` starts it (or takes ``cached()``) and returns its progress, ``wait()`` waits for it
    (bounded); a failure is remembered and reported to whoever asks next."""

    def __init__(self, what: str, work: Callable[[], Any], cached: Callable[[], Any] = lambda: None,
                 progress: Optional[dict] = None) -> None:
        self.what, self.work, self.cached = what, work, cached
        self.result: Any = None
        self.error: Optional[str] = None
        self.progress = dict(progress or {})
        self.started = time.monotonic()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def start(self) -> dict:
        with self._lock:
            if self.result is None and self._thread is None:
                self.result = self.cached()
                if self.result is None:
                    self.started = time.monotonic()
                    self._thread = threading.Thread(target=self._run, daemon=True)
                    self._thread.start()
            if self.error:
                raise ImgfeatError(f"{self.what} failed: {self.error}")
            return {"ready": self.result is not None, **self.progress}

    def _run(self) -> None:
        try:
            done = self.work()
            if self.result is None:
                self.result = done
        except Exception as exc:  # noqa: BLE001 - reported to the client that asks next
            log.exception("%s failed", self.what)
            self.error = str(exc)

    def wait(self, timeout: float = 3600.0) -> Any:
        self.start()
        thread = self._thread
        if self.result is None and thread is not None:
            thread.join(timeout)
        self.start()  # raises if the job failed
        if self.result is None:
            raise ImgfeatError(f"{self.what} is taking longer than expected")
        return self.result


def _id_table(ids):
    import pyarrow as pa

    return pa.table({"id": ids._chunked() if isinstance(ids, StringColumn) else pa.array(list(ids), pa.large_string())})


def mapped_table(path: Path, make: Callable[[], Any]):
    """The Arrow table ``make()`` gives, kept at ``path`` as an Arrow IPC file (sealed) and read back memory-mapped:
    its columns are pages of the file, which the kernel can drop and read again, not the process's memory. Made
    again where the file is missing or fails its seal; ``make()``'s table as it is where the cache cannot be
    written (said once)."""
    import pyarrow as pa

    if not path.is_file() or seal_broken(path):
        table = make()
        if not path.parent.is_dir():  # the cache folder could not be made (said once): in memory
            return table
        with best_effort_cache("the ids", path):
            with atomic_paths([path]) as (partial,):
                with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table, max_chunksize=1 << 20)
            seal(path)
        if not path.is_file():
            return table
        del table
        release_freed_heap()
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def mapped_array(path: Path, make: Callable[[], np.ndarray]) -> np.ndarray:
    """``make()``'s array kept at ``path`` (sealed) and read back memory-mapped, as ``mapped_table`` keeps a table."""
    if path.is_file() and not seal_broken(path):
        return np.load(path, mmap_mode="r")
    values = make()
    if not path.parent.is_dir():  # the cache folder could not be made (said once): in memory
        return values
    with best_effort_cache("the keys", path):
        with atomic_paths([path]) as (partial,):
            with open(partial, "wb") as fh:
                np.save(fh, values)
        seal(path)
        return np.load(path, mmap_mode="r")
    return values


class Collection:
    """``search(vector, k, offset, label)`` and ``neighbours(row, ...)`` go through one faiss index (``auto``: the
    tools' choice within ``max_memory`` bytes, tuned to recall@10 >= 0.95 with candidates re-ranked against the
    vectors; exact, IVF, or any ``index_factory`` string; a saved index file is read memory-mapped where faiss can).
    Scores are cosine similarities, recomputed exactly for the rows an approximate index returns."""

    def __init__(self, features: str | Path, *, labels: Optional[LabelSpec] = None, map_coords: Optional[str] = None,
                 index: str = "auto", index_file: Optional[str] = None, nprobe: int = 16,
                 cache: Optional[str | Path] = None, dup_k: int = 10, previous: Optional["Collection"] = None,
                 max_memory: Optional[int] = None) -> None:
        self.path = Path(features)
        self._args = dict(labels=labels, map_coords=map_coords, index=index, index_file=index_file, nprobe=nprobe,
                          cache=cache, dup_k=dup_k, max_memory=max_memory)
        if not self.path.exists():
            open_matrix(self.path)  # what is missing, said in the words of every command
        self.stamp = _stamp(self.path)  # read before the data: a change while loading is seen at the next check
        self.store = FeatureStore.existing(self.path) if self.path.is_dir() else None
        self.key = features_key(self.path)
        # derived data lives under the cache root (``cache``, default $IMGFEAT_CACHE/serve) in the folder of this
        # features path: the index (updated from one state to the next) in index/, the map, neighbour lists,
        # thumbnails, ids and their lookup in a folder of this state's key, the folders of earlier states removed
        self.cache_root = Path(cache) if cache else cache_dir() / "serve"
        self.home = self.cache_root / path_key(self.path)  # everything derived from this features path
        self.cache = self.home / self.key
        self._previous = previous
        with best_effort_cache("the server's derived data", self.cache):
            self.cache.mkdir(parents=True, exist_ok=True)
            for old in self.cache.parent.iterdir():
                if old.is_dir() and old.name not in (self.key, "index"):
                    shutil.rmtree(old, ignore_errors=True)
        # ids (and a store's paths) memory-mapped from an Arrow file of this state in the cache: pages of a file, not
        # the server's memory (100M ids and paths: about 5 GB), read once from the features at the first start
        if self.store is not None:  # one published state: ids, vectors and keys from the same manifest
            self.X = self.store.load_columns(())[1]
            table = mapped_table(self.cache / "columns.arrow", lambda: self.store.load_columns(("id", "path"))[0])
            self.ids: Sequence[str] = StringColumn(table.column("id"))  # no Python object per row
            self._store_paths = StringColumn(table.column("path"))
            del table
            self.keys: Optional[np.ndarray] = mapped_array(self.cache / "keys.npy", self.store.live_keys)
        else:
            self.X = open_vectors(self.path)
            table = mapped_table(self.cache / "columns.arrow",
                                 lambda: _id_table(open_matrix(self.path)[0]))
            self.ids = StringColumn(table.column("id"))
            del table
            self.keys = None
        if len(self.ids) != len(self.X):
            raise ImgfeatError(f"{self.path} holds {len(self.X)} vectors but {len(self.ids)} ids")
        self.n, self.dim = len(self.ids), int(self.X.shape[1])
        # 12 bytes an id, no Python object per row, kept beside the ids and memory-mapped from there
        self.row_of = StableIdIndex.cached(self.ids, self.cache)
        self.manifest = self.store.manifest if self.store else {}
        self.generation = self.manifest.get("generation")
        self.paths = self._paths()
        self.categories, self.codes = self._labels(labels)
        # the default is held to what the machine (or a container's limit) has available, as every command's
        self.memory = budget(None, SERVE_MEMORY) if max_memory is None else max_memory
        # a named index is held to --max-memory only where one was given (else: what the machine has)
        self.plan = plan_index(self.n, self.dim, index, SEARCH_K,
                               self.memory if index == "auto" or max_memory is not None else None,
                               "imgfeat serve")
        self.index_name = self.plan.index
        log.info("%s; besides it: ids and paths %s, the id lookup %s", self.plan.line(),
                 human(sum(getattr(c, "nbytes", 80 * len(c)) for c in (self.ids, self.paths) if c is not None)),
                 human(self.row_of.nbytes + (self.keys.nbytes if self.keys is not None else 0)))
        self.index_arg, self.nprobe, self.dup_k = index, nprobe, dup_k
        # an auto index (tuned, re-ranked) and the same kind named by the user (as given) are kept apart
        self.index_cache = IndexCache(self.home / "index",
                                      ("auto-" if index == "auto" else "") + self.index_name)
        self.knn = self._index(index_file)
        release_freed_heap()  # where an index built or updated in memory was swapped for its file (else a no-op)
        self._map_coords = map_coords
        self._lock = threading.Lock()
        self._map_job = Job("making the map", lambda: self._load_map(),
                            progress={"step": "starting", "done": 0, "total": 1})
        self._neighbour_job = Job("finding neighbours", lambda: self._compute_neighbours(), self._cached_neighbours,
                                  progress={"done": 0, "total": self.n})
        self._label_subsets: dict[int, object] = {}

    # ------------------------------------------------------------------ loading
    def _paths(self) -> Sequence[Optional[str]]:
        if self.store is not None:
            return self._store_paths
        try:
            found = read_paths(self.path)
        except ImgfeatError:  # .npy, .tsv, .pkl record no paths: no thumbnails
            return [None] * self.n
        return [found.get(i) for i in self.ids]

    def _labels(self, labels: Optional[LabelSpec]) -> tuple[list[str], np.ndarray]:
        codes = np.full(self.n, -1, np.int32)
        if not labels:
            return [], codes
        lab = labels_for(labels, self.ids, self.path) if isinstance(labels, FolderLabels) else read_labels(labels)
        categories = sorted(set(lab.values()))
        code_of = {c: j for j, c in enumerate(categories)}
        unknown = 0
        for rid, c in lab.items():
            row = self.row_of.get(rid)
            if row is None:
                unknown += 1
            else:
                codes[row] = code_of[c]
        if unknown == len(lab):
            raise ImgfeatError(f"no id of {labels} is in {self.path}")
        if unknown:
            log.warning("%d id(s) of %s are not in %s and are ignored", unknown, labels, self.path)
        return categories, codes

    def _index(self, index_file: Optional[str]) -> KNNIndex:
        previous, self._previous = self._previous, None
        if index_file and Path(index_file).is_file():
            knn = KNNIndex.load(index_file, "cosine", self.nprobe)
            if knn.n_ != self.n or knn.dim_ != self.dim:
                raise ImgfeatError(f"{index_file} indexes {knn.n_} vectors of dimension {knn.dim_}, "
                                   f"but {self.path} holds {self.n} of dimension {self.dim}: build it again")
            return knn
        if self.index_name == "exact":  # nothing to train: kept in memory only, followed from the previous state
            if previous is not None and previous.index_name == "exact":
                plan = lined_up(previous.keys, self.keys)
                if plan is not None:  # a copy: requests in flight keep searching the old one
                    return follow(previous.knn.clone(), *plan, self.X)
        else:
            knn = self.index_cache.load(self.key, self.keys, self.X, None if self.index_arg == "auto" else self.nprobe)
            if knn is not None:
                return knn
        log.info("indexing %d vectors (%s)", self.n, self.index_name)
        knn = build_index(self.X, self.index_arg, SEARCH_K, nprobe=self.nprobe, plan=self.plan)
        if index_file:  # asked for
            knn.save(index_file)
        if self.index_name != "exact":  # worth keeping: training IVF/PQ takes a while
            knn = self.index_cache.keep(knn, self.key, self.keys, self.X)
        return knn

    def changed(self) -> bool:
        """Whether the features on disk are no longer the ones served (a stat of the manifest or the file)."""
        return _stamp(self.path) != self.stamp

    def refreshed(self) -> "Collection":
        """The collection as it is on disk now, its index updated from this one's."""
        return Collection(self.path, previous=self, **self._args)

    # ------------------------------------------------------------------ search
    def _raw_search(self, q: np.ndarray, k: int, label: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
        if label is not None and label not in self._label_subsets:
            self._label_subsets[label] = self.knn.subset(self.codes == label)
        D, I = self.knn.search(q, k, subset=self._label_subsets.get(label) if label is not None else None)
        return D[0], I[0]

    def label_code(self, label: Optional[str]) -> Optional[int]:
        """The code of ``label`` (None and "" filter nothing); ``UnknownLabel`` (a 404 in every route) for a label
        this collection does not have."""
        if label is None or label == "":
            return None
        if label not in self.categories:
            raise UnknownLabel(f"no such label in this collection ({len(self.categories)} known)")
        return self.categories.index(label)

    def search(self, vector: np.ndarray, k: int, offset: int = 0, label: Optional[str] = None,
               exclude: Optional[int] = None) -> list[Hit]:
        """Hits ``offset .. offset + k - 1`` of the ranking of ``vector`` (``exclude``: a row left out)."""
        code = self.label_code(label)
        q = l2_normalise(np.asarray(vector, np.float32).reshape(1, -1))
        want = min(self.n, offset + k + (exclude is not None))
        D, I = self._raw_search(q, want, code)
        keep = (I >= 0) & (I != (exclude if exclude is not None else -1))
        rows = I[keep].astype(np.int64)
        if self.index_name != "exact" and len(rows):  # exact cosine for what an approximate index found
            ordered = np.sort(rows)  # reads in file order
            scores = l2_normalise(np.asarray(self.X[ordered], np.float32)) @ q[0]
            by_row = dict(zip(ordered.tolist(), scores.tolist()))
            pairs = sorted(((by_row[r], r) for r in rows.tolist()), key=lambda t: (-t[0], t[1]))
        else:
            pairs = list(zip(D[keep].tolist(), rows.tolist()))
        return [Hit(int(r), float(s)) for s, r in pairs[offset:offset + k]]

    def vector(self, row: int) -> np.ndarray:
        return np.asarray(self.X[row], np.float32)

    def label_of(self, row: int) -> Optional[str]:
        c = int(self.codes[row])
        return self.categories[c] if c >= 0 else None

    # ------------------------------------------------------------------ map
    def start_map(self) -> dict:
        """The map, computed once in a background thread (t-SNE takes a while); returns its progress:
        ``{"ready", "step", "done", "total", "elapsed_s"}`` (steps, not points: t-SNE reports none)."""
        progress = self._map_job.start()
        return {**progress, "elapsed_s": round(time.monotonic() - self._map_job.started, 1)}

    def _say(self, step: str, done: int, total: int) -> None:
        self._map_job.progress.update(step=step, done=done, total=total)

    def map(self, timeout: float = 3600.0) -> dict:
        """``rows`` (int32), ``xy`` (float32 N x 2, in [-1, 1] with the aspect kept), ``method``; waits (bounded)
        for the map if it is being made."""
        return self._map_job.wait(timeout)

    def _load_map(self) -> dict:
        if self._map_coords:
            (rows, xy), method = self._read_coords(self._map_coords), "file"
        else:
            rows, xy, method = self._computed_map()
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-9)
        xy = ((xy - centre) / half * 0.95).astype(np.float32)
        return {"rows": rows.astype(np.int32), "xy": np.ascontiguousarray(xy), "method": method}

    def _read_coords(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        rows, xy, unknown = [], [], 0
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 3:
                    raise ImgfeatError(f"{path} line {n}: expected 'id<TAB>x<TAB>y' (imgfeat map --coords)")
                row = self.row_of.get(parts[0])
                if row is None:
                    unknown += 1
                    continue
                try:
                    xy.append((float(parts[1]), float(parts[2])))
                except ValueError:
                    raise ImgfeatError(f"{path} line {n}: coordinates are not numbers") from None
                rows.append(row)
        if not rows:
            raise ImgfeatError(f"no id of {path} is in {self.path}")
        if unknown:
            log.warning("%d id(s) of %s are not in %s and are left off the map", unknown, path, self.path)
        return np.array(rows), np.array(xy, np.float32)

    def _computed_map(self) -> tuple[np.ndarray, np.ndarray, str]:
        method = "tsne" if self.n <= MAP_TSNE_UP_TO else "pca"
        rows = np.arange(self.n) if self.n <= MAP_POINTS else np.sort(sample_rows(self.n, MAP_POINTS, 0))
        cached = self.cache / f"map-{method}-{len(rows)}.npy"
        if cached.is_file():
            xy = _cached_array(cached, (len(rows), 2))
            if xy is not None:
                return rows, xy, method
        if method == "tsne":
            from ..tools.maps import embed_2d

            steps = ["reading", *(["pca"] if self.dim > 50 and self.n > 50 else []), "tsne"]
            self._say(f"reading {self.n:,} vectors", 0, len(steps))
            X = np.asarray(self.X, np.float32)
            said = iter(range(1, len(steps)))
            xy = embed_2d(X, "tsne", step=lambda what: self._say(what, next(said, len(steps) - 1), len(steps))) \
                if self.n >= 3 else np.random.default_rng(0).normal(size=(self.n, 2)).astype(np.float32)
        else:
            log.warning("%d vectors: the map is a PCA projection%s; for a t-SNE/UMAP map run imgfeat map --method "
                        "umap --coords FILE and pass --map FILE", self.n,
                        f" of {len(rows):,} rows drawn at random" if len(rows) < self.n else "")
            from ..tools.pca import StreamingPCA

            sample = RowView(self.X, rows)  # read in storage order, a block at a time
            self._say(f"fitting a 2-D PCA on {len(rows):,} vectors", 0, 2)
            pca = StreamingPCA(n_components=2).fit(row_blocks(sample, MAP_BLOCK))
            self._say(f"projecting {len(rows):,} vectors", 1, 2)
            xy = np.concatenate([pca.transform(b) for b in row_blocks(sample, MAP_BLOCK)])
        xy = np.asarray(xy, np.float32)
        buf = io.BytesIO()
        np.save(buf, xy)
        with best_effort_cache("the map", cached):
            if self.cache.is_dir():  # not where the cache folder could not be made (said once)
                write_atomic(cached, buf.getvalue())
                seal(cached)
        return rows, xy, method

    # ------------------------------------------------------------------ duplicates
    def _neighbours_files(self) -> list[Path]:
        stem = f"neighbours-{safe_name(self.index_name)}-k{self.dup_k}"
        return [self.cache / f"{stem}.D.npy", self.cache / f"{stem}.I.npy"]

    def start_neighbours(self) -> dict:
        """Each vector's ``dup_k`` nearest others through the served index, computed once in a background
        thread (cached on disk); returns the progress: ``{"ready", "done", "total"}``."""
        return self._neighbour_job.start()

    def _cached_neighbours(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        files = self._neighbours_files()
        if not all(f.is_file() for f in files):
            return None
        # pages of the cache's files, not the server's memory; a damaged file is computed again
        D, I = (_cached_array(f, (self.n, None), mmap=True) for f in files)
        if D is None or I is None:
            unseal(*files)
            return None
        if len(I) and (int(I.min()) < -1 or int(I.max()) >= self.n):
            log.warning("the cached neighbour lists %s hold row numbers outside the collection: computed again",
                        files[1])
            unseal(*files)
            return None
        return D, I

    def _compute_neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        job = self._neighbour_job

        def done(rows: int) -> None:
            job.progress["done"] = rows

        def lists(out=None) -> tuple[np.ndarray, np.ndarray]:
            with faiss_threads(os.cpu_count() or 1):  # a batch job: every core
                # blocks of about 1% of the rows (256 to 65,536): progress a person can watch move
                return neighbour_lists(self.X, self.dup_k, knn=self._graph_index(), progress=done, out=out,
                                       block=int(np.clip(self.n // 100, 256, 65536)))

        files, result = self._neighbours_files(), None
        with best_effort_cache("the neighbour lists", files[0]):  # written in place: 88 bytes a vector not held
            if not self.cache.is_dir():  # the cache folder could not be made (said once): in memory below
                raise OSError(errno.EROFS, "the cache folder could not be made", str(self.cache))
            with atomic_paths(files) as partials:
                made = dict(zip((np.dtype(np.float32), np.dtype(np.int32)), partials))
                D, I = lists(out=lambda shape, dtype: mapped_for_writing(made[np.dtype(dtype)], shape, dtype, npy=True))
                D.flush(), I.flush()
                del D, I
            for f in files:
                seal(f)
            result = self._cached_neighbours()
        if result is None:  # the cache cannot hold them (its disk is full): in memory
            result = lists()
        job.result = result
        return result

    def _graph_index(self):
        """What finds every vector's neighbours: the join of cells ``dedup`` and ``knn`` build where ``auto`` chooses
        it for a graph of this size and budget (the vectors read once, in storage order, a group of cells at a
        time), else the served index (one search a vector, its candidates re-ranked: random reads of the vectors,
        cheap while they sit in the page cache)."""
        if self.index_arg != "auto" or plan_index(self.n, self.dim, "auto", self.dup_k, self.memory,
                                                  graph=True).index != "join":
            return self.knn
        return build_index(self.X, "auto", self.dup_k, memory=self.memory, what="the duplicates' neighbour lists",
                           graph=True)

    def neighbour_lists(self, timeout: float = 3600.0) -> tuple[np.ndarray, np.ndarray]:
        """The neighbour lists, waiting for them (bounded) if they are being computed."""
        return self._neighbour_job.wait(timeout)

    @lru_cache(maxsize=8)  # a slider's last thresholds: about 5 bytes a vector each (50 MB at 10M)
    def duplicate_groups(self, threshold: float) -> Groups:
        D, I = self.neighbour_lists()
        return groups_at(D, I, threshold)

    def info(self) -> dict:
        m = self.manifest
        return {"features": str(self.path), "count": self.n, "dim": self.dim, "model": m.get("model"),
                "layer": m.get("layer"), "pool": m.get("pool"), "weights": m.get("weights"),
                "store": bool(self.store), "index": self.knn.description,
                "index_recall": ({"recall_at_10": round(self.knn.recall_[0], 4), "sampled_rows": self.knn.recall_[1]}
                                 if getattr(self.knn, "recall_", None) else None), "labels": self.categories,
                "thumbnails": any(p is not None for p in self.paths[:1000]), "text": bool(m.get("text_tower")),
                "identity": {k: m[k] for k in ("model", "layer", "pool", "weights", "dim", "dtype", "relu", "l2")
                             if k in m}}
