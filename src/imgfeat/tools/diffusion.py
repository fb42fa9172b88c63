"""Label propagation over a kNN graph (low-shot learning with large-scale diffusion, Douze et
al., CVPR'18): a few labelled points, many unlabelled (and optional background) points."""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ..errors import ImgfeatError, bad_param
from ._base import Params
from .graph import RawGraph, normalized_graph, propagate, ranks
from .knn import KNNIndex
from .names import ITERATION_GRID


class RowLabels(Sequence):
    """The labels of a few of ``n`` rows without a Python object per row: ``rows`` (ascending) and ``values`` (their
    labels). As a sequence it is the list it stands for: ``y[i]`` is row i's label or None."""

    def __init__(self, n: int, rows, values) -> None:
        order = np.argsort(np.asarray(rows, np.int64), kind="stable")
        self.n, self.rows = int(n), np.asarray(rows, np.int64)[order]
        self.values = np.asarray(values, dtype=object)[order]

    @classmethod
    def of(cls, ids: Sequence[str], labels: dict) -> "RowLabels":
        """The labels of ``labels`` (id -> label) at the rows of ``ids`` (looked up through ``IdIndex``); ids not
        among them are left out."""
        from ..outputs.idindex import id_index

        keys = list(labels)
        rows = id_index(ids).rows(keys)
        keep = np.flatnonzero(rows >= 0)
        return cls(len(ids), rows[keep], [labels[keys[j]] for j in keep.tolist()])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        i = int(i) + self.n if int(i) < 0 else int(i)
        if not 0 <= i < self.n:
            raise IndexError(i)
        j = int(np.searchsorted(self.rows, i))
        return self.values[j] if j < len(self.rows) and self.rows[j] == i else None

    def __iter__(self) -> Iterator[Optional[str]]:
        return (self[i] for i in range(self.n))


