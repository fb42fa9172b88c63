"""Image collections shipped as tables: Parquet files (one, or a glob of shards) and Arrow folders written by
Hugging Face ``datasets`` (``save_to_disk``), with the image in a column - HF's ``{bytes, path}`` struct, a plain
binary column (img2dataset) - or a path/url column as before.

The main process reads only the id column; each record's path names its cell,
``table.parquet::#<row group>:<row>:<column>`` (an Arrow file: ``::#<batch>:<row>:<column>``), and the decode
worker reads the bytes itself (``cell_bytes``), one row group at a time, kept while the worker's batch is in it: the
image bytes never pass through one process whole.
"""

from __future__ import annotations

import glob
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional

from ..errors import bad_param

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes")
ID_COLUMNS = ("id", "key", "__key__", "image_id")
CELL = "::#"


def is_cell(path: str) -> bool:
    return CELL in path and path.split(CELL, 1)[0].lower().endswith((".parquet", ".arrow"))


def is_arrow_folder(path: str) -> bool:
    """A folder ``datasets.save_to_disk`` wrote: ``state.json`` and its ``data-*.arrow`` files."""
    p = Path(path)
    return p.is_dir() and (p / "state.json").is_file() and any(p.glob("*.arrow"))


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        state = json.loads((Path(path) / "state.json").read_text())
        names = [f["filename"] for f in state.get("_data_files", [])] or sorted(
            p.name for p in Path(path).glob("*.arrow"))
        return [str(Path(path) / n) for n in names]
    if any(c in path for c in "*?["):
        return sorted(glob.glob(path))
    return [path]


def _arrow_reader(path: str):
    import pyarrow as pa

    source = pa.memory_map(path)
    try:
        return pa.ipc.open_file(source)  # random access
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(pa.memory_map(path))  # what datasets writes: a stream


def _schema(path: str):
    import pyarrow.parquet as pq

    if path.lower().endswith(".parquet"):
        return pq.ParquetFile(path).schema_arrow
    return _arrow_reader(path).schema


def _is_image_type(t) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields))


def columns_of(path: str, image_column: Optional[str], id_column: Optional[str]) -> tuple[str, str, Optional[str]]:
    """(kind, image column, id column): kind 'bytes' (image bytes in the table) or 'path' (paths or urls)."""
    schema = _schema(path)
    names = schema.names
    if id_column is not None and id_column not in names:
        raise bad_param("id_column", f"a column of {path}: {names}", id_column)
    ident = id_column or next((c for c in ID_COLUMNS if c in names), None)
    if image_column is not None:
        if image_column not in names:
            raise bad_param("image_column", f"a column of {path}: {names}", image_column)
        kind = "bytes" if _is_image_type(schema.field(image_column).type) else "path"
        return kind, image_column, ident
    found = next((c for c in IMAGE_COLUMNS if c in names and _is_image_type(schema.field(c).type)), None)
    if found is None:
        found = next((f.name for f in schema if _is_image_type(f.type)), None)
    if found is not None:
        return "bytes", found, ident
    for c in ("path", "url"):
        if c in names:
            if ident is None:
                raise bad_param("data", f"a table with an 'id' column next to '{c}' (or --id-column); {path} has "
                                        f"{names}", path)
            return "path", c, ident
    raise bad_param("data", f"a table with an image column (HF's {{bytes, path}} struct or binary: --image-column "
                            f"NAME) or a 'path'/'url' column; {path} has columns {names}", path)


def iter_ids(path: str, id_column: Optional[str]) -> Iterator[tuple[int, int, list]]:
    """(group, rows in it, ids or None) per row group / record batch, reading the id column only."""
    import pyarrow.parquet as pq

    if path.lower().endswith(".parquet"):
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            ids = pf.read_row_group(g, columns=[id_column]).column(0).to_pylist() if id_column else None
            yield g, rows, ids
        return
    reader = _arrow_reader(path)
    if hasattr(reader, "num_record_batches"):
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = iter(reader)
    for g, batch in enumerate(batches):
        ids = batch.column(batch.schema.get_field_index(id_column)).to_pylist() if id_column else None
        yield g, batch.num_rows, ids


@lru_cache(maxsize=2)
def _group_column(path: str, group: int, column: str):
    """One row group's (or record batch's) image column: what a decode worker keeps while its batch is in it."""
    import pyarrow.parquet as pq

    if path.lower().endswith(".parquet"):
        return pq.ParquetFile(path).read_row_group(group, columns=[column]).column(0).combine_chunks()
    reader = _arrow_reader(path)
    if hasattr(reader, "get_batch"):
        batch = reader.get_batch(group)
    else:
        for g, batch in enumerate(reader):
            if g == group:
                break
        else:
            raise FileNotFoundError(f"{path} has no record batch {group}")
    return batch.column(batch.schema.get_field_index(column))


def cell_bytes(path: str) -> bytes:
    """The image bytes a cell path names (``table::#group:row:column``); a struct cell without bytes but with a
    path reads that file (relative to the table's folder)."""
    table, cell = path.split(CELL, 1)
    group, row, column = cell.split(":", 2)
    values = _group_column(table, int(group), column)
    value = values[int(row)].as_py()
    if isinstance(value, dict):
        data, ref = value.get("bytes"), value.get("path")
        if data:
            return data
        if ref:
            ref = ref if os.path.isabs(ref) else os.path.join(os.path.dirname(table), ref)
            with open(ref, "rb") as fh:
                return fh.read()
        return b""
    return value or b""


def cell_image_path(path: str) -> Optional[str]:
    """The ``path`` field of the {bytes, path} struct a cell path names (HF datasets keep the image's file name
    there), or None: what an error row adds so the user knows which image the cell held."""
    try:
        table, cell = path.split(CELL, 1)
        group, row, column = cell.split(":", 2)
        value = _group_column(table, int(group), column)[int(row)].as_py()
    except Exception:  # noqa: BLE001 - only a name for a message; the error row stands without it
        return None
    return value.get("path") or None if isinstance(value, dict) else None


def files_of(path: str) -> list[str]:
    """The table files of ``path``: one file, a glob of them, or a datasets folder's Arrow files."""
    files = _files(path)
    if not files:
        raise bad_param("data", "a table file, a glob of them or a datasets folder that matches something", path)
    return files


def path_rows(file: str, column: str, ident: str) -> Iterator[tuple[object, object]]:
    """(id, path) of a table whose images are files or URLs, batch by batch."""
    import pyarrow.parquet as pq

    if file.lower().endswith(".parquet"):
        batches = pq.ParquetFile(file).iter_batches(batch_size=65536, columns=[ident, column])
    else:
        batches = (b.select([ident, column]) for b in _iter_arrow(file))
    for batch in batches:
        yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())


def _iter_arrow(file: str):
    reader = _arrow_reader(file)
    if hasattr(reader, "num_record_batches"):
        return (reader.get_batch(i) for i in range(reader.num_record_batches))
    return iter(reader)


__all__ = ["cell_bytes", "cell_image_path", "columns_of", "files_of", "is_arrow_folder", "is_cell", "iter_ids", "path_rows"]
