"""ONNX Runtime and OpenVINO sessions as plain functions of numpy arrays (uint8 N x 3 x H x W pixels -> float32
N x D), importable without torch: ``models.backends`` wraps them as executors of torch tensors, and the quick path
(``engines.quick``) calls them directly. One session per call site, one compiled OpenVINO model per process."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def onnx_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

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
