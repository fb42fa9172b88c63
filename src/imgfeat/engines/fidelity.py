"""Lower precision is measured, not assumed: before a run at bf16, int8 (or fp16 on a GPU), the first readable
images of the user's own input go through the chosen executor and through the model in fp32, and the vectors
(after ReLU/L2 as asked) are compared: per-image cosine (min, 1st percentile, median), relative norm
error, and the overlap of each image's 10 nearest neighbours within the sample. int8 is calibrated on the
same images (or on ``--calibrate``'s). On the CPU the first layers can stay in fp32 (``models.lowp``):
the smallest such head that reaches ``min_fidelity`` (1st-percentile cosine) is used; if none does, the run
is refused with the figures. Accepted figures go into the result's ``backend_report`` and the store's
manifest."""

from __future__ import annotations

import logging
from itertools import islice
from typing import Optional

import numpy as np
import torch

from ..data.batches import decode_batch
from ..data.sources import Source, open_source
from ..errors import ImgfeatError
from ..models.backends import make_executor
from ..models.lowp import FP32_HEADS
from ..models.registry import get_model_spec
from ..options import CheckPart, DecodePart, ExecPart, Job, PostPart
from .pipeline import Pipeline, build_pipeline, exec_config, postprocess_tensor, prepare_model

log = logging.getLogger(__name__)

SAMPLE = 256  # images compared
SCAN = 4 * SAMPLE  # records read at most to find them (bad files are skipped)
KNN = 10
NEAR_ZERO = 0.01  # an fp32 vector with less than 1% of the sample's median norm


class FidelityError(ImgfeatError):
    """A lower precision changed the vectors more than the user allows."""


def sample_pixels(source: Source, decode: DecodePart, pp, n: int = SAMPLE) -> Optional[torch.Tensor]:
    """uint8 N x 3 x H x W of the first ``n`` readable images among the first ``SCAN`` records (None if none
    is), decoded as the extraction decodes them (``decode_batch``)."""
    records = islice(source.records(), SCAN)
    batches, got = [], 0
    while got < n:
        chunk = list(islice(records, n - got))
        if not chunk:
            break
        pixels = torch.from_numpy(decode_batch(chunk, pp, decode.max_pixels, decode.decode_timeout)["pixels"])
        batches.append(pixels)
        got += len(pixels)
    return torch.cat(batches) if got else None


def _knn_overlap(A: np.ndarray, B: np.ndarray, k: int) -> Optional[float]:
    """Mean share of each image's k nearest neighbours kept; None with k + 1 images or fewer (every other image
    is then a neighbour at any precision: the figure would be 1.0 whatever the vectors)."""
    if len(A) <= k + 1:
        return None

    def neighbours(X):
        Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        S = Xn @ Xn.T
        np.fill_diagonal(S, -np.inf)
        return np.argsort(-S, axis=1)[:, :k]

    a, b = neighbours(A), neighbours(B)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())]))


class Reference:
    """The fp32 vectors of the sample (after ReLU/L2 as asked) and their norms before L2, computed once."""

    def __init__(self, pipeline: Pipeline, pixels: torch.Tensor, post: PostPart, execution: ExecPart,
                 check: CheckPart) -> None:
        self.pixels, self.device = pixels, pipeline.device
        self.post, self.execution, self.check = post, execution, check
        ref, raw_norms = [], []
        with torch.inference_mode():
            for batch in self.batches():
                raw = pipeline.model(batch).float()  # fp32: no autocast
                raw_norms.append(postprocess_tensor(raw, post.relu, False).norm(dim=1).cpu().numpy())  # before any L2
                ref.append(postprocess_tensor(raw, post.relu, post.l2).cpu().numpy())
        self.vectors = np.concatenate(ref).astype(np.float64)
        raw = np.concatenate(raw_norms)
        # vectors that (nearly) cancel in fp32 carry no direction at any precision: counted and shown apart
        self.near_zero = raw < NEAR_ZERO * np.median(raw)

    def batches(self):
        size = self.execution.batch_size
        for s in range(0, len(self.pixels), size):
            yield self.pixels[s:s + size].to(self.device)

    def compare(self, executor, backend: Optional[str]) -> dict:
        """Figures of ``executor`` against the fp32 vectors."""
        post = self.post
        with torch.inference_mode():
            low = [postprocess_tensor(executor(batch), post.relu, post.l2).cpu().numpy() for batch in self.batches()]
        R, L = self.vectors, np.concatenate(low).astype(np.float64)
        nr, nl = np.linalg.norm(R, axis=1), np.linalg.norm(L, axis=1)
        cos = (R * L).sum(axis=1) / np.maximum(nr * nl, 1e-30)
        norm_err = np.abs(nl - nr) / np.maximum(nr, 1e-30)
        rest = cos[~self.near_zero] if (~self.near_zero).any() else cos
        return {"precision": self.execution.precision, "backend": backend, "sample": int(len(R)),
                "near_zero": int(self.near_zero.sum()), "cosine_p1_without_near_zero": float(np.percentile(rest, 1)),
                "error_max_vs_median_norm": float(np.linalg.norm(L - R, axis=1).max() / max(np.median(nr), 1e-30)),
                "cosine_min": float(cos.min()), "cosine_p1": float(np.percentile(cos, 1)),
                "cosine_median": float(np.median(cos)), "norm_rel_error_median": float(np.median(norm_err)),
                "norm_rel_error_max": float(norm_err.max()), f"knn{KNN}_overlap": _knn_overlap(R, L, KNN),
                "worst_sample_index": int(np.argmin(cos)), "threshold": self.check.min_fidelity}


