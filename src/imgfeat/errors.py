"""Exceptions raised to users. Each message names what was wrong and how to fix it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class ImgfeatError(Exception):
    """Base class for errors imgfeat reports to the user (the CLI prints them without a traceback)."""


class DamagedFileError(ImgfeatError):
    """A file imgfeat reads is damaged, cut short or foreign: one line naming it and the repair. The command line
    exits with 1 (a usage error exits with 2)."""

    exit_code = 1


class InvalidParameterError(ImgfeatError, ValueError):
    """A user-facing parameter had a value outside its allowed set; ``param`` names it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class WeightsUnavailableError(ImgfeatError):
    """Pretrained weights are neither cached nor downloadable."""


class MissingDependencyError(ImgfeatError, ImportError):
    """An optional dependency is not installed; the message carries the pip line that fixes it."""


def bad_param(name: str, allowed: str, got: object) -> InvalidParameterError:
    """Build the scikit-learn style message: The 'x' parameter must be ... Got ... instead."""
    return InvalidParameterError(f"The '{name}' parameter must be {allowed}. Got {got!r} instead.", name)


def require(module: str, extra: str, purpose: str):
    """Import an optional module or fail with the install line (timm ``_hub.py`` habit)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{purpose} needs the '{module}' package: pip install 'imgfeat[{extra}]'"
        ) from exc


class WorkerDiedError(ImgfeatError):
    """A decode worker process ended without a word: the OS killed it, or a native decoder crashed."""

    def __init__(self, cause: BaseException, advice: str = "") -> None:
        self.cause = cause
        super().__init__(
            f"a decode worker died ({cause}). The usual causes are the OS killing it for lack of memory "
            f"(fewer --workers, a smaller --batch-size) or a crash inside an image decoder (run with --workers 0 "
            f"to see which file)" + (f"; {advice}" if advice else "") + ".")


DISK_FULL_ERRNOS = (28, 122)  # ENOSPC, EDQUOT (Linux): the file system or the user's quota is full


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_message(exc: OSError, where, done: str) -> str:
    """One line for a full disk: which file system (by the path being written), how much room is left on it, what
    was written before it filled up (``done``) and what to do."""
    import os
    import shutil
    from pathlib import Path

    path = Path(exc.filename or where or ".")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        left = shutil.disk_usage(probe).free
        free = f"{left / 1e9:,.1f} GB free" if left >= 1e9 else f"{left / 1e6:,.1f} MB free" if left >= 1e6 else \
            f"{left // 1024} KB free"
    except OSError:
        free = "free space unknown"
    reason = "the disk quota is exceeded" if exc.errno == 122 else "no space left on the device"
    return f"{reason} holding {os.path.abspath(path)} ({free}): {done}"


READ_ONLY_ERRNOS = (1, 13, 30)  # EPERM, EACCES, EROFS: a cache folder nobody may write
_SAID_READ_ONLY: set = set()  # cache roots already warned about: a read-only cache is said once, not per request


def _cache_root(where) -> str:
    """The folder a read-only warning is said once for: the first existing folder above ``where``."""
    from pathlib import Path

    p = Path(where)
    while not p.exists() and p != p.parent:
        p = p.parent
    return str(p)


@contextmanager
def best_effort_cache(what: str, where) -> Iterator[None]:
    """Around a write into a cache whose content can be computed again: a full disk (or quota) is a one-line
    warning and the work goes on uncached, never a failed request; so is a cache folder that cannot be written
    (read-only, another user's), said once for that folder. Other errors pass."""
    import logging

    try:
        yield
    except OSError as exc:
        if exc.errno in READ_ONLY_ERRNOS:
            root = _cache_root(exc.filename or where)
            if root not in _SAID_READ_ONLY:
                _SAID_READ_ONLY.add(root)
                logging.getLogger("imgfeat.cache").warning(
                    "the cache folder %s cannot be written (%s): nothing is cached there; everything works, "
                    "computed again when needed (give a writable --cache, or $IMGFEAT_CACHE, to keep it)",
                    root, exc.strerror)
            return
        if not is_disk_full(exc):
            raise
        logging.getLogger("imgfeat.cache").warning("%s not cached: %s", what, disk_full_message(
            exc, where, "it is computed again when needed; free some space to keep it"))
