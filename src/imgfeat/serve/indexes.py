"""serve's kNN index, kept between starts and across a store's generations: one index per features path and index
kind under the cache, beside the keys of the rows it holds (a store's ``live_keys``) and its tuned search settings.
A new state of a store updates the index (the rows that left are removed, the new rows, which a store appends at the
end, are added: no training, no re-reading of unchanged vectors) and the files it replaced are removed; a state that
does not line up that way (after ``compact``) is indexed anew."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import best_effort_cache
from ..files import atomic_paths, seal, seal_broken, unseal, write_atomic
from ..tools.knn import KNNIndex

log = logging.getLogger(__name__)

SEARCH_K = 10  # the recall@k an ``auto`` index is tuned for (the results a page shows)
SERVE_MEMORY = 2 * 2**30  # --max-memory's default: at 10M x 256-d, 4-bit PQ codes re-ranked from the store


def safe_name(index: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in index)


def lined_up(old_keys: Optional[np.ndarray], new_keys: Optional[np.ndarray]) -> Optional[tuple[np.ndarray, int]]:
    """(positions of the old rows that left, how many rows stayed) when the new state is the old one less some rows,
    in the same order, plus rows appended: what an index can follow by removal and addition. None otherwise."""
    if old_keys is None or new_keys is None:
        return None
    kept = np.isin(old_keys, new_keys)
    n_kept = int(kept.sum())
    if not np.array_equal(old_keys[kept], new_keys[:n_kept]):
        return None
    return np.flatnonzero(~kept), n_kept


def follow(knn: KNNIndex, gone: np.ndarray, n_kept: int, X) -> KNNIndex:
    """``knn`` (changed in place) brought to the rows ``X``: ``gone`` removed and ``X[n_kept:]`` added, or, for an
    index whose row numbers cannot shift (HNSW), emptied of its rows and filled with X again."""
    if knn.shifts_on_removal:
        knn = knn.remove_rows(gone).add(X[n_kept:])
    else:
        knn = knn.emptied().add(X)
    log.info("index updated: %d rows removed, %d added (of %d)", len(gone), len(X) - n_kept, len(X))
    return knn


class IndexCache:
    """The index of kind ``name`` kept in ``folder``: ``{name}.json`` says which state it indexes (the features'
    cache key), with its search settings; ``{name}-{state}.faiss`` and ``{name}-{state}.keys.npy`` are the index and
    the keys of its rows. The json is written last, so a crash part-way leaves the previous state's index in use."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, safe_name(name)

    def path(self, state: str) -> Path:
        """The index file of ``state``."""
        return self.folder / f"{self.name}-{state}.faiss"

    def _meta(self) -> Optional[dict]:
        try:
            return json.loads((self.folder / f"{self.name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def load(self, state: str, keys: Optional[np.ndarray], X, nprobe: Optional[int]) -> Optional[KNNIndex]:
        """The cached index of ``state`` (memory-mapped where faiss can), or the cached index of an earlier state
        brought to this one (then saved for it); None when there is none to start from. ``nprobe`` None: the
        cached (tuned) setting."""
        meta = self._meta()
        if meta is None or not (self.folder / meta["index"]).is_file():
            return None
        try:
            return self._load(meta, state, keys, X, nprobe)
        except (RuntimeError, OSError, ValueError, KeyError, TypeError) as exc:  # faiss raises RuntimeError
            return self._discard(meta, f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")

    def _discard(self, meta: dict, what: str) -> None:
        """A cached index that fails its check is a cache miss: said once, removed, built again."""
        log.warning("the cached index %s %s: it is built again", self.folder / meta.get("index", "?"), what)
        unseal(*(self.folder / meta[k] for k in ("index", "keys") if meta.get(k)))
        (self.folder / f"{self.name}.json").unlink(missing_ok=True)
        return None

    def _load(self, meta: dict, state: str, keys: Optional[np.ndarray], X, nprobe: Optional[int]):
        for name in (meta["index"], meta.get("keys")):  # every file the cache wrote, checked before faiss reads it
            broken = seal_broken(self.folder / name) if name else None
            if broken:
                return self._discard(meta, f"({name}) {broken}")
        nprobe = meta.get("nprobe", 16) if nprobe is None else nprobe
        if meta["state"] == state:
            knn = self._open(meta, X, nprobe)
            return knn if knn.n_ == len(X) else None
        old_keys = np.load(self.folder / meta["keys"]) if meta.get("keys") else None
        plan = lined_up(old_keys, keys)
        if plan is None:
            return None
        knn = KNNIndex.load(str(self.folder / meta["index"]), "cosine", nprobe, mmap=False)
        knn.index = meta.get("kind", knn.index)
        knn = self._settled(follow(knn, *plan, X), meta, X)  # the rows since are indexed the same way
        return self.keep(knn, state, keys, X)

    def keep(self, knn: KNNIndex, state: str, keys: Optional[np.ndarray], X) -> KNNIndex:
        """``save`` ``knn`` (built or updated in memory), then serve the saved copy memory-mapped in its place, as a
        start from the cache would: its lists become file pages the kernel can reclaim instead of heap (at 10M x
        64-byte codes, 1.2 GB less after a generation). ``knn`` itself where the cache could not be written."""
        meta = self.save(knn, state, keys)
        return knn if meta is None else self._open(meta, X, meta["nprobe"])

    def _open(self, meta: dict, X, nprobe: int) -> KNNIndex:
        """The index file ``meta`` names, memory-mapped where faiss can, with its cached settings."""
        knn = KNNIndex.load(str(self.folder / meta["index"]), "cosine", nprobe)
        knn.index = meta.get("kind", knn.index)
        return self._settled(knn, meta, X)

    @staticmethod
    def _settled(knn: KNNIndex, meta: dict, X) -> KNNIndex:
        """``knn`` with the settings ``meta`` cached: re-ranking against ``X`` and the recall measured when built."""
        if meta.get("recall"):
            knn.recall_ = tuple(meta["recall"])
        return knn.reranking(X, meta.get("rerank", 0.0))

    def save(self, knn: KNNIndex, state: str, keys: Optional[np.ndarray]) -> Optional[dict]:
        """Keep ``knn`` as the index of ``state`` and remove the files of the states it replaces. Returns what the
        cache now says of it, or None where the disk was full (a warning: the index is served uncached)."""
        index, key_file, written = self.path(state).name, f"{self.name}-{state}.keys.npy", None
        with best_effort_cache(f"the {knn.index} index", self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            knn.save(str(self.folder / index))
            seal(self.folder / index)
            if keys is not None:
                with atomic_paths([self.folder / key_file]) as (partial,):
                    with open(partial, "wb") as fh:
                        np.save(fh, keys)
                seal(self.folder / key_file)
            meta = {"state": state, "kind": knn.index, "index": index, "keys": key_file if keys is not None else None,
                    "nprobe": knn.nprobe, "rerank": knn.rerank if getattr(knn, "source_", None) is not None else 0.0,
                    "recall": list(getattr(knn, "recall_", ())) or None, "rows": knn.n_}
            write_atomic(self.folder / f"{self.name}.json", json.dumps(meta).encode())
            written = meta
            for old in self.folder.glob(f"{self.name}-*"):
                if old.name not in (index, key_file):
                    unseal(old)
        return written
