"""The local engine: one process runs the model, a DataLoader's workers decode, and every pending
shard of the input (all of it, or the ``--shard I/N`` part) streams to a file or a feature store."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TYPE_CHECKING, Optional

from ..data.shards import ShardPlan
from ..data.sources import PlanSource, Source, open_source
from ..errors import WorkerDiedError, is_disk_full
from ..options import ExtractOptions
from ..outputs.store import FeatureStore
from ..outputs.targets import FileTarget, StoreTarget
from . import quick, update
from .inputs import count_skipped, finish_file_run, require_input
from .result import ExtractResult

if TYPE_CHECKING:
    from .pipeline import Pipeline

# torch and the model stack (engines.pipeline, engines.fidelity) are imported once a model is needed: a store
# run with nothing new, and the quick path, never import them


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
    source = open_source(opts.data, opts.start, opts.stop, image_column=opts.image_column,
                         id_column=opts.id_column)
    if opts.wants_store():
        return _run_store(opts, source, FeatureStore(opts.out), progress)
    from ..models.backends import resolve_device
    from .fidelity import announce, build_measured, measurement_images

    target = FileTarget(opts.out)  # a bad extension fails early
    require_input(source, opts)
    _threads(opts)
    plan = ShardPlan(size=opts.shard_size if opts.part() else None, part=opts.part())
    pipeline, fidelity = build_measured(opts, resolve_device(opts.device), *measurement_images(opts, source))
    announce(fidelity, None)
    quick.remember(opts, pipeline)  # the next small run of these options needs no torch
    result = _run(opts, pipeline, source, plan, target, _progress(opts, source, progress), None)
    return finish_file_run(result, source, target, opts)


def _threads(opts: ExtractOptions) -> None:
    import torch

    if opts.threads is not None:
        torch.set_num_threads(opts.threads)


def _run(opts: ExtractOptions, pipeline: Pipeline, source: Source, plan: ShardPlan, target, bar,
         store: Optional[FeatureStore]) -> ExtractResult:
    from .pipeline import process_shards

    start = time.perf_counter()
    retries: dict = {}
    try:
        n_done = process_shards(pipeline, source, plan, target, opts, bar, retries)
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
                                 pipeline.report, opts.out, retries)


def _run_store(opts: ExtractOptions, source: Source, store: FeatureStore,
               progress: Optional[bool]) -> ExtractResult:
    """A store converges on its input: the difference is extracted into new shards and published (see
    ``engines.update``). One writer at a time; ``--shard I/N`` parts share one plan and take no lock."""
    require_input(source, opts)
    with store.writing(part=opts.part() is not None):
        return _update_store(opts, source, store, progress)


def _update_store(opts: ExtractOptions, source: Source, store: FeatureStore,
                  progress: Optional[bool]) -> ExtractResult:
    part = opts.part()
    upd = update.prepare(opts.update_part, source, store, part=part is not None)
    upd.skipped = count_skipped(source, opts)
    cheap = update.cheap_identity(opts, source)
    if update.embeds_nothing(store, upd, cheap):  # no model
        return update.finish(opts.out, store, upd, None, None, cheap)
    from ..models.backends import resolve_device
    from .fidelity import announce, build_measured, measurement_images
    from .pipeline import store_identity

    def open_store(pipeline: Pipeline) -> None:
        store.open(store_identity(opts, pipeline, source), ignore=("input",) if opts.append else ())

    _threads(opts)
    # a lower precision: measured on this input (or refused) before anything is written
    pipeline, fidelity = build_measured(opts, resolve_device(opts.device), *measurement_images(opts, source),
                                        before_executor=open_store)
    announce(fidelity, store)
    quick.remember(opts, pipeline)  # query images of this store need no torch
    result = None
    if upd.pending:
        done = frozenset(store.done_shards())
        plan = ShardPlan(size=opts.shard_size, skip=done, part=part, offset=upd.base)
        plan_source = PlanSource(upd.plan, source.describe())
        bar = _progress(opts, plan_source, progress)
        if bar is not None:
            bar.update(sum(json.loads(store.marker(k).read_text())["inputs"] for k in upd.done_of(done)))
        target = StoreTarget(store, upd.plan, upd.base)
        result = _run(opts, pipeline, plan_source, plan, target, bar, store)
        result.shards_written = target.shards_written
        result.shards_skipped = len(upd.done_of(done))
    return update.finish(opts.out, store, upd, pipeline, result, cheap)
