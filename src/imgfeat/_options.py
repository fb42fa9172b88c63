"""The one options object shared by the CLI, the Python API and every worker.

Each field's metadata carries its CLI help (and choices), so the argparse parser is
generated from this class and the two can never drift apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from ._decode import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS
from ._errors import bad_param

DEVICES = "auto|cpu|cuda|cuda:N|mps"
PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = ("float32", "float16")
POOLS = ("avg", "max", "none")
BACKENDS = ("auto", "torch", "onnx", "openvino")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """Decode processes: up to 4, never more than the cores the process may use."""
    return max(1, min(4, available_cores()))


def _opt(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class ExtractOptions:
    """Options of one extraction run (see ``imgfeat extract --help``)."""

    data: Any = _opt(None, "input: a TSV of id<TAB>path, a folder (walked recursively) or a text list of paths",
                     cli_required=True)
    out: Optional[str] = _opt(None, "output: a file whose extension picks the format (.tsv .pkl .h5/.hdf5 .npy "
                                    ".parquet), or a directory (no extension) for a resumable sharded feature store")
    format: str = _opt("auto", "auto: by --out's extension; store: a sharded feature store even if --out has a dot",
                       choices=("auto", "store"))
    shard_size: int = _opt(10_000, "input records per store shard (the unit of resume and of --shard I/N)")
    shard: Optional[str] = _opt(None, "I/N: process only the I-th (0-based) of N disjoint parts (shards k with "
                                      "k %% N == I), for Slurm arrays and other schedulers")
    engine: str = _opt("local", "local, or ray: spread the store's shards over a Ray cluster", choices=("local", "ray"))
    ray_address: Optional[str] = _opt(None, "Ray cluster address for --engine ray (default: RAY_ADDRESS or a "
                                            "local cluster)")
    model: str = _opt("efficientnet_lite0", "backbone name (see `imgfeat models`) or timm:<name>")
    layer: Optional[str] = _opt(None, "fx node whose output is the feature (see `imgfeat layers MODEL`); "
                                      "default: the model's own feature layer")
    pool: Optional[str] = _opt(None, "pooling of spatial maps / token sequences (default: avg)", choices=POOLS)
    weights: Optional[str] = _opt(None, "local state-dict file to load instead of the pretrained weights")
    random_weights: bool = _opt(False, "run the untrained network (benchmarks, tests); never the default")
    batch_size: int = _opt(32, "images per forward pass")
    workers: Optional[int] = _opt(None, "parallel decode processes (0 decodes in the main process; "
                                        "default: one per core, at most 4)")
    backend: str = _opt("auto", "inference backend; auto times torch, ONNX Runtime and OpenVINO once per model "
                                "on the CPU and caches the fastest (torch on a GPU)", choices=BACKENDS)
    threads: Optional[int] = _opt(None, "intra-op threads of the model (default: all available cores)")
    device: str = _opt("auto", f"{DEVICES}; auto picks CUDA, then MPS, then the CPU")
    precision: str = _opt("fp32", "compute precision (fp16 needs a GPU)", choices=PRECISIONS)
    relu: bool = _opt(False, "apply ReLU to the features")
    l2: bool = _opt(False, "L2-normalise each feature vector (after --relu)")
    dtype: str = _opt("float32", "storage dtype of the vectors", choices=DTYPES)
    start: int = _opt(0, "first input item to process (0-based, inclusive)")
    stop: Optional[int] = _opt(None, "input item to stop before (exclusive); with --start selects a block")
    max_pixels: int = _opt(DEFAULT_MAX_PIXELS, "images with more pixels are refused as 'too large'")
    decode_timeout: float = _opt(DEFAULT_DECODE_TIMEOUT, "seconds one image may take to read and decode; a "
                                                         "slower one (a stalled mount or URL) becomes a 'timeout' "
                                                         "error row (0: no limit)")
    quiet: bool = _opt(False, "no progress bar and no summary line")

    def part(self) -> Optional[tuple[int, int]]:
        """``--shard I/N`` parsed as (I, N)."""
        if self.shard is None:
            return None
        try:
            i, n = (int(x) for x in str(self.shard).split("/"))
        except ValueError:
            raise bad_param("shard", "'I/N' with integers 0 <= I < N", self.shard) from None
        if not 0 <= i < n:
            raise bad_param("shard", "'I/N' with integers 0 <= I < N", self.shard)
        return i, n

    def validate(self) -> "ExtractOptions":
        """Raise a clear error for any value outside its allowed set; return self."""
        if self.data is None:
            raise bad_param("data", "a folder, a TSV, a text list of paths or a list", None)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise bad_param("batch_size", "an integer >= 1", self.batch_size)
        if self.workers is None:
            self.workers = default_workers()
        if not isinstance(self.workers, int) or self.workers < 0:
            raise bad_param("workers", "an integer >= 0", self.workers)
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise bad_param("max_pixels", "an integer >= 1", self.max_pixels)
        if not isinstance(self.decode_timeout, (int, float)) or self.decode_timeout < 0:
            raise bad_param("decode_timeout", "a number of seconds >= 0 (0: no limit)", self.decode_timeout)
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise bad_param("shard_size", "an integer >= 1", self.shard_size)
        self.part()
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise bad_param("threads", "an integer >= 1 or None", self.threads)
        for name, allowed in (("precision", PRECISIONS), ("dtype", DTYPES), ("backend", BACKENDS)):
            if getattr(self, name) not in allowed:
                raise bad_param(name, f"one of {allowed}", getattr(self, name))
        if self.pool is not None and self.pool not in POOLS:
            raise bad_param("pool", f"one of {POOLS}", self.pool)
        return self


def option_fields():
    return fields(ExtractOptions)
