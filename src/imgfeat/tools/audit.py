"""What is wrong with a labelled collection, from its features: label errors, outliers, near-duplicates and
near-copies across splits (leaks).

cleanlab's ``Datalab`` computes the label, outlier and near-duplicate issues. imgfeat builds the one kNN graph
they need with faiss (exact or approximate, in blocks: ``tools.knn``) and hands it over as ``knn_graph`` (a
sparse matrix of cosine distances), so cleanlab never builds its own (scikit-learn, exact, in memory). The label
issue gets out-of-sample predicted probabilities from the same graph: each image's class shares among its k
neighbours, which is exactly what cleanlab derives from features (a k+1-NN classifier with the image's own vote
taken out). The leak issue is imgfeat's: pairs of near-duplicates whose images are in different splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import ImgfeatError, bad_param, require
from ._base import Params
from .auditblocks import class_shares, datalab_bytes, remove_graph, streamed_issues
from .autoindex import build_index
from .memory import available_bytes
from .exact import RECALL_SAMPLE, sampled_recall
from .names import ISSUES




def review_order(score: np.ndarray, flag: np.ndarray, agreement: Optional[np.ndarray] = None) -> np.ndarray:
    """The order a reviewer sees an issue's images in: flagged first, then the rest, each worst (lowest score)
    first; ties (many label scores are exactly 0) broken by how strongly the neighbours agree on the suggested
    label (all of them first), then by row."""
    tie = -agreement if agreement is not None else np.zeros(len(score))
    return np.lexsort((np.arange(len(score)), tie, score, ~np.asarray(flag, bool)))


class DatasetAudit(Params):
    """``fit(X, labels=None, splits=None)``: ``labels`` a class per row (None: unlabelled rows, left out of the
    label issue), ``splits`` a split name per row (for leaks). Fitted: ``knn_`` (D cosine, I rows), ``issues_``
    (issue -> dict of per-row arrays: ``score``, ``flag``, and for labels ``suggested``), ``leaks_`` (pairs),
    ``summary_``."""

    def __init__(self, *, k: int = 10, index: str = "auto", issues: Sequence[str] = ISSUES,
                 leak_threshold: Optional[float] = None, nprobe: int = 16, memory: Optional[int] = None,
                 streamed: Optional[bool] = None, workdir: Optional[str] = None) -> None:
        self.k, self.index, self.issues, self.leak_threshold = k, index, tuple(issues), leak_threshold
        self.nprobe, self.memory, self.streamed, self.workdir = nprobe, memory, streamed, workdir

    def fit(self, X, labels: Optional[Sequence[Optional[str]]] = None,
            splits: Optional[Sequence[Optional[str]]] = None) -> "DatasetAudit":
        from scipy.sparse import csr_matrix

        unknown = [i for i in self.issues if i not in ISSUES]
        if unknown:
            raise bad_param("issues", f"a comma list of {', '.join(ISSUES)}", ",".join(unknown))
        n = len(X)
        if self.k >= n:
            raise bad_param("k", f"an integer below the number of vectors ({n})", self.k)
        if labels is not None and not isinstance(labels, np.ndarray):
            labels = np.array(labels, dtype=object)
        classes = len({x for x in labels if x is not None}) if labels is not None else 0
        memory = available_bytes() if self.memory is None else int(self.memory)
        streamed = self.streamed if self.streamed is not None else datalab_bytes(n, self.k, classes) > memory // 2
        if streamed:  # cleanlab's own formulas and its batched label issues, a block of rows at a time
            labelled = labels is not None and "label" in self.issues and classes > 0
            y, names = label_codes(labels) if labelled else (None, None)
            s = _codes(splits)[0] if splits is not None and len({x for x in splits if x is not None}) > 1 else None
            streamed_issues(self, X, y, names, s, memory, self.workdir)
            self.summary_["streamed"] = True
            return self
        knn = build_index(X, self.index, self.k, nprobe=self.nprobe, what="the audit's graph", graph=True,
                          memory=memory)
        index = knn.index
        D, I = knn.graph(X, self.k)
        order = np.argsort(-D, axis=1, kind="stable")  # nearest first, as cleanlab expects
        D, I = np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
        self.knn_ = (D, I)
        dist = np.maximum(0.0, 1.0 - D.astype(np.float64))
        graph = csr_matrix((dist.ravel(), I.ravel().astype(np.int64), np.arange(0, n * self.k + 1, self.k)),
                           shape=(n, n))
        self.issues_, self.summary_ = {}, {"n": n, "k": self.k, "index": knn.description}
        self._recall(X, index)
        cleanlab_issues = [i for i in ("outlier", "near_duplicate") if i in self.issues]
        if cleanlab_issues:
            self._datalab(graph, None, None, cleanlab_issues)
        if "label" in self.issues:
            if labels is None or sum(lab is not None for lab in labels) == 0:
                self.summary_["label"] = {"skipped": "no labels"}
            else:
                self._label_issues(np.asarray(labels, dtype=object), graph, I)
        if "leak" in self.issues:
            self._leaks(D, I, splits, dist)
        return self

    def _recall(self, X, index: str) -> None:
        """What a faster graph than the exact one cost: recall@k against exact neighbours of a sample."""
        if index != "exact":
            I = self.knn_[1]
            recall, sampled = sampled_recall(X, lambda rows: I[rows], self.k, "cosine", RECALL_SAMPLE)
            self.summary_["graph_recall"] = {"recall_at_k": round(recall, 4), "sampled_rows": sampled}

    def _issue(self, name: str, score: np.ndarray, flag: np.ndarray, **extra) -> None:
        """Record an issue's per-row arrays and its summary (flagged, and the mean score, as cleanlab's)."""
        self.issues_[name] = {"score": score, "flag": flag, **extra}
        self.summary_[name] = {"flagged": int(flag.sum()), "score": float(score.mean()) if len(score) else None}

    def close(self) -> None:
        """Remove the graph a streamed audit kept on disk (``knn_`` reads it until then)."""
        remove_graph(self)

    def keep(self, reviewed: np.ndarray) -> "DatasetAudit":
        """Stop flagging the rows a reviewer kept as they are (``reviewed``: a boolean per fitted row); each issue
        records them (``reviewed``) and counts them in its summary (``kept_by_review``)."""
        reviewed = np.asarray(reviewed, bool)
        for name, entry in self.issues_.items():
            rows = entry.get("rows")
            mine = reviewed if rows is None else reviewed[rows]
            entry["reviewed"] = mine
            if mine.any():
                self.summary_[name]["kept_by_review"] = int((entry["flag"] & mine).sum())
                entry["flag"] = entry["flag"] & ~mine
                self.summary_[name]["flagged"] = int(entry["flag"].sum())
        return self

    def _datalab(self, graph, labels, pred_probs, names: list[str], rows: Optional[np.ndarray] = None) -> None:
        Datalab = require("cleanlab", "audit", "imgfeat audit").Datalab
        data = {"label": list(labels)} if labels is not None else {"x": list(range(graph.shape[0]))}
        lab = Datalab(data=data, label_name="label" if labels is not None else None, verbosity=0)
        lab.find_issues(knn_graph=graph, pred_probs=pred_probs, issue_types={name: {} for name in names})
        for name in names:
            found = lab.get_issues(name)
            score = found[f"{name}_score"].to_numpy()
            flag = found[f"is_{name}_issue"].to_numpy()
            entry = {"score": score, "flag": flag}
            if name == "label":
                entry["suggested"] = found["predicted_label"].to_numpy().astype(object)
                entry["rows"] = rows
            self.issues_[name] = entry
            summary = lab.get_issue_summary(name)
            self.summary_[name] = {"flagged": int(flag.sum()), "score": float(summary["score"].iloc[0])
                                   if len(summary) else None}

    def _label_issues(self, labels: np.ndarray, graph, I: np.ndarray) -> None:
        """Out-of-sample class shares among each labelled image's labelled neighbours (cleanlab's own rule),
        then cleanlab's label issues."""
        from scipy.sparse import csr_matrix

        y, classes = label_codes(labels)
        rows = np.flatnonzero(y >= 0)
        pred = class_shares(y, I[rows], len(classes))  # cleanlab's pred_probs: n x C float64
        # the labelled part only (cleanlab's label issue reads the probabilities; the graph is only carried)
        sub = graph if len(rows) == len(labels) else csr_matrix(graph[rows][:, rows])
        self._datalab(sub, classes[y[rows]], pred, ["label"], rows)
        # how strongly the neighbours agree on the suggested label (its share of their votes): the tie-break of
        # the review's order, where cleanlab's scores tie
        suggested = np.searchsorted(classes, self.issues_["label"]["suggested"].astype(str))
        self.issues_["label"]["agreement"] = pred[np.arange(len(rows)), suggested]
        self.issues_["label"]["given"] = classes[y[rows]]
        self.summary_["label"]["labelled"] = int(len(rows))
        if len(rows) < len(labels):
            self.summary_["label"]["unlabelled_left_out"] = int(len(labels) - len(rows))

    def _leaks(self, D: np.ndarray, I: np.ndarray, splits, dist: np.ndarray) -> None:
        if splits is None or len({s for s in splits if s is not None}) < 2:
            self.summary_["leak"] = {"skipped": "one split only (give --test-labels or --splits)"}
            self.leaks_ = []
            return
        threshold = self.leak_threshold
        if threshold is None:  # cleanlab's near-duplicate rule: within 0.13 of the median nearest distance
            threshold = float(1.0 - 0.13 * max(np.median(dist[:, 0]), 1e-6))
        s = np.asarray(splits, dtype=object)
        rows, cols = np.nonzero(D >= threshold)
        other = I[rows, cols]
        cross = s[rows] != s[other]
        pairs: dict = {}  # each pair once, found from either side
        for a, b, c in zip(rows[cross], other[cross], cols[cross]):
            key = (int(min(a, b)), int(max(a, b)))
            pairs[key] = max(pairs.get(key, -1.0), float(D[a, c]))
        self._leak_pairs(pairs, s, threshold)

    def _leak_pairs(self, pairs: dict, splits, threshold: Optional[float]) -> None:
        if splits is None:
            self.summary_["leak"] = {"skipped": "one split only (give --test-labels or --splits)"}
            self.leaks_ = []
            return
        # closest first; pairs equal to float precision (a copy and its original: 1.0 by one path, 0.99999994 by
        # another, as BLAS threads sum) in row order, so the report does not depend on the machine
        self.leaks_ = sorted(((a, b, cos) for (a, b), cos in pairs.items()),
                             key=lambda t: (-round(t[2], 5), t[0], t[1]))
        self.summary_["leak"] = {"pairs": len(self.leaks_), "threshold": threshold,
                                 "images": len({x for a, b, _ in self.leaks_ for x in (a, b)})}


