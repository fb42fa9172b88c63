"""Lower precision on the CPU, from the cached fp32 ONNX export of a model.

- **int8**: ONNX Runtime's post-training static quantiser writes a QDQ model (weights int8 per output
  channel, activations uint8 with MinMax ranges calibrated on the user's own images); ONNX Runtime
  (VNNI kernels) and OpenVINO (its int8 pipeline reads the QDQ pairs) both run that one file.
- **bf16**: OpenVINO's ``INFERENCE_PRECISION_HINT`` (native avx512_bf16 / AMX).

Either can keep the first layers of the network in fp32 (``fp32_head``: the fraction of its
Conv/MatMul/Gemm layers, in execution order). Measured on EfficientNet-Lite0 and Pillow's test images,
nearly all of bf16's divergence from fp32 enters in the stem and the first blocks: on flat and
low-contrast images their activations nearly cancel, and the 8-bit mantissa of bf16 (or an int8 scale
set by busier images) leaves rounding noise that the rest of the network amplifies. For bf16 the model
is cut, at a point where a single tensor is live, into an fp32 part and a bf16 part compiled separately;
for int8 the head's layers are simply not quantised. The engine's fidelity check picks the smallest head
that meets ``--min-fidelity`` (:data:`FP32_HEADS`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..files import atomic_dir

log = logging.getLogger(__name__)

FP32_HEADS = (0.0, 0.1, 0.2, 0.35)  # tried in order by the fidelity check
QUANTISED_OPS = ("Conv", "MatMul", "Gemm")
CALIBRATION_BATCH = 8
_OV_COMPUTE = ("Convolution", "GroupConvolution", "MatMul")


def calibration_key(pixels: torch.Tensor, fp32_head: float) -> str:
    """Names an int8 model: the calibration images' bytes, the head kept in fp32 and the quantiser's version."""
    import onnxruntime

    h = hashlib.blake2b(digest_size=10)
    h.update(f"{tuple(pixels.shape)}|{fp32_head}|{onnxruntime.__version__}".encode())
    h.update(np.ascontiguousarray(pixels.numpy()).tobytes())
    return h.hexdigest()


def quantized(onnx_path: Path, pixels: torch.Tensor, fp32_head: float = 0.0) -> Path:
    """The int8 (QDQ) model of the fp32 export at ``onnx_path``, calibrated on ``pixels`` (uint8 N x 3 x H x W),
    its first ``fp32_head`` of compute layers left in fp32; cached beside the export."""
    folder = onnx_path.parent / f"int8-{calibration_key(pixels, fp32_head)}"
    path = folder / "model.onnx"
    if path.is_file():
        return path
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            arr = np.ascontiguousarray(pixels.numpy())
            self.batches = iter([arr[i:i + CALIBRATION_BATCH] for i in range(0, len(arr), CALIBRATION_BATCH)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": batch}

    t0 = time.perf_counter()
    with atomic_dir(folder) as staging:
        pre = staging / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)  # folds, infers shapes
        layers = [n.name for n in onnx.load(str(pre), load_external_data=False).graph.node
                  if n.op_type in QUANTISED_OPS]
        keep = layers[:round(fp32_head * len(layers))]
        quantize_static(str(pre), str(staging / "model.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTISED_OPS),
                        nodes_to_exclude=keep)
        pre.unlink()
    log.info("int8: quantised %d of %d layers on %d calibration images in %.1f s -> %s", len(layers) - len(keep),
             len(layers), len(pixels), time.perf_counter() - t0, folder)
    return path


def _single_live_cuts(model) -> list[tuple[int, object]]:
    """(compute layers before, output) for each point of ``model``'s execution order where exactly one
    non-constant tensor is alive: the places where the graph can be cut in two."""
    ops = model.get_ordered_ops()
    last_use: dict = {}
    for i, op in enumerate(ops):
        for inp in op.inputs():
            out = inp.get_source_output()
            if out.get_node().get_type_name() != "Constant":
                key = (out.get_node().get_friendly_name(), out.get_index())
                last_use[key] = max(last_use.get(key, -1), i)
    cuts, live, outputs, computed = [], set(), {}, 0
    for i, op in enumerate(ops):
        computed += op.get_type_name() in _OV_COMPUTE
        live = {k for k in live if last_use[k] > i}
        if op.get_type_name() != "Constant":
            for out in op.outputs():
                key = (op.get_friendly_name(), out.get_index())
                if last_use.get(key, -1) > i:
                    live.add(key)
                    outputs[key] = out
        if len(live) == 1 and computed:
            cuts.append((computed, outputs[next(iter(live))]))
    return cuts


def split_head(path: Path, fp32_head: float) -> Optional[tuple[object, object]]:
    """``(head, rest)`` OpenVINO models of the ONNX file at ``path``: ``head`` runs its first ``fp32_head`` of
    compute layers (rounded up to the next single-tensor cut), ``rest`` takes that tensor to the output.
    None when the graph has no such cut (then the whole model runs at one precision)."""
    import openvino as ov

    core = ov.Core()
    whole = core.read_model(str(path))
    total = sum(op.get_type_name() in _OV_COMPUTE for op in whole.get_ordered_ops())
    want = max(1, round(fp32_head * total))
    cut = next((out for n, out in _single_live_cuts(whole) if n >= want and out.get_node().get_type_name() != "Result"),
               None)
    if cut is None:
        return None
    name, index = cut.get_node().get_friendly_name(), cut.get_index()
    head = ov.Model([cut], whole.get_parameters(), "fp32_head")
    rest_src = core.read_model(str(path))  # a second copy: rewiring it leaves the head's graph intact
    node = next(op for op in rest_src.get_ordered_ops() if op.get_friendly_name() == name)
    out = node.output(index)
    param = ov.opset13.parameter(out.get_partial_shape(), out.get_element_type(), "fp32_head_out")
    for target in list(out.get_target_inputs()):
        target.replace_source_output(param.output(0))
    return head, ov.Model(rest_src.get_results(), [param], "rest")
