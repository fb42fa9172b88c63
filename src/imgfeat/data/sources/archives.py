"""Archive inputs: zip archives and WebDataset tar shards, one file or a glob / brace pattern of them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterator

from .base import Record, Source, _check_id, _is_image


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
