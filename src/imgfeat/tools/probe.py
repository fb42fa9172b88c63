"""Linear probes (linear SVM, logistic regression) on features, with accuracy reports."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import ImgfeatError, bad_param
from ._base import Params
from .names import CLASSIFIERS

C_GRID = (0.01, 0.1, 1.0, 10.0)


class LinearProbe(Params):
    """``classifier`` "svm" (LinearSVC) or "logreg"; ``C`` given, or chosen by ``cv``-fold
    cross-validation over ``C_GRID``. Fitted: ``model_``, ``classes_``, ``C_``."""

    def __init__(self, *, classifier: str = "logreg", C: Optional[float] = None, cv: int = 3, seed: int = 0,
                 max_iter: int = 2000) -> None:
        self.classifier, self.C, self.cv, self.seed, self.max_iter = classifier, C, cv, seed, max_iter

    def _make(self, C: float):
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import LinearSVC

        if self.classifier == "svm":
            return LinearSVC(C=C, max_iter=self.max_iter, random_state=self.seed)
        return LogisticRegression(C=C, max_iter=self.max_iter, random_state=self.seed)

    def fit(self, X: np.ndarray, y: Sequence) -> "LinearProbe":
        if self.classifier not in CLASSIFIERS:
            raise bad_param("classifier", f"one of {CLASSIFIERS}", self.classifier)
        y = np.asarray(y)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ImgfeatError(f"a probe needs at least 2 classes in the training labels, got {classes.tolist()}")
        C = self.C
        if C is None:
            from sklearn.model_selection import GridSearchCV, StratifiedKFold

            folds = min(self.cv, int(np.bincount(np.unique(y, return_inverse=True)[1]).min()))
            if folds < 2:
                C = 1.0  # too few examples per class to cross-validate
            else:
                search = GridSearchCV(self._make(1.0), {"C": list(C_GRID)},
                                      cv=StratifiedKFold(folds, shuffle=True, random_state=self.seed), n_jobs=1)
                C = float(search.fit(X, y).best_params_["C"])
        self.C_ = C
        self.model_ = self._make(C).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.model_.decision_function(X).reshape(len(X), -1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict(X)

    def report(self, X: np.ndarray, y: Sequence) -> dict:
        """top-1 (and top-5 with more than 5 classes), per-class accuracy, confusion matrix."""
        from sklearn.metrics import confusion_matrix

        y = np.asarray(y)
        pred = self.predict(X)
        out = {"n": int(len(y)), "top1": float((pred == y).mean()), "C": self.C_, "classifier": self.classifier}
        if len(self.classes_) > 5:
            scores = self.decision_function(X)
            top5 = self.classes_[np.argsort(-scores, axis=1)[:, :5]]
            out["top5"] = float((top5 == y[:, None]).any(axis=1).mean())
        out["per_class"] = {str(c): float((pred[y == c] == c).mean()) for c in self.classes_ if (y == c).any()}
        out["confusion"] = confusion_matrix(y, pred, labels=self.classes_).tolist()
        out["classes"] = [str(c) for c in self.classes_]
        return out


def confusion_png(report: dict, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(report["confusion"], dtype=float)
    cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(report["classes"])
    fig, ax = plt.subplots(figsize=(2 + 0.5 * n, 1.5 + 0.5 * n))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), report["classes"], rotation=90)
    ax.set_yticks(range(n), report["classes"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"{report['classifier']} top-1 {report['top1']:.3f}")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
