"""Engine layer: how a job's shards are spread. Engines are chosen from a table and share one
signature, ``run(job, progress) -> ExtractResult``, on the options resolved once into a ``Job`` of parts (img2dataset ``distributor.py`` habit):

``local`` (this process; ``--shard I/N`` parts are several local runs) and ``ray`` (a Ray cluster); before
either, ``quick`` serves a small job whose model is already exported without importing torch.
Both build the model with ``pipeline.build_pipeline`` and process shards with
``pipeline.process_shards``. May import every layer below: data, models, outputs, options.
"""

from __future__ import annotations

from typing import Callable, Optional

from ..options import ExtractOptions, Job
from .result import ExtractResult


def _local(job: Job, progress: Optional[bool] = None) -> ExtractResult:
    from .local import run_local

    return run_local(job, progress)


def _ray(job: Job, progress: Optional[bool] = None) -> ExtractResult:
    from .ray import run_ray  # Ray is an optional extra: imported only when asked for

    return run_ray(job, progress)


ENGINES: dict[str, Callable[..., ExtractResult]] = {"local": _local, "ray": _ray}


def run(opts: ExtractOptions, progress: Optional[bool] = None) -> ExtractResult:
    """Validate ``opts`` and run it with the engine it names (a small job with a recorded export: the quick path,
    without torch)."""
    from .quick import try_run

    job = opts.resolve()
    result = try_run(job, progress)
    return result if result is not None else ENGINES[job.engine](job, progress)


__all__ = ["ENGINES", "ExtractResult", "run"]
