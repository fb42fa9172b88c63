"""Inference backends for the backbone stage: torch (the reference and the GPU path), ONNX
Runtime and OpenVINO (CPU). Every exported model is checked against torch before it is used,
and ``auto`` times the candidates once per model/layer/weights/batch/threads and caches the winner.

Exports live in ``$IMGFEAT_CACHE`` (default ``~/.cache/imgfeat``) under ``export/<key>/``, where
the key hashes the model name, layer, pool, input size, the weights' bytes and the versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .._version import __version__
from ..errors import ImgfeatError, bad_param
from ..files import atomic_dir, cache_dir, write_atomic
from .backbone import FeatureModel
from .names import BACKENDS, CPU_BACKENDS, PRECISIONS  # noqa: F401 - re-exported
from .runtimes import onnx_runner, openvino_runner

log = logging.getLogger(__name__)

MAX_REL_DIFF = 1e-4  # fp32: max |backend - torch| / max |torch| on a check batch
MIN_COSINE_BF16 = 0.99  # bf16: two bf16 implementations round differently; compare directions


class BackendCheckError(ImgfeatError):
    """An exported model disagreed with torch beyond the tolerance."""


def available_backends() -> list[str]:
    """Backends whose runtime is importable here (torch always is)."""
    found = ["torch"]
    for name, module in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        try:
            __import__(module)
            found.append(name)
        except ImportError:
            pass
    return found


def export_key(model: FeatureModel) -> str:
    """Cache key of ``model``'s export: its name, layer, pool, input size, weights' bytes and the versions."""
    ident = json.dumps([model.name, model.layer, model.pool, list(model.input_size), model.fingerprint(),
                        torch.__version__, __version__])
    return hashlib.blake2b(ident.encode(), digest_size=12).hexdigest()


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; a named device must exist here."""
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
    """The autocast context of ``precision`` on ``device`` (none for fp32, and for int8, which only the
    quantised exports run)."""
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise bad_param("precision", "fp32, bf16 or int8 on the CPU (fp16 needs a GPU)", precision)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class ExecConfig:
    """How a model is run: by which backend, where, at which precision, batch size and thread count."""

    backend: str = "auto"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    batch_size: int = 32
    threads: int = 1
    fp32_head: float = 0.0  # bf16/int8: fraction of the first compute layers kept in fp32 (models.lowp)
    calibration: Optional[torch.Tensor] = field(default=None, compare=False, repr=False)  # int8: uint8 images

    def autocast(self):
        return autocast_for(self.precision, self.device)


@dataclass
class Executor:
    """Runs uint8 NCHW pixels through one backend; returns float32 (N, D) on the CPU or device."""

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    threads: int
    export: Optional[Path] = None  # the ONNX file it runs, if any

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.run(pixels)


