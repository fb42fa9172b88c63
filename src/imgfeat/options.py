"""The one options object shared by the CLI, the Python API and every worker.

Each field's metadata carries its CLI help and its constraint (scikit-learn
``_param_validation`` habit): the argparse parser is generated from this class (choices
included) and :meth:`ExtractOptions.validate` checks the same constraints, so the two can never
drift apart.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from numbers import Real
from typing import Any, Callable, Optional

from .data.limits import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS
from .data.sources import accepted_inputs, open_source
from .errors import bad_param
from .models.names import BACKENDS, POOLS, PRECISIONS
from .outputs.checks import check_output_dir, check_output_file
from .outputs.names import extensions
from .outputs.store.layout import is_store_path

DEVICES = "auto|cpu|cuda|cuda:N|mps"
DTYPES = ("float32", "float16")
ENGINES = ("local", "ray")
FORMATS = ("auto", "store")
_DEFAULT_MIN_FIDELITY = 0.99


@dataclass(frozen=True)
class Constraint:
    """What a parameter accepts: ``allowed`` for the message, ``check`` to test a value, ``choices`` for argparse."""

    allowed: str
    check: Callable[[Any], bool]
    choices: Optional[tuple] = None


def one_of(values: tuple) -> Constraint:
    return Constraint(f"one of {values}", lambda v: v in values, values)


def integer(low: int) -> Constraint:
    return Constraint(f"an integer >= {low}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low)


def seconds() -> Constraint:
    return Constraint("a number of seconds >= 0 (0: no limit)",
                      lambda v: isinstance(v, Real) and not isinstance(v, bool) and v >= 0)


def fraction() -> Constraint:
    return Constraint("a number in [0, 1]", lambda v: isinstance(v, Real) and not isinstance(v, bool) and 0 <= v <= 1)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """Decode processes: up to 4, never more than the cores the process may use."""
    return max(1, min(4, available_cores()))


def _opt(default: Any, help: str, constraint: Optional[Constraint] = None, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, "constraint": constraint, **meta})


@dataclass(frozen=True)
class ModelPart:
    """Which network makes the vectors: what ``engines.pipeline.prepare_model`` needs, and all it gets."""

    model: str
    layer: Optional[str]
    pool: Optional[str]
    weights: Optional[str]
    random_weights: bool


@dataclass(frozen=True)
class ExecPart:
    """How the network runs: backend, device, precision, batch size and threads (``engines.pipeline.exec_config``)."""

    backend: str
    device: str
    precision: str
    batch_size: int
    threads: Optional[int]

    @classmethod
    def default(cls, **changes) -> "ExecPart":
        """``ExtractOptions``'s defaults (declared once, there) with ``changes``."""
        return dataclasses.replace(ExtractOptions(model="").exec_part, **changes)


@dataclass(frozen=True)
class PostPart:
    """What happens to each vector after the network: ReLU, L2, the output dtype (the loop's runner)."""

    relu: bool
    l2: bool
    dtype: str


@dataclass(frozen=True)
class UpdatePart:
    """How a store's run follows its input: the shard size of the plan, ``--append`` and ``--prune``."""

    shard_size: int
    append: bool
    prune: bool


@dataclass(frozen=True)
class InputPart:
    """What is read: the input, its block (``--start``/``--stop``), a table's columns, where skipped files are
    listed. :meth:`open` is the one place an engine opens its input."""

    data: Any
    start: int
    stop: Optional[int]
    image_column: Optional[str]
    id_column: Optional[str]
    skipped_log: Optional[str]

    def open(self):
        return open_source(self.data, self.start, self.stop, image_column=self.image_column,
                           id_column=self.id_column)


@dataclass(frozen=True)
class DecodePart:
    """How images become batches: batch size, decode processes and the limits of one image (``data.loader``)."""

    batch_size: int
    workers: int
    max_pixels: int
    decode_timeout: Optional[float]  # None: no limit


@dataclass(frozen=True)
class CheckPart:
    """A precision below fp32 is measured before it is used (``engines.fidelity``): on what, and to which bar."""

    min_fidelity: float
    calibrate: Optional[str]


@dataclass(frozen=True)
class OutputPart:
    """Where the vectors go: ``out`` (None: kept in memory), whether it is a store, this run's ``--shard`` part."""

    out: Optional[str]
    store: bool
    part: Optional[tuple[int, int]]
    quiet: bool


