"""``--engine ray``: the feature store's shards spread over a Ray cluster.

The driver reads the input lazily, cuts it into shards, skips the done ones, and hands each
pending shard's records (small descriptors, never pixels or models) to a pool of actors.
Each actor builds the model once (on its GPU when the cluster has GPUs; CPU actors decode
and run the model otherwise), decodes its shard, and writes it to the shared store with the
same atomic rules as the local engine. At most two shards per actor are in flight, so the
driver's memory does not grow with the input.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Iterator

import torch

from ._errors import ImgfeatError, bad_param, require
from ._loader import ShardPlan, make_loader
from ._options import ExtractOptions
from ._runner import (ExtractResult, _StoreOutput, build_pipeline, drive, prepare_model, resolve_device,
                      store_identity, wants_store)
from ._sources import Counted, ListSource, Record, open_source
from ._store import FeatureStore


class ShardWorker:
    """Ray actor body: one model per actor, one shard per call."""

    def __init__(self, opts: ExtractOptions) -> None:
        self.opts = opts
        self.device = resolve_device("cuda" if torch.cuda.is_available() and opts.device == "auto" else opts.device)
        if opts.threads:
            torch.set_num_threads(opts.threads)
        self.store = FeatureStore(opts.out)

        def same_weights(spec, model, dim) -> None:
            if model.fingerprint() != self.store.manifest["weights"]:
                raise ImgfeatError(f"this node's {spec.name} weights differ from the driver's: refusing to mix "
                                   f"features in {opts.out}")

        self.spec, _, _, self.executor, _ = build_pipeline(opts, self.device, same_weights)

    def process(self, shard: int, records: list[Record]) -> dict:
        opts = self.opts
        plan = ShardPlan(size=len(records), offset=shard)
        loader = make_loader(ListSource(tuple(records)), self.spec.preprocess, opts.batch_size, opts.workers,
                             opts.max_pixels, pin_memory=self.device.type == "cuda", plan=plan,
                             decode_timeout=opts.decode_timeout or None)
        output = _StoreOutput(self.store)
        try:
            drive(loader, self.executor, output, opts)
        except BaseException:
            output.abort()
            raise
        return {"shard": shard, "rows": output.n_written, "errors": output.n_failed}


def _pending(records: Iterator[Record], plan: ShardPlan) -> Iterator[tuple[int, list[Record]]]:
    for shard, group in itertools.groupby(enumerate(records), key=lambda t: t[0] // plan.size):
        if plan.wanted(shard):
            yield shard, [rec for _, rec in group]  # skipped shards are never materialised


def run_ray(opts: ExtractOptions) -> ExtractResult:
    ray = require("ray", "ray", "--engine ray")
    if not wants_store(opts):
        raise bad_param("out", "a feature store directory (no file extension) with --engine ray", opts.out)
    if not ray.is_initialized():
        ray.init(address=opts.ray_address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)

    source = open_source(opts.data, opts.start, opts.stop)
    spec, model, dim = prepare_model(opts, torch.device("cpu"))  # the driver only fixes the identity
    store = FeatureStore(opts.out).open(store_identity(opts, spec, model, source, dim))
    del model
    done = store.done_shards()

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:  # GPU actors run the model; their CPUs decode in DataLoader workers
        per_actor = {"num_gpus": 1, "num_cpus": max(1, cpus // gpus)}
        actor_opts = dataclasses.replace(opts, engine="local", workers=max(0, cpus // gpus - 1))
        n_actors = gpus
    else:  # CPU actors: one core each, decoding and running the model in turn
        per_actor = {"num_cpus": 1}
        actor_opts = dataclasses.replace(opts, engine="local", threads=1, workers=0, device="cpu")
        n_actors = cpus
    Actor = ray.remote(**per_actor)(ShardWorker)
    actors = [Actor.remote(actor_opts) for _ in range(n_actors)]

    start = time.perf_counter()
    idle, in_flight, n_done, n_failed, written = list(actors) * 2, {}, 0, 0, 0
    records = Counted(source.records())
    jobs = _pending(iter(records), ShardPlan(size=opts.shard_size, skip=frozenset(done), part=opts.part()))
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
            break
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        actor = in_flight.pop(ready[0])
        report = ray.get(ready[0])  # an actor's exception surfaces here; its shard stays undone
        n_done, n_failed, written = n_done + report["rows"], n_failed + report["errors"], written + 1
        idle.append(actor)
    seconds = time.perf_counter() - start
    store.refresh_manifest(total_inputs=records.n)  # the driver has read every record by now
    return ExtractResult(n_done=n_done, n_failed=n_failed, seconds=seconds, dim=dim, model=spec.name,
                         backend=f"ray x{n_actors}", out=str(opts.out), shards_written=written,
                         shards_skipped=len(done))
