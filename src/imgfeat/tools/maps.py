"""2-D maps of features: t-SNE (scikit-learn) or UMAP (umap-learn), drawn as a scatter
coloured by label and as a mosaic of thumbnails placed at their 2-D positions."""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import bad_param, require
from .names import METHODS



def embed_2d(X: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float = 30.0,
             step: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """2-D coordinates of the rows of X. ``step(what)`` is told each stage as it starts (a progress display)."""
    step = step or (lambda what: None)
    if method not in METHODS:
        raise bad_param("method", f"one of {METHODS}", method)
    if method == "umap":
        step(f"UMAP of {len(X):,} points")
        umap = require("umap", "umap", "UMAP maps")
        with warnings.catch_warnings():  # a seed makes UMAP single-threaded, and it says so every time
            warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
            return umap.UMAP(n_components=2, random_state=seed).fit_transform(X).astype(np.float32)
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    X = np.asarray(X, dtype=np.float32)
    if X.shape[1] > 50 and len(X) > 50:  # the usual t-SNE recipe: PCA to 50 first
        step(f"PCA of {len(X):,} vectors to 50 dimensions")
        X = PCA(50, random_state=seed).fit_transform(X)
    step(f"t-SNE of {len(X):,} points (the longest step)")
    perplexity = min(perplexity, max(2.0, (len(X) - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(X).astype(np.float32)


def class_colours(n: int, plt) -> list:
    """``n`` distinct colours: tab10 up to 10 classes; beyond, tab20's strong and light halves in turn (its
    pairs side by side are hard to tell apart), then evenly spaced hues."""
    if n <= 10:
        return [plt.get_cmap("tab10")(j) for j in range(n)]
    if n <= 20:
        tab20 = plt.get_cmap("tab20")
        return [tab20(2 * j) for j in range(10)][:n] + [tab20(2 * j + 1) for j in range(10)][: n - 10]
    return [plt.get_cmap("hsv")(j / n) for j in range(n)]


def scatter_png(coords: np.ndarray, labels: Optional[Sequence[Optional[str]]], path: str, title: str = "") -> None:
    """Points coloured by label (None: unlabelled, grey and behind the classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 8))
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=3)
    else:
        labels = np.asarray(labels, dtype=object)
        unlabelled = np.array([v is None for v in labels], bool)
        if unlabelled.any():  # grey, drawn first (behind), not a class and not a colour of the palette
            ax.scatter(coords[unlabelled, 0], coords[unlabelled, 1], s=3, color="#c8c8c8",
                       label=f"(unlabelled: {int(unlabelled.sum())})", zorder=0)
        classes = sorted({v for v in labels.tolist() if v is not None})
        colours = class_colours(len(classes), plt)
        for j, c in enumerate(classes):
            sel = labels == c
            ax.scatter(coords[sel, 0], coords[sel, 1], s=3, color=colours[j], label=c, zorder=1)
        ax.legend(markerscale=4, fontsize=8, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mosaic_png(coords: np.ndarray, paths: Sequence[str], path: str, size: int = 2000, thumb: int = 40) -> int:
    """Thumbnails at their 2-D positions on a white canvas; returns how many were drawn."""
    from PIL import Image

    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    xy = ((coords - lo) / span * (size - thumb)).astype(int)
    canvas = Image.new("RGB", (size, size), "white")
    drawn = 0
    for (x, y), p in zip(xy, paths):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                im.thumbnail((thumb, thumb))
                canvas.paste(im, (int(x), int(size - thumb - y)))
                drawn += 1
        except Exception:  # noqa: BLE001 - a map with one missing thumbnail is still a map
            continue
    canvas.save(path)
    return drawn
