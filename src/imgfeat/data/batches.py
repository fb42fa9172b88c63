"""Records to decoded batches, in input order, with numpy and Pillow only: what a DataLoader worker runs
(``data.loader``) and what a small job runs in its own process without torch (``engines.quick``).

A batch is a dict: ``ids``, ``paths`` and ``pixels`` (uint8 N x 3 x H x W) of its good images, ``errors`` rows
of its bad ones (so a bad file never costs its neighbours their vectors), ``n`` records, and the second
attempts' counts ``retried`` / ``recovered``.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Optional

import numpy as np

from ..models.preprocess import Preprocess
from ..errors import ImgfeatError
from .decode import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS, both_attempts, decode, retriable
from .fresh import fresh_attempt
from .shards import ShardPlan, cut_shards
from .sources import Record


def decode_batch(records: list[Record], pp: Preprocess, max_pixels: int,
                 timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT, retry: bool = True) -> dict:
    """Decode ``records``: ids/paths/pixels of the good ones, ``errors`` rows for the rest. With ``retry``, a
    failure that another process could change is tried once more alone in a fresh process (``data.fresh``:
    an image must not fail because of what this worker decoded before it); ``retried`` and ``recovered``
    count them."""
    ids, paths, arrays, errors, retried, recovered = [], [], [], [], 0, 0
    for rec in records:
        result = rec.error or decode(rec.path, pp, max_pixels, offset=rec.offset, size=rec.size, timeout=timeout)
        if isinstance(result, str) and retry and rec.error is None and retriable(result):
            retried += 1
            second = fresh_attempt(rec.path, rec.offset, rec.size, pp, max_pixels, timeout)
            recovered += not isinstance(second, str)
            result = both_attempts(result, second) if isinstance(second, str) else second
        if isinstance(result, str):
            errors.append((rec.id, rec.path, result))
        else:
            ids.append(rec.id)
            paths.append(rec.path)
            arrays.append(result)
    return {"ids": ids, "paths": paths, "pixels": nchw(arrays, pp), "errors": errors, "n": len(records),
            "retried": retried, "recovered": recovered}


def nchw(arrays: list[np.ndarray], pp: Preprocess) -> np.ndarray:
    """Decoded uint8 H x W x 3 arrays as the contiguous uint8 N x 3 x H x W batch every executor takes."""
    if not len(arrays):
        h, w = pp.crop_size
        return np.zeros((0, 3, h, w), dtype=np.uint8)
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))


def _batches(it: Iterator[Record], size: int) -> Iterator[list[Record]]:
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def planned_batches(records: Iterator[Record], batch_size: int,
                    plan: ShardPlan) -> Iterator[tuple[Optional[int], list[Record], bool]]:
    """(shard, records, is_last_batch_of_shard) in input order; batches never straddle shards."""
    for shard, group in cut_shards(records, plan):
        previous = None
        for chunk in _batches(group, batch_size):
            if previous is not None:
                yield shard, previous, False
            previous = chunk
        if previous is not None:
            yield shard, previous, shard is not None


def end_of_input(total: int, pp: Preprocess) -> dict:
    """The closing item of a loader: no images, and ``total``, the number of input records."""
    batch = decode_batch([], pp, 0)
    batch.update(shard=None, last=False, total=total)
    return batch


def decode_queries(files, pp: Preprocess, max_pixels: Optional[int] = None) -> list[np.ndarray]:
    """Query image files decoded at ``pp``'s geometry (uint8 H x W x 3 each); one unreadable file refuses the
    query, naming the first three."""
    arrays, errors = [], []
    for f in files:
        result = decode(f, pp, max_pixels or DEFAULT_MAX_PIXELS)
        if isinstance(result, str):
            errors.append((f, result))
        else:
            arrays.append(result)
    if errors:
        raise ImgfeatError(f"query images could not be read: {errors[:3]}")
    return arrays
