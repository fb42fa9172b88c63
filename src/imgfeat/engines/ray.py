"""``--engine ray``: the feature store's shards spread over a Ray cluster.

The driver reads the input lazily, gets the pending shards from the one shard cutter
(``data.shards.cut_shards``: done shards and other parts are skipped there), and hands each
pending shard's records (small descriptors, never pixels or models) to a pool of actors. Each
actor builds the model once (on its GPU when the cluster has GPUs; CPU actors decode and run the
model otherwise), processes its shard with the same :func:`process_shards` as the local engine,
and writes it to the shared store with the same atomic rules. At most two shards per actor are in
flight, so the driver's memory does not grow with the input.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Iterator, Optional

import torch

from ..data.shards import ShardPlan, cut_shards
from ..data.sources import ListSource, PlanSource, Record, open_source
from ..errors import bad_param, require
from ..models.backends import resolve_device
from ..options import ExtractOptions
from ..outputs.store import FeatureStore
from ..outputs.targets import StoreTarget
from .fidelity import FidelityError, announce, build_measured, measurement_images
from . import update
from .local import wants_store
from .pipeline import ExtractResult, Pipeline, count_skipped, prepare_model, process_shards, require_input, \
    store_identity


class ShardWorker:
    """Ray actor body: one model per actor, one shard per call."""

    def __init__(self, opts: ExtractOptions, sample=None, calibration=None) -> None:
        self.opts = opts
        self.device = resolve_device("cuda" if torch.cuda.is_available() and opts.device == "auto" else opts.device)
        if opts.threads:
            torch.set_num_threads(opts.threads)
        self.store = FeatureStore(opts.out)

        def same_weights(pipeline: Pipeline) -> None:
            self.store.check_weights(pipeline.model.fingerprint(), pipeline.spec.name, opts.weights)

        # a lower precision is measured by each actor on the driver's sample: the same images (and int8
        # calibration), so every actor picks the same configuration on the same hardware
        self.refused: Optional[str] = None
        try:
            self.pipeline, self.figures = build_measured(opts, self.device, sample, calibration, same_weights)
        except FidelityError as exc:  # said by the driver, as the local engine says it
            self.pipeline, self.figures, self.refused = None, None, str(exc)

    def fidelity(self) -> tuple[Optional[dict], Optional[str]]:
        return self.figures, self.refused

    def process(self, shard: int, records: list[Record], plan: Optional[str] = None, base: int = 0) -> dict:
        target = StoreTarget(self.store, plan, base)
        retries: dict = {}
        process_shards(self.pipeline, ListSource(tuple(records)), ShardPlan(size=len(records), offset=shard),
                       target, self.opts, retries=retries)
        return {"shard": shard, "rows": target.n_written, "errors": target.n_failed, **retries}


def _pending(records: Iterator[Record], plan: ShardPlan, plan_file: Optional[str],
             base: int) -> Iterator[tuple]:
    for shard, group in cut_shards(records, plan):
        yield shard, list(group), plan_file, base  # only wanted shards are ever materialised


def _actors(ray, opts: ExtractOptions, sample, calibration) -> list:
    """One actor per GPU (its CPUs decode in DataLoader workers), else one single-threaded actor per CPU."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:
        per_actor = {"num_gpus": 1, "num_cpus": max(1, cpus // gpus)}
        actor_opts = dataclasses.replace(opts, engine="local", workers=max(0, cpus // gpus - 1))
        n_actors = gpus
    else:
        per_actor = {"num_cpus": 1}
        actor_opts = dataclasses.replace(opts, engine="local", threads=1, workers=0, device="cpu")
        n_actors = cpus
    actor = ray.remote(**per_actor)(ShardWorker)
    sample, calibration = ray.put(sample), ray.put(calibration)
    return [actor.remote(actor_opts, sample, calibration) for _ in range(n_actors)]


def _dispatch(ray, actors: list, jobs: Iterator[tuple]) -> dict:
    """Keep every actor busy with at most two shards; returns the totals of the actors' reports (rows, error
    rows, decodes retried and recovered) and the shards written."""
    idle, in_flight = list(actors) * 2, {}
    totals = {"rows": 0, "errors": 0, "retried": 0, "recovered": 0, "shards": 0}
    exhausted = False
    while True:
        while idle and not exhausted:
            job = next(jobs, None)
            if job is None:
                exhausted = True
                break
            actor = idle.pop()
            in_flight[actor.process.remote(*job)] = actor
        if not in_flight:
            return totals
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        actor = in_flight.pop(ready[0])
        report = ray.get(ready[0])  # an actor's exception surfaces here; its shard stays undone
        for key in ("rows", "errors", "retried", "recovered"):
            totals[key] += report.get(key, 0)
        totals["shards"] += 1
        idle.append(actor)


def run_ray(opts: ExtractOptions, progress: Optional[bool] = None) -> ExtractResult:
    ray = require("ray", "ray", "--engine ray")
    if not wants_store(opts):
        raise bad_param("out", "a feature store directory (no file extension) with --engine ray", opts.out)
    if not ray.is_initialized():
        ray.init(address=opts.ray_address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)

    source = open_source(opts.data, opts.start, opts.stop, image_column=opts.image_column,
                         id_column=opts.id_column)
    store = FeatureStore(opts.out)
    require_input(source, opts)
    if opts.part() is not None:
        return _run(ray, opts, source, store, part=True)
    with store.writer_lock():  # the driver is the store's one writer; actors write shards of its plan
        return _run(ray, opts, source, store, part=False)


def _run(ray, opts: ExtractOptions, source, store: FeatureStore, part: bool) -> ExtractResult:
    upd = update.prepare(opts, source, store, part=part)
    upd.skipped = count_skipped(source, opts)
    cheap = update.cheap_identity(opts, source)
    if upd.nothing_to_do and store.manifest.get("options") == cheap:
        return update.finish(opts, store, upd, None, None)
    pipeline = prepare_model(opts, torch.device("cpu"))  # the driver only fixes the identity
    store.open(store_identity(opts, pipeline, source), ignore=("input",) if opts.append else ())
    if not upd.pending:
        return update.finish(opts, store, upd, pipeline, None, cheap)
    done = store.done_shards()
    actors = _actors(ray, opts, *measurement_images(opts, source))
    figures, refused = ray.get(actors[0].fidelity.remote())
    if refused is not None:
        raise FidelityError(refused)
    announce(figures, store)
    start = time.perf_counter()
    plan = ShardPlan(size=opts.shard_size, skip=frozenset(done), part=opts.part(), offset=upd.base)
    records = PlanSource(upd.plan, source.describe()).records()
    totals = _dispatch(ray, actors, _pending(records, plan, upd.plan, upd.base))
    seconds = time.perf_counter() - start
    skipped = len([k for k in done if upd.base <= k < upd.base + upd.shards])
    result = ExtractResult(n_done=totals["rows"], n_failed=totals["errors"], seconds=seconds, dim=pipeline.dim,
                           model=pipeline.spec.name, backend=f"ray x{len(actors)}", out=str(opts.out),
                           shards_written=totals["shards"], shards_skipped=skipped,
                           n_retried=totals["retried"], n_recovered=totals["recovered"])
    return update.finish(opts, store, upd, pipeline, result, cheap)
