"""Engine layer: how a job's shards are spread. Engines are chosen from a table and share one
signature, ``run(opts, progress) -> ExtractResult`` (img2dataset ``distributor.py`` habit):

``local`` (this process; ``--shard I/N`` parts are several local runs) and ``ray`` (a Ray cluster); before
either, ``quick`` serves a small job whose model is already exported without importing torch.
Both build the model with ``pipeline.build_pipeline`` and process shards with
``pipeline.process_shards``. May import every layer below: data, models, outputs, options.
"""

from __future__ import annotations

from typing import Callable, Optional

from ..options import ExtractOptions
from .result import ExtractResult


def _local(opts: ExtractOptions, progress: Optional[bool] = None) -> ExtractResult:
    from .local import run_local

    return run_local(opts, progress)


def _ray(opts: ExtractOptions, progress: Optional[bool] = None) -> ExtractResult:
    from .ray import run_ray  # Ray is an optional extra: imported only when asked for

    return run_ray(opts, progress)


ENGINES: dict[str, Callable[..., ExtractResult]] = {"local": _local, "ray": _ray}


def run(opts: ExtractOptions, progress: Optional[bool] = None) -> ExtractResult:
    """Validate ``opts`` and run it with the engine it names (a small job with a recorded export: the quick path,
    without torch)."""
    from .quick import try_run

    opts.validate()
    result = try_run(opts, progress)
    return result if result is not None else ENGINES[opts.engine](opts, progress)


__all__ = ["ENGINES", "ExtractResult", "run"]
