"""What every engine shares: the model pipeline built from the options, the batch loop
(decoded batches -> executor -> postprocess -> target), and the result of a run.

The local engine, ``--shard I/N`` parts and Ray actors all call :func:`build_pipeline` once and
:func:`process_shards` for the shards they own; only how shards are handed out differs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data.loader import make_loader, worker_deaths
from ..data.shards import ShardPlan
from ..data.sources import Source
from ..models.backbone import FeatureModel, build_feature_model
from ..models.backends import ExecConfig, Executor, make_executor
from ..models.registry import ModelSpec, get_model_spec
from ..outputs.identity import VectorIdentity
from ..options import DecodePart, ExecPart, Job, ModelPart, PostPart, available_cores
from . import loop
from .inputs import count_skipped, require_input  # noqa: F401 - re-exported
from .result import ExtractResult  # noqa: F401 - re-exported: engines share it

log = logging.getLogger(__name__)


@dataclass
class Pipeline:
    """The model side of a run: spec, feature model, output dimension and the executor that runs it."""

    spec: ModelSpec
    model: FeatureModel
    dim: int
    executor: Optional[Executor] = None
    report: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def exec_config(execution: ExecPart, device: torch.device, fp32_head: float = 0.0,
                calibration: Optional[torch.Tensor] = None) -> ExecConfig:
    """How the model runs on ``device``; ``fp32_head`` and ``calibration`` come from the fidelity check
    (``engines.fidelity``) for bf16/int8."""
    return ExecConfig(backend=execution.backend, device=device, precision=execution.precision,
                      batch_size=execution.batch_size, threads=execution.threads or available_cores(),
                      fp32_head=fp32_head, calibration=calibration)


def prepare_model(model: ModelPart, execution: ExecPart, device: torch.device) -> Pipeline:
    """The feature model on ``device`` and its output dimension (one dry forward); no executor yet."""
    spec = get_model_spec(model.model)
    net = build_feature_model(spec, model.layer, model.pool, model.weights, model.random_weights).to(device)
    h, w = spec.preprocess.crop_size
    with torch.inference_mode(), exec_config(execution, device).autocast():
        dim = net(torch.zeros((1, 3, h, w), dtype=torch.uint8, device=device)).shape[1]
    if model.random_weights:
        log.warning("running %s with RANDOM weights (--random-weights): the features are not pretrained", spec.name)
    return Pipeline(spec, net, int(dim), device=device)


def build_pipeline(model: ModelPart, execution: ExecPart, device: torch.device,
                   before_executor: Optional[Callable[[Pipeline], None]] = None) -> Pipeline:
    """Model, dimension and executor on ``device``. ``before_executor(pipeline)`` runs before the (possibly slow)
    export and timing, so a store that refuses this job does so at once. A lower precision is chosen and measured
    by ``engines.fidelity.build_measured`` instead."""
    pipeline = prepare_model(model, execution, device)
    if before_executor is not None:
        before_executor(pipeline)
    pipeline.executor, pipeline.report = make_executor(pipeline.model, exec_config(execution, device))
    return pipeline


def vector_identity(pipeline: Pipeline, post: PostPart, precision: str) -> VectorIdentity:
    """What this run's vectors are (the store's, the quick path's and the queries' one identity)."""
    model = pipeline.model
    return VectorIdentity(model=pipeline.spec.name, layer=model.layer, pool=model.pool, weights=model.fingerprint(),
                          preprocess=pipeline.spec.preprocess.identity(), dim=pipeline.dim, dtype=post.dtype,
                          relu=post.relu, l2=post.l2, precision=precision)


def store_identity(job: Job, pipeline: Pipeline, source: Source) -> dict:
    """What a store records of a run: the vectors' identity and the job's scope, which a rerun must agree on to
    resume it, and what queries need (JSON-normalised so it compares with the file)."""
    weights = job.model.weights
    identity = {**vector_identity(pipeline, job.post, job.execution.precision).as_dict(),
                "input": source.describe(), "start": job.input.start, "stop": job.input.stop,
                "shard_size": job.update.shard_size,
                # not compared: what the vectors can be compared with (a CLIP embedding: text)
                "text_tower": bool(pipeline.spec.text_tower and pipeline.model.layer is None),
                # not compared: how the weights were chosen, so queries build the same model (the hash above
                # checks it): pretrained, random (--random-weights) or file (--weights, its name)
                "weights_source": ("random" if job.model.random_weights else "file" if weights else "pretrained"),
                "weights_file": os.path.basename(weights) if weights else None}
    return json.loads(json.dumps(identity))


def postprocess_tensor(features: torch.Tensor, relu: bool = False, l2: bool = False) -> torch.Tensor:
    """ReLU then L2, in float32 (the classic VGG-19 fc7 extractor's order)."""
    x = features.float()
    if relu:
        x = torch.relu(x)
    if l2:
        x = F.normalize(x, p=2.0, dim=1, eps=1e-12)
    return x


def to_numpy(features: torch.Tensor, dtype: str) -> np.ndarray:
    return features.detach().to("cpu", torch.float32).numpy().astype(np.dtype(dtype), copy=False)


def drive_executor(batches, executor: Executor, target, post: PostPart, retries: dict, bar=None) -> int:
    """``engines.loop.drive`` with the model's executor as the runner (ReLU/L2 on the device, in inference mode)."""
    def run(pixels) -> np.ndarray:
        return to_numpy(postprocess_tensor(executor(pixels), post.relu, post.l2), post.dtype)

    with torch.inference_mode():
        return loop.drive(batches, run, target, retries, bar)


def process_shards(pipeline: Pipeline, source: Source, plan: ShardPlan, target, decode: DecodePart, post: PostPart,
                   bar=None, retries: Optional[dict] = None) -> int:
    """Decode the shards of ``source`` that ``plan`` wants and write their vectors to ``target``; on any
    exception the target's unfinished files are removed. Returns the vectors written."""
    loader = make_loader(source, pipeline.spec.preprocess, decode.batch_size, decode.workers, decode.max_pixels,
                         pin_memory=pipeline.device.type == "cuda", plan=plan, decode_timeout=decode.decode_timeout)
    target.open(pipeline.dim, np.dtype(post.dtype))
    retries = {} if retries is None else retries
    try:
        batches = iter(loader)
        with worker_deaths(batches):
            n_done = drive_executor(batches, pipeline.executor, target, post, retries, bar)
        target.close()
    except BaseException:
        target.abort()
        raise
    if retries.get("retried"):
        log.info("%d image(s) that failed in a decode worker were tried again alone in a fresh process: "
                 "%d decoded there", retries["retried"], retries.get("recovered", 0))
    return n_done
