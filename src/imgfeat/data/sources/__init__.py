"""Source stage: turn the user's INPUT into a lazy stream of ``Record(id, path)``.

Sources are small picklable descriptors: every decode worker re-opens the source itself
and reads it lazily, so a 100M-line list starts at once and memory does not grow with it.
Sources are chosen by a registry keyed on what INPUT is (folder, or file suffix).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ...errors import bad_param
from .archives import TarSource, ZipSource, expand_braces, expand_pattern, is_pattern, pattern_root
from .base import Counted, ListSource, PlanSource, Record, Slice, Source, fingerprint
from .lists import FolderSource, PathListSource, TsvSource, walk_once
from .tabular import CsvSource, TableSource

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
        from ..tables import is_arrow_folder

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


__all__ = ["Counted", "CsvSource", "DataArg", "FolderSource", "ListSource", "PathListSource", "PlanSource", "Record",
           "Slice", "Source", "TableSource", "TarSource", "TsvSource", "ZipSource", "accepted_inputs", "expand_braces",
           "expand_pattern", "fingerprint", "is_pattern", "open_source", "pattern_root", "register_source",
           "walk_once"]