def label_sources(y: Sequence[Optional[str]]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The classes (sorted) and the diffusion's sources: (rows, class columns, values), each class starting with
    the same total mass (1 / its number of sources per source): with all labels of the base classes and a few of
    the novel ones, unnormalised sources let the base classes flood the graph. ``y``: a label or None per row, or
    a ``RowLabels``."""
    if isinstance(y, RowLabels):
        rows, labelled = y.rows, y.values
    else:
        y = np.asarray(y, dtype=object)
        rows = np.flatnonzero(np.array([v is not None for v in y], bool))
        labelled = y[rows]
    classes = np.array(sorted(set(labelled.tolist())))
    if len(classes) < 2:
        raise ImgfeatError(f"diffusion needs labels of at least 2 classes, got {classes.tolist()}")
    index = {c: j for j, c in enumerate(classes)}
    cols = np.array([index[v] for v in labelled], np.int64)
    vals = (1.0 / np.bincount(cols, minlength=len(classes))[cols]).astype(np.float32)
    return classes, (rows, cols, vals)


class LabelDiffusion(Params):
    """Build a k-NN graph (cosine), weight edges by ``max(sim, 0) ** gamma``, symmetrise,
    normalise ``D^-1/2 W D^-1/2`` and iterate ``F <- alpha S F + (1 - alpha) Y`` with the
    labelled rows as sources, each class's sources holding the same total mass (so a class with many
    labels does not drown one with few; with the same number per class this is plain one-hot). Fitted (as
    ``sklearn.semi_supervised.LabelSpreading``): ``classes_``,
    ``label_distributions_``, ``transduction_`` (the label of every row)."""

    def __init__(self, *, k: int = 30, iterations: int = 20, alpha: float = 0.99, gamma: float = 3.0,
                 index: str = "exact") -> None:
        self.k, self.iterations, self.alpha, self.gamma, self.index = k, iterations, alpha, gamma, index

    def fit(self, X: np.ndarray, y: Sequence[Optional[str]],
            monitor: Optional[Callable[[int, np.ndarray], None]] = None) -> "LabelDiffusion":
        """``y[i]`` is the label of row i, or None for unlabelled (and background) rows. ``monitor(t, F)`` is
        called after each iteration t (1-based) with the scores so far (to choose ``iterations`` on held-out
        rows in one pass)."""
        self.classes_, sources = label_sources(y)
        n = len(X)
        D, I = KNNIndex(metric="cosine", index=self.index).fit(X).graph(X, min(self.k, n - 1))
        S = normalized_graph(RawGraph(I, D), self.gamma, memory=2**62)  # in memory
        each = None if monitor is None else (lambda t, c0, F: monitor(t, F))
        _, F = next(propagate(S, sources, len(self.classes_), self.iterations, self.alpha, len(self.classes_), each))
        self.label_distributions_ = F
        self.transduction_ = self.classes_[F.argmax(axis=1)]
        return self

    def predict(self) -> np.ndarray:
        """The label of every row (the argmax of its diffused scores)."""
        return self.transduction_


class GraphDiffusion(Params):
    """``LabelDiffusion`` over a kNN graph given as arrays or on disk (``tools.graph.RawGraph``: ``knn --raw``'s
    files, memory-mapped), in bounded memory: the normalised graph is built as a CSR matrix (on disk when its edges do
    not fit half of ``memory`` bytes) and the class scores are propagated a block of classes at a time, as many as
    fit (two N x classes float32 buffers). Nothing of size N x classes is kept: fitted are ``classes_``,
    ``labels_`` (each row's best class, int32), ``transduction_`` (``classes_[labels_]``), ``scores_`` (the scores
    of ``keep_rows``, in that order) and ``tracked_`` ({iteration: the scores of ``track_rows``} for each of
    ``track_iterations``); ``memory_`` says what it planned. ``memory=None``: what the machine has available.
    ``held``: bytes of ``memory`` the caller already holds (``imgfeat diffuse``: the ids and their lookup).
    The same arithmetic as ``LabelDiffusion`` (``tools.graph.propagate``): the same labels, scores to float32
    rounding."""

    def __init__(self, *, iterations: int = 20, alpha: float = 0.99, gamma: float = 3.0,
                 memory: Optional[int] = None, folder: Optional[str] = None, held: int = 0) -> None:
        self.iterations, self.alpha, self.gamma, self.memory, self.folder = iterations, alpha, gamma, memory, folder
        self.held = held

    @staticmethod
    def plan(n: int, k: int, n_classes: int, memory: int, held: int = 0) -> dict:
        """How a graph of n rows, k neighbours each, is diffused within ``memory`` bytes, ``held`` of them already
        held by the caller: whether the CSR is in memory, the classes per block, the bytes it will hold (``held``
        included); refused (before any work) when one class does not fit."""
        from .memory import refuse_unless

        # the caller's; best score and class per row; the CSR's row pointers; a renumbering
        fixed = held + 8 * n + 8 * (n + 1) + 8 * n
        csr = 2 * n * k * 8
        in_memory = 3 * csr <= (memory - held) // 2
        taken = fixed + (csr if in_memory else 0)
        per_class = 8 * n  # F and its next step, float32
        refuse_unless(taken + per_class, memory, f"diffusing labels over {n:,} rows",
                      "Give --max-memory more, or diffuse fewer rows (a --background set is optional).")
        columns = int(max(1, min(n_classes, (memory - taken) // per_class)))
        return {"csr_in_memory": in_memory, "columns": columns, "blocks": -(-n_classes // columns),
                "bytes": taken + columns * per_class}

    def fit(self, graph: RawGraph, y: Sequence[Optional[str]], keep_rows: Sequence[int] = (),
            track_rows: Sequence[int] = (), track_iterations: Sequence[int] = (),
            order: Optional[np.ndarray] = None) -> "GraphDiffusion":
        """``order``: the rows renumbered for locality while they diffuse (``tools.graph.locality_order``); what is
        fitted is in the rows' own order either way."""
        from .memory import available_bytes

        if len(y) != graph.n:
            raise bad_param("y", f"one label (or None) per row of the graph ({graph.n})", f"{len(y)} labels")
        if order is not None and len(order) != graph.n:
            raise bad_param("order", f"a renumbering of the graph's {graph.n} rows", f"{len(order)} rows")
        self.classes_, sources = label_sources(y)
        C, n = len(self.classes_), graph.n
        memory = int(self.memory or available_bytes())
        self.memory_ = self.plan(n, graph.k, C, memory, self.held)
        free = memory - self.held
        S = normalized_graph(graph, self.gamma, free // 2 if self.memory_["csr_in_memory"] else free // 4,
                             self.folder, order)
        keep, track = np.asarray(keep_rows, np.int64), np.asarray(track_rows, np.int64)
        if order is not None:  # every row named by its new number while the scores live in that order
            rank = ranks(order)
            keep, track = rank[keep], rank[track]
            sources = (rank[sources[0]], sources[1], sources[2])
            del rank
        wanted = set(int(t) for t in track_iterations)
        self.scores_ = np.zeros((len(keep), C), np.float32)
        self.tracked_ = {t: np.zeros((len(track), C), np.float32) for t in sorted(wanted)}
        best = np.full(n, -np.inf, np.float32)
        labels = np.zeros(n, np.int32)

        def each(t: int, c0: int, F: np.ndarray) -> None:
            if t in wanted:
                self.tracked_[t][:, c0:c0 + F.shape[1]] = F[track]

        try:
            for c0, F in propagate(S, sources, C, self.iterations, self.alpha, self.memory_["columns"], each):
                self.scores_[:, c0:c0 + F.shape[1]] = F[keep]
                for at in range(0, n, BEST_ROWS):  # a block of rows at a time: no N-sized temporaries
                    part = slice(at, at + BEST_ROWS)
                    top = F[part].argmax(axis=1)
                    val = np.take_along_axis(F[part], top[:, None], 1)[:, 0]
                    better = val > best[part]  # strictly: the first class wins a tie, as argmax does
                    best[part][better] = val[better]
                    labels[part][better] = (top[better] + c0).astype(np.int32)
        finally:
            S.close()
        if order is not None:
            self.labels_ = np.empty(n, np.int32)
            self.labels_[order] = labels
        else:
            self.labels_ = labels
        return self

    @property
    def transduction_(self) -> np.ndarray:
        return self.classes_[self.labels_]


