"""What to do with features once they exist: PCA, linear probes, 2-D maps, kNN graphs and
search, near-duplicates, label diffusion, dataset audits. Estimators follow scikit-learn's shape
(``get_params``/``set_params``, fitted attributes ending in ``_``); every tool reads features only
through ``imgfeat.outputs.formats`` and never reaches back into the extraction pipeline.
May import: ``imgfeat.errors``, ``imgfeat.outputs``.
"""

from ..outputs.formats import iter_blocks, read_features, read_paths
from .audit import DatasetAudit
from .dedup import duplicate_groups
from .diffusion import LabelDiffusion
from .exact import recall_at_k
from .knn import KNNIndex
from .labels import align, read_labels
from .maps import embed_2d, mosaic_png, scatter_png
from .pca import StreamingPCA
from .probe import LinearProbe

__all__ = ["DatasetAudit", "StreamingPCA", "LinearProbe", "KNNIndex", "LabelDiffusion", "duplicate_groups", "embed_2d",
           "scatter_png", "mosaic_png", "recall_at_k", "iter_blocks", "read_features", "read_labels",
           "read_paths", "align"]
