"""What to do with features once they exist: PCA, linear probes, 2-D maps, kNN graphs and
search, near-duplicates, label diffusion. Estimators follow scikit-learn's shape; every tool
reads any imgfeat output or store block by block (``iter_blocks``)."""

from ._io import align, iter_blocks, read_features, read_labels, read_paths
from .dedup import duplicate_groups
from .diffusion import LabelDiffusion
from .knn import KNNIndex, recall_at_k
from .maps import embed_2d, mosaic_png, scatter_png
from .pca import StreamingPCA
from .probe import LinearProbe

__all__ = ["StreamingPCA", "LinearProbe", "KNNIndex", "LabelDiffusion", "duplicate_groups", "embed_2d",
           "scatter_png", "mosaic_png", "recall_at_k", "iter_blocks", "read_features", "read_labels",
           "read_paths", "align"]