def _uses_channels_last(model: FeatureModel) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def torch_executor(model: FeatureModel, cfg: ExecConfig) -> Executor:
    """torch eager in inference mode: the reference. channels_last only for convnets on CUDA (tensor
    cores); on the CPU it changes the summation order, and ONNX Runtime / OpenVINO are faster anyway."""
    device, autocast = cfg.device, cfg.autocast
    channels_last = device.type == "cuda" and _uses_channels_last(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run(pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast():
            return model(x).float()

    return Executor("torch", run, cfg.threads)


def export_onnx(model: FeatureModel, input_size: tuple[int, int], path: Path) -> None:
    """TorchScript-based ONNX export with a dynamic batch axis (fast and dependency-free)."""
    h, w = input_size
    _export(model.cpu().eval(), torch.zeros((2, 3, h, w), dtype=torch.uint8), path)


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """One input (named ``pixels`` whatever it holds, so every executor feeds it the same way), dynamic batch."""
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention, taken by CLIP's ViTs)
    # has no ONNX symbolic; the plain path exports to the same arithmetic
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=["pixels"],
                              output_names=["features"], opset_version=17, dynamo=False,
                              dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


class _TextTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def text_executor(model: torch.nn.Module, tokens: torch.Tensor, backend: str, threads: int) -> Executor:
    """An executor of ``model.encode_text`` (a CLIP-family text tower) on the CPU: torch, or its ONNX export
    (cached beside the image exports, keyed by the weights) run by ONNX Runtime or OpenVINO and checked
    against torch on ``tokens`` like an image export. ``auto`` is that ONNX Runtime export where it exports and
    agrees (its ``export`` is then recorded, so the next text query runs without torch: ``engines.quick``), else
    torch."""
    tower = _TextTower(model).cpu().eval()

    def torch_run(t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return tower(t).float()

    reference = Executor("torch", torch_run, threads)
    if backend == "torch":
        return reference
    if backend == "auto":
        try:
            return _text_export(tower, tokens, "onnx", threads, reference)
        except Exception as exc:  # noqa: BLE001 - no exporter, an op ONNX lacks, a disagreement: torch serves it
            log.info("text tower on torch (its ONNX export failed: %s: %s)", type(exc).__name__,
                     str(exc).splitlines()[0][:200] if str(exc) else "")
            return reference
    if backend not in BACKENDS:
        raise bad_param("backend", f"one of {BACKENDS}", backend)
    return _text_export(tower, tokens, backend, threads, reference)


def _text_export(tower: _TextTower, tokens: torch.Tensor, backend: str, threads: int,
                 reference: Executor) -> Executor:
    from .backbone import weights_fingerprint

    key = hashlib.blake2b(json.dumps(["text", weights_fingerprint(tower.model), torch.__version__, __version__]).encode(),
                          digest_size=12).hexdigest()
    folder = cache_dir() / "export" / f"text-{key}"
    path = folder / "model.onnx"
    if not path.is_file():
        with atomic_dir(folder) as staging:
            _export(tower, tokens[:2].clone(), staging / "model.onnx")
    ex = onnx_executor(path, threads) if backend == "onnx" else openvino_executor(path, threads, "fp32")
    ref, out = reference(tokens), ex(tokens)
    rel = float((out - ref).abs().max()) / max(float(ref.abs().max()), 1e-12)
    if out.shape != ref.shape or rel > MAX_REL_DIFF:
        raise BackendCheckError(f"the {backend} export of this text tower disagrees with torch (relative {rel:.2g}); "
                                "use --backend torch")
    ex.export = path
    return ex


def onnx_executor(path: Path, threads: int) -> Executor:
    run = onnx_runner(path, threads)
    return Executor("onnx", lambda pixels: torch.from_numpy(run(pixels.numpy())).float(), threads)


def openvino_executor(path: Path, threads: int, precision: str, fp32_head: float = 0.0) -> Executor:
    """OpenVINO on the CPU; for bf16 with ``fp32_head`` the model runs as an fp32 head and a bf16 rest."""
    run = openvino_runner(path, threads, precision, fp32_head)
    return Executor("openvino", lambda pixels: torch.from_numpy(run(pixels.numpy())).float(), threads)


def _check(executor: Executor, reference: Executor, input_size: tuple[int, int], precision: str) -> dict:
    """Compare ``executor`` with the torch reference on a seeded batch; raise beyond tolerance."""
    h, w = input_size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, 3, h, w), dtype=torch.uint8, generator=gen)
    ref = reference(pixels).cpu()
    out = executor(pixels).cpu()
    if out.shape != ref.shape:
        raise BackendCheckError(f"the {executor.name} export of this model returns shape {tuple(out.shape)}, "
                                f"torch {tuple(ref.shape)}; use --backend torch")
    max_abs = float((out - ref).abs().max())
    rel = max_abs / max(float(ref.abs().max()), 1e-12)
    cosine = float(torch.nn.functional.cosine_similarity(out, ref, dim=1, eps=1e-12).min())
    ok = cosine >= MIN_COSINE_BF16 if precision == "bf16" else rel <= MAX_REL_DIFF
    if not ok:
        bound = f"min cosine {MIN_COSINE_BF16}" if precision == "bf16" else f"relative {MAX_REL_DIFF}"
        raise BackendCheckError(
            f"the {executor.name} export of this model disagrees with torch: max abs diff {max_abs:.3g}, "
            f"relative {rel:.3g}, min cosine {cosine:.5f} (allowed: {bound}); use --backend torch")
    return {"max_abs_diff": max_abs, "rel_diff": rel, "min_cosine": cosine}


def _time(executor: Executor, input_size: tuple[int, int], batch_size: int, seconds: float = 1.5) -> float:
    h, w = input_size
    pixels = torch.randint(0, 256, (batch_size, 3, h, w), dtype=torch.uint8)
    executor(pixels)  # warm-up (allocations, kernel selection)
    n, start = 0, time.perf_counter()
    while True:
        executor(pixels)
        n += batch_size
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 2 * batch_size:
            return n / elapsed


def _load_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _exported(model: FeatureModel) -> Path:
    """The cached ONNX file of ``model``, exporting it (a whole folder published at once) if needed."""
    folder = cache_dir() / "export" / export_key(model)
    onnx_path = folder / "model.onnx"
    if not onnx_path.is_file():
        with atomic_dir(folder) as staging:
            t0 = time.perf_counter()
            export_onnx(model, model.input_size, staging / "model.onnx")
            log.info("exported ONNX in %.1f s to %s", time.perf_counter() - t0, folder)
    return onnx_path


def _runnable(precision: str) -> tuple[str, ...]:
    """The CPU backends that run ``precision``: ONNX Runtime has no bf16 CPU kernels (it would run fp32)."""
    return ("openvino",) if precision == "bf16" else CPU_BACKENDS


def _cpu_candidates(model: FeatureModel, cfg: ExecConfig, onnx_path: Path,
                    reference: Executor) -> tuple[dict[str, Executor], dict]:
    """The torch reference (where it runs this precision) plus each wanted CPU backend that compiles this graph
    and agrees with torch. int8 is not compared here: random pixels say nothing about a calibrated model, the
    engine's fidelity check measures it on the user's images."""
    have = available_backends()
    runnable = _runnable(cfg.precision)
    if cfg.backend != "auto" and cfg.backend not in runnable:
        raise bad_param("backend", f"one of {('auto', 'torch') + runnable} for --precision {cfg.precision} "
                                   "(ONNX Runtime has no bf16 kernels on the CPU)", cfg.backend)
    wanted = [cfg.backend] if cfg.backend != "auto" else [b for b in runnable if b in have]
    for name in wanted:
        if name not in have:
            module = {"onnx": "onnxruntime", "openvino": "openvino"}[name]
            raise bad_param("backend", f"a backend whose runtime is installed (pip install {module})", name)
    path = onnx_path
    if cfg.precision == "int8":
        from .lowp import quantized

        if cfg.calibration is None or not len(cfg.calibration):
            raise ImgfeatError("--precision int8 needs calibration images (the first readable images of the input "
                               "or --calibrate LIST), and none could be read")
        path = quantized(onnx_path, cfg.calibration, cfg.fp32_head)
    torch_runs = cfg.precision != "int8" and cfg.fp32_head == 0
    candidates, checks = ({"torch": reference} if torch_runs else {}), {}
    for name in wanted:
        try:
            ex = (onnx_executor(path, cfg.threads) if name == "onnx"
                  else openvino_executor(path, cfg.threads, cfg.precision, cfg.fp32_head))
            if cfg.precision != "int8":
                checks[name] = _check(ex, reference, model.input_size, cfg.precision)
        except BackendCheckError:
            if cfg.backend != "auto":
                raise
            log.warning("auto: %s export rejected (disagrees with torch); not using it", name, exc_info=True)
            continue
        except Exception as exc:  # a runtime that cannot compile this graph
            if cfg.backend != "auto":
                raise ImgfeatError(f"the {name} backend cannot run this model: {type(exc).__name__}: {exc}") from exc
            log.warning("auto: %s backend unavailable for this model: %s", name, exc)
            continue
        candidates[name] = ex
    if not candidates:
        raise ImgfeatError(f"no backend here runs this model at --precision {cfg.precision} (see the warnings "
                           "above); use --precision fp32")
    return candidates, checks


def make_executor(model: FeatureModel, cfg: ExecConfig) -> tuple[Executor, dict]:
    """Build the executor for ``cfg.backend`` ('auto' picks the fastest checked one on the CPU).

    Returns the executor and a report: the chosen backend, check diffs and (for auto) timings.
    """
    if cfg.backend not in BACKENDS:
        raise bad_param("backend", f"one of {BACKENDS}", cfg.backend)
    on_cpu = cfg.device.type == "cpu"
    if cfg.precision == "int8" and not on_cpu:
        raise bad_param("precision", "fp32, fp16 or bf16 on a GPU (int8 runs on the CPU, through onnx or openvino)",
                        cfg.precision)
    if cfg.precision == "int8" and cfg.backend == "torch":
        raise bad_param("backend", "auto, onnx or openvino for --precision int8 (torch runs no int8 here)", "torch")
    if cfg.fp32_head and (cfg.backend == "torch" or not on_cpu):
        raise bad_param("backend", "auto or openvino to keep the first layers in fp32", cfg.backend)
    reference = torch_executor(model, cfg)
    if cfg.backend == "torch" or (cfg.backend == "auto" and (not on_cpu or cfg.precision == "fp16")):
        return reference, {"backend": "torch"}
    if not on_cpu:
        raise bad_param("backend", "torch or auto on a GPU (onnx and openvino run on the CPU here)", cfg.backend)
    try:
        onnx_path = _exported(model)
    except Exception as exc:  # noqa: BLE001 - an operator without an ONNX form: torch still runs the model
        if cfg.backend != "auto" or cfg.precision == "int8":
            raise ImgfeatError(f"--backend {cfg.backend} --precision {cfg.precision} needs an ONNX export of this "
                               f"model, which failed: {type(exc).__name__}: {str(exc)[:300]}; use --backend torch"
                               + (" --precision fp32 or bf16" if cfg.precision == "int8" else "")) from exc
        log.warning("auto: ONNX export of this model failed (%s: %s); using torch", type(exc).__name__, exc)
        return reference, {"backend": "torch", "export_error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    candidates, checks = _cpu_candidates(model, cfg, onnx_path, reference)
    report: dict = {"export": str(onnx_path.parent)}
    if cfg.fp32_head:
        report["fp32_head"] = cfg.fp32_head
    if checks:
        report["check"] = checks
    if cfg.backend != "auto" or len(candidates) == 1:
        report["backend"] = next(iter(candidates)) if cfg.backend == "auto" else cfg.backend
        return candidates[report["backend"]], report

    meta_path = onnx_path.parent / "meta.json"
    meta = _load_meta(meta_path)
    timing_key = f"{cfg.precision}/h{cfg.fp32_head}/bs{cfg.batch_size}/t{cfg.threads}"
    timings = meta.get("timings", {}).get(timing_key)
    if not timings or set(timings) != set(candidates):
        timings = {name: _time(ex, model.input_size, cfg.batch_size) for name, ex in candidates.items()}
        meta.setdefault("timings", {})[timing_key] = timings
        write_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
    best = max(timings, key=timings.get)
    report.update(backend=best, timings=timings)
    log.info("auto backend: %s (%s)", best, ", ".join(f"{k} {v:.1f} img/s" for k, v in timings.items()))
    return candidates[best], report
