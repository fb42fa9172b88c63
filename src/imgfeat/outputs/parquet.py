"""A Parquet file read whole through ``pyarrow.parquet.ParquetFile``: what ``pq.read_table`` does for one local file,
without importing ``pyarrow.dataset`` (and pandas with it: 0.3-0.4 s of a text query's start, issue 48)."""

from __future__ import annotations

from typing import Optional, Sequence


def read_table(path, columns: Optional[Sequence[str]] = None, schema=None):
    """The table in ``path`` (only ``columns``, when given), cast to ``schema`` when given and different."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read(columns=list(columns) if columns is not None else None)
    return table if schema is None or table.schema.equals(schema) else table.cast(schema)
