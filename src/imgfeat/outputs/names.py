"""The output formats' file extensions, which the command line declares: standard library only, so ``--help`` answers
without importing NumPy. ``outputs.formats`` registers a reader and a sink for each, and refuses one not named here."""

from __future__ import annotations

FORMAT_EXTENSIONS = (".h5", ".hdf5", ".npy", ".parquet", ".pkl", ".tsv")


def extensions() -> list[str]:
    """The extensions an output file may end in (sorted)."""
    return sorted(FORMAT_EXTENSIONS)
