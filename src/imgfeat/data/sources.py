"""Source stage: turn the user's INPUT into a lazy stream of ``Record(id, path)``.

Sources are small picklable descriptors: every decode worker re-opens the source itself
and reads it lazily, so a 100M-line list starts at once and memory does not grow with it.
Sources are chosen by a registry keyed on what INPUT is (folder, or file suffix).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

from ..errors import bad_param
from .formats import is_image_name

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


def _path_column(path: str, names: Sequence[str]) -> str:
    """The column holding image paths (``path``, else ``url``) of a table that has ``id``."""
    column = "path" if "path" in names else "url" if "url" in names else None
    if "id" not in names or column is None:
        raise bad_param("data", f"a table with columns 'id' and 'path' (or 'url'); {path} has {list(names)}", path)
    return column


@dataclass(frozen=True)
class TableSource(Source):
    """Parquet (one file, or a glob of shards) or a Hugging Face ``save_to_disk`` folder of Arrow files; the image
    in a column (HF's ``{bytes, path}`` struct, or binary) or a ``path``/``url`` column. Ids: the id column
    (``id``, ``key``, ``__key__``, ``image_id`` or ``--id-column``), else ``<file name>:<row>``. A bytes cell's
    record names the cell (``data.tables``); the decode worker reads it."""

    path: str
    image_column: Optional[str] = None
    id_column: Optional[str] = None

    def records(self) -> Iterator[Record]:
        from . import tables

        for file in tables.files_of(self.path):
            kind, column, ident = tables.columns_of(file, self.image_column, self.id_column)
            if kind == "path":
                resolve = _resolver(file)
                for rid, p in tables.path_rows(file, column, ident):
                    rid = "" if rid is None else str(rid)
                    if not rid or not p:
                        yield Record(rid or "<missing id>", p or "", "bad input row: empty id or path")
                    else:
                        yield Record(rid, resolve(p), _check_id(rid))
                continue
            label, row0 = os.path.basename(file), 0
            for g, rows, ids in tables.iter_ids(file, ident):
                for i in range(rows):
                    rid = str(ids[i]) if ids is not None and ids[i] is not None else f"{label}:{row0 + i}"
                    yield Record(rid, f"{file}{tables.CELL}{g}:{i}:{column}", _check_id(rid))
                row0 += rows

    def count(self) -> int:
        from . import tables

        return sum(rows for file in tables.files_of(self.path) for _, rows, _ in tables.iter_ids(file, None))

    def input_file(self) -> Optional[str]:
        return None if any(c in self.path for c in "*?[") else self.path

    def describe(self) -> str:
        return f"table {os.path.abspath(self.path)}"


@dataclass(frozen=True)
class CsvSource(Source):
    """A CSV file with a header naming ``id`` and ``path`` (or ``url``) columns."""

    path: str

    def records(self) -> Iterator[Record]:
        import csv

        resolve = _resolver(self.path)
        with open(self.path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            path_col = _path_column(self.path, reader.fieldnames or [])
            for row in reader:
                rid, p = row.get("id") or "", row.get(path_col) or ""
                if not rid or not p:
                    yield Record(rid or f"<line {reader.line_num}>", p, f"bad input line {reader.line_num}: empty id or path")
                else:
                    yield Record(rid, resolve(p), _check_id(rid))

    def describe(self) -> str:
        return f"CSV {os.path.abspath(self.path)}"


def expand_braces(pattern: str) -> list[str]:
    """WebDataset / bash brace patterns: ``{000000..000099}`` (zero padding kept), ``{a,b}``, nested, with steps
    (``{0..10..2}``): the ``braceexpand`` package, as WebDataset and clip-retrieval use."""
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


_GLOB = re.compile(r"[*?\[]")  # glob's wildcards
_WILDCARD = re.compile(r"[*?\[{]")  # glob's and the brace patterns' 


def expand_pattern(pattern: str) -> list[str]:
    """Brace patterns expanded, then each piece with ``*``, ``?`` or ``[...]`` globbed (``**`` recursive) and
    sorted; a piece without wildcards is kept as it is (a missing file becomes an error row)."""
    import glob

    out = []
    for piece in expand_braces(pattern):
        out.extend(sorted(glob.glob(piece, recursive=True)) if _GLOB.search(piece) else [piece])
    return out


def pattern_root(pattern: str) -> str:
    """The folder of a pattern's wildcard-free beginning: zip ids are archive paths relative to it."""
    m = _WILDCARD.search(pattern)
    return os.path.dirname(pattern[:m.start()] if m else pattern)


def is_pattern(path: str) -> bool:
    return bool(_WILDCARD.search(path))


def _unopened(exc: BaseException, kind: str, hint: str = "") -> str:
    """The error row of an archive that cannot be opened."""
    return "missing: file does not exist" if isinstance(exc, FileNotFoundError) else f"unreadable {kind}: {exc}{hint}"


@dataclass(frozen=True)
class ZipSource(Source):
    """Image members of zip archives (one ``.zip``, or a glob / brace pattern of them). Each member is read
    by byte offset (the central directory gives it), stored members as they are and deflated ones inflated in
    the decode worker; nothing is extracted. The id is the archive's path relative to the pattern's fixed
    folder, without ``.zip``, then the member's path up to the first dot of its name: member ``678.jpg`` of
    ``yfcc/12/345.zip`` under ``--data 'yfcc/*/*.zip'`` is ``12/345/678``. Directories and members that are
    not images are skipped; an archive that cannot be opened is one error row."""

    pattern: str

    def archives(self) -> list[str]:
        return expand_pattern(self.pattern)

    def records(self) -> Iterator[Record]:
        import zipfile

        root = pattern_root(self.pattern)
        for zip_path in self.archives():
            prefix = os.path.splitext(os.path.relpath(zip_path, root) if root else zip_path)[0]
            try:
                archive = zipfile.ZipFile(zip_path)
            except (OSError, zipfile.BadZipFile) as exc:
                yield Record(prefix, zip_path, _unopened(exc, "zip"))
                continue
            with archive:
                for info in archive.infolist():
                    if info.is_dir() or not _is_image(info.filename):
                        continue
                    folder, name = os.path.split(info.filename)
                    key = "/".join(p for p in (prefix, folder, name.split(".", 1)[0]) if p)
                    yield Record(key, f"{zip_path}::{info.filename}", _check_id(key), info.header_offset,
                                 info.compress_size)

    def skipped(self) -> Iterator[str]:
        import zipfile

        for zip_path in self.archives():
            try:
                with zipfile.ZipFile(zip_path) as archive:
                    for info in archive.infolist():
                        if not info.is_dir() and not _is_image(info.filename):
                            yield f"{zip_path}::{info.filename}"
            except (OSError, zipfile.BadZipFile):
                continue  # an archive that cannot be opened is an error row already

    def describe(self) -> str:
        return f"zip {os.path.abspath(self.pattern)}"


@dataclass(frozen=True)
class TarSource(Source):
    """Image members of uncompressed tar shards (WebDataset convention: the id is the member's
    path up to the first dot of its name, e.g. ``000123.jpg`` -> ``000123``). Members are read
    by byte offset, so no worker ever extracts a whole archive."""

    pattern: str

    def tars(self) -> list[str]:
        return expand_pattern(self.pattern)

    def records(self) -> Iterator[Record]:
        import tarfile

        for tar_path in self.tars():
            try:
                archive = tarfile.open(tar_path, "r:")  # plain tar only: members must be seekable
            except (OSError, tarfile.TarError) as exc:
                yield Record(os.path.basename(tar_path), tar_path,
                             _unopened(exc, "tar", " (compressed tars are not supported: decompress them)"))
                continue
            with archive:
                for member in archive:
                    if not member.isfile() or not _is_image(member.name):
                        continue
                    folder, name = os.path.split(member.name)
                    key = os.path.join(folder, name.split(".", 1)[0])
                    yield Record(key, f"{tar_path}::{member.name}", _check_id(key), member.offset_data, member.size)

    def skipped(self) -> Iterator[str]:
        import tarfile

        for tar_path in self.tars():
            try:
                with tarfile.open(tar_path, "r:") as archive:
                    for member in archive:
                        if member.isfile() and not _is_image(member.name):
                            yield f"{tar_path}::{member.name}"
            except (OSError, tarfile.TarError):
                continue  # an archive that cannot be opened is an error row already

    def describe(self) -> str:
        return f"tar {os.path.abspath(self.pattern)}"


# Registry of file suffix -> (source class, what the file holds); folders are handled before the lookup.
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


_FILE_SOURCES: dict[str, tuple[Callable[[str], Source], str]] = {}


def register_source(suffixes: Sequence[str], factory: Callable[[str], Source], what: str) -> None:
    """Make files ending in ``suffixes`` an input read by ``factory``; ``what`` describes them for help texts."""
    for suffix in suffixes:
        if suffix in _FILE_SOURCES:
            raise ValueError(f"a source is already registered for {suffix!r}")
        _FILE_SOURCES[suffix] = (factory, what)


register_source((".tsv", ".tab"), TsvSource, "a TSV of id<TAB>path")
register_source((".txt", ".lst", ".list"), PathListSource, "a text list of paths")
register_source((".parquet", ".arrow"), TableSource,
                "a Parquet or Arrow table (or a glob of them, or a datasets save_to_disk folder) with the image in a "
                "column (HF's {bytes, path} struct or binary: --image-column) or id and path (or url) columns")
register_source((".csv",), CsvSource, "a CSV table with id and path (or url) columns")
register_source((".tar",), TarSource, "WebDataset tar shards (glob or brace patterns such as 'shards/{000..099}.tar')")
register_source((".zip",), ZipSource, "zip archives (glob or brace patterns such as 'yfcc/*/*.zip'; "
                                      "ids: archive path without .zip + member name up to its first dot)")


def accepted_inputs() -> str:
    """What ``--data`` accepts, written from the registry (help texts and error messages use it)."""
    kinds: dict[str, list[str]] = {}
    for suffix, (_, what) in _FILE_SOURCES.items():
        kinds.setdefault(what, []).append(suffix)
    return "a folder of images (walked recursively), " + ", ".join(
        f"{what} ({' '.join(suffixes)})" for what, suffixes in kinds.items())


DataArg = Union[str, os.PathLike, Sequence]


def open_source(data: DataArg, start: int = 0, stop: Optional[int] = None, name: str = "data",
                image_column: Optional[str] = None, id_column: Optional[str] = None) -> Source:
    """Choose the source for ``data`` and apply the ``start``/``stop`` block (``name``: the parameter that gave
    ``data``, for the error message; ``image_column``/``id_column``: a table's columns, when not found by name)."""
    if start < 0:
        raise bad_param("start", "an integer >= 0", start)
    if stop is not None and stop < start:
        raise bad_param("stop", f"an integer >= start ({start}) or None", stop)
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        from .tables import is_arrow_folder

        if p.is_dir():
            src: Source = TableSource(str(p)) if is_arrow_folder(str(p)) else FolderSource(str(p))
        elif p.suffix.lower() in (".tar", ".zip", ".parquet", ".arrow") and is_pattern(str(data)) and not p.exists():
            src = _FILE_SOURCES[p.suffix.lower()][0](str(data))  # a glob or brace pattern of archives
        elif not p.exists():
            raise bad_param(name, f"an existing input: {accepted_inputs()}", str(p))
        elif p.suffix.lower() in _FILE_SOURCES:
            src = _FILE_SOURCES[p.suffix.lower()][0](str(p))
        else:
            raise bad_param(name, accepted_inputs(), str(p))
    elif isinstance(data, Sequence):
        src = ListSource(tuple(data))
    else:
        raise bad_param(name, f"{accepted_inputs()}, or a Python list of paths / (id, path) pairs",
                        type(data).__name__)
    if image_column is not None or id_column is not None:
        if not isinstance(src, TableSource):
            raise bad_param("image_column" if image_column is not None else "id_column",
                            "given only with a table input (.parquet, .arrow, a datasets folder)", image_column or
                            id_column)
        src = dataclasses.replace(src, image_column=image_column, id_column=id_column)
        list(itertools.islice(src.records(), 1))  # a column that is not there: said now, by name
    if start or stop is not None:
        src = Slice(src, start, stop)
    return src
