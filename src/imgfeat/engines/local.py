"""The local engine: one process runs the model, a DataLoader's workers decode, and every pending
shard of the input (all of it, or the ``--shard I/N`` part) streams to a file or a feature store."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TYPE_CHECKING, Optional

from ..data.shards import ShardPlan
from ..data.sources import PlanSource, Source
from ..errors import WorkerDiedError, is_disk_full
from ..options import Job
from ..outputs.store import FeatureStore
from ..outputs.targets import FileTarget, StoreTarget
from . import quick, update
from .inputs import count_skipped, finish_file_run, require_input
from .result import ExtractResult

if TYPE_CHECKING:
    from .pipeline import Pipeline

# torch and the model stack (engines.pipeline, engines.fidelity) are imported once a model is needed: a store
# run with nothing new, and the quick path, never import them


def _progress(quiet: bool, source: Source, enabled: Optional[bool]):
    if enabled is None:
        enabled = not quiet and sys.stderr.isatty()
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


def run_local(job: Job, progress: Optional[bool] = None) -> ExtractResult:
    """Run ``job`` (options resolved by ``ExtractOptions.resolve``) in this process."""
    source = job.input.open()
    if job.output.store:
        require_input(source, job.input.start)  # before the store is made
        return _run_store(job, source, FeatureStore(job.output.out), progress)
    target = FileTarget(job.output.out)  # a bad extension fails first
    require_input(source, job.input.start)
    pipeline = _build(job, source)
    plan = ShardPlan(size=job.update.shard_size if job.output.part else None, part=job.output.part)
    result = _run(job, pipeline, source, plan, target, progress, None)
    return finish_file_run(result, source, target, job.input, job.output.out)


def _build(job: Job, source: Source, store: Optional[FeatureStore] = None, before_executor=None) -> Pipeline:
    """The model, measured first at a precision below fp32 (on this input, or refused before anything is written),
    announced, and recorded for the quick path (the next small run, or a store's query images, need no torch)."""
    import torch

    from ..models.backends import resolve_device
    from .fidelity import announce, build_measured, measurement_images

    if job.execution.threads is not None:
        torch.set_num_threads(job.execution.threads)
    pipeline, fidelity = build_measured(job, resolve_device(job.execution.device),
                                        *measurement_images(job, source), before_executor=before_executor)
    announce(fidelity, store)
    quick.remember(job, pipeline)
    return pipeline


def _run(job: Job, pipeline: Pipeline, source: Source, plan: ShardPlan, target, progress: Optional[bool],
         store: Optional[FeatureStore], done_before: int = 0) -> ExtractResult:
    from .pipeline import process_shards

    bar = _progress(job.output.quiet, source, progress)
    if bar is not None and done_before:
        bar.update(done_before)
    start = time.perf_counter()
    retries: dict = {}
    try:
        n_done = process_shards(pipeline, source, plan, target, job.decode, job.post, bar, retries)
    except OSError as exc:
        if is_disk_full(exc):  # what is kept, for the one line the command line prints
            exc.imgfeat_written = (store is not None, getattr(target, "shards_written", 0),
                                   getattr(target, "inputs_committed", None) if store is not None else target.n_written)
        raise
    except WorkerDiedError as exc:
        advice = ("the store keeps every finished shard: rerun the same command to resume" if store is not None else
                  "nothing was written; for long runs write to a store directory (--out DIR), which resumes")
        raise WorkerDiedError(exc.cause, advice) from exc.cause
    finally:
        if bar is not None:
            bar.close()
    return ExtractResult.of_loop(n_done, target, time.perf_counter() - start, pipeline.dim, pipeline.spec.name,
                                 pipeline.report, job.output.out, retries)


def _run_store(job: Job, source: Source, store: FeatureStore, progress: Optional[bool]) -> ExtractResult:
    """A store converges on its input: the difference is extracted into new shards and published (see
    ``engines.update``). One writer at a time; ``--shard I/N`` parts share one plan and take no lock."""
    with store.writing(part=job.output.part is not None):
        return _update_store(job, source, store, progress)


def _update_store(job: Job, source: Source, store: FeatureStore, progress: Optional[bool]) -> ExtractResult:
    part = job.output.part
    upd = update.prepare(job.update, source, store, part=part is not None)
    upd.skipped = count_skipped(source, job.input.skipped_log)
    cheap = update.cheap_identity(job, source)
    if update.embeds_nothing(store, upd, cheap):  # no model
        return update.finish(job.output.out, store, upd, None, None, cheap, job)
    from .pipeline import store_identity

    def open_store(pipeline: Pipeline) -> None:  # a store that refuses this job does so before the export
        store.open(store_identity(job, pipeline, source), ignore=("input",) if job.update.append else ())

    pipeline = _build(job, source, store, open_store)
    result = None
    if upd.pending:
        done = frozenset(store.done_shards())
        plan = ShardPlan(size=job.update.shard_size, skip=done, part=part, offset=upd.base, sizes=upd.sizes)
        finished = sum(json.loads(store.marker(k).read_text())["inputs"] for k in upd.done_of(done))
        target = StoreTarget(store, upd.plan, upd.base)
        result = _run(job, pipeline, PlanSource(upd.plan, source.describe()), plan, target, progress, store,
                      finished)
        result.shards_written = target.shards_written
        result.shards_skipped = len(upd.done_of(done))
    return update.finish(job.output.out, store, upd, pipeline, result, cheap, job)