def knn_text(f: dict) -> str:
    value = f.get(f"knn{KNN}_overlap")
    return (f"kNN@{KNN} overlap {value:.3f}" if value is not None
            else f"kNN@{KNN} overlap n/a (needs more than {KNN + 1} images)")


def describe(f: dict) -> str:
    head = f" with the first {f['fp32_head']:.0%} of layers in fp32" if f.get("fp32_head") else ""
    return (f"{f['precision']} ({f['backend']}{head}) against fp32 on {f['sample']} images of the input: cosine min "
            f"{f['cosine_min']:.4f}, 1st percentile {f['cosine_p1']:.4f}, median {f['cosine_median']:.4f}; "
            f"norm error median {f['norm_rel_error_median']:.3g}, max {f['norm_rel_error_max']:.3g}; "
            + knn_text(f)
            + (f"; {f['near_zero']} image(s) have near-zero fp32 vectors (norm < {NEAR_ZERO:.0%} of the median: "
               f"no direction at any precision), without them the 1st percentile is "
               f"{f['cosine_p1_without_near_zero']:.4f}; largest error {f['error_max_vs_median_norm']:.3g} of the "
               "median norm" if f["near_zero"] else ""))


def announce(figures: Optional[dict], store=None) -> None:
    """Log the accepted figures of a lower precision and record them in the store's manifest."""
    if figures is not None:
        log.info("%s", describe(figures))  # accepted: information, not a warning
        if store is not None:
            store.annotate("fidelity", figures)


def measurement_images(job: Job, source: Source) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """For a precision below fp32: the sample it is measured on (the first readable images of the input, None
    if none is) and int8's calibration images (``--calibrate``'s, or the sample); (None, None) at fp32."""
    precision, calibrate = job.execution.precision, job.check.calibrate
    if precision == "fp32":
        return None, None
    pp = get_model_spec(job.model.model).preprocess
    sample = sample_pixels(source, job.decode, pp)
    if precision != "int8":
        return sample, None
    if calibrate is not None:
        calibration = sample_pixels(open_source(calibrate, name="calibrate"), job.decode, pp)
        if calibration is None:
            raise ImgfeatError(f"--calibrate {calibrate}: none of its first {SCAN} images could be read")
    else:
        calibration = sample
    if sample is None or calibration is None:
        raise ImgfeatError(f"--precision int8: none of the first {SCAN} inputs could be read, so there is nothing "
                           "to calibrate and measure on")
    return sample, calibration


def build_measured(job: Job, device: torch.device, sample: Optional[torch.Tensor],
                   calibration: Optional[torch.Tensor] = None, before_executor=None) -> tuple[Pipeline, Optional[dict]]:
    """Like ``pipeline.build_pipeline``, and for a precision below fp32 measured on ``sample`` first (see
    :func:`measurement_images`): the executor with the smallest fp32 head (:data:`FP32_HEADS`, CPU backends
    only) whose 1st-percentile cosine reaches ``--min-fidelity``; refused with the figures if none does.
    Returns the pipeline and the figures (None at fp32, or with no readable sample), which are also in
    ``pipeline.report["fidelity"]``."""
    execution, check = job.execution, job.check
    if execution.precision == "fp32" or sample is None:  # nothing readable to compare on: the run reports error rows
        return build_pipeline(job.model, execution, device, before_executor), None
    pipeline = prepare_model(job.model, execution, device)
    if before_executor is not None:
        before_executor(pipeline)
    reference = Reference(pipeline, sample, job.post, execution, check)
    heads = FP32_HEADS if device.type == "cpu" and execution.backend != "torch" else (0.0,)
    attempts = []
    for head in heads:
        executor, report = make_executor(pipeline.model, exec_config(execution, device, head, calibration))
        figures = {**reference.compare(executor, report.get("backend")), "fp32_head": head}
        if calibration is not None:
            figures["calibration_images"] = int(len(calibration))
        attempts.append(figures)
        if figures["cosine_p1"] >= check.min_fidelity:
            if len(attempts) > 1:
                figures["tried"] = [{"fp32_head": a["fp32_head"], "cosine_p1": a["cosine_p1"]} for a in attempts]
            pipeline.executor, pipeline.report = executor, {**report, "fidelity": figures}
            return pipeline, figures
    best = max(attempts, key=lambda a: a["cosine_p1"])
    tried = ", ".join(f"{a['fp32_head']:.0%} -> {a['cosine_p1']:.4f}" for a in attempts)
    raise FidelityError(
        f"--precision {execution.precision} changes the vectors too much: {describe(best)}. The 1st-percentile "
        f"cosine must reach --min-fidelity {check.min_fidelity}"
        + (f" (first layers kept in fp32: {tried})" if len(attempts) > 1 else "")
        + f". Use --precision fp32, or accept the loss with --min-fidelity "
        f"{max(0.0, np.floor(best['cosine_p1'] * 100) / 100):.2f} (0 accepts any).")
