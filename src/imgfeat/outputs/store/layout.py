"""The store's layout on disk: its names and constants, and what tells a store path."""

from __future__ import annotations

import os
from pathlib import Path


from ...errors import ImgfeatError
from ..identity import identity_keys

FORMAT = "imgfeat-store"
MANIFEST = "manifest.json"
# Fields that must match for a rerun to resume into an existing store: the vectors' identity and the job's scope.
IDENTITY = identity_keys()
DEFAULT_SHARD_SIZE = 10_000


class StoreMismatchError(ImgfeatError):
    """The store was written by a different job."""


class StoreLockedError(ImgfeatError):
    """Another process is writing the store."""


LOCK = ".lock"


def is_store_path(path: str | os.PathLike) -> bool:
    """An output with no file extension (or an existing store directory) is a feature store."""
    p = Path(path)
    return str(path).endswith(("/", os.sep)) or (p / MANIFEST).is_file() or p.suffix == ""


def segment_of(marker: dict) -> dict:
    """A published segment of the manifest, from a shard's done-marker: its counts and files, no dead inputs yet
    (an update adds ``dead`` and the ``dead_*`` counts when it supersedes or removes some of its inputs)."""
    return {"shard": marker["shard"], "rows": marker["rows"], "errors": marker["errors"], "inputs": marker["inputs"],
            "dead": None, "files": marker["files"]}
