"""The quick path: a small job whose model is already exported runs without importing torch.

A command-line run of a handful of images paid 4-5 s before doing anything: importing torch and torchvision and
building the network in torch, only to hand the pixels to a cached ONNX export. When a full run writes to a file
with an exported model on the CPU (ONNX Runtime or OpenVINO chosen, fp32), :func:`remember` records beside the
export cache what that run needed to know from torch: the model's name, preprocessing and dimension, the backend
``auto`` chose, and the weights file's path, size and mtime (``quick/<key>.json``). A later run with the same
options (:func:`try_run`) reads that record, checks the weights file's size and mtime (a changed file takes the
full path, which hashes it again), and runs the same export on the same batches, decoded in this process by the
same code (``data.batches``), postprocessed in numpy: the same vectors as the full path (tested to 1e-6).

Anything it cannot serve takes the full path, said in the log at debug level: a store, ``--shard``, Ray, a GPU,
lower precision, ``--backend torch``, random weights or weights a library resolves itself (timm, CLIP), an input
above ``QUICK_MAX`` images (where the DataLoader's decode processes pay for themselves), or no record yet.
``IMGFEAT_QUICK=0`` turns it off. Imports: data, models (torch-free modules only), outputs, options.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

import numpy as np

from .._version import __version__
from ..data.shards import ShardPlan
from ..data.sources import Source
from ..files import cache_dir, write_atomic
from ..models.names import CPU_BACKENDS
from ..models.preprocess import Preprocess
from ..errors import ImgfeatError, InvalidParameterError, best_effort_cache
from ..options import ExecPart, Job, ModelPart, available_cores
from ..outputs.identity import VectorIdentity
from .inputs import finish_file_run, require_input
from .loop import drive, postprocess
from .result import ExtractResult

log = logging.getLogger(__name__)

QUICK_MAX = 256  # images: above, decoding in worker processes (the full path's DataLoader) pays for torch's import


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _key(model: ModelPart, execution: ExecPart) -> str:
    """What the record is looked up by: every option that decides the model, how it runs and the versions that
    made the export (torch's read from its metadata, not imported)."""
    ident = [model.model, model.layer, model.pool, os.path.abspath(model.weights) if model.weights else None,
             execution.backend, execution.batch_size, execution.threads or available_cores(), __version__,
             _version("torch")]
    return hashlib.blake2b(json.dumps(ident).encode(), digest_size=12).hexdigest()


def _record_path(job: Job) -> Path:
    return cache_dir() / "quick" / f"{_key(job.model, job.execution)}.json"


def _identity_path(identity: VectorIdentity) -> Path:
    """The same record found by what a store's manifest says its vectors are (``VectorIdentity.model_key``): how
    query images are embedded without torch (:func:`store_encoder`)."""
    return cache_dir() / "quick" / f"id-{identity.model_key(__version__, _version('torch'))}.json"


def _stat(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def _gpu_visible() -> bool:
    """A GPU the full path's ``--device auto`` would pick (without importing torch to ask)."""
    return sys.platform == "darwin" or os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")


def _why_not(job: Job) -> Optional[str]:
    """Why ``job`` cannot take the quick path (None: it can, if a record exists)."""
    execution = job.execution
    if os.environ.get("IMGFEAT_QUICK", "1") == "0":
        return "IMGFEAT_QUICK=0"
    if job.engine != "local" or job.output.part is not None:
        return f"--engine {job.engine}" if job.engine != "local" else "--shard"
    if job.output.store:
        return "the output is a feature store"
    if execution.precision != "fp32":
        return f"--precision {execution.precision}"
    if execution.backend not in ("auto",) + CPU_BACKENDS:
        return f"--backend {execution.backend}"
    if job.model.random_weights:
        return "--random-weights"
    if execution.device not in ("auto", "cpu") or (execution.device == "auto" and _gpu_visible()):
        return "a GPU (--device)" if execution.device != "auto" else "a GPU may be used (--device auto)"
    return None


def _small(source: Source) -> Optional[list]:
    """The input's records if there are at most ``QUICK_MAX`` (reading one more to know), else None."""
    records = list(itertools.islice(source.records(), QUICK_MAX + 1))
    return records if len(records) <= QUICK_MAX else None


def _usable(record: dict) -> Optional[str]:
    if record.get("versions") != [__version__, _version("torch"), _version(record["runtime"])]:
        return "versions changed since the export was recorded"
    if not os.path.isfile(record["export"]):
        return "the cached export is gone"
    for path, size, mtime in record["files"]:
        try:
            if _stat(path)[1:] != [size, mtime]:
                return f"the weights file changed ({path})"
        except OSError:
            return f"the weights file is gone ({path})"
    return None


def try_run(job: Job, progress: Optional[bool] = None) -> Optional[ExtractResult]:
    """Run ``job`` on the quick path, or return None (and log why at debug level) for the full one."""
    why = _why_not(job)
    record = None
    if why is None:
        try:
            record = json.loads(_record_path(job).read_text())
        except (OSError, ValueError):
            why = "no record of an exported model for these options yet (the full path writes one)"
    if why is None:
        why = _usable(record)
    source = records = None
    if why is None:
        source = job.input.open()
        records = _small(source)
        if records is None:
            why = f"more than {QUICK_MAX} images"
    if why is not None:
        log.debug("full path (torch): %s", why)
        return None
    log.debug("quick path: %s, %s export %s", record["model"], record["backend"], record["export"])
    return _run(job, record, source, records)


def _runner(record: dict, threads: int):
    from ..models.runtimes import onnx_runner, openvino_runner

    if record["backend"] == "onnx":
        return onnx_runner(Path(record["export"]), threads)
    return openvino_runner(Path(record["export"]), threads, "fp32")


def _run(job: Job, record: dict, source: Source, records: list) -> ExtractResult:
    from ..data.batches import decode_batch, planned_batches  # Pillow: not on a text query's path
    from ..outputs.targets import FileTarget

    require_input(source, job.input.start)
    start = time.perf_counter()
    pp = Preprocess.from_identity(record["preprocess"])
    run = _runner(record, job.execution.threads or available_cores())
    post, decode, out = job.post, job.decode, job.output.out
    target = FileTarget(out)
    target.open(record["dim"], np.dtype(post.dtype))
    retries = {"retried": 0, "recovered": 0}
    batches = ({**decode_batch(chunk, pp, decode.max_pixels, decode.decode_timeout), "shard": shard, "last": last}
               for shard, chunk, last in planned_batches(iter(records), decode.batch_size, ShardPlan()))
    try:
        n_done = drive(batches, lambda pixels: postprocess(run(pixels), post.relu, post.l2).astype(
            np.dtype(post.dtype), copy=False), target, retries)
        target.close()
    except BaseException:
        target.abort()
        raise
    report = {"backend": record["backend"], "export": str(Path(record["export"]).parent), "quick": True}
    result = ExtractResult.of_loop(n_done, target, time.perf_counter() - start, record["dim"], record["model"],
                                   report, out, retries)
    return finish_file_run(result, source, target, job.input, out)


def remember(job: Job, pipeline) -> None:
    """After a full run's model is built on the CPU with an fp32 export: record what the quick path needs, found by
    these options (when the quick path could serve them) and by the vectors' identity (for query images)."""
    report = pipeline.report
    if report.get("backend") not in CPU_BACKENDS or "export" not in report or pipeline.device.type != "cpu" \
            or job.execution.precision != "fp32" or job.model.random_weights:
        return
    from ..models.weights import resolve_weights

    weights_file = resolve_weights(pipeline.spec.weights, job.model.weights, False).local_file()
    if weights_file is None:
        return
    from .pipeline import vector_identity

    runtime = {"onnx": "onnxruntime", "openvino": "openvino"}[report["backend"]]
    identity = vector_identity(pipeline, job.post, job.execution.precision)
    record = {"model": identity.model, "layer": identity.layer, "pool": identity.pool,
              "fingerprint": identity.weights, "dim": identity.dim, "preprocess": identity.preprocess,
              "backend": report["backend"], "export": str(Path(report["export"]) / "model.onnx"),
              "files": [_stat(weights_file)], "runtime": runtime,
              "versions": [__version__, _version("torch"), _version(runtime)]}
    data = json.dumps(record, indent=1).encode()
    paths = [_identity_path(identity)]
    if _why_not(job) is None:
        paths.append(_record_path(job))
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)


def _text_path(identity: VectorIdentity) -> Path:
    """The record of a store model's text tower export (CLIP), found by the same model key as its image export."""
    return cache_dir() / "quick" / f"text-{identity.model_key(__version__, _version('torch'))}.json"


def remember_text(identity: VectorIdentity, body, executor, weights: Optional[str]) -> None:
    """After a text tower's ONNX export was made and checked against torch (``backends.text_executor``): record it
    with the model's tokenizer rebuilt without torch (only where it gives open_clip's tokens) and its logit scale,
    so the next text query of this store (``search --text``, ``classify``, serve) runs without torch."""
    if executor.export is None or os.environ.get("IMGFEAT_QUICK", "1") == "0":
        return
    tokenizer = body.fast_tokenizer()
    if tokenizer is None:
        log.debug("text queries keep torch: this model's tokenizer is not reproduced without it")
        return
    path = _text_path(identity)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer_file = path.with_suffix(".tokenizer")  # tokenizers' JSON
    write_atomic(tokenizer_file, tokenizer.to_json().encode())
    scale, bias = body.logit_scale_bias()
    record = {"model": identity.model, "fingerprint": identity.weights, "backend": "onnx",
              "export": str(executor.export), "tokenizer": str(tokenizer_file),
              "context_length": tokenizer.context_length, "logit_scale": scale, "logit_bias": bias,
              "sigmoid": bool(body.sigmoid), "files": [_stat(os.path.abspath(weights))] if weights else [],
              "runtime": "onnxruntime", "tokenizers": _version("tokenizers"),
              "versions": [__version__, _version("torch"), _version("onnxruntime")]}
    write_atomic(path, json.dumps(record, indent=1).encode())


class TextCache:
    """The embeddings a text tower export made, one small file a text beside the export (``texts/``, named by the
    text's sha256): the class prompts of ``classify`` and a query asked again are read, not run. Each file holds the
    vector's xxh3 before it; one that does not match (cut short, changed) is made again. Writes are best effort."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, text: str) -> Path:
        h = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self.folder / h[:2] / f"{h}.f32"

    def get(self, text: str) -> Optional[np.ndarray]:
        import xxhash

        try:
            data = self._file(text).read_bytes()
        except OSError:
            return None
        body = data[16:]
        if len(data) <= 16 or len(body) % 4 or xxhash.xxh3_128(body).digest() != data[:16]:
            return None
        return np.frombuffer(body, np.float32)

    def put(self, text: str, vector: np.ndarray) -> None:
        import xxhash

        body = np.ascontiguousarray(vector, np.float32).tobytes()
        path = self._file(text)
        with best_effort_cache("a text embedding", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, xxhash.xxh3_128(body).digest() + body)


class QuickEncoder:
    """Queries embedded as a store's vectors were, without torch: the exports full runs recorded for the store's
    model, layer, pool and weights hash: its image tower (``encode`` / ``encode_files``) and, for a CLIP store, its
    text tower (``encode_text``, ``text_scoring``), each where recorded (``StoreEncoder``'s interface)."""

    def __init__(self, record: Optional[dict], relu: bool, l2: bool, threads: Optional[int] = None,
                 text: Optional[dict] = None) -> None:
        self.record, self.relu, self.l2, self.text = record, relu, l2, text
        self.threads = threads or available_cores()
        self.preprocess = Preprocess.from_identity(record["preprocess"]) if record is not None else None
        self._run = self._text = None  # each runtime made on its first query (a text search never loads images')

    @property
    def images(self) -> bool:
        return self.record is not None

    @property
    def has_text(self) -> bool:
        return self.text is not None

    def encode(self, arrays) -> np.ndarray:
        from ..data.batches import nchw

        if self.record is None:
            raise ImgfeatError("no recorded image export: this encoder embeds texts only")
        if self._run is None:
            self._run = _runner(self.record, self.threads)
        if not len(arrays):
            return np.zeros((0, self.record["dim"]), np.float32)
        return postprocess(self._run(nchw(list(arrays), self.preprocess)), self.relu, self.l2)

    def encode_files(self, files, max_pixels: Optional[int] = None) -> np.ndarray:
        from ..data.batches import decode_queries

        return self.encode(decode_queries(files, self.preprocess, max_pixels))

    def encode_text(self, texts, batch: int = 256) -> np.ndarray:
        """L2-normalised text embeddings in the store's space: the recorded tokenizer and text tower export. A text
        this export embedded before is read from its cache (``TextCache``): the tokenizer and the session are made
        only for texts it has not seen."""
        texts = list(texts)
        cache = TextCache(Path(self.text["export"]).parent / "texts")
        found = [cache.get(t) for t in texts]
        todo = [i for i, v in enumerate(found) if v is None]
        if todo:
            if self._text is None:
                from ..models.tokenizer import ClipTokenizer

                self._text = (ClipTokenizer.load(Path(self.text["tokenizer"]), self.text["context_length"]),
                              _runner(self.text, self.threads))
            tokenizer, run = self._text
            for s in range(0, len(todo), batch):
                rows = todo[s:s + batch]
                made = postprocess(run(tokenizer.encode([texts[i] for i in rows])), False, True)
                for i, vector in zip(rows, made):
                    found[i] = vector
                    cache.put(texts[i], vector)
        return np.stack(found).astype(np.float32, copy=False) if found else np.zeros((0, 0), np.float32)

    def text_scoring(self) -> tuple[float, float, bool]:
        """The model's logit scale and bias and whether it scores with a sigmoid (SigLIP): zero-shot's softmax."""
        return self.text["logit_scale"], self.text["logit_bias"], self.text["sigmoid"]


def query_encoder(store_path, weights: Optional[str] = None, random_weights: Optional[bool] = None,
                  text: bool = False, purpose: str = "image queries are embedded", backend: str = "torch"):
    """The one chooser of the encoder of a store's queries (the command line, the Python API and serve), weights as
    the store records them (or as given): a :class:`QuickEncoder` (no torch) when a full run recorded this model's
    export (``text``: its text tower's, recorded by the first text query), else ``StoreEncoder`` (the store's model
    on ``backend``, its weights hash checked). Features that are not a store are refused in one message naming ``purpose``."""
    from pathlib import Path as _Path

    if not _Path(store_path).is_dir():
        # the command line names the flag the user typed for 'features' (--features, or serve's FEATURES)
        raise InvalidParameterError(f"{purpose} with the store's own model: The 'features' parameter must be a "
                                    "feature store (its manifest names the model and weights), not the file "
                                    f"{store_path}; query by id instead", "features")
    from ..outputs.store import FeatureStore, query_weights

    manifest = FeatureStore.existing(store_path).manifest
    quick = store_encoder(manifest, weights, query_weights(manifest, weights, random_weights), text)
    if quick is not None:
        return quick
    from .encode import StoreEncoder

    return StoreEncoder.for_store(store_path, weights, random_weights=random_weights, backend=backend,
                                  remember_text=remember_text)


def _record(path: Path, weights: Optional[str]) -> tuple[Optional[dict], Optional[str]]:
    """A usable record at ``path`` for queries given ``weights`` (None: as the store records them), or why not."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, ("no record of this store's model exported (an extract to a file writes one for images, the "
                      "first text query in torch for texts)")
    why = _usable(record)
    if why is None and weights is not None and [f[0] for f in record["files"]] != [os.path.abspath(weights)]:
        why = "other --weights than the recorded export's"
    if why is None and "tokenizer" in record and (record.get("tokenizers") != _version("tokenizers")
                                                  or not os.path.isfile(record["tokenizer"])):
        why = "the recorded tokenizer is gone or was made by another version of tokenizers"
    return (record, None) if why is None else (None, why)


def store_encoder(manifest: dict, weights: Optional[str], random_weights: bool,
                  text: bool = False) -> Optional[QuickEncoder]:
    """A :class:`QuickEncoder` for a store's query images (``text``: its texts), or None (said at debug level) for
    ``StoreEncoder``: random weights, a GPU, no record of this model's export (a text tower's is recorded by the
    first text query that runs in torch), or its weights file changed."""
    what = "text queries" if text else "query images"
    why = None
    if os.environ.get("IMGFEAT_QUICK", "1") == "0":
        why = "IMGFEAT_QUICK=0"
    elif random_weights:
        why = "random weights"
    elif _gpu_visible():
        why = "a GPU may be used"
    elif text and not manifest.get("text_tower"):
        why = "the store's vectors have no text tower"
    image = text_record = None
    if why is None:
        try:
            identity = VectorIdentity.from_manifest(manifest)
        except KeyError:
            why = "the manifest names no model"
    if why is None and text:  # the image export too where recorded (serve embeds images with it), else texts only
        text_record, why = _record(_text_path(identity), weights)
        image = _record(_identity_path(identity), weights)[0] if why is None else None
    elif why is None:
        image, why = _record(_identity_path(identity), weights)
    if why is not None:
        log.debug("%s: full path (torch): %s", what, why)
        return None
    log.debug("%s: quick path, %s export %s", what, (text_record or image)["backend"], (text_record or image)["export"])
    return QuickEncoder(image, bool(manifest.get("relu")), bool(manifest.get("l2")), text=text_record)
