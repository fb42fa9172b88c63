"""The runner: drives source -> decode -> backbone -> postprocess -> sink for one job and
reports what happened. It owns the device, precision and progress; the stages own the rest."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ._backbone import FeatureModel, build_feature_model
from ._backends import make_executor
from ._errors import ImgfeatError, bad_param
from ._loader import ShardPlan, make_loader
from ._models import ModelSpec, get_model_spec
from ._options import ExtractOptions, available_cores
from ._postprocess import postprocess, to_numpy
from ._sinks import ErrorLog, MemorySink, open_sink
from ._store import FeatureStore, ShardWriter, is_store_path
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
    shards_written: Optional[int] = None
    shards_skipped: Optional[int] = None

    @property
    def images_per_s(self) -> float:
        return self.n_done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        dest = self.out if self.out else "memory"
        failed = f"{self.n_failed} failed"
        if self.n_failed and self.errors_path:
            failed += f" (reasons in {self.errors_path})"
        if self.shards_written is not None:
            failed += f", {self.shards_written} shards written, {self.shards_skipped} already done"
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

    bar = tqdm(total=None, unit="img", dynamic_ncols=True, smoothing=0.1)

    def count() -> None:  # the total arrives when known; extraction does not wait for it
        try:
            bar.total = source.count()
        except Exception:  # noqa: BLE001 - a bar without a total is still a bar
            pass

    threading.Thread(target=count, name="imgfeat-count", daemon=True).start()
    return bar


class _FileOutput:
    """A single-file sink plus its ``.errors.tsv`` (or memory, for the API)."""

    total_inputs: Optional[int] = None  # set by drive() at the end of the input

    def __init__(self, out: Optional[str]) -> None:
        self.sink = open_sink(out) if out is not None else MemorySink()
        self.error_log = ErrorLog(out)

    def open(self, dim: int, dtype: np.dtype) -> None:
        self.sink.open(dim, dtype)

    def write(self, shard, ids, paths, rows) -> int:
        rejected = self.sink.write(ids, paths, rows) or []
        self.error_log.write([(ids[i], paths[i], reason) for i, reason in rejected])
        return len(ids) - len(rejected)

    def errors(self, shard, rows) -> None:
        self.error_log.write(rows)

    def end_shard(self, shard, n_inputs: int) -> None:
        pass

    def close(self) -> None:
        self.sink.close()
        self.error_log.close()

    def abort(self) -> None:
        self.sink.abort()
        self.error_log.abort()

    @property
    def n_failed(self) -> int:
        return self.error_log.count


class _StoreOutput:
    """Routes each batch to its shard's writer and commits the shard on its last batch."""

    total_inputs: Optional[int] = None  # set by drive() at the end of the input

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self.writers: dict[int, ShardWriter] = {}
        self.n_failed = 0
        self.n_written = 0
        self.shards_written = 0

    def open(self, dim: int, dtype: np.dtype) -> None:
        pass

    def _writer(self, shard: int) -> ShardWriter:
        if shard not in self.writers:
            self.writers[shard] = self.store.shard_writer(shard)
        return self.writers[shard]

    def write(self, shard, ids, paths, rows) -> int:
        self._writer(shard).write(ids, paths, rows)
        self.n_written += len(ids)
        return len(ids)

    def errors(self, shard, rows) -> None:
        if rows:
            self._writer(shard).errors(rows)
            self.n_failed += len(rows)

    def end_shard(self, shard, n_inputs: int) -> None:
        writer = self._writer(shard)
        writer.n_inputs = n_inputs
        writer.commit()
        del self.writers[shard]
        self.shards_written += 1

    def close(self) -> None:
        for writer in self.writers.values():  # cannot happen: every shard ends with a last batch
            writer.abort()

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


def store_identity(opts: ExtractOptions, spec: ModelSpec, model: FeatureModel, source, dim: int) -> dict:
    """What a store must agree on to be resumed (JSON-normalised so it compares with the file)."""
    identity = {"model": spec.name, "layer": opts.layer or spec.default_layer, "pool": opts.pool or spec.default_pool,
                "weights": model.fingerprint(), "preprocess": dataclasses.asdict(spec.preprocess),
                "dim": dim, "dtype": opts.dtype, "relu": opts.relu, "l2": opts.l2, "input": source.describe(),
                "start": opts.start, "stop": opts.stop, "shard_size": opts.shard_size}
    return json.loads(json.dumps(identity))


def wants_store(opts: ExtractOptions) -> bool:
    return opts.out is not None and (opts.format == "store" or is_store_path(opts.out))