def label_codes(labels) -> tuple[np.ndarray, np.ndarray]:
    """The label issue's classes: a code per row (-1: unlabelled) and the sorted class names; refused in one line
    where the labels hold fewer than 2 classes."""
    y, classes = _codes(labels)
    if len(classes) < 2:
        raise ImgfeatError(f"the labels hold a single class ({classes[0]}); label issues need at least 2")
    return y, classes


def _codes(values) -> tuple[np.ndarray, np.ndarray]:
    """A code per row (-1: None) and the sorted names they number."""
    values = np.asarray(values, dtype=object)
    known = np.array([v is not None for v in values])
    names, codes = np.unique(values[known].astype(str), return_inverse=True)
    out = np.full(len(values), -1, np.int32)
    out[known] = codes
    return out, names


# ----------------------------------------------------------------------------- the report
REPORT_COLUMNS = ("id", "score", "flag", "given", "suggested", "neighbours", "neighbour_labels", "reviewed")


def write_report(audit: DatasetAudit, out, ids: Sequence[str], labels: Optional[Sequence[Optional[str]]],
                 splits: Optional[Sequence[Optional[str]]], paths, extra: Optional[dict] = None) -> dict:
    """The report folder ``imgfeat serve --audit`` reviews: per issue a TSV ranking every image (``review_order``:
    flagged first, then by score, ties by the neighbours' agreement) with its given and suggested label, its 5
    nearest neighbours and their labels and whether a review kept it; ``leak.tsv`` (pairs across splits); a
    picture of the worst flagged images where ``paths`` (id -> image file, or a function giving that dict for a set
    of ids: the few drawn) are known; ``summary.json`` (the
    audit's summary, the files written and ``extra``). Returns the summary."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, I = audit.knn_
    has_labels = labels is not None and len(labels) > 0
    written = {}
    for name in [i for i in ISSUES if i in audit.issues_]:
        entry = audit.issues_[name]
        rows = entry.get("rows")
        rows = np.arange(len(ids)) if rows is None else rows
        reviewed = entry.get("reviewed", np.zeros(len(rows), bool))
        order = review_order(entry["score"], entry["flag"], entry.get("agreement"))
        path = out / f"{name}.tsv"
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("\t".join(REPORT_COLUMNS) + "\n")
            for s in range(0, len(order), REPORT_BLOCK):  # a block of rows, their ids and neighbours' read at once
                js = order[s:s + REPORT_BLOCK]
                rs = np.asarray(rows)[js].astype(np.int64)
                near = np.asarray(I[rs])[:, :5].astype(np.int64)
                names, near_names = _take(ids, rs), _take(ids, near.ravel())
                given = _take(labels, rs) if has_labels else None
                near_given = _take(labels, near.ravel()) if has_labels else None
                fh.writelines(
                    f"{names[t]}\t{entry['score'][j]:.6f}\t{int(entry['flag'][j])}\t"
                    f"{given[t] if has_labels else ''}\t{entry['suggested'][j] if 'suggested' in entry else ''}\t"
                    f"{','.join(near_names[5 * t:5 * t + 5])}\t"
                    f"{','.join(str(x) for x in near_given[5 * t:5 * t + 5]) if has_labels else ''}\t"
                    f"{'keep' if reviewed[j] else ''}\n" for t, j in enumerate(js.tolist()))
        written[name] = str(path)
        worst = [int(rows[j]) for j in order[:16] if entry["flag"][j]]
        found = (paths({ids[r] for r in worst}) if callable(paths) else paths) if worst and paths else None
        if found:
            written[f"{name}_png"] = worst_png(out / f"{name}.png", worst, ids, labels if has_labels else None, found,
                                               entry.get("suggested"), rows, name)
    if "leak" in audit.issues:
        path = out / "leak.tsv"
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("id\tsplit\tother_id\tother_split\tcosine\n")
            for a, b, cos in audit.leaks_:
                fh.write(f"{ids[a]}\t{splits[a] if splits is not None else ''}\t{ids[b]}\t"
                         f"{splits[b] if splits is not None else ''}\t"
                         f"{cos:.6f}\n")
        written["leak"] = str(path)
    summary = {**audit.summary_, "files": written, **(extra or {})}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


REPORT_BLOCK = 65_536


def _take(values, rows: np.ndarray) -> list:
    """``values`` at ``rows`` as a list: a column's ``take``, an array's fancy index, a list's items."""
    if hasattr(values, "take") and not isinstance(values, np.ndarray):
        return values.take(rows)
    if isinstance(values, np.ndarray):
        return values[rows].tolist()
    return [values[r] for r in rows.tolist()]


def worst_png(path: Path, worst: list, ids, labels, paths: dict, suggested, rows, name: str) -> str:
    """The worst flagged images as thumbnails, with their given and suggested labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    pos = {int(r): j for j, r in enumerate(rows)}
    cols = min(4, len(worst))
    fig, axes = plt.subplots(-(-len(worst) // cols), cols, figsize=(3 * cols, 3 * -(-len(worst) // cols)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), worst):
        try:
            with Image.open(paths.get(ids[r], "")) as im:
                ax.imshow(im.convert("RGB"))
        except Exception:  # noqa: BLE001 - a missing image still gets its caption
            pass
        caption = ids[r] + (f"\ngiven {labels[r]}" if labels is not None else "")
        if suggested is not None:
            caption += f", suggested {suggested[pos[r]]}"
        ax.set_title(caption, fontsize=8)
    fig.suptitle(f"{name}: worst flagged")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path)
