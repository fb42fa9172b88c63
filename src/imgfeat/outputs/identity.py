"""What a store's vectors are, as one value: ``VectorIdentity`` (model, layer, pool, weights hash, preprocessing,
dimension, dtype, ReLU, L2, precision). Made from a run (``engines.pipeline.vector_identity``) or read back from a
manifest (``from_manifest``); the store compares it field by field before resuming, the quick path files a
model's export by its ``model_key``, and queries embed images as it says."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Optional

# What the job covers, besides what its vectors are: a rerun must agree on these too to resume a store.
SCOPE = ("input", "start", "stop", "shard_size")


@dataclass(frozen=True)
class VectorIdentity:
    model: str
    layer: Optional[str]
    pool: Optional[str]
    weights: str  # the weights' hash (FeatureModel.fingerprint)
    preprocess: dict
    dim: int
    dtype: str
    relu: bool
    l2: bool
    precision: str = "fp32"  # vectors of two precisions never share a store

    # what a manifest written before a field existed holds for it
    DEFAULTS = {"precision": "fp32"}

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_manifest(cls, manifest: dict) -> "VectorIdentity":
        return cls(**{k: manifest.get(k, cls.DEFAULTS.get(k)) for k in cls.keys()})

    def as_dict(self) -> dict:
        """JSON-normalised (so that it compares with what a manifest reads back)."""
        return json.loads(json.dumps(asdict(self)))

    def model_key(self, *versions: Optional[str]) -> str:
        """A file name's worth of the model part (model, layer, pool, weights hash) and ``versions``: what the model
        outputs before post-processing, so an export made for it serves any ReLU/L2/dtype of the same model."""
        ident = [self.model, self.layer, self.pool, self.weights, *versions]
        return hashlib.blake2b(json.dumps(ident).encode(), digest_size=12).hexdigest()


def identity_keys() -> tuple[str, ...]:
    """Every manifest field a rerun must agree on to resume a store: the vectors' identity and the job's scope."""
    return VectorIdentity.keys() + SCOPE
