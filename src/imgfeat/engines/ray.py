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

import os
import time
from typing import Callable, Iterator, Optional

import torch

from ..data.shards import ShardPlan, cut_shards
from ..data.sources import ListSource, PlanSource, Record
from ..errors import bad_param, require
from ..models.backends import resolve_device
from ..options import Job
from ..outputs.store import FeatureStore
from ..outputs.targets import StoreTarget
from .fidelity import FidelityError, announce, build_measured, measurement_images
from . import update
from .pipeline import ExtractResult, Pipeline, count_skipped, prepare_model, process_shards, require_input, \
    store_identity


class ShardWorker:
    """Ray actor body: one model per actor, one shard per call."""

    def __init__(self, job: Job, sample=None, calibration=None) -> None:
        self.job = job
        device, threads = job.execution.device, job.execution.threads
        self.device = resolve_device("cuda" if torch.cuda.is_available() and device == "auto" else device)
        if threads:
            torch.set_num_threads(threads)
        self.store = FeatureStore(job.output.out)

        def same_weights(pipeline: Pipeline) -> None:
            self.store.check_weights(pipeline.model.fingerprint(), pipeline.spec.name, job.model.weights)

        # a lower precision is measured by each actor on the driver's sample: the same images (and int8
        # calibration), so every actor picks the same configuration on the same hardware
        self.refused: Optional[str] = None
        try:
            self.pipeline, self.figures = build_measured(job, self.device, sample, calibration, same_weights)
        except FidelityError as exc:  # said by the driver, as the local engine says it
            self.pipeline, self.figures, self.refused = None, None, str(exc)

    def fidelity(self) -> tuple[Optional[dict], Optional[str]]:
        return self.figures, self.refused

    def process(self, shard: int, records: list[Record], plan: Optional[str] = None, base: int = 0) -> dict:
        target = StoreTarget(self.store, plan, base)
        retries: dict = {}
        process_shards(self.pipeline, ListSource(tuple(records)), ShardPlan(size=len(records), offset=shard),
                       target, self.job.decode, self.job.post, retries=retries)
        return {"shard": shard, "rows": target.n_written, "errors": target.n_failed, "pid": os.getpid(), **retries}


def _pending(records: Iterator[Record], plan: ShardPlan, plan_file: Optional[str],
             base: int) -> Iterator[tuple]:
    for shard, group in cut_shards(records, plan):
        yield shard, list(group), plan_file, base  # only wanted shards are ever materialised


MAX_DEATHS = 2  # a shard during which its actor died this many times is reported, not retried again
_ON_REPORT: Optional[Callable[[dict], None]] = None  # tests: called in the driver after each shard's report


