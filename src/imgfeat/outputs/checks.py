"""Checks made on an output before any work: it can be written, it is not a folder (or, for a feature store, a
folder of something else), and it is none of the run's inputs. A user learns this in a second, not after the
model was built, the probe trained or t-SNE ran, and never by finding an input overwritten."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from ..errors import ImgfeatError

MANIFEST = "manifest.json"
STORE_ENTRIES = {"shards", "update", ".lock"}  # what a store holds before its manifest exists


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_inputs(out: str | os.PathLike, inputs: Iterable[tuple[str, object]], flag: str = "--out") -> None:
    """``out`` must not be one of ``inputs`` (``(flag, path)`` pairs; non-paths are ignored) or inside an input
    folder: writing there would overwrite the input, or add files to the collection being read."""
    target = _resolved(out)
    for name, value in inputs:
        if not isinstance(value, (str, os.PathLike)) or not os.path.exists(value):
            continue
        source = _resolved(value)
        if source.is_dir() and _inside(target, source):
            raise ImgfeatError(f"{flag} {out} is inside the input folder {name} {value}: refusing to write into the "
                               "collection being read; write somewhere else")
        if target == source:
            raise ImgfeatError(f"{flag} {out} is the input {name} {value}: refusing to overwrite it; "
                               "write somewhere else")


def _probe_folder(folder: Path, out: str | os.PathLike, flag: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".imgfeat-write-check-"):
            pass
    except OSError as exc:
        raise ImgfeatError(f"{flag} {out} cannot be written: {exc.strerror or exc} in {folder}") from None


def check_output_file(out: str | os.PathLike, flag: str = "--out",
                      inputs: Iterable[tuple[str, object]] = ()) -> None:
    """``out`` is a file this run can create or replace (an error naming ``flag`` otherwise)."""
    refuse_inputs(out, inputs, flag)
    p = Path(os.path.expanduser(os.fspath(out)))
    if p.is_dir():
        raise ImgfeatError(f"{flag} {out} is a folder; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ImgfeatError(f"{flag} {out}: the folder {parent} does not exist"
                           if not parent.exists() else f"{flag} {out}: {parent} is not a folder")
    _probe_folder(parent, out, flag)


def check_output_dir(out: str | os.PathLike, flag: str = "--out", inputs: Iterable[tuple[str, object]] = (),
                     must_be_store: bool = False, what: str = "feature store") -> None:
    """``out`` is a folder this run may write: a feature store already (its manifest), an empty or missing
    folder whose nearest existing parent is writable, never a folder that holds other things."""
    refuse_inputs(out, inputs, flag)
    p = Path(os.path.expanduser(os.fspath(out)))
    if p.exists() and not p.is_dir():
        raise ImgfeatError(f"{flag} {out} is a file, not a folder")
    if p.is_dir():
        if must_be_store and not (p / MANIFEST).is_file():
            # a store another job is creating right now (--shard I/N) has its shards/ and a temporary manifest
            # (an interrupted first run leaves its update/ plan and perhaps its lock)
            entries = sorted(e for e in os.listdir(p) if e not in STORE_ENTRIES and not e.startswith(f".{MANIFEST}."))
            if entries:
                shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
                raise ImgfeatError(f"{flag} {out} is a folder that is not a {what}: it holds {len(entries)} "
                                   f"entr{'y' if len(entries) == 1 else 'ies'} ({shown}); give a new or empty "
                                   "folder, or an existing store")
        _probe_folder(p, out, flag)
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ImgfeatError(f"{flag} {out}: {parent} is not a folder")
    _probe_folder(parent, out, flag)


def check_outputs(*pairs: tuple[str, Optional[str]], inputs: Iterable[tuple[str, object]] = ()) -> None:
    """Each ``(flag, file)`` of a tool's outputs that is set (None: not asked for)."""
    inputs = list(inputs)
    for flag, out in pairs:
        if out:
            check_output_file(out, flag, inputs)


def _store_above(path: Path) -> Optional[Path]:
    """The feature store ``path`` is or lies inside (a folder up the tree with a store's manifest), if any."""
    for folder in (path, *path.parents):
        if (folder / MANIFEST).is_file() and (folder / "shards").is_dir():
            return folder
    return None


def check_lance_output(out: str, flag: str = "OUT") -> None:
    """A local Lance dataset path this export may write: not a feature store or inside one (the source or any
    other), its parent folder exists (nothing is created above it), and it is missing, empty, or a Lance dataset
    already (its ``_versions``). A URI (``s3://``) is the object store's to check."""
    if "://" in out:
        return
    target = _resolved(out)
    store = _store_above(target)
    if store is not None:
        where = "a feature store" if store == target else f"inside the feature store {store}"
        raise ImgfeatError(f"{flag} {out} is {where}: a Lance dataset is written beside a store, never into one; give a path outside it")
    p = Path(os.path.expanduser(out))
    if p.exists() and not p.is_dir():
        raise ImgfeatError(f"{flag} {out} is a file, not a Lance dataset folder")
    if p.is_dir():
        entries = sorted(os.listdir(p))
        if entries and not (p / "_versions").is_dir():
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise ImgfeatError(f"{flag} {out} is a folder that is not a Lance dataset (it holds {shown}): give a new "
                               "or empty folder, or a dataset imgfeat exported")
        _probe_folder(p, out, flag)
        return
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ImgfeatError(f"{flag} {out}: the folder {parent} does not exist" if not parent.exists()
                           else f"{flag} {out}: {parent} is not a folder")
    _probe_folder(parent, out, flag)
