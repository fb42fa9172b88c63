"""The Python API. The command line (``imgfeat.cli``) is a thin layer over these functions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from .engines import run
from .engines.result import ExtractResult
from .options import ExtractOptions
from .outputs.formats import load, reading, write_blocks
from .outputs.store import FeatureStore

EXPORT_BLOCK = 8192  # rows per write when exporting: bounded memory whatever the shard size


def extract(data=None, out: Optional[str | Path] = None, *, options: Optional[ExtractOptions] = None,
            progress: Optional[bool] = False, **kwargs) -> ExtractResult:
    """Extract one feature vector per image.

    ``data`` is a folder, a TSV of ``id<TAB>path``, a text list of paths, a parquet/CSV table, tar
    shards, or a Python list of paths or ``(id, path)`` pairs. With ``out`` the vectors stream to
    that file (format by extension) or store directory; without it they are returned in
    ``result.features`` (rows match ``result.ids``). Keyword arguments are the fields of
    :class:`ExtractOptions`.
    """
    opts = dataclasses.replace(options) if options is not None else ExtractOptions()
    for key, value in kwargs.items():
        if not hasattr(opts, key):
            raise TypeError(f"extract() got an unexpected keyword argument {key!r}")
        setattr(opts, key, value)
    if data is not None:
        opts.data = data
    if out is not None:
        opts.out = str(out)
    return run(opts, progress=progress)


def list_models():
    """The registered model specs (see ``imgfeat models``)."""
    from .models.registry import list_models as _list

    return _list()


def list_layers(model: str) -> list[str]:
    """The fx node names ``layer=`` accepts for ``model`` (see ``imgfeat layers``)."""
    from .models.backbone import list_layers as _layers
    from .models.registry import get_model_spec

    return _layers(get_model_spec(model))


def store_info(path: str | Path, full: bool = False) -> dict:
    """A store's manifest and the result of verifying every published file against its size and checksum (each
    file state once, remembered; ``full``: every byte read again)."""
    store = FeatureStore.existing(path)
    return {"manifest": store.manifest, "report": store.verify(full=full)}


def export_store(store_path: str | Path, out: str | Path) -> int:
    """Convert a feature store to one file (format by ``out``'s extension); returns the vectors written."""
    store = FeatureStore.existing(store_path)

    def blocks():
        with reading(store_path):  # a missing or damaged shard file: one clear line
            for ids, paths, vectors in store.iter_shards():
                for s in range(0, len(ids), EXPORT_BLOCK):
                    yield ids[s:s + EXPORT_BLOCK], paths[s:s + EXPORT_BLOCK], np.asarray(vectors[s:s + EXPORT_BLOCK])

    return write_blocks(out, store.manifest["dim"], store.manifest["dtype"], blocks())


def extract_like(store_path: str | Path, files: list[str], weights: Optional[str] = None) -> np.ndarray:
    """Vectors of ``files`` made exactly as the store's were: its model, layer, pooling, ReLU/L2 and
    weights (checked against the store's weights hash). Used to search a store by image; to embed
    queries repeatedly, keep an :class:`imgfeat.engines.encode.StoreEncoder`."""
    from .engines import quick

    return quick.query_encoder(store_path, weights).encode_files(files)


__all__ = ["extract", "load", "list_models", "list_layers", "store_info", "export_store", "extract_like",
           "ExtractOptions", "ExtractResult"]
