"""The tools' names and choices, which the command line declares: standard library only, so ``--help`` and an
argument error answer without importing NumPy, faiss or scikit-learn (``tests/test_cli_help.py``). Each tool module
takes its constants from here."""

from __future__ import annotations

METRICS = ("ip", "l2", "cosine")  # cosine: inner product of L2-normalised vectors
INDEXES = ("exact", "ivf", "hnsw", "pca")  # or any faiss index_factory string, e.g. "IVF65536,PQ32"
RAW_SUFFIXES = (".int32", ".float32", ".ids.txt")  # the low-shot diffusion code's bare graph files
ITERATION_GRID = (1, 2, 3, 5, 8, 10, 15, 20, 30, 50)  # diffuse --iterations auto: the candidates
METHODS = ("tsne", "umap")  # imgfeat map --method
CLASSIFIERS = ("svm", "logreg")  # imgfeat probe --classifier
ISSUES = ("label", "outlier", "near_duplicate", "leak")  # imgfeat audit --issues
DEFAULT_PROMPTS = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                   "a {} in a video game.", "art of the {}.", "a photo of the small {}.")