@dataclass(frozen=True)
class Job:
    """``ExtractOptions`` resolved once (``ExtractOptions.resolve``, by ``engines.run``) into the parts the engines
    pass on: each function receives the part it uses, never the whole declaration."""

    input: InputPart
    decode: DecodePart
    model: ModelPart
    execution: ExecPart
    post: PostPart
    check: CheckPart
    output: OutputPart
    update: UpdatePart
    engine: str
    ray_address: Optional[str]

    def replace(self, **parts) -> "Job":
        """This job with some parts changed, each given as a dict of its fields (``execution={"threads": 1}``)."""
        return dataclasses.replace(self, **{k: dataclasses.replace(getattr(self, k), **v) for k, v in parts.items()})


@dataclass
class ExtractOptions:
    """Options of one extraction run (see ``imgfeat extract --help``)."""

    data: Any = _opt(None, f"input: {accepted_inputs()}", cli_required=True)
    image_column: Optional[str] = _opt(None, "a table input: the column holding the images (HF's {bytes, path} "
                                             "struct, binary, or paths); default: found by name and type")
    id_column: Optional[str] = _opt(None, "a table input: the column holding the ids (default: id, key, __key__ or "
                                          "image_id; else file:row)")
    out: Optional[str] = _opt(None, f"output: a file whose extension picks the format ({' '.join(extensions())}), "
                                    "or a directory (no extension) for a resumable sharded feature store")
    format: str = _opt("auto", "auto: by --out's extension; store: a sharded feature store even if --out has a dot",
                       one_of(FORMATS))
    shard_size: int = _opt(10_000, "input records per store shard (the unit of resume and of --shard I/N)",
                           integer(1))
    shard: Optional[str] = _opt(None, "I/N: process only the I-th (0-based) of N disjoint parts (shards k with "
                                      "k %% N == I), for Slurm arrays and other schedulers")
    engine: str = _opt("local", "local, or ray: spread the store's shards over a Ray cluster", one_of(ENGINES))
    ray_address: Optional[str] = _opt(None, "Ray cluster address for --engine ray (default: RAY_ADDRESS or a "
                                            "local cluster)")
    model: str = _opt("efficientnet_lite0", "backbone name (see `imgfeat models`) or timm:<name>")
    layer: Optional[str] = _opt(None, "fx node whose output is the feature (see `imgfeat layers MODEL`); "
                                      "default: the model's own feature layer")
    pool: Optional[str] = _opt(None, "pooling of spatial maps / token sequences (default: avg)", one_of(POOLS))
    weights: Optional[str] = _opt(None, "local state-dict file to load instead of the pretrained weights")
    random_weights: bool = _opt(False, "run the untrained network (benchmarks, tests); never the default")
    batch_size: int = _opt(32, "images per forward pass", integer(1))
    workers: Optional[int] = _opt(None, "parallel decode processes (0 decodes in the main process; "
                                        "default: one per core, at most 4)", integer(0))
    backend: str = _opt("auto", "inference backend; auto times torch, ONNX Runtime and OpenVINO once per model "
                                "on the CPU and caches the fastest (torch on a GPU)", one_of(BACKENDS))
    threads: Optional[int] = _opt(None, "intra-op threads of the model (default: all available cores)", integer(1))
    device: str = _opt("auto", f"{DEVICES}; auto picks CUDA, then MPS, then the CPU")
    precision: str = _opt("fp32", "compute precision (fp16 needs a GPU; int8 runs on the CPU through onnx/openvino, "
                                  "calibrated on the input); a lower one is first compared with fp32 on a sample of "
                                  "the input and refused below --min-fidelity", one_of(PRECISIONS))
    min_fidelity: float = _opt(_DEFAULT_MIN_FIDELITY, "1st-percentile cosine to the fp32 vectors that a lower --precision must reach on "
                                     "the first 256 readable images of the input (0 accepts any)", fraction())
    calibrate: Optional[str] = _opt(None, "--precision int8: calibrate on the first 256 readable images of this input "
                                          "(any --data form) instead of the input's own")
    relu: bool = _opt(False, "apply ReLU to the features")
    l2: bool = _opt(False, "L2-normalise each feature vector (after --relu)")
    dtype: str = _opt("float32", "storage dtype of the vectors", one_of(DTYPES))
    start: int = _opt(0, "first input item to process (0-based, inclusive)", integer(0))
    stop: Optional[int] = _opt(None, "input item to stop before (exclusive); with --start selects a block", integer(0))
    max_pixels: int = _opt(DEFAULT_MAX_PIXELS, "images with more pixels are refused as 'too large'", integer(1))
    decode_timeout: float = _opt(DEFAULT_DECODE_TIMEOUT, "seconds one image may take to read and decode; a "
                                                         "slower one (a stalled mount or URL) becomes a 'timeout' "
                                                         "error row (0: no limit)", seconds())
    quiet: bool = _opt(False, "no progress bar and no summary line")
    skipped_log: Optional[str] = _opt(None, "write the files the input holds that are not images (a folder's "
                                            "videos, sidecars, documents) to FILE, one path<TAB>reason per line; "
                                            "the summary always counts them by extension")
    prune: bool = _opt(False, "a store: allow a run that removes more than 10%% of the store's inputs (their ids "
                              "left the input); without it such a run is refused, in case the input is only "
                              "partly there (an unmounted drive)")
    append: bool = _opt(False, "a store: add new and changed images but never remove any (an input that lists "
                               "only the new images)")

    # the typed parts the engines resolve this declaration into: each function receives the one it uses
    @property
    def model_part(self) -> ModelPart:
        return ModelPart(self.model, self.layer, self.pool, self.weights, self.random_weights)

    @property
    def exec_part(self) -> ExecPart:
        return ExecPart(self.backend, self.device, self.precision, self.batch_size, self.threads)

    @property
    def post_part(self) -> PostPart:
        return PostPart(self.relu, self.l2, self.dtype)

    @property
    def update_part(self) -> UpdatePart:
        return UpdatePart(self.shard_size, self.append, self.prune)

    def resolve(self) -> Job:
        """Validate, then the :class:`Job` the engines run: every part made here, once."""
        self.validate()
        return Job(input=InputPart(self.data, self.start, self.stop, self.image_column, self.id_column,
                                   self.skipped_log),
                   decode=DecodePart(self.batch_size, self.workers, self.max_pixels, self.decode_timeout or None),
                   model=self.model_part, execution=self.exec_part, post=self.post_part,
                   check=CheckPart(self.min_fidelity, self.calibrate),
                   output=OutputPart(self.out, self.wants_store(), self.part(), self.quiet),
                   update=self.update_part, engine=self.engine, ray_address=self.ray_address)

    def wants_store(self) -> bool:
        """Whether ``out`` is a feature store (a folder), not one file."""
        return self.out is not None and (self.format == "store" or is_store_path(self.out))

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
        """Raise a clear error for any value outside its declared constraint; return self."""
        if self.data is None:
            raise bad_param("data", accepted_inputs(), None)
        if self.workers is None:
            self.workers = default_workers()
        for f in fields(self):
            constraint, value = f.metadata.get("constraint"), getattr(self, f.name)
            if constraint is not None and not (value is None and f.default is None) and not constraint.check(value):
                raise bad_param(f.name, constraint.allowed + (" or None" if f.default is None else ""), value)
        self.part()
        self._check_partners()
        if self.calibrate is not None:
            open_source(self.calibrate, name="calibrate")  # a missing or unreadable list, said now
        if self.out is not None:
            self._check_out()
        return self

    def _check_partners(self) -> None:
        """Options that do nothing without their partner are refused rather than silently ignored."""
        lower = self.precision != "fp32"
        if self.calibrate is not None and self.precision != "int8":
            raise bad_param("calibrate", "given only with --precision int8 (the images int8 is calibrated on)",
                            self.calibrate)
        if self.min_fidelity != _DEFAULT_MIN_FIDELITY and not lower:
            raise bad_param("min_fidelity", "given only with a --precision below fp32 (fp32 is the reference)",
                            self.min_fidelity)
        if self.ray_address is not None and self.engine != "ray":
            raise bad_param("ray_address", "given only with --engine ray", self.ray_address)
        for name in ("prune", "append"):
            if getattr(self, name) and not self.wants_store():
                raise bad_param(name, "given only with a feature store --out (a folder)", True)
        if self.prune and self.append:
            raise bad_param("append", "given without --prune (--append never removes; --prune allows removing)",
                            True)

    def _check_out(self) -> None:
        """The output can be written and is none of the inputs: checked before any model is built."""
        inputs = [("--data", self.data), ("--calibrate", self.calibrate)]
        if self.skipped_log is not None:
            check_output_file(self.skipped_log, "--skipped-log", inputs)
        if self.wants_store():
            check_output_dir(self.out, "--out", inputs, must_be_store=True)
        else:
            check_output_file(self.out, "--out", inputs)


def option_fields():
    return fields(ExtractOptions)
