"""Labels for the downstream tools: ``id<TAB>label`` files, joined to features by id."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ImgfeatError, bad_param


def read_labels(path: str | Path) -> dict[str, str]:
    """``id<TAB>label`` lines -> dict; a header ``id<TAB>label`` is skipped; bad lines are errors."""
    labels: dict[str, str] = {}
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise ImgfeatError(f"labels file {path}: {exc.strerror or exc}") from None
    with fh:
        try:
            for n, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                parts = line.split("\t")
                if n == 1 and [x.lower() for x in parts] == ["id", "label"]:
                    continue
                if len(parts) != 2:
                    raise ImgfeatError(f"{path} line {n}: expected 'id<TAB>label', got {line[:80]!r}")
                labels[parts[0]] = parts[1]
        except UnicodeDecodeError:
            raise ImgfeatError(f"labels file {path} is not UTF-8 text (a binary file?): expected "
                               "'id<TAB>label' lines") from None
    if not labels:
        raise ImgfeatError(f"{path} holds no labels")
    return labels


DECISIONS = ("keep", "relabel", "drop")  # what a reviewer decides of an audit's suspect


def apply_corrections(labels: dict[str, str], path: Optional[str]) -> dict[str, str]:
    """``labels`` with a review's decisions applied (``id<TAB>decision<TAB>new_label``, as ``imgfeat serve
    --audit`` writes them): ``relabel`` gives the new label, ``drop`` removes the id, ``keep`` changes nothing."""
    if not path:
        return labels
    out = dict(labels)
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as exc:
        raise ImgfeatError(f"--corrections {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ImgfeatError(f"--corrections {path} is not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        parts = line.split("\t")
        if n == 1 and parts[:2] == ["id", "decision"] or not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in DECISIONS or (parts[1] == "relabel" and (len(parts) < 3 or not parts[2])):
            raise ImgfeatError(f"--corrections {path} line {n}: expected 'id<TAB>keep|relabel|drop<TAB>new_label', "
                               f"got {line[:80]!r}")
        rid, decision = parts[0], parts[1]
        if decision == "drop":
            out.pop(rid, None)
        elif decision == "relabel":
            out[rid] = parts[2]
    return out


def align(ids: list[str], X: np.ndarray, labels: dict[str, str], what: str = "labels",
          require_all: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of X that have a label, their labels, and their ids. Labelled ids missing from the
    features are an error (they usually mean the wrong file), unless ``require_all`` is False."""
    index = {rid: i for i, rid in enumerate(ids)}
    missing = [rid for rid in labels if rid not in index]
    if missing and require_all:
        raise ImgfeatError(f"{len(missing)} id(s) of the {what} file have no feature vector, e.g. {missing[:5]}")
    keep = [rid for rid in labels if rid in index]
    if not keep:
        raise ImgfeatError(f"no id of the {what} file is in the features")
    rows = np.fromiter((index[r] for r in keep), dtype=np.int64, count=len(keep))
    return X[rows], np.array([labels[r] for r in keep]), keep


def check_dim(name: str, expected: int, got: int, hint: Optional[str] = None) -> None:
    if expected != got:
        raise bad_param(name, f"features of dimension {expected}" + (f" ({hint})" if hint else ""),
                        f"dimension {got}")
