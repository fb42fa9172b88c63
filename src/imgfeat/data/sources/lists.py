"""Inputs that list images: a TSV of ``id<TAB>path``, a text list of paths, a folder walked once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional

from .base import Record, Source, _check_id, _count_lines, _is_image, _lines


@dataclass(frozen=True)
class TsvSource(Source):
    """``id<TAB>path`` lines (the classic extractor's input). Relative paths resolve against the TSV's folder."""

    path: str

    def records(self) -> Iterator[Record]:
        for lineno, line, resolve in _lines(self.path):
            parts = line.split("\t")
            if lineno == 1 and [p.strip().lower() for p in parts] == ["id", "path"]:
                continue  # optional header
            if len(parts) != 2 or not parts[0] or not parts[1]:
                rid = parts[0] if parts and parts[0] else f"<line {lineno}>"
                yield Record(rid, line.replace("\t", " "),
                             f"bad input line {lineno}: expected 'id<TAB>path', got {len(parts)} field(s)")
                continue
            yield Record(parts[0], resolve(parts[1]))

    def count(self) -> int:
        return _count_lines(self.path)

    def describe(self) -> str:
        return f"TSV {os.path.abspath(self.path)}"


@dataclass(frozen=True)
class PathListSource(Source):
    """A plain text file with one image path per line; the id is the path as written."""

    path: str

    def records(self) -> Iterator[Record]:
        for _, line, resolve in _lines(self.path):
            yield Record(line, resolve(line), _check_id(line))

    def count(self) -> int:
        return _count_lines(self.path)

    def describe(self) -> str:
        return f"path list {os.path.abspath(self.path)}"


def walk_once(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` in sorted order, following links to folders, but each real folder once (by device and inode):
    a link back up (``loop -> ..``) or a second link to the same folder is not walked again. Yields (folder, its
    file names sorted, the links not followed, each with a trailing separator)."""
    def key(path: str) -> Optional[tuple[int, int]]:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    claimed = {key(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep, links = [], []
        for name in sorted(dirnames):
            full = os.path.join(dirpath, name)
            k = key(full)
            if k is not None and k in claimed:
                links.append(full + os.sep)
                continue
            claimed.add(k)
            keep.append(name)
        dirnames[:] = keep
        yield dirpath, sorted(filenames), links


@dataclass(frozen=True)
class FolderSource(Source):
    """Every image file under a folder, walked recursively in sorted order; id = relative path."""

    root: str

    def records(self) -> Iterator[Record]:
        root = os.path.abspath(self.root)
        for dirpath, filenames, _ in walk_once(root):
            for name in filenames:
                if _is_image(name):
                    full = os.path.join(dirpath, name)
                    rid = os.path.relpath(full, root).replace(os.sep, "/")
                    yield Record(rid, full, _check_id(rid))

    def skipped(self) -> Iterator[str]:
        for dirpath, filenames, links in walk_once(os.path.abspath(self.root)):
            for name in filenames:
                if not _is_image(name):
                    yield os.path.join(dirpath, name)
            yield from links

    def describe(self) -> str:
        return f"folder {os.path.abspath(self.root)}"
