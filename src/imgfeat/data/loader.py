"""Decode driver: records are cut into batches in input order, each batch is decoded by one
worker process, and a DataLoader returns the batches in order while the model runs. The
last item carries no images but ``total``, the number of input records read.

Only the picklable source descriptor and preprocessing config cross into the workers.
A batch carries its good images as one uint8 tensor plus the error rows of its bad
files, so a bad file never costs its neighbours their vectors.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import WorkerDiedError
from ..models.preprocess import Preprocess
from .decode import DEFAULT_DECODE_TIMEOUT, both_attempts, decode, retriable
from .fresh import fresh_attempt
from .shards import ShardPlan, cut_shards
from .sources import Counted, Record, Source


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
    return {"ids": ids, "paths": paths, "pixels": stack_pixels(arrays, pp), "errors": errors, "n": len(records),
            "retried": retried, "recovered": recovered}


def stack_pixels(arrays: list[np.ndarray], pp: Preprocess) -> torch.Tensor:
    """Decoded uint8 H x W x 3 arrays as the uint8 N x 3 x H x W batch every executor takes."""
    if not len(arrays):
        h, w = pp.crop_size
        return torch.zeros((0, 3, h, w), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


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


class DecodedBatches(IterableDataset):
    """Batch k of the plan is decoded by worker ``k % num_workers``; DataLoader then yields
    the workers' outputs round-robin, which restores the input order exactly."""

    def __init__(self, source: Source, pp: Preprocess, batch_size: int, max_pixels: int,
                 plan: ShardPlan = ShardPlan(), timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT) -> None:
        super().__init__()
        self.source, self.pp, self.batch_size, self.max_pixels, self.plan = source, pp, batch_size, max_pixels, plan
        self.timeout = timeout

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        records = Counted(self.source.records())
        batches = planned_batches(iter(records), self.batch_size, self.plan)
        for k, (shard, chunk, last) in enumerate(batches):
            if k % nw == wid:
                batch = decode_batch(chunk, self.pp, self.max_pixels, self.timeout)
                batch.update(shard=shard, last=last)
                yield batch
        if wid == 0:  # worker 0 has the most batches, so round-robin delivers this one last
            yield end_of_input(records.n, self.pp)


def end_of_input(total: int, pp: Preprocess) -> dict:
    """The closing item of a loader: no images, and ``total``, the number of input records."""
    batch = decode_batch([], pp, 0)
    batch.update(shard=None, last=False, total=total)
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decode workers must not fight the model for cores


def make_loader(source: Source, pp: Preprocess, batch_size: int, workers: int, max_pixels: int,
                pin_memory: bool = False, prefetch: Optional[int] = None, plan: ShardPlan = ShardPlan(),
                decode_timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT) -> DataLoader:
    kwargs = {}
    if workers > 0:
        kwargs = {"worker_init_fn": _worker_init, "prefetch_factor": prefetch or 2, "persistent_workers": False}
    return DataLoader(DecodedBatches(source, pp, batch_size, max_pixels, plan, decode_timeout), batch_size=None,
                      num_workers=workers, pin_memory=pin_memory, **kwargs)


@contextmanager
def worker_deaths(batches: Iterator[dict]) -> Iterator[None]:
    """Around a loop over ``iter(loader)``: a decode worker that died (killed by the OS, a crash in a
    native decoder) becomes :class:`WorkerDiedError`. The DataLoader reports it as a RuntimeError from
    ``next`` or from its SIGCHLD handler (anywhere in the loop); it is recognised by the worker
    processes' exit codes, not by the message."""
    try:
        yield
    except RuntimeError as exc:
        workers = getattr(batches, "_workers", ())  # the DataLoader's worker processes (none with workers=0)
        if any(w.exitcode not in (None, 0) for w in workers):
            raise WorkerDiedError(exc) from exc
        raise