def top_k(n_classes: int) -> int:
    """The k a choice of iterations is scored by: top-5 with more than 5 classes, else top-1 (the low-shot paper's)."""
    return 5 if n_classes > 5 else 1


def validation_warning(n_rows: int, n_classes: int) -> Optional[str]:
    """Why a choice of iterations on ``n_rows`` held-out images of ``n_classes`` classes is noise (None: it is not)."""
    if n_rows >= MIN_VALIDATION_PER_CLASS * n_classes:
        return None
    return (f"only {n_rows} held-out images for {n_classes} classes (fewer than {MIN_VALIDATION_PER_CLASS} per "
            "class): the choice of iterations is noisy; give more labels or a fixed --iterations")


def best_iterations(tracked: dict[int, np.ndarray], classes: np.ndarray, truth: Sequence[str],
                    top_k: int) -> tuple[int, dict, dict]:
    """The iterations whose scores of the held-out rows are best by top-``top_k``, ties to top-1, then to more
    iterations; with every iteration's top-k and top-1."""
    scores = {t: float(topk_hits(F, classes, truth, top_k).mean()) for t, F in tracked.items()}
    top1 = {t: float(topk_hits(F, classes, truth, 1).mean()) for t, F in tracked.items()}
    return max(tracked, key=lambda t: (scores[t], top1[t], t)), scores, top1