def build_pipeline(opts: ExtractOptions, device: torch.device, before_executor=None):
    """Model, output dimension and the executor for ``opts`` on ``device`` (also used by Ray actors).

    ``before_executor(spec, model, dim)`` runs before the (possibly slow) export and timing,
    so a store that refuses this job does so at once."""
    spec, model, dim = prepare_model(opts, device)
    if opts.random_weights:
        log.warning("running %s with RANDOM weights (--random-weights): the features are not pretrained", spec.name)
    if before_executor is not None:
        before_executor(spec, model, dim)
    executor, report = make_executor(
        model, backend=opts.backend, device=device, precision=opts.precision,
        autocast=lambda: autocast_for(opts.precision, device), model_name=spec.name,
        layer=opts.layer or spec.default_layer, pool=opts.pool or spec.default_pool,
        input_size=spec.preprocess.crop_size, batch_size=opts.batch_size,
        threads=opts.threads or available_cores())
    return spec, model, dim, executor, report


class WorkerDiedError(ImgfeatError):
    """A decode worker process ended without a word: the OS killed it, or a native decoder crashed."""

    def __init__(self, cause: BaseException, resumable: bool) -> None:
        then = ("the store keeps every finished shard: rerun the same command to resume" if resumable else
                "nothing was written; for long runs write to a store directory (--out DIR), which resumes")
        super().__init__(
            f"a decode worker died ({cause}). The usual causes are the OS killing it for lack of memory "
            f"(fewer --workers, a smaller --batch-size) or a crash inside an image decoder (run with --workers 0 "
            f"to see which file); {then}.")


def drive(loader, executor, output, opts: ExtractOptions, bar=None) -> int:
    """The loop: decoded batches -> executor -> postprocess -> output; returns vectors written."""
    n_done, shard_inputs = 0, 0
    with torch.inference_mode():
        for batch in loader:
            if "total" in batch:  # end of input: how many records the source held
                output.total_inputs = batch["total"]
                if bar is not None:
                    bar.total = batch["total"]  # exact now, whatever the background count reached
                continue
            shard, ids, paths = batch["shard"], batch["ids"], batch["paths"]
            output.errors(shard, batch["errors"])
            if ids:
                rows = to_numpy(postprocess(executor(batch["pixels"]), opts.relu, opts.l2), opts.dtype)
                n_done += output.write(shard, ids, paths, rows)
            shard_inputs += batch["n"]
            if batch["last"]:
                output.end_shard(shard, shard_inputs)
                shard_inputs = 0
            if bar is not None:
                bar.update(batch["n"])
                bar.set_postfix(failed=output.n_failed, refresh=False)
    return n_done


def run(opts: ExtractOptions, progress: Optional[bool] = None) -> ExtractResult:
    """Run one extraction job described by ``opts``."""
    opts.validate()
    if opts.engine == "ray":
        from ._engine_ray import run_ray

        return run_ray(opts)
    source = open_source(opts.data, opts.start, opts.stop)
    store = FeatureStore(opts.out) if wants_store(opts) else None
    output = _FileOutput(opts.out) if store is None else None  # a bad extension fails here, early
    device = resolve_device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    plan = ShardPlan(size=opts.shard_size if (store is not None or opts.part()) else None, part=opts.part())

    def open_store(spec: ModelSpec, model: FeatureModel, dim: int) -> None:
        store.open(store_identity(opts, spec, model, source, dim))

    spec, model, dim, executor, report = build_pipeline(opts, device, open_store if store is not None else None)
    if store is not None:
        plan = dataclasses.replace(plan, skip=frozenset(store.done_shards()))
        output = _StoreOutput(store)
    loader = make_loader(source, spec.preprocess, opts.batch_size, opts.workers, opts.max_pixels,
                         pin_memory=device.type == "cuda", plan=plan, decode_timeout=opts.decode_timeout or None)
    bar = _progress(opts, source, progress)
    if bar is not None and store is not None and plan.skip:
        bar.update(sum(m["inputs"] for m in store.markers()))  # a resumed run starts where the last one stopped
    start = time.perf_counter()
    output.open(dim, np.dtype(opts.dtype))
    try:
        n_done = drive(loader, executor, output, opts, bar)
        output.close()
    except BaseException as exc:
        output.abort()
        if isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc):
            raise WorkerDiedError(exc, resumable=store is not None) from exc
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    result = ExtractResult(n_done=n_done, n_failed=output.n_failed, seconds=seconds, dim=dim, model=spec.name,
                           backend=report["backend"], backend_report=report,
                           out=str(opts.out) if opts.out is not None else None)
    if store is not None:
        store.refresh_manifest(total_inputs=output.total_inputs)
        result.shards_written = output.shards_written
        result.shards_skipped = len(plan.skip)
        if output.n_failed:
            result.errors_path = str(store.shard_dir / "*.errors.tsv")
    else:
        log_ = output.error_log
        result.errors_path = str(log_.path) if log_.path and log_.count else None
        result.errors = log_.rows
        if isinstance(output.sink, MemorySink):
            result.ids, result.paths, result.features = output.sink.ids, output.sink.paths, output.sink.features
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
