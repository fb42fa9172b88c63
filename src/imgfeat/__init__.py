"""imgfeat: deep feature vectors for image collections, fast.

    >>> import imgfeat
    >>> result = imgfeat.extract("photos/", "features.h5")      # stream to a file
    >>> ids, matrix = imgfeat.load("features.h5")
"""

from ._version import __version__
from .api import ExtractOptions, ExtractResult, extract, list_layers, list_models, load
from .errors import ImgfeatError, InvalidParameterError, MissingDependencyError, WeightsUnavailableError
from .models.preprocess import Preprocess

__all__ = [
    "__version__", "extract", "load", "list_models", "list_layers", "ExtractOptions", "ExtractResult", "Preprocess",
    "ImgfeatError", "InvalidParameterError", "MissingDependencyError", "WeightsUnavailableError",
]
