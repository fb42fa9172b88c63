"""imgfeat: deep feature vectors for image collections, fast.

    >>> import imgfeat
    >>> result = imgfeat.extract("photos/", "features.h5")      # stream to a file
    >>> ids, matrix = imgfeat.load("features.h5")

The names below are imported on first use (PEP 562), so ``import imgfeat.data.decode`` in a spawned
decode process does not pay for torch.
"""

from __future__ import annotations

import importlib

from ._version import __version__

_LAZY = {
    "extract": "api", "load": "api", "list_models": "api", "list_layers": "api", "ExtractOptions": "api",
    "ExtractResult": "api", "ImgfeatError": "errors", "InvalidParameterError": "errors",
    "MissingDependencyError": "errors", "WeightsUnavailableError": "errors", "Preprocess": "models.preprocess",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'imgfeat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