BEST_ROWS = 65_536  # GraphDiffusion: the rows whose best class is updated at a time
MIN_VALIDATION_PER_CLASS = 5  # fewer held-out images per class: the iterations chosen on them are noise


class TunedLabelDiffusion(Params):
    """``LabelDiffusion`` whose number of iterations is chosen on held-out labelled images, in one pass: the
    diffusion runs to the largest of ``grid`` and is scored on the held-out rows at each iteration of the grid, by
    top-5 (top-1 with 5 classes or fewer: the low-shot paper's criterion); ties go to top-1, then to more
    iterations. ``fit(X, y, validation, refit_y=None)``: ``y`` the labels the diffusion starts from (None:
    unlabelled), ``validation`` {row: true label} of held-out rows; with ``refit_y`` (every label, the held-out
    ones back in) the diffusion is run again with them at the chosen iterations.

    Fitted: ``iterations_``, ``validation_scores_`` {iterations: top-k}, ``validation_top1_``, ``top_k_`` (the k
    the choice used), ``n_validation_``, ``validation_warning_`` (None, or why the choice is noisy),
    ``classes_``, ``label_distributions_`` and ``transduction_`` at the chosen iterations (of the refit if any)."""

    def __init__(self, *, k: int = 30, grid: Sequence[int] = ITERATION_GRID, alpha: float = 0.99, gamma: float = 3.0,
                 index: str = "exact") -> None:
        self.k, self.grid, self.alpha, self.gamma, self.index = k, grid, alpha, gamma, index

    def _diffusion(self, iterations: int) -> LabelDiffusion:
        return LabelDiffusion(k=self.k, iterations=iterations, alpha=self.alpha, gamma=self.gamma, index=self.index)

    def fit(self, X, y: Sequence[Optional[str]], validation: dict[int, str],
            refit_y: Optional[Sequence[Optional[str]]] = None) -> "TunedLabelDiffusion":
        grid = sorted(set(int(t) for t in self.grid))
        if not grid or grid[0] < 1:
            raise bad_param("grid", "iteration counts >= 1", self.grid)
        rows = np.array(sorted(validation), dtype=np.int64)
        truth = [validation[r] for r in rows.tolist()]
        n_classes = len({v for v in y if v is not None})
        self.top_k_ = top_k(n_classes)
        scores, top1 = {}, {}
        best: dict = {"key": None, "F": None}

        def monitor(t: int, F: np.ndarray) -> None:
            if t not in grid:
                return
            classes = model.classes_
            acc = (lambda k: float(topk_hits(F[rows], classes, truth, k).mean()) if len(rows) else float("nan"))
            scores[t], top1[t] = acc(self.top_k_), acc(1)
            key = (scores[t], top1[t], t)
            if best["key"] is None or key > best["key"]:
                best["key"] = key
                best["F"] = F.copy() if refit_y is None else None  # a refit recomputes it: keep no copy

        model = self._diffusion(grid[-1])
        model.fit(X, y, monitor=monitor)
        self.iterations_ = best["key"][2]
        self.validation_scores_, self.validation_top1_, self.n_validation_ = scores, top1, len(rows)
        self.validation_warning_ = validation_warning(len(rows), len(model.classes_))
        if refit_y is not None:
            model = self._diffusion(self.iterations_).fit(X, refit_y)
            self.label_distributions_ = model.label_distributions_
        else:
            self.label_distributions_ = best["F"]
        self.classes_ = model.classes_
        self.transduction_ = self.classes_[self.label_distributions_.argmax(axis=1)]
        return self

    def predict(self) -> np.ndarray:
        return self.transduction_


