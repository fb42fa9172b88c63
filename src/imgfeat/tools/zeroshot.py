"""Zero-shot labels from text: each class is the mean of its prompts' normalised text embeddings
(renormalised), images are scored by cosine similarity times the model's logit scale, then softmax
(CLIP) or sigmoid with the model's bias (SigLIP). The text embeddings come from the caller (the CLI
embeds them with the store's own model), so this module needs only NumPy."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import bad_param
from ._base import Params
from .exact import l2_normalise
from .names import DEFAULT_PROMPTS  # noqa: F401 - the prompts classify uses, named here too

# A short ensemble in the spirit of CLIP's ImageNet templates (open_clip's SIMPLE_IMAGENET_TEMPLATES).


def prompts_for(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    for t in templates:
        if "{}" not in t:
            raise bad_param("prompts", "templates containing {} where the class name goes", t)
    return [t.format(c) for c in classes for t in templates]


class ZeroShotClassifier(Params):
    """``fit(text_embeddings)`` takes (n_classes * n_templates, D) rows, class-major, as ``prompts_for`` orders
    them; ``predict_proba(X)`` gives (N, n_classes)."""

    def __init__(self, *, classes: Sequence[str] = (), n_templates: int = 1, logit_scale: float = 100.0,
                 logit_bias: float = 0.0, sigmoid: bool = False, block: int = 65536) -> None:
        self.classes, self.n_templates, self.logit_scale, self.logit_bias, self.sigmoid, self.block = \
            list(classes), n_templates, logit_scale, logit_bias, sigmoid, block

    def fit(self, text_embeddings: np.ndarray) -> "ZeroShotClassifier":
        E = l2_normalise(np.asarray(text_embeddings, np.float32))
        if len(self.classes) < 2:
            raise bad_param("classes", "at least two class names", self.classes)
        if len(E) != len(self.classes) * self.n_templates:
            raise bad_param("text_embeddings", f"{len(self.classes)} x {self.n_templates} rows", len(E))
        self.weights_ = l2_normalise(E.reshape(len(self.classes), self.n_templates, -1).mean(axis=1))
        self.classes_ = np.array(self.classes)
        return self

    def decision_function(self, X) -> np.ndarray:
        out = []
        for s in range(0, len(X), self.block):
            out.append(self.logit_scale * (l2_normalise(np.asarray(X[s:s + self.block], np.float32)) @ self.weights_.T)
                       + self.logit_bias)
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X)
        if self.sigmoid:
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    def report(self, X, y: Sequence) -> dict:
        """top-1 and top-5 accuracy, per class, confusion matrix (the shape of ``LinearProbe.report``)."""
        from sklearn.metrics import confusion_matrix

        y = np.asarray(y)
        scores = self.decision_function(X)
        order = np.argsort(-scores, axis=1)
        pred = self.classes_[order[:, 0]]
        out = {"n": int(len(y)), "top1": float((pred == y).mean()), "classifier": "zero-shot",
               "top5": float((self.classes_[order[:, :5]] == y[:, None]).any(axis=1).mean())}
        out["per_class"] = {str(c): float((pred[y == c] == c).mean()) for c in self.classes_ if (y == c).any()}
        out["confusion"] = confusion_matrix(y, pred, labels=self.classes_).tolist()
        out["classes"] = [str(c) for c in self.classes_]
        return out
