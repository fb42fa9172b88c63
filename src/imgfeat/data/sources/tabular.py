"""Table inputs: Parquet / Arrow tables (paths or image bytes in a column) and CSV tables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from ...errors import bad_param
from .base import Record, Source, _check_id, _resolver


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
        from .. import tables

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
        from .. import tables

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
