"""Decode driver: records are cut into batches in input order, each batch is decoded by one
worker process, and a DataLoader returns the batches in order while the model runs.

Only the picklable source descriptor and preprocessing config cross into the workers.
A batch carries its good images as one uint8 tensor plus the error rows of its bad
files, so a bad file never costs its neighbours their vectors.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ._decode import decode
from ._preprocess import Preprocess
from ._sources import Record, Source


def decode_batch(records: list[Record], pp: Preprocess, max_pixels: int) -> dict:
    """Decode ``records``: ids/paths/pixels of the good ones, ``errors`` rows for the rest."""
    ids, paths, arrays, errors = [], [], [], []
    for rec in records:
        result = rec.error or decode(rec.path, pp, max_pixels)
        if isinstance(result, str):
            errors.append((rec.id, rec.path, result))
        else:
            ids.append(rec.id)
            paths.append(rec.path)
            arrays.append(result)
    h, w = pp.crop_size
    pixels = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() if arrays
              else torch.zeros((0, 3, h, w), dtype=torch.uint8))
    return {"ids": ids, "paths": paths, "pixels": pixels, "errors": errors, "n": len(records)}


def _batches(it: Iterator[Record], size: int) -> Iterator[list[Record]]:
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class DecodedBatches(IterableDataset):
    """Batch k of the source is decoded by worker ``k % num_workers``; DataLoader then yields
    the workers' outputs round-robin, which restores the input order exactly."""

    def __init__(self, source: Source, pp: Preprocess, batch_size: int, max_pixels: int) -> None:
        super().__init__()
        self.source, self.pp, self.batch_size, self.max_pixels = source, pp, batch_size, max_pixels

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for k, chunk in enumerate(_batches(iter(self.source.records()), self.batch_size)):
            if k % nw == wid:
                yield decode_batch(chunk, self.pp, self.max_pixels)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decode workers must not fight the model for cores


def make_loader(source: Source, pp: Preprocess, batch_size: int, workers: int, max_pixels: int,
                pin_memory: bool = False, prefetch: Optional[int] = None) -> DataLoader:
    kwargs = {}
    if workers > 0:
        kwargs = {"worker_init_fn": _worker_init, "prefetch_factor": prefetch or 2, "persistent_workers": False}
    return DataLoader(DecodedBatches(source, pp, batch_size, max_pixels), batch_size=None,
                      num_workers=workers, pin_memory=pin_memory, **kwargs)
