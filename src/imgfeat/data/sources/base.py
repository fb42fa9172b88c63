"""The source stage's base: ``Record``, the ``Source`` interface, the helpers every source shares, and the
sources that wrap others (``ListSource``, ``Slice``) or read an update's plan (``PlanSource``)."""

from __future__ import annotations

import itertools
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from ..formats import is_image_name


def _is_image(name: str) -> bool:
    """Whether a file (or archive member) is taken as an image, by its extension: any format a registered Pillow
    decoder opens (``data.formats``: HEIC, AVIF and JPEG XL included where their plugins are installed)."""
    return is_image_name(name)


@dataclass(frozen=True)
class Record:
    """One input item. ``error`` is set when the input line itself is unusable.

    ``path`` is a local path, a URL (``scheme://``, read through fsspec), or for a tar
    member ``archive.tar::member`` with the member's byte ``offset`` and ``size``."""

    id: str
    path: str
    error: Optional[str] = None
    offset: Optional[int] = None
    size: Optional[int] = None


class Source:
    """Base class: ``records()`` yields every record in a deterministic order."""

    def records(self) -> Iterator[Record]:  # pragma: no cover - interface
        raise NotImplementedError

    def count(self) -> int:
        """Number of records; sources override this with something cheaper than a full parse."""
        return sum(1 for _ in self.records())

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def input_file(self) -> Optional[str]:
        """The file or folder the records are read from, where there is one."""
        path = getattr(self, "path", None)
        return path if isinstance(path, str) else None

    def skipped(self) -> Iterator[str]:
        """Files the input holds that are not taken as images (a folder's videos, sidecars, documents)."""
        return iter(())

    def is_empty(self) -> bool:
        """Whether the input holds no record at all (the first record answers; nothing else is read). An input
        that can be read once only (a pipe) is never peeked at, so never called empty."""
        if _read_once(self.input_file()):
            return False
        return next(iter(self.records()), None) is None


def _read_once(path: Optional[str]) -> bool:
    """A pipe, device or socket (neither a regular file nor a folder): it can be read once only."""
    if path is None:
        return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


class Counted:
    """Wraps a record iterator and counts what passes through (``n``), so the one pass that
    feeds the model also measures the input; no second read of a 100M-line list."""

    def __init__(self, records: Iterator[Record]) -> None:
        self._it, self.n = iter(records), 0

    def __iter__(self) -> Iterator[Record]:
        for rec in self._it:
            self.n += 1
            yield rec


def _check_id(rid: str) -> Optional[str]:
    if "\t" in rid or "\n" in rid or "\r" in rid:
        return "invalid id: contains a tab or newline"
    return None


def _resolver(base_file: str) -> Callable[[str], str]:
    """Makes relative paths relative to the input file's folder; absolute paths and URLs
    (``scheme://``, ``file://`` included) stay as written."""
    base = os.path.dirname(os.path.abspath(base_file))
    return lambda p: p if os.path.isabs(p) or "://" in p else os.path.join(base, p)


def _lines(path: str) -> Iterator[tuple[int, str, Callable[[str], str]]]:
    """Non-blank lines of a text input with their 1-based numbers, and its ``_resolver``."""
    resolve = _resolver(path)
    with open(path, encoding="utf-8", newline="\n") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line, resolve


def _count_lines(path: str) -> int:
    """Newline count: a cheap upper bound on the records (used for the progress bar's total)."""
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


@dataclass(frozen=True)
class ListSource(Source):
    """An in-memory list of paths or ``(id, path)`` pairs (Python API)."""

    items: tuple = field(default_factory=tuple)

    def records(self) -> Iterator[Record]:
        for item in self.items:
            if isinstance(item, Record):
                yield item
            elif isinstance(item, (str, os.PathLike)):
                p = os.fspath(item)
                yield Record(p, p, _check_id(p))
            else:
                rid, p = item
                rid = str(rid)
                yield Record(rid, os.fspath(p), _check_id(rid))

    def count(self) -> int:
        return len(self.items)

    def describe(self) -> str:
        return "a Python list"  # its items may change between runs into one store, as a folder's files do


@dataclass(frozen=True)
class Slice(Source):
    """Records ``start`` (inclusive) to ``stop`` (exclusive) of another source, read lazily."""

    inner: Source
    start: int = 0
    stop: Optional[int] = None

    def records(self) -> Iterator[Record]:
        return itertools.islice(self.inner.records(), self.start, self.stop)

    def count(self) -> int:
        n = self.inner.count()
        stop = n if self.stop is None else min(self.stop, n)
        return max(0, stop - self.start)

    def input_file(self) -> Optional[str]:
        return self.inner.input_file()

    def describe(self) -> str:
        return f"{self.inner.describe()} [{self.start}:{'' if self.stop is None else self.stop}]"


def fingerprint(rec: Record) -> str:
    """What changes when a record's bytes change, without reading them: a file's size and modification time
    (ns); a tar or zip member's archive fingerprint plus the member's offset and size. '' when nothing can be
    known cheaply (a URL: taken as unchanged while its id stays) or the record is an error; 'missing' for a
    path that does not exist (an error row when extracted)."""
    if rec.error or "://" in rec.path:
        return ""
    base = rec.path.split("::", 1)[0] if rec.offset is not None or "::" in rec.path else rec.path
    try:
        st = os.stat(base)
    except OSError:
        return "missing"
    fp = f"{st.st_size}:{st.st_mtime_ns}"
    if rec.offset is not None or "::" in rec.path:
        fp += f":{rec.offset}:{rec.size}:{rec.path.split('::', 1)[-1]}"
    return fp


@dataclass(frozen=True)
class PlanSource(Source):
    """The records an update extracts (new and changed images, in input order), read back lazily from the
    store's plan file (``id, path, offset, size, error`` columns, one row group per shard): what decode workers
    are handed instead of the whole input. ``label`` is the original input's description."""

    path: str
    label: str = ""

    def records(self) -> Iterator[Record]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        for batch in pf.iter_batches(batch_size=8192, columns=["id", "path", "offset", "size", "error"]):
            cols = [batch.column(i).to_pylist() for i in range(5)]
            for rid, path, offset, size, error in zip(*cols):
                yield Record(rid, path, error, offset, size)

    def count(self) -> int:
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path).metadata.num_rows

    def input_file(self) -> Optional[str]:
        return None

    def describe(self) -> str:
        return self.label or f"update plan {self.path}"
