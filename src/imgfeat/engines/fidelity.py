"""Lower precision is measured, not assumed: before a run at bf16 (or fp16), the first readable images of
the user's own input go through the chosen executor and through the model in fp32, and the vectors
(after ReLU/L2 as asked) are compared: per-image cosine (min, 1st percentile, median), relative norm
error, and the overlap of each image's 10 nearest neighbours within the sample. Below ``min_fidelity``
(1st-percentile cosine) the run is refused with the figures; above it they go into the result's
``backend_report`` and the store's manifest."""

from __future__ import annotations

from itertools import islice
from typing import Optional

import numpy as np
import torch

from ..data.loader import decode_batch
from ..data.sources import Source
from ..errors import ImgfeatError
from ..options import ExtractOptions
from .pipeline import Pipeline, postprocess

SAMPLE = 256  # images compared
SCAN = 4 * SAMPLE  # records read at most to find them (bad files are skipped)
KNN = 10
NEAR_ZERO = 0.01  # an fp32 vector with less than 1% of the sample's median norm


class FidelityError(ImgfeatError):
    """A lower precision changed the vectors more than the user allows."""


def sample_pixels(source: Source, opts: ExtractOptions, pp, n: int = SAMPLE) -> Optional[torch.Tensor]:
    """uint8 N x 3 x H x W of the first ``n`` readable images among the first ``SCAN`` records (None if none
    is), decoded as the extraction decodes them (``decode_batch``)."""
    records = islice(source.records(), SCAN)
    batches, got = [], 0
    while got < n:
        chunk = list(islice(records, n - got))
        if not chunk:
            break
        pixels = decode_batch(chunk, pp, opts.max_pixels, opts.decode_timeout or None)["pixels"]
        batches.append(pixels)
        got += len(pixels)
    return torch.cat(batches) if got else None


def _knn_overlap(A: np.ndarray, B: np.ndarray, k: int) -> float:
    k = min(k, len(A) - 1)
    if k < 1:
        return 1.0

    def neighbours(X):
        Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        S = Xn @ Xn.T
        np.fill_diagonal(S, -np.inf)
        return np.argsort(-S, axis=1)[:, :k]

    a, b = neighbours(A), neighbours(B)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())]))


def measure(pipeline: Pipeline, pixels: torch.Tensor, opts: ExtractOptions) -> dict:
    """Figures of the pipeline's executor against the same model in fp32 on ``pixels``."""
    ref, low, raw_norms = [], [], []
    with torch.inference_mode():
        for s in range(0, len(pixels), opts.batch_size):
            batch = pixels[s:s + opts.batch_size]
            batch = batch.to(pipeline.device)
            raw = pipeline.model(batch).float()  # fp32: no autocast
            raw_norms.append(postprocess(raw, opts.relu, False).norm(dim=1).cpu().numpy())  # before any L2
            ref.append(postprocess(raw, opts.relu, opts.l2).cpu().numpy())
            low.append(postprocess(pipeline.executor(batch), opts.relu, opts.l2).cpu().numpy())
    R, L = np.concatenate(ref).astype(np.float64), np.concatenate(low).astype(np.float64)
    nr, nl = np.linalg.norm(R, axis=1), np.linalg.norm(L, axis=1)
    cos = (R * L).sum(axis=1) / np.maximum(nr * nl, 1e-30)
    norm_err = np.abs(nl - nr) / np.maximum(nr, 1e-30)
    worst = int(np.argmin(cos))
    # vectors that (nearly) cancel in fp32 carry no direction at any precision: counted and shown apart
    raw = np.concatenate(raw_norms)
    near_zero = raw < NEAR_ZERO * np.median(raw)
    rest = cos[~near_zero] if (~near_zero).any() else cos
    return {"precision": opts.precision, "backend": pipeline.report.get("backend"), "sample": int(len(R)),
            "near_zero": int(near_zero.sum()), "cosine_p1_without_near_zero": float(np.percentile(rest, 1)),
            "error_max_vs_median_norm": float(np.linalg.norm(L - R, axis=1).max() / max(np.median(nr), 1e-30)),
            "cosine_min": float(cos.min()), "cosine_p1": float(np.percentile(cos, 1)),
            "cosine_median": float(np.median(cos)), "norm_rel_error_median": float(np.median(norm_err)),
            "norm_rel_error_max": float(norm_err.max()), f"knn{KNN}_overlap": _knn_overlap(R, L, KNN),
            "worst_sample_index": worst, "threshold": opts.min_fidelity}


def describe(f: dict) -> str:
    return (f"{f['precision']} ({f['backend']}) against fp32 on {f['sample']} images of the input: cosine min "
            f"{f['cosine_min']:.4f}, 1st percentile {f['cosine_p1']:.4f}, median {f['cosine_median']:.4f}; "
            f"norm error median {f['norm_rel_error_median']:.3g}, max {f['norm_rel_error_max']:.3g}; "
            f"kNN@{KNN} overlap {f[f'knn{KNN}_overlap']:.3f}"
            + (f"; {f['near_zero']} image(s) have near-zero fp32 vectors (norm < {NEAR_ZERO:.0%} of the median: "
               f"no direction at any precision), without them the 1st percentile is "
               f"{f['cosine_p1_without_near_zero']:.4f}; largest error {f['error_max_vs_median_norm']:.3g} of the "
               "median norm" if f["near_zero"] else ""))


def check_fidelity(pipeline: Pipeline, source: Source, opts: ExtractOptions) -> Optional[dict]:
    """Measure and enforce ``opts.min_fidelity`` for a precision below fp32; the figures, or None for fp32."""
    if opts.precision == "fp32":
        return None
    pixels = sample_pixels(source, opts, pipeline.spec.preprocess)
    if pixels is None:
        return None  # nothing readable to compare on: the run will report its error rows
    figures = measure(pipeline, pixels, opts)
    if figures["cosine_p1"] < opts.min_fidelity:
        raise FidelityError(
            f"--precision {opts.precision} changes the vectors too much: {describe(figures)}. The 1st-percentile "
            f"cosine must reach --min-fidelity {opts.min_fidelity}. Use --precision fp32, or accept the loss with "
            f"--min-fidelity {max(0.0, np.floor(figures['cosine_p1'] * 100) / 100):.2f} (0 accepts any).")
    return figures
