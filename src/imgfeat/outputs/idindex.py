"""``IdIndex``: the row of an id without a Python dict of every id: the ids' 64-bit hashes sorted beside their rows
(12 bytes an id at up to 2^31 rows, against about 100 bytes a dict entry), a hash hit confirmed against the id
itself, so a collision can never answer the wrong row."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


class IdIndex:
    """``index[id]``, ``get(id)`` and ``id in index`` over ``ids`` (any sequence of str indexable by row; it is kept, not
    copied). With repeated ids the last row answers, as ``{id: row for row, id in enumerate(ids)}`` would."""

    def __init__(self, ids: Sequence[str]) -> None:
        n = len(ids)
        hashes = np.fromiter((hash(i) for i in ids), np.int64, n)
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._rows = order.astype(np.int32 if n < 2**31 else np.int64)
        self._ids = ids

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, rid: str, default: Optional[int] = None) -> Optional[int]:
        h = np.int64(hash(rid))
        lo = int(np.searchsorted(self._hashes, h, side="left"))
        hi = int(np.searchsorted(self._hashes, h, side="right"))
        for j in range(hi - 1, lo - 1, -1):  # same hash: rows ascending, so the last row first
            row = int(self._rows[j])
            if self._ids[row] == rid:
                return row
        return default

    def __getitem__(self, rid: str) -> int:
        row = self.get(rid)
        if row is None:
            raise KeyError(rid)
        return row

    def __contains__(self, rid: object) -> bool:
        return isinstance(rid, str) and self.get(rid) is not None

    @property
    def nbytes(self) -> int:
        return int(self._hashes.nbytes + self._rows.nbytes)
