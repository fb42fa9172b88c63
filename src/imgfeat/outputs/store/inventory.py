"""A shard's inventory (``NNNNNN.inputs.parquet``): each input record's id, fingerprint and vector row; what the
next update's diff reads."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


from ...files import fsync_path

INPUTS_SCHEMA = None  # pyarrow schema of NNNNNN.inputs.parquet, made on first use (pyarrow imported lazily)


def empty_inventory():
    """An inventory (``FeatureStore.inventory``) with no record: its columns and types."""
    import pyarrow as pa

    return pa.table({"id": pa.array([], pa.string()), "sfp": pa.array([], pa.string()),
                     "shard": pa.array([], pa.int64()), "spos": pa.array([], pa.int64())})


def inputs_schema():
    global INPUTS_SCHEMA
    if INPUTS_SCHEMA is None:
        import pyarrow as pa

        INPUTS_SCHEMA = pa.schema([("id", pa.string()), ("fp", pa.string()), ("row", pa.int32())])
    return INPUTS_SCHEMA


def write_inputs(path: Path, inputs: Sequence[tuple[str, str]], vector_ids: Sequence[str]) -> None:
    """A shard's inventory: each input record's id and fingerprint in input order, and its vector row (-1: an
    error row). Ids are unique within a shard (an update plan refuses duplicates), so rows map by id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_of = {rid: i for i, rid in enumerate(vector_ids)}
    table = pa.table({"id": pa.array([i for i, _ in inputs], pa.string()),
                      "fp": pa.array([f for _, f in inputs], pa.string()),
                      "row": pa.array([row_of.get(i, -1) for i, _ in inputs], pa.int32())}, schema=inputs_schema())
    pq.write_table(table, path)
    fsync_path(path)