def topk_hits(scores: np.ndarray, classes: np.ndarray, truth: Sequence[str], k: int) -> np.ndarray:
    """Whether each row's true class is among its ``k`` best-scored classes (ties broken by class order)."""
    k = min(k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (classes[best] == np.asarray(truth, dtype=object)[:, None]).any(axis=1)


def scored_against_logreg(scores: np.ndarray, classes: np.ndarray, truth: Sequence[str], X_train: np.ndarray,
                          y_train: np.ndarray, X_test: np.ndarray, novel: frozenset = frozenset(),
                          C: float = 1.0) -> tuple[dict, dict]:
    """The paper's comparison: top-1 (and top-5 with more than 5 classes) of the diffusion's ``scores`` on the test
    images, and of a logistic-regression probe trained on the same labelled vectors, on all of them and, in the
    low-shot protocol (``novel`` classes), on base and novel classes apart. Returns (diffusion, logreg), each
    ``{"top1_all": ..., "top1_base": ..., ...}`` (a group without test images is left out)."""
    from .probe import LinearProbe

    ks = (1, 5) if len(classes) > 5 else (1,)
    groups = {"all": np.ones(len(truth), bool)}
    if novel:
        groups.update(base=np.array([t not in novel for t in truth]), novel=np.array([t in novel for t in truth]))
    base = LinearProbe(classifier="logreg", C=C).fit(X_train, y_train)

    def table(s: np.ndarray, cls: np.ndarray) -> dict:
        hits = {k: topk_hits(s, cls, truth, k) for k in ks}
        return {f"top{k}_{g}": float(hits[k][mask].mean()) for k in ks for g, mask in groups.items() if mask.any()}

    return table(scores, classes), table(base.decision_function(X_test), base.classes_)


def _draws(labels: dict[str, str], classes, count: Callable[[str, int], int],
           rng: np.random.Generator) -> Iterator[tuple[str, str, bool]]:
    """(id, class, drawn) for every labelled id of ``classes`` (class by class, ids sorted): ``count(class, n)``
    of each class's n ids are drawn, seeded, without replacement."""
    for c in sorted(classes):
        ids = sorted(i for i, v in labels.items() if v == c)
        n = count(c, len(ids))
        drawn = set(rng.choice(len(ids), n, replace=False).tolist()) if n > 0 else set()
        for j, i in enumerate(ids):
            yield i, c, j in drawn


def lowshot_split(labels: dict[str, str], novel: set[str], shots: int,
                  seed: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    """The low-shot protocol (Hariharan & Girshick; Douze et al. 2018): every label of a base class is kept, and
    ``shots`` labels per novel class are drawn (seeded); returns (kept labels, the novel-class labels not drawn:
    a validation set from the training images, e.g. to choose the number of diffusion iterations)."""
    if shots < 1:
        raise bad_param("shots", "an integer >= 1", shots)
    present = set(labels.values())
    missing = sorted(novel - present)
    if missing:
        raise ImgfeatError(f"novel classes without any label in the training labels: {missing[:5]}")
    if not present - novel:
        raise ImgfeatError("every class of the training labels is novel: the protocol needs base classes too")

    def count(c: str, n: int) -> int:
        if n < shots:
            raise ImgfeatError(f"novel class {c!r} has {n} labelled images, fewer than --shots {shots}")
        return shots

    kept = {i: c for i, c in labels.items() if c not in novel}
    held = {}
    for i, c, drawn in _draws(labels, novel, count, np.random.default_rng(seed)):
        (kept if drawn else held)[i] = c
    return kept, held


def validation_split(labels: dict[str, str], fraction: float,
                     seed: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    """(kept labels, held-out labels): a seeded ``fraction`` of each class held out, every class keeping one."""
    kept, held = {}, {}
    for i, c, drawn in _draws(labels, set(labels.values()), lambda c, n: min(n - 1, int(round(fraction * n))),
                              np.random.default_rng(seed)):
        (held if drawn else kept)[i] = c
    if not held:
        raise ImgfeatError("--iterations auto needs labelled images to hold out for validation: give more than one "
                           "label per class, or --novel-classes (the novel images not drawn validate)")
    return kept, held
