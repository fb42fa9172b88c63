"""``StoreMatrix``: a read-only N x D matrix over a store's shard files, memory-mapped, never loaded whole."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np


class StoreMatrix:
    """A read-only N x D matrix over the store's shard files, memory-mapped, never loaded whole.

    Supports ``len``, ``shape``, ``dtype``, row indexing (int, slice, integer array),
    ``iter_blocks(rows)`` and ``np.asarray`` (which does read everything)."""

    def __init__(self, files: list[Path], dim: int, dtype: np.dtype,
                 keeps: Optional[list[Optional[np.ndarray]]] = None) -> None:
        self._parts = [np.load(f, mmap_mode="r") for f in files]
        # the live rows of each part (None: all): dead rows of an updated store are skipped, never copied
        self._keeps = keeps or [None] * len(self._parts)
        self._offsets = np.cumsum([0] + [len(p) if k is None else len(k) for p, k in zip(self._parts, self._keeps)])
        self.dtype = np.dtype(dtype)
        self.shape = (int(self._offsets[-1]), dim)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` copied once, part by part (no index array of the whole matrix is made)."""
        out = np.empty((max(0, stop - start), self.shape[1]), self.dtype)
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        for p in range(max(first, 0), len(self._parts)):
            lo, hi = int(self._offsets[p]), int(self._offsets[p + 1])
            if lo >= stop:
                break
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            if a >= b:
                continue
            keep, dest = self._keeps[p], out[max(start, lo) - start:min(stop, hi) - start]
            if keep is None:
                dest[...] = self._parts[p][a:b]
            else:
                np.take(self._parts[p], keep[a:b], axis=0, out=dest)
        return out

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.shape[1]), self.dtype)
        part = np.searchsorted(self._offsets, idx, side="right") - 1
        for p in np.unique(part):
            sel = part == p
            local = idx[sel] - self._offsets[p]
            keep = self._keeps[p]
            out[sel] = self._parts[p][local if keep is None else keep[local]]
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, cols = key[0], key[1:]
            return self[rows][(slice(None), *cols)] if not np.isscalar(rows) else self[rows][cols]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self._rows(np.array([i]))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._range(start, stop)
            return self._rows(np.arange(start, stop, step))
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self._rows(np.where(idx < 0, idx + len(self), idx))

    def random_access(self) -> "StoreMatrix":
        """The same rows for reads at random (re-ranking): each shard mapped again, advised ``MADV_RANDOM``
        (``tools.exact.random_access``)."""
        import copy

        from ...files import remapped_random

        out = copy.copy(self)
        out._parts = [remapped_random(part) for part in self._parts]
        return out

    def iter_blocks(self, rows: int = 65536) -> Iterator[np.ndarray]:
        for start in range(0, len(self), rows):
            yield self[start:start + rows]

    def __array__(self, dtype=None, copy=None):
        full = self._range(0, len(self))  # each live row copied once, straight into the result
        return full.astype(dtype, copy=False) if dtype is not None else full
