"""What to do with features once they exist: PCA, linear probes, 2-D maps, kNN graphs and
search, near-duplicates, label diffusion, dataset audits. Estimators follow scikit-learn's shape
(``get_params``/``set_params``, fitted attributes ending in ``_``); every tool reads features only
through ``imgfeat.outputs.formats`` and never reaches back into the extraction pipeline.
May import: ``imgfeat.errors``, ``imgfeat.outputs``.
"""

import importlib

_LAZY = {"iter_blocks": "..outputs.formats", "read_features": "..outputs.formats", "read_paths": "..outputs.formats",
         "DatasetAudit": ".audit", "duplicate_groups": ".dedup", "LabelDiffusion": ".diffusion",
         "recall_at_k": ".exact", "KNNIndex": ".knn", "align": ".labels", "read_labels": ".labels",
         "embed_2d": ".maps", "mosaic_png": ".maps", "scatter_png": ".maps", "StreamingPCA": ".pca",
         "LinearProbe": ".probe"}


def __getattr__(name: str):
    """The names below imported on first use (PEP 562): ``imgfeat.tools.names``, which the command line reads to
    print its help, does not pay for NumPy, faiss and scikit-learn."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DatasetAudit", "StreamingPCA", "LinearProbe", "KNNIndex", "LabelDiffusion", "duplicate_groups", "embed_2d",
           "scatter_png", "mosaic_png", "recall_at_k", "iter_blocks", "read_features", "read_labels",
           "read_paths", "align"]
