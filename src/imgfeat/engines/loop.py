"""The one extraction loop: decoded batches -> a runner -> the target. The full path (``engines.pipeline``: the
DataLoader's batches, the model's executor under ``torch.inference_mode``) and the quick path (``engines.quick``:
batches decoded in this process, a recorded export run by ONNX Runtime or OpenVINO) differ only in the batches and
the runner they pass. Torch-free.

A runner takes a batch's uint8 ``N x 3 x H x W`` pixels and returns the post-processed rows (ReLU/L2 applied, in
the output's dtype) as a NumPy array."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

Runner = Callable[[object], np.ndarray]


def drive(batches: Iterable[dict], run: Runner, target, retries: dict, bar=None) -> int:
    """Feed every batch's good images through ``run`` into ``target`` (error rows too, and each shard's end);
    returns the vectors written and adds the decode's second attempts to ``retries`` (``retried``,
    ``recovered``). A closing item with ``total`` gives the input's record count (the target's and the bar's)."""
    n_done, shard_inputs = 0, 0
    for batch in batches:
        if "total" in batch:  # end of input: how many records the source held
            target.total_inputs = batch["total"]
            if bar is not None:
                bar.total = batch["total"]  # exact now, whatever the background count reached
            continue
        for key in ("retried", "recovered"):
            retries[key] = retries.get(key, 0) + batch.get(key, 0)
        shard, ids, paths = batch["shard"], batch["ids"], batch["paths"]
        target.errors(shard, batch["errors"])
        if ids:
            n_done += target.write(shard, ids, paths, run(batch["pixels"]))
        shard_inputs += batch["n"]
        if batch["last"]:
            target.end_shard(shard, shard_inputs)
            shard_inputs = 0
        if bar is not None:
            bar.update(batch["n"])
            bar.set_postfix(failed=target.n_failed, refresh=False)
    return n_done


def postprocess(rows: np.ndarray, relu: bool, l2: bool) -> np.ndarray:
    """ReLU then L2, in float32, in NumPy (``engines.pipeline.postprocess_tensor`` is the same in torch, on the device)."""
    x = rows.astype(np.float32, copy=False)
    if relu:
        x = np.maximum(x, 0.0)
    if l2:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    return x
