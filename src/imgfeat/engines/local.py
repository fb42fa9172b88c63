"""The local engine: one process runs the model, a DataLoader's workers decode, and every pending
shard of the input (all of it, or the ``--shard I/N`` part) streams to a file or a feature store."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import Optional

import torch

from ..data.shards import ShardPlan
from ..data.sources import Source, open_source
from ..errors import WorkerDiedError
from ..models.backends import resolve_device
from ..options import ExtractOptions
from ..outputs.store import FeatureStore, is_store_path
from ..outputs.targets import FileTarget, StoreTarget
from .fidelity import announce, build_measured, measurement_images
from .pipeline import ExtractResult, Pipeline, process_shards, require_input, store_identity


def wants_store(opts: ExtractOptions) -> bool:
    return opts.out is not None and (opts.format == "store" or is_store_path(opts.out))


def _progress(opts: ExtractOptions, source: Source, enabled: Optional[bool]):
    if enabled is None:
        enabled = not opts.quiet and sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    bar = tqdm(total=None, unit="img", dynamic_ncols=True, smoothing=0.1)

    def count() -> None:  # the total arrives when known; extraction does not wait for it
        try:
            bar.total = source.count()
        except Exception:  # noqa: BLE001 - a bar without a total is still a bar
            pass

    threading.Thread(target=count, name="imgfeat-count", daemon=True).start()
    return bar


def run_local(opts: ExtractOptions, progress: Optional[bool] = None) -> ExtractResult:
    """Run ``opts`` (already validated) in this process."""
    source = open_source(opts.data, opts.start, opts.stop)
    store = FeatureStore(opts.out) if wants_store(opts) else None
    target = StoreTarget(store) if store is not None else FileTarget(opts.out)  # a bad extension fails early
    require_input(source, opts)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    plan = ShardPlan(size=opts.shard_size if (store is not None or opts.part()) else None, part=opts.part())

    def open_store(pipeline: Pipeline) -> None:
        store.open(store_identity(opts, pipeline, source))

    # a lower precision: measured on this input (or refused) before anything is written
    pipeline, fidelity = build_measured(opts, resolve_device(opts.device), *measurement_images(opts, source),
                                        before_executor=open_store if store is not None else None)
    announce(fidelity, store)
    if store is not None:
        plan = dataclasses.replace(plan, skip=frozenset(store.done_shards()))
    bar = _progress(opts, source, progress)
    if bar is not None and plan.skip:
        bar.update(sum(m["inputs"] for m in store.markers()))  # a resumed run starts where the last one stopped
    start = time.perf_counter()
    retries: dict = {}
    try:
        n_done = process_shards(pipeline, source, plan, target, opts, bar, retries)
    except WorkerDiedError as exc:
        advice = ("the store keeps every finished shard: rerun the same command to resume" if store is not None else
                  "nothing was written; for long runs write to a store directory (--out DIR), which resumes")
        raise WorkerDiedError(exc.cause, advice) from exc.cause
    finally:
        if bar is not None:
            bar.close()
    result = ExtractResult(n_done=n_done, n_failed=target.n_failed, seconds=time.perf_counter() - start,
                           dim=pipeline.dim, model=pipeline.spec.name, backend=pipeline.report["backend"],
                           backend_report=pipeline.report, out=str(opts.out) if opts.out is not None else None,
                           errors_path=target.errors_path, n_retried=retries.get("retried", 0),
                           n_recovered=retries.get("recovered", 0))
    if store is not None:
        store.refresh_manifest(total_inputs=target.total_inputs)
        result.shards_written, result.shards_skipped = target.shards_written, len(plan.skip)
    else:
        result.errors = target.error_log.rows
        if opts.out is None:
            sink = target.sink
            result.ids, result.paths, result.features = sink.ids, sink.paths, sink.features
    return result
