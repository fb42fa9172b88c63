"""Labels for the downstream tools: ``id<TAB>label`` files, joined to features by id."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..errors import ImgfeatError, bad_param

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class FolderLabels:
    """Each image's label taken from a folder of its path, as torchvision's ``ImageFolder`` does (``cat/001.jpg`` is
    a cat): ``level`` -1 is the folder holding the image, -2 the one above, 0 the first folder. The folders are read
    from the id where it is a relative path (what a folder input gives), else from the path the features record."""

    level: int = -1

    def labels(self, ids: Sequence[str], paths: Optional[Callable[[], dict]] = None) -> dict[str, str]:
        """id -> label for the ids whose path has a folder at ``level`` (the others are unlabelled: said)."""
        recorded: Optional[dict] = None
        out: dict[str, str] = {}
        too_shallow = []
        for rid in ids:
            if "/" in rid:
                folders = rid.split("/")[:-1]
            else:
                if recorded is None:
                    recorded = paths() if paths is not None else {}
                where = recorded.get(rid)
                folders = list(PurePath(where.split("::", 1)[0]).parent.parts) if where else []
                folders = [f for f in folders if f not in ("/", "\\")]
            try:
                out[rid] = folders[self.level]
            except IndexError:
                too_shallow.append(rid)
        if not out:
            raise ImgfeatError(f"--labels-from-folder {self.level}: no image has a folder there (e.g. "
                               f"{list(ids)[:3]}); class folders look like CLASS/image.jpg under the input folder")
        if too_shallow:
            log.warning("%d image(s) have no folder at level %d of their path and are unlabelled, e.g. %s",
                        len(too_shallow), self.level, too_shallow[:3])
        return out

    def __str__(self) -> str:
        return f"--labels-from-folder {self.level}"


LabelSpec = Union[str, Path, FolderLabels]  # a TSV file of id<TAB>label, or labels from class folders


def labels_for(spec: LabelSpec, ids: Sequence[str], features: Optional[str | Path] = None) -> dict[str, str]:
    """The labels ``spec`` gives the features' ``ids``: read from a TSV, or taken from each image's class folder
    (reading the paths the features record only where the ids are not relative paths)."""
    if isinstance(spec, FolderLabels):
        from ..outputs.formats import read_paths

        return spec.labels(ids, (lambda: read_paths(features)) if features is not None else None)
    return read_labels(spec)


def without_error_rows(labels: dict[str, str], ids: Sequence[str], features: Optional[str | Path],
                       what: str = "labels") -> tuple[dict[str, str], int]:
    """``labels`` less the ids that the features hold as error rows (their image failed to decode, so they have no
    vector): left out and counted, with a warning, rather than refusing the run. Other labelled ids missing from
    the features are still refused by ``align`` (they usually mean the wrong file)."""
    from ..outputs.idindex import id_index

    missing = [rid for rid, row in zip(labels, id_index(ids).rows(labels)) if row < 0]
    if not missing or features is None:
        return labels, 0
    from ..outputs.formats import read_error_ids

    errors = read_error_ids(features)
    failed = {rid for rid in missing if rid in errors}
    if not failed:
        return labels, 0
    log.warning("%d image(s) of the %s have no vector: they are error rows of %s (their files could not be read; "
                "the reasons are in its errors.tsv) and are left out, e.g. %s", len(failed), what, features,
                sorted(failed)[:3])
    return {k: v for k, v in labels.items() if k not in failed}, len(failed)


DECISIONS = ("keep", "relabel", "drop")  # what a reviewer decides of an audit's suspect


def read_corrections(path: Optional[str]) -> dict[str, tuple[str, str]]:
    """A review's decisions (``id<TAB>decision<TAB>new_label``, as ``imgfeat serve --audit`` writes them): id ->
    (keep|relabel|drop, the new label of a relabel). None: no decisions."""
    if not path:
        return {}
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as exc:
        raise ImgfeatError(f"--corrections {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ImgfeatError(f"--corrections {path} is not UTF-8 text") from None
    out: dict[str, tuple[str, str]] = {}
    for n, line in enumerate(lines, 1):
        parts = line.split("\t")
        if n == 1 and parts[:2] == ["id", "decision"] or not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in DECISIONS or (parts[1] == "relabel" and (len(parts) < 3 or not parts[2])):
            raise ImgfeatError(f"--corrections {path} line {n}: expected 'id<TAB>keep|relabel|drop<TAB>new_label', "
                               f"got {line[:80]!r}")
        out[parts[0]] = (parts[1], parts[2] if parts[1] == "relabel" else "")
    return out


def apply_corrections(labels: dict[str, str], path: Optional[str]) -> dict[str, str]:
    """``labels`` with a review's decisions applied: ``relabel`` gives the new label, ``drop`` removes the id,
    ``keep`` changes nothing (``imgfeat audit`` also stops flagging a kept image)."""
    out = dict(labels)
    for rid, (decision, label) in read_corrections(path).items():
        if decision == "drop":
            out.pop(rid, None)
        elif decision == "relabel":
            out[rid] = label
    return out


def align(ids: Sequence[str], X: np.ndarray, labels: dict[str, str], what: str = "labels",
          require_all: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of X that have a label, their labels, and their ids. Labelled ids missing from the
    features are an error (they usually mean the wrong file), unless ``require_all`` is False. The ids are looked up
    through an ``IdIndex`` (no dict of every id)."""
    from ..outputs.idindex import id_index

    rows = id_index(ids).rows(labels)
    missing = [rid for rid, row in zip(labels, rows.tolist()) if row < 0]
    if missing and require_all:
        raise ImgfeatError(f"{len(missing)} id(s) of the {what} file have no feature vector, e.g. {missing[:5]}")
    keep = [rid for rid, row in zip(labels, rows.tolist()) if row >= 0]
    if not keep:
        raise ImgfeatError(f"no id of the {what} file is in the features")
    return X[rows[rows >= 0]], np.array([labels[r] for r in keep]), keep


def check_dim(name: str, expected: int, got: int, hint: Optional[str] = None) -> None:
    if expected != got:
        raise bad_param(name, f"features of dimension {expected}" + (f" ({hint})" if hint else ""),
                        f"dimension {got}")
