"""Labels for the downstream tools: ``id<TAB>label`` files, joined to features by id."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..errors import ImgfeatError, bad_param

log = logging.getLogger(__name__)


def _text_lines(path: str | Path, what: str, expected: str):
    """(line number, line) of a text file a user may have edited: UTF-8 with or without a byte-order mark, line ends
    stripped; a file that cannot be read or is not text is one line naming it."""
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: a BOM (Excel, Notepad) is not part of the first id
            text = fh.read()
    except OSError as exc:
        raise ImgfeatError(f"{what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ImgfeatError(f"{what} {path} is not UTF-8 text (byte {exc.start}; a binary file?): expected "
                           f"{expected} lines") from None
    return enumerate(text.splitlines(), 1)


def read_labels(path: str | Path) -> dict[str, str]:
    """``id<TAB>label`` lines -> dict; a header ``id<TAB>label`` is skipped. Refused with the line number: a line that
    is not two fields, an empty id or label (spaces around a label are not part of it), and an id given two
    different labels. A byte-order mark is not part of the first id."""
    labels: dict[str, str] = {}
    names: dict[str, str] = {}  # each label's one string: millions of rows share a few hundred labels
    for n, line in _text_lines(path, "labels file", "'id<TAB>label'"):
        if not line.strip():
            continue
        parts = line.split("\t")
        if n == 1 and [x.strip().lower() for x in parts] == ["id", "label"]:
            continue
        if len(parts) != 2:
            raise ImgfeatError(f"{path} line {n}: expected 'id<TAB>label', got {line[:80]!r}")
        rid, label = parts[0], parts[1].strip()
        if not rid or not label:
            raise ImgfeatError(f"{path} line {n}: {'the id' if not rid else 'the label'} is empty "
                               f"(got {line[:80]!r}); leave an unlabelled image out of the file")
        if rid in labels and labels[rid] != label:
            first = next(m for m, text in _text_lines(path, "labels file", "'id<TAB>label'")
                         if text.split("\t")[0] == rid)  # found again only when refusing (no line kept per id)
            raise ImgfeatError(f"{path} line {n}: {rid!r} is labelled {label!r} here and {labels[rid]!r} on line "
                               f"{first}: keep one")
        labels[rid] = names.setdefault(label, label)
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


DECISION_COLUMNS = ("id", "decision", "new_label")


def read_decisions(path: str | Path, what: str = "--corrections") -> dict[str, tuple[str, str]]:
    """A review's decisions file (``id<TAB>decision<TAB>new_label``, as ``imgfeat serve --audit`` writes them): id ->
    (keep|relabel|drop, the new label of a relabel). Refused with the line number: other columns, a decision
    that is not one of ``DECISIONS``, an empty id, a relabel without a label, an id decided twice differently."""
    out: dict[str, tuple[str, str]] = {}
    first: dict[str, int] = {}
    expected = "'id<TAB>keep|relabel|drop<TAB>new_label'"
    for n, line in _text_lines(path, what, expected):
        if not line.strip():
            continue
        parts = line.split("\t")
        if n == 1 and parts[0].strip().lower() == "id":
            if tuple(p.strip().lower() for p in parts) not in (DECISION_COLUMNS, DECISION_COLUMNS[:2]):
                raise ImgfeatError(f"{what} {path} line 1: the columns are {parts}, not {list(DECISION_COLUMNS)}")
            continue
        decision = parts[1].strip() if len(parts) > 1 else ""
        label = parts[2].strip() if len(parts) > 2 else ""
        if len(parts) > 3 or decision not in DECISIONS:
            raise ImgfeatError(f"{what} {path} line {n}: expected {expected}, got {line[:80]!r}"
                               + (f" ({decision!r} is not one of {', '.join(DECISIONS)})" if len(parts) > 1 and
                                  len(parts) <= 3 else ""))
        if not parts[0]:
            raise ImgfeatError(f"{what} {path} line {n}: the id is empty (got {line[:80]!r})")
        if decision == "relabel" and not label:
            raise ImgfeatError(f"{what} {path} line {n}: a relabel needs its new label (got {line[:80]!r})")
        value = (decision, label if decision == "relabel" else "")
        if parts[0] in out and out[parts[0]] != value:
            raise ImgfeatError(f"{what} {path} line {n}: {parts[0]!r} is decided {'/'.join(filter(None, value))} "
                               f"here and {'/'.join(filter(None, out[parts[0]]))} on line {first[parts[0]]}: keep one")
        out[parts[0]] = value
        first.setdefault(parts[0], n)
    return out


def read_corrections(path: Optional[str]) -> dict[str, tuple[str, str]]:
    """``--corrections``: a review's decisions (:func:`read_decisions`). None: no decisions."""
    return read_decisions(path) if path else {}


def apply_corrections(labels: dict[str, str], path: Optional[str]) -> dict[str, str]:
    """``labels`` with a review's decisions applied: ``relabel`` gives the new label, ``drop`` removes the id,
    ``keep`` changes nothing (``imgfeat audit`` also stops flagging a kept image)."""
    if not path:
        return labels  # no copy of millions of labels for nothing
    out = dict(labels)
    for rid, (decision, label) in read_corrections(path).items():
        if decision == "drop":
            out.pop(rid, None)
        elif decision == "relabel":
            out[rid] = label
    return out


def label_rows(ids: Sequence[str], labels: dict[str, str], what: str = "labels",
               require_all: bool = True) -> np.ndarray:
    """The row of each id of ``labels`` in ``ids`` (-1: absent), looked up through an ``IdIndex`` (no dict of every
    id). Labelled ids missing from the features are an error (they usually mean the wrong file), unless
    ``require_all`` is False."""
    from ..outputs.idindex import id_index

    rows = id_index(ids).rows(labels)
    if require_all and (rows < 0).any():
        missing = [rid for rid, row in zip(labels, rows.tolist()) if row < 0]
        raise ImgfeatError(f"{len(missing)} id(s) of the {what} file have no feature vector, e.g. {missing[:5]}")
    return rows


def align(ids: Sequence[str], X: np.ndarray, labels: dict[str, str], what: str = "labels",
          require_all: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of X that have a label, their labels, and their ids. Labelled ids missing from the
    features are an error (they usually mean the wrong file), unless ``require_all`` is False. The ids are looked up
    through an ``IdIndex`` (no dict of every id)."""
    rows = label_rows(ids, labels, what, require_all)
    keep = [rid for rid, row in zip(labels, rows.tolist()) if row >= 0]
    if not keep:
        raise ImgfeatError(f"no id of the {what} file is in the features")
    return X[rows[rows >= 0]], np.array([labels[r] for r in keep]), keep


def check_dim(name: str, expected: int, got: int, hint: Optional[str] = None) -> None:
    if expected != got:
        raise bad_param(name, f"features of dimension {expected}" + (f" ({hint})" if hint else ""),
                        f"dimension {got}")