class Fleet:
    """The actors of a run: one per GPU (its CPUs decode in DataLoader workers), else one single-threaded actor per
    CPU, as many as the cluster has room for *now*: a node that joins gets actors, a dead actor is replaced while
    there is room for it (a node that left has none)."""

    def __init__(self, ray, job: Job, sample, calibration) -> None:
        self.ray = ray
        resources = ray.cluster_resources()
        self.gpu = int(resources.get("GPU", 0)) > 0
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        if self.gpu:
            per_actor = {"num_gpus": 1, "num_cpus": max(1, cpus // gpus)}
            self.actor_job = job.replace(decode={"workers": max(0, cpus // gpus - 1)})
        else:
            per_actor = {"num_cpus": 1}
            self.actor_job = job.replace(decode={"workers": 0}, execution={"threads": 1, "device": "cpu"})
        self.per_actor = per_actor
        self.cls = ray.remote(**per_actor)(ShardWorker)
        self.sample, self.calibration = ray.put(sample), ray.put(calibration)
        self.actors: list = []
        self.grow()

    def capacity(self) -> int:
        resources = self.ray.cluster_resources()
        if self.gpu:
            return int(resources.get("GPU", 0))
        return int(resources.get("CPU", 0)) // self.per_actor["num_cpus"]

    def grow(self) -> list:
        """Start actors up to the cluster's capacity; returns the new ones."""
        new = [self.cls.remote(self.actor_job, self.sample, self.calibration)
               for _ in range(max(0, self.capacity() - len(self.actors)))]
        if not self.actors and not new:
            new = [self.cls.remote(self.actor_job, self.sample, self.calibration)]
        self.actors += new
        return new

    def lost(self, actor) -> None:
        self.actors = [a for a in self.actors if a is not actor]


def _dispatch(ray, fleet: Fleet, jobs: Iterator[tuple]) -> dict:
    """Keep every actor busy with at most two shards. A shard whose actor dies (a node removed, the OOM killer)
    goes back to the queue and is given to another actor; the shard the actor was running when it died is charged
    with the death, and after MAX_DEATHS of them it is reported instead of retried. Nodes that join get actors.
    Returns the totals of the actors' reports and what was lost."""
    from collections import Counter, deque

    totals = {"rows": 0, "errors": 0, "retried": 0, "recovered": 0, "shards": 0, "actors_lost": 0,
              "shards_retried": 0, "failed": [], "by_pid": Counter()}
    idle = [a for a in fleet.actors for _ in range(2)]
    in_flight: dict = {}  # ref -> (actor, job)
    held: dict = {}  # actor -> its refs in submission order (an actor runs one at a time: the first is running)
    again: deque = deque()
    deaths: Counter = Counter()
    exhausted = False
    while True:
        idle += [a for a in fleet.grow() for _ in range(2)]  # a node joined: its actors take shards at once
        while idle and (again or not exhausted):
            job = again.popleft() if again else next(jobs, None)
            if job is None:
                exhausted = True
                break
            actor = idle.pop()
            ref = actor.process.remote(*job)
            in_flight[ref] = (actor, job)
            held.setdefault(actor, []).append(ref)
        if not in_flight:
            return totals
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=2.0)  # wake up to see nodes that joined
        if not ready:
            continue
        actor, job = in_flight.pop(ready[0])
        try:
            report = ray.get(ready[0])
        except ray.exceptions.RayActorError as exc:
            refs = held.pop(actor, [ready[0]])
            running = refs[0]
            for ref in refs:
                lost_job = job if ref == ready[0] else in_flight.pop(ref)[1]
                shard = lost_job[0]
                if ref == running:
                    deaths[shard] += 1
                if deaths[shard] >= MAX_DEATHS:
                    totals["failed"].append((shard, f"its actor died {deaths[shard]} times while it ran "
                                                    f"({type(exc).__name__}): an image that takes a worker down? "
                                                    "rerunning retries it"))
                else:
                    again.append(lost_job)
                    totals["shards_retried"] += 1
            idle = [a for a in idle if a is not actor]
            fleet.lost(actor)
            totals["actors_lost"] += 1
            continue
        held[actor].remove(ready[0])
        for key in ("rows", "errors", "retried", "recovered"):
            totals[key] += report.get(key, 0)
        totals["shards"] += 1
        totals["by_pid"][report.get("pid")] += 1
        idle.append(actor)
        if _ON_REPORT is not None:
            _ON_REPORT(report)


def run_ray(job: Job, progress: Optional[bool] = None) -> ExtractResult:
    ray = require("ray", "ray", "--engine ray")
    out = job.output.out
    if not job.output.store:
        raise bad_param("out", "a feature store directory (no file extension) with --engine ray", out)
    if not ray.is_initialized():
        ray.init(address=job.ray_address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)

    source = job.input.open()
    store = FeatureStore(out)
    require_input(source, job.input.start)
    part = job.output.part is not None
    with store.writing(part=part):  # the driver is the writer; actors write its plan's shards
        return _run(ray, job, source, store, part=part)


def _run(ray, job: Job, source, store: FeatureStore, part: bool) -> ExtractResult:
    out = job.output.out
    upd = update.prepare(job.update, source, store, part=part)
    upd.skipped = count_skipped(source, job.input.skipped_log)
    cheap = update.cheap_identity(job, source)
    if update.embeds_nothing(store, upd, cheap):  # no model
        return update.finish(out, store, upd, None, None, cheap, job)
    pipeline = prepare_model(job.model, job.execution, torch.device("cpu"))  # the driver only fixes the identity
    store.open(store_identity(job, pipeline, source), ignore=("input",) if job.update.append else ())
    if not upd.pending:
        return update.finish(out, store, upd, pipeline, None, cheap, job)
    done = store.done_shards()
    fleet = Fleet(ray, job, *measurement_images(job, source))
    figures, refused = ray.get(fleet.actors[0].fidelity.remote())
    if refused is not None:
        raise FidelityError(refused)
    announce(figures, store)
    start = time.perf_counter()
    plan = ShardPlan(size=job.update.shard_size, skip=frozenset(done), part=job.output.part, offset=upd.base,
                     sizes=upd.sizes)
    records = PlanSource(upd.plan, source.describe()).records()
    totals = _dispatch(ray, fleet, _pending(records, plan, upd.plan, upd.base))
    seconds = time.perf_counter() - start
    skipped = len(upd.done_of(done))
    result = ExtractResult(n_done=totals["rows"], n_failed=totals["errors"], seconds=seconds, dim=pipeline.dim,
                           model=pipeline.spec.name, backend=f"ray x{len(fleet.actors)}", out=str(out),
                           shards_written=totals["shards"], shards_skipped=skipped,
                           n_retried=totals["retried"], n_recovered=totals["recovered"],
                           actors_lost=totals["actors_lost"], shards_retried=totals["shards_retried"],
                           failed_shards=totals["failed"], by_worker=dict(totals["by_pid"]))
    return update.finish(out, store, upd, pipeline, result, cheap, job)
