"""The runner: drives source -> decode -> backbone -> postprocess -> sink for one job and
reports what happened. It owns the device, precision and progress; the stages own the rest."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ._backbone import FeatureModel, build_feature_model
from ._backends import make_executor
from ._errors import bad_param
from ._loader import make_loader
from ._models import ModelSpec, get_model_spec
from ._options import ExtractOptions, available_cores
from ._postprocess import postprocess, to_numpy
from ._sinks import ErrorLog, MemorySink, open_sink
from ._sources import open_source

log = logging.getLogger(__name__)


@dataclass
class ExtractResult:
    """What a run did. ``ids``/``features`` are filled only when no ``out`` file was given."""

    n_done: int
    n_failed: int
    seconds: float
    dim: int
    model: str
    backend: str = "torch"
    out: Optional[str] = None
    errors_path: Optional[str] = None
    ids: Optional[list[str]] = None
    paths: Optional[list[str]] = None
    features: Optional[np.ndarray] = None
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    backend_report: dict = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.n_done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        dest = self.out if self.out else "memory"
        failed = f"{self.n_failed} failed"
        if self.n_failed and self.errors_path:
            failed += f" (reasons in {self.errors_path})"
        return (f"imgfeat: {self.n_done} done, {failed}, {self.images_per_s:.1f} images/s, "
                f"{self.seconds:.1f} s, {self.dim}-d {self.model} ({self.backend}) -> {dest}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise bad_param("device", "auto, cpu, cuda, cuda:N or mps", name) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise bad_param("device", "a device present on this machine (no CUDA GPU is visible)", name)
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise bad_param("device", "a device present on this machine (MPS is not available)", name)
    if dev.type not in ("cpu", "cuda", "mps"):
        raise bad_param("device", "auto, cpu, cuda, cuda:N or mps", name)
    return dev


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise bad_param("precision", "fp32 or bf16 on the CPU (fp16 needs a GPU)", precision)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(opts: ExtractOptions, device: torch.device) -> tuple[ModelSpec, FeatureModel, int]:
    """Build the feature model on ``device`` and find its output dimension with one dry forward."""
    spec = get_model_spec(opts.model)
    model = build_feature_model(spec, opts.layer, opts.pool, opts.weights, opts.random_weights).to(device)
    h, w = spec.preprocess.crop_size
    with torch.inference_mode(), autocast_for(opts.precision, device):
        dim = model(torch.zeros((1, 3, h, w), dtype=torch.uint8, device=device)).shape[1]
    return spec, model, int(dim)


def _progress(opts: ExtractOptions, source, enabled: Optional[bool]):
    if enabled is None:
        enabled = not opts.quiet and sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=source.count(), unit="img", dynamic_ncols=True, smoothing=0.1)


def run(opts: ExtractOptions, progress: Optional[bool] = None) -> ExtractResult:
    """Run one extraction job described by ``opts``."""
    opts.validate()
    source = open_source(opts.data, opts.start, opts.stop)
    sink = open_sink(opts.out) if opts.out is not None else MemorySink()  # a bad extension fails here, early
    device = resolve_device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    spec, model, dim = prepare_model(opts, device)
    if opts.random_weights:
        log.warning("running %s with RANDOM weights (--random-weights): the features are not pretrained", spec.name)
    executor, report = make_executor(
        model, backend=opts.backend, device=device, precision=opts.precision,
        autocast=lambda: autocast_for(opts.precision, device), model_name=spec.name,
        layer=opts.layer or spec.default_layer, pool=opts.pool or spec.default_pool,
        input_size=spec.preprocess.crop_size, batch_size=opts.batch_size,
        threads=opts.threads or available_cores())

    errors = ErrorLog(opts.out)
    loader = make_loader(source, spec.preprocess, opts.batch_size, opts.workers, opts.max_pixels,
                         pin_memory=device.type == "cuda")
    bar = _progress(opts, source, progress)
    n_done = 0
    start = time.perf_counter()
    sink.open(dim, np.dtype(opts.dtype))
    try:
        with torch.inference_mode():
            for batch in loader:
                errors.write(batch["errors"])
                ids, paths = batch["ids"], batch["paths"]
                if ids:
                    feats = executor(batch["pixels"])
                    rows = to_numpy(postprocess(feats, opts.relu, opts.l2), opts.dtype)
                    rejected = sink.write(ids, paths, rows) or []
                    errors.write([(ids[i], paths[i], reason) for i, reason in rejected])
                    n_done += len(ids) - len(rejected)
                if bar is not None:
                    bar.update(batch["n"])
                    bar.set_postfix(failed=errors.count, refresh=False)
        sink.close()
        errors.close()
    except BaseException:
        sink.abort()
        errors.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    result = ExtractResult(n_done=n_done, n_failed=errors.count, seconds=seconds, dim=dim, model=spec.name,
                           backend=report["backend"], backend_report=report,
                           out=str(opts.out) if opts.out is not None else None,
                           errors_path=str(errors.path) if errors.path and errors.count else None,
                           errors=errors.rows)
    if isinstance(sink, MemorySink):
        result.ids, result.paths, result.features = sink.ids, sink.paths, sink.features
    return result


def extract(data=None, out: Optional[str | Path] = None, *, options: Optional[ExtractOptions] = None,
            progress: Optional[bool] = False, **kwargs) -> ExtractResult:
    """Extract one feature vector per image.

    ``data`` is a folder, a TSV of ``id<TAB>path``, a text list of paths, or a Python list of
    paths or ``(id, path)`` pairs. With ``out`` the vectors stream to that file (format by
    extension); without it they are returned in ``result.features`` (rows match ``result.ids``).
    Keyword arguments are the fields of :class:`ExtractOptions`.
    """
    opts = dataclasses.replace(options) if options is not None else ExtractOptions()
    for key, value in kwargs.items():
        if not hasattr(opts, key):
            raise TypeError(f"extract() got an unexpected keyword argument {key!r}")
        setattr(opts, key, value)
    if data is not None:
        opts.data = data
    if out is not None:
        opts.out = str(out)
    return run(opts, progress=progress)
