"""Decode driver: records are cut into batches in input order, each batch is decoded by one
worker process, and a DataLoader returns the batches in order while the model runs. The
last item carries no images but ``total``, the number of input records read.

Only the picklable source descriptor and preprocessing config cross into the workers.
A batch carries its good images as one uint8 tensor plus the error rows of its bad
files, so a bad file never costs its neighbours their vectors.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import WorkerDiedError
from ..models.preprocess import Preprocess
from .batches import nchw
from .batches import decode_batch, end_of_input, planned_batches  # noqa: F401 - re-exported
from .decode import DEFAULT_DECODE_TIMEOUT
from .shards import ShardPlan
from .sources import Counted, Source


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
                yield _tensors(batch)
        if wid == 0:  # worker 0 has the most batches, so round-robin delivers this one last
            yield _tensors(end_of_input(records.n, self.pp))


def _tensors(batch: dict) -> dict:
    """The batch's pixels as the uint8 tensor the executors take (shared memory across the DataLoader)."""
    batch["pixels"] = torch.from_numpy(batch["pixels"])
    return batch


def stack_pixels(arrays: list[np.ndarray], pp: Preprocess) -> torch.Tensor:
    """Decoded uint8 H x W x 3 arrays as the uint8 N x 3 x H x W tensor every executor takes."""
    return torch.from_numpy(nchw(arrays, pp))


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
