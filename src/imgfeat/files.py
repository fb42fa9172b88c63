"""The one rule for writing files: write under a hidden temporary name in the destination folder,
then rename into place, so no reader ever sees half a file under a final name.

Also the byte-level pieces several outputs share: the ``.npy`` header that is rewritten with the
row count at the end, error rows, checksums and fsync.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np


def cache_dir() -> Path:
    """imgfeat's cache root: ``$IMGFEAT_CACHE``, default ``~/.cache/imgfeat`` (exports, benchmarks, serve)."""
    return Path(os.environ.get("IMGFEAT_CACHE") or Path.home() / ".cache" / "imgfeat")


def writer_tag() -> str:
    """Host, pid and thread: temporary names of concurrent writers (several machines, one store; threads of a
    server) never collide."""
    return f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"


def partial_path(path: str | Path, tag: str | None = None) -> Path:
    """Hidden in-progress name next to ``path`` (same filesystem, so the final rename is atomic)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{tag or os.getpid()}.partial")


def stale_partials(folder: Path, prefix: str) -> Iterator[Path]:
    """Temporary files in ``folder`` whose final name starts with ``prefix`` (left by a killed writer)."""
    return folder.glob(f".{prefix}*.partial")


def commit(partial: str | Path, final: str | Path) -> None:
    """Move a finished temporary file to its final name (atomic: a reader sees old or new, never a part)."""
    os.replace(partial, final)


def discard(*paths: str | Path) -> None:
    """Remove temporary files; missing ones are fine (an abort may come before they exist)."""
    for p in paths:
        Path(p).unlink(missing_ok=True)


@contextmanager
def atomic_paths(finals: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Temporary paths for ``finals``: all renamed into place if the block succeeds, all removed if it raises."""
    partials = [partial_path(f) for f in finals]
    try:
        yield partials
    except BaseException:
        discard(*partials)
        raise
    for partial, final in zip(partials, finals):
        commit(partial, final)


