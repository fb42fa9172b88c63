"""imgfeat: deep feature vectors for image collections, fast.

    >>> import imgfeat
    >>> result = imgfeat.extract("photos/", "features.h5")      # stream to a file
    >>> ids, matrix = imgfeat.load("features.h5")
"""

__version__ = "0.1.0"

from ._errors import ImgfeatError, InvalidParameterError, MissingDependencyError, WeightsUnavailableError  # noqa: E402
from ._options import ExtractOptions  # noqa: E402
from ._preprocess import Preprocess  # noqa: E402
from ._runner import ExtractResult, extract  # noqa: E402
from ._sinks import load  # noqa: E402


def list_models():
    """The registered model specs (see ``imgfeat models``)."""
    from ._models import list_models as _list

    return _list()


__all__ = [
    "__version__", "extract", "load", "list_models", "ExtractOptions", "ExtractResult", "Preprocess",
    "ImgfeatError", "InvalidParameterError", "MissingDependencyError", "WeightsUnavailableError",
]
