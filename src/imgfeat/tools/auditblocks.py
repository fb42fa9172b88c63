"""The audit of a collection too large for cleanlab's ``Datalab`` (which holds the graph as a sparse matrix, an
N x classes array of probabilities and a DataFrame a row): the same issues computed a block of rows at a time from a
kNN graph written to disk, every array O(N) small.

- the graph: ``graph.build_graph`` (a ``CellJoin`` at scale, reading the store in storage order) written to a
  temporary folder, each block of rows sorted nearest first as it is read;
- outliers and near-duplicates: cleanlab's own formulas (``OutlierIssueManager`` and ``NearDuplicateIssueManager``
  given a ``knn_graph``: the mean and the nearest of each row's cosine distances, their median, quartiles and
  thresholds), from per-row arrays, tested equal to ``Datalab`` on small data;
- label issues: cleanlab's batched path (``cleanlab.experimental.label_issues_batched.LabelInspector``, what
  ``find_label_issues_batched`` runs, with its calibrated count of issues), fed each block's out-of-sample class
  shares among the neighbours (``class_shares``, the in-memory audit's too), never held for all rows (two passes:
  confident thresholds, then scores);
- leaks: pairs across splits within cleanlab's near-duplicate radius, found in the same pass.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from ..errors import require
from .graph import build_graph
from .names import RAW_SUFFIXES

BLOCK_ROWS = 65_536
# how many label issues: cleanlab's calibrated count of off-diagonal confident examples, its option. The class shares
# of 10 neighbours come in steps of 0.1, so the default count (a prediction at or above its class's mean
# self-confidence) misses flips whose neighbours agree at 0.8: on the planted sets of tests/test_audit.py the default
# found 11 of 16 flips where this finds 16 of 16 at the same precision (51 of 52 flagged on four sets)
NUM_ISSUES = {"estimation_method": "off_diagonal_calibrated"}
OUTLIER_THRESHOLD = 0.37037  # cleanlab's OutlierIssueManager.DEFAULT_THRESHOLDS["features"]
NEAR_DUPLICATE_THRESHOLD = 0.13  # cleanlab's NearDuplicateIssueManager threshold


def datalab_bytes(n: int, k: int, classes: int) -> int:
    """About what the in-memory audit holds at its peak: the graph (float32 and int32 arrays, then float64 distances
    and cleanlab's sparse matrix of them), cleanlab's N x classes probabilities and its copies, and its per-row
    DataFrames and lists (about 400 bytes a row)."""
    return n * k * (4 + 4 + 8 + 16) + n * max(classes, 1) * 8 * 3 + n * 400


def _distances(D: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - D.astype(np.float64))  # cosine distances, as the in-memory audit hands cleanlab


def class_shares(y: np.ndarray, I: np.ndarray, classes: int) -> np.ndarray:
    """Out-of-sample class shares of rows from their neighbours' labels (``y`` a class code per row of the graph,
    -1 unlabelled: no vote); a row with no labelled neighbour gets 1/classes for each (as the in-memory audit)."""
    votes = y[I].ravel()
    n = len(I)
    owner = np.repeat(np.arange(n), I.shape[1])
    has = votes >= 0
    # one n x classes float64 array, divided in place: at 1M images x 100 classes it is 800 MB, and the temporaries
    # of the same size a naive version makes are not
    pred = np.bincount(owner[has] * classes + votes[has], weights=np.ones(int(has.sum())),
                       minlength=n * classes).reshape(n, classes)
    del owner, has, votes
    total = pred.sum(axis=1, keepdims=True)
    pred /= np.maximum(total, 1)
    pred[total[:, 0] == 0] = 1.0 / classes
    return pred


def _nearest_first(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A block of the graph with each row's neighbours nearest first, as cleanlab expects."""
    order = np.argsort(-D, axis=1, kind="stable")
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def streamed_issues(audit, X, y: Optional[np.ndarray], classes: Optional[np.ndarray], splits: Optional[np.ndarray],
                    memory: int, workdir: Optional[str]) -> None:
    """Fill ``audit`` (a ``DatasetAudit``) as its in-memory ``fit`` does, a block of rows at a time: ``y`` a class
    code per row (-1: unlabelled) of ``classes``, ``splits`` a split code per row (-1: none) or None. The graph lives
    in a temporary folder under ``workdir`` while the audit runs; ``audit.knn_`` reads it from there until
    ``audit.close()``."""
    from scipy.stats import iqr

    n, k = len(X), audit.k
    folder = tempfile.mkdtemp(prefix=".imgfeat-audit-", dir=workdir)
    audit._folder = folder
    built = build_graph(X, None, k, index=audit.index, memory=memory, nprobe=audit.nprobe, what="the audit's graph",
                        raw=os.path.join(folder, "graph"))
    D, I = (np.memmap(os.path.join(folder, f"graph{ext}"), dtype, "r", shape=(n, k))
            for ext, dtype in ((RAW_SUFFIXES[1], np.float32), (RAW_SUFFIXES[0], np.int32)))
    audit.knn_ = _Sorted(D, I)
    names = [i for i in ("outlier", "near_duplicate") if i in audit.issues]
    labelled = y is not None and "label" in audit.issues and (y >= 0).any()
    inspector = None
    if labelled:
        require("cleanlab", "audit", "imgfeat audit")
        from cleanlab.experimental.label_issues_batched import LabelInspector

        inspector = LabelInspector(num_class=len(classes), store_results=False, verbose=False,
                                   num_issue_kwargs=NUM_ISSUES)
    avg, nearest = np.empty(n, np.float64), np.empty(n, np.float64)
    for s in range(0, n, BLOCK_ROWS):  # pass 1: per-row distances, and cleanlab's confident thresholds
        Db, Ib = _nearest_first(np.asarray(D[s:s + BLOCK_ROWS]), np.asarray(I[s:s + BLOCK_ROWS]))
        dist = _distances(Db)
        avg[s:s + len(dist)], nearest[s:s + len(dist)] = dist.mean(axis=1), dist[:, 0]
        if inspector is not None:
            mine = y[s:s + len(dist)] >= 0
            if mine.any():
                inspector.update_confident_thresholds(y[s:s + len(dist)][mine], class_shares(y, Ib[mine], len(classes)))
    median_nn = max(float(np.median(nearest)), _epsilon())
    radius = NEAR_DUPLICATE_THRESHOLD * median_nn
    near_flag = np.zeros(n, bool)
    if labelled:
        rows = np.flatnonzero(y >= 0)
        score = np.empty(len(rows), np.float64)
        suggested = np.empty(len(rows), np.int32)
        agreement = np.empty(len(rows), np.float64)
        correct = np.empty(len(rows), bool)
    leaks: dict = {}
    threshold = audit.leak_threshold if audit.leak_threshold is not None else 1.0 - radius
    at = 0
    for s in range(0, n, BLOCK_ROWS):  # pass 2: near-duplicate sets, label scores, leaks
        Db, Ib = _nearest_first(np.asarray(D[s:s + BLOCK_ROWS]), np.asarray(I[s:s + BLOCK_ROWS]))
        within = _distances(Db) < radius  # cleanlab's radius: a set holds both ends of each such edge
        near_flag[s + np.flatnonzero(within.any(axis=1))] = True
        near_flag[Ib[within]] = True
        if labelled:
            mine = y[s:s + len(Db)] >= 0
            if mine.any():
                given = y[s:s + len(Db)][mine]
                pred = class_shares(y, Ib[mine], len(classes))
                m = len(given)
                score[at:at + m] = inspector.score_label_quality(given, pred)
                suggested[at:at + m] = pred.argmax(axis=1)
                agreement[at:at + m] = pred[np.arange(m), suggested[at:at + m]]
                # cleanlab's _reduce_issues: a label its prediction agrees with is never an issue
                bumped = pred.copy()
                bumped[np.arange(m), given] += 1e-6
                correct[at:at + m] = bumped.argmax(axis=1) == given
                at += m
        if splits is not None:
            r, c = np.nonzero(Db >= threshold)
            other = Ib[r, c]
            cross = (other >= 0) & (splits[s + r] != splits[np.maximum(other, 0)])
            for a, b, cos in zip((s + r[cross]).tolist(), other[cross].tolist(), Db[r[cross], c[cross]].tolist()):
                key = (min(a, b), max(a, b))
                leaks[key] = max(leaks.get(key, -1.0), cos)
    audit.issues_, audit.summary_ = {}, {"n": n, "k": k, "index": built.description}
    if built.recall is not None:
        audit.summary_["graph_recall"] = built.recall
    if "outlier" in names:
        cut = float(np.percentile(avg, 75) + (1 / OUTLIER_THRESHOLD - 1) * iqr(avg))
        scale = float(max(np.median(avg), 100 * np.finfo(np.float64).eps))
        scores = np.exp(-avg / max(scale, _epsilon()))
        audit._issue("outlier", scores, avg > cut)
    if "near_duplicate" in names:
        audit._issue("near_duplicate", 1.0 - np.exp(-nearest / median_nn), near_flag)
    del avg, nearest
    if "label" in audit.issues:
        if not labelled:
            audit.summary_["label"] = {"skipped": "no labels"}
        else:
            from cleanlab.rank import find_top_issues

            issues = np.zeros(len(rows), bool)
            issues[find_top_issues(score, top=inspector.get_num_issues(silent=True))] = True
            issues &= ~correct
            audit._issue("label", score, issues, rows=rows, suggested=classes[suggested], agreement=agreement,
                         given=classes[y[rows]])
            audit.summary_["label"]["score"] = float(1.0 - issues.sum() / len(rows))
            audit.summary_["label"]["labelled"] = int(len(rows))
            audit.summary_["label"]["method"] = "cleanlab find_label_issues_batched (LabelInspector)"
            if len(rows) < n:
                audit.summary_["label"]["unlabelled_left_out"] = int(n - len(rows))
    if "leak" in audit.issues:
        audit._leak_pairs(leaks, splits, threshold)


class _Sorted(tuple):
    """(D, I) of the graph on disk, each row's neighbours nearest first when read (the report reads a row's 5
    nearest)."""

    def __new__(cls, D, I):
        return super().__new__(cls, (_Rows(D, I, 0), _Rows(D, I, 1)))


class _Rows:
    def __init__(self, D, I, which: int) -> None:
        self.D, self.I, self.which, self.shape = D, I, which, D.shape

    def __len__(self) -> int:
        return len(self.D)

    def __getitem__(self, key):
        single = isinstance(key, (int, np.integer))
        rows = np.array([key]) if single else key
        out = _nearest_first(np.asarray(self.D[rows]), np.asarray(self.I[rows]))[self.which]
        return out[0] if single else out

    def __array__(self, dtype=None, copy=None):
        full = self[np.arange(len(self))]
        return full.astype(dtype, copy=False) if dtype is not None else full


def _epsilon() -> float:
    from cleanlab.internal.constants import EPSILON

    return EPSILON


def remove_graph(audit) -> None:
    folder = getattr(audit, "_folder", None)
    if folder:
        audit.knn_ = None
        shutil.rmtree(folder, ignore_errors=True)
        audit._folder = None