def fsync_path(path: str | Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` in full, and durably, next to ``path`` under a temporary name."""
    tmp = partial_path(path, writer_tag())
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, durably: readers see the old file or the new one, never a part."""
    commit(write_temp(path, data), path)


def create_atomic(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; False if another writer was first.

    The file appears with its whole content or not at all (a hard link of a finished
    temporary file), so a reader, or a rerun after ``kill -9``, never sees it empty.
    """
    tmp = write_temp(path, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: rename, with a small race between writers
        if path.exists():
            return False
        commit(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


CHUNK = 8 << 20  # bytes read at a time by the checksums: one reused buffer, bounded memory whatever the file


def _read_chunks(path: Path) -> Iterator[memoryview]:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                return
            yield view[:n]


def xxh3(path: Path) -> str:
    """The fast checksum every store reader verifies (xxh3-128: about 20 GB/s, faster than the disk or the page
    cache can hand the bytes over; sha256 runs at 1.7 GB/s here)."""
    import xxhash

    h = xxhash.xxh3_128()
    for chunk in _read_chunks(path):
        h.update(chunk)
    return h.hexdigest()


def checksums(path: Path) -> tuple[str, str]:
    """(sha256, xxh3) of a file in one read: what a store's writer records for each file it publishes."""
    import xxhash

    sha, fast = hashlib.sha256(), xxhash.xxh3_128()
    for chunk in _read_chunks(path):
        sha.update(chunk)
        fast.update(chunk)
    return sha.hexdigest(), fast.hexdigest()


NPY_HEADER_BYTES = 128  # magic (6) + version (2) + length (2) + padded dict; rewritten with N at close


def npy_header(n: int, dim: int, dtype: np.dtype) -> bytes:
    """A fixed-size ``.npy`` v1 header for an (n, dim) C-order matrix, so rows can be appended and n set last."""
    text = "{'descr': %r, 'fortran_order': False, 'shape': (%d, %d), }" % (np.dtype(dtype).str, n, dim)
    body = text.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


def clean_field(value: object) -> str:
    """A value as one TSV field: tabs and newlines become spaces."""
    return str(value).replace("\t", " ").replace("\n", " ")


def error_row(row: Sequence[object]) -> str:
    """One ``id<TAB>path<TAB>reason`` line of an error log."""
    return "\t".join(clean_field(v) for v in row) + "\n"


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A staging folder next to ``final``, renamed to ``final`` when the block succeeds. If another
    process published ``final`` first, its copy is kept (it is as good as ours) and ours is removed."""
    import shutil
    import tempfile

    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield staging
        try:
            os.rename(staging, final)
        except OSError:  # another process won the race
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def mapped_for_writing(path: str | Path, shape: tuple, dtype, *, npy: bool = False) -> np.memmap:
    """A new file of ``shape`` x ``dtype`` (a ``.npy`` when ``npy``, else the bare array) memory-mapped for writing,
    its blocks reserved first: a full disk is an ``OSError`` (ENOSPC) here, before any work, and never a SIGBUS
    that kills the process when a page of a sparse file is written later. File systems that cannot reserve
    (no ``posix_fallocate``) get the sparse file."""
    try:
        if npy:
            mapped = np.lib.format.open_memmap(path, "w+", np.dtype(dtype), tuple(shape))
        elif int(np.prod(shape)) == 0:  # nothing to map: an empty file
            open(path, "wb").close()
            return np.zeros(shape, dtype)
        else:
            mapped = np.memmap(path, np.dtype(dtype), "w+", shape=tuple(shape))
        size = os.path.getsize(path)
        if size and hasattr(os, "posix_fallocate"):
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
            finally:
                os.close(fd)
    except OSError as exc:  # said with the file it was for (the disk-full message names its file system)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    return mapped


# ----------------------------------------------------------------------------- caches that check themselves
def file_state(st: os.stat_result) -> str:
    """A file's state, as checks remember it: a write changes its size or ctime (which cannot be set back), a
    replacement its inode."""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _seal_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.xxh3")


def seal(path: str | Path) -> None:
    """Record ``path``'s size and xxh3 beside it (``.NAME.xxh3``) after a cache wrote it, so a later read can tell a
    truncated or changed file from a good one (:func:`seal_broken`). Raises OSError like any cache write."""
    path = Path(path)
    st = path.stat()
    record = f"{st.st_size} {xxh3(path)} {file_state(st)}\n"
    write_atomic(_seal_path(path), record.encode())


def seal_broken(path: str | Path) -> str | None:
    """None when a cache file holds what :func:`seal` recorded (the checksum read once per file state), else what
    is wrong with it: a cache that fails is rebuilt, never served."""
    path = Path(path)
    try:
        size, digest, state = _seal_path(path).read_text().split()
        st = path.stat()
    except FileNotFoundError:
        return "is missing or was never sealed"
    except (OSError, ValueError) as exc:
        return f"has no readable checksum ({exc})"
    if st.st_size != int(size):
        return f"is truncated or overwritten ({st.st_size:,} bytes, {int(size):,} written)"
    if state == file_state(st):
        return None
    if xxh3(path) != digest:
        return "fails its checksum"
    return None


def unseal(*paths: str | Path) -> None:
    """Remove cache files and their seals (a damaged cache entry, before it is made again)."""
    for p in paths:
        for q in (Path(p), _seal_path(Path(p))):
            try:
                q.unlink(missing_ok=True)
            except OSError:
                pass


def remapped_random(part):
    """A memory map mapped again over the same file region, advised ``MADV_RANDOM`` where the system has it; any
    other array as it is."""
    import mmap

    if not isinstance(part, np.memmap) or not getattr(part, "filename", None) or not hasattr(mmap, "MADV_RANDOM"):
        return part
    again = np.memmap(part.filename, part.dtype, "r", offset=part.offset, shape=part.shape,
                      order="F" if part.flags["F_CONTIGUOUS"] and not part.flags["C_CONTIGUOUS"] else "C")
    try:
        again._mmap.madvise(mmap.MADV_RANDOM)
    except (AttributeError, OSError, ValueError):
        pass
    return again
