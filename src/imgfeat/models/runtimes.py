"""ONNX Runtime and OpenVINO sessions as plain functions of numpy arrays (uint8 N x 3 x H x W pixels -> float32
N x D), importable without torch: ``models.backends`` wraps them as executors of torch tensors, and the quick path
(``engines.quick``) calls them directly. One session per call site, one compiled OpenVINO model per process."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def optimized_path(path: Path) -> Path:
    """Where ONNX Runtime's optimised graph of the export ``path`` is kept: beside it, named by what the optimised
    graph depends on (ONNX Runtime's version and this CPU's instruction sets: at the highest level it holds
    layouts and kernels chosen for them), so a cache shared between machines never hands one another's graph."""
    import hashlib
    import platform

    import onnxruntime as ort

    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    key = hashlib.sha256(f"{ort.__version__}\0{platform.machine()}\0{flags}".encode()).hexdigest()[:12]
    return path.with_name(f"{path.stem}.ort-{key}.onnx")


def onnx_session(path: Path, threads: int):
    """An ONNX Runtime session of the export ``path`` on the CPU. The first one optimises the graph (every level)
    and saves the result beside the export (``optimized_path``, written under a temporary name and renamed);
    later ones load that graph with no optimisation to run again: ViT-B/32's text tower starts in 0.20 s instead
    of 0.25 s here, and far less than that on a busy machine (BENCHMARKS.md, issue 48). A cache that cannot be
    written only costs the optimisation at the next start."""
    import os

    import onnxruntime as ort

    def options(level):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        return so

    from ..files import seal, seal_broken, unseal

    optimized = optimized_path(path)
    if optimized.is_file() and seal_broken(optimized) is not None:  # cut short or changed: optimised again
        unseal(optimized)
    if optimized.is_file():
        try:
            return ort.InferenceSession(str(optimized), options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                                        providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - a cache entry ONNX Runtime refuses: optimised again below, and replaced
            unseal(optimized)
    so = options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    partial = optimized.with_name(f".{optimized.name}.{os.getpid()}.partial")
    so.optimized_model_filepath = str(partial)
    try:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - the cache folder could not take the optimised graph: run without saving it
        partial.unlink(missing_ok=True)
        so = options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    try:
        os.replace(partial, optimized)
        seal(optimized)  # its size and xxh3: a damaged copy is never run
    except OSError:
        partial.unlink(missing_ok=True)
    return session


def onnx_runner(path: Path, threads: int) -> Runner:
    session = onnx_session(Path(path), threads)

    def run(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {"pixels": np.ascontiguousarray(pixels)})[0], dtype=np.float32)

    return run


# Compiled OpenVINO models live as long as the process: destroying one (OpenVINO 2026.4, CPU
# plugin) later corrupted the Python heap in our test suite (a segfault far from the cause).
_OPENVINO_COMPILED: dict = {}


def _openvino_compiled(model, threads: int, precision: str):
    import openvino as ov

    # OpenVINO silently runs bf16 on CPUs with native bf16 unless told otherwise; an int8 (QDQ) model runs
    # its quantised layers in int8 and the rest in f32
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    compiled = ov.Core().compile_model(model, "CPU", config)
    return compiled, compiled.create_infer_request()


def openvino_runner(path: Path, threads: int, precision: str = "fp32", fp32_head: float = 0.0) -> Runner:
    """OpenVINO on the CPU; for bf16 with ``fp32_head`` the model runs as an fp32 head and a bf16 rest."""
    key = (str(path), threads, precision, fp32_head)
    if key not in _OPENVINO_COMPILED:
        parts = None
        if precision == "bf16" and fp32_head > 0:
            from .lowp import split_head  # torch: only lower precision splits a model

            parts = split_head(path, fp32_head)
        if parts is None:
            _OPENVINO_COMPILED[key] = [_openvino_compiled(str(path), threads, precision)]
        else:
            _OPENVINO_COMPILED[key] = [_openvino_compiled(parts[0], threads, "fp32"),
                                       _openvino_compiled(parts[1], threads, "bf16")]
    stages = _OPENVINO_COMPILED[key]

    def run(pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels)
        for compiled, request in stages:
            x = request.infer({0: x})[compiled.output(0)]
        return np.array(x, dtype=np.float32, copy=True)

    return run
