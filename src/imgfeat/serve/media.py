"""Image work for the server: uploads and thumbnails are decoded in a small pool of spawned processes,
each task under ``extract``'s pixel limit and decode deadline (a signal deadline works only in a
process's main thread, and a pathological file must not take a server thread or Pillow state with
it). Thumbnails are made once per id and kept on disk under the cache directory.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Optional, Union

from ..data.decode import DEFAULT_MAX_PIXELS, thumbnail
from ..files import write_atomic

log = logging.getLogger(__name__)


class DecodePool:
    """``run(fn, *args)`` in a worker process, as ``fn(*args, max_pixels, timeout)`` (the signature of
    ``data.decode``'s ``decode_bytes`` and ``thumbnail``); a worker that hangs past the deadline or dies is replaced
    and the call answers with a reason string, like a bad file in ``extract``."""

    def __init__(self, workers: int = 2, timeout: float = 10.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 grace: float = 20.0) -> None:
        # ``timeout``: the decode deadline inside the worker; ``grace``: how much longer the server waits
        # before it gives up on a worker that does not answer at all
        self.workers, self.timeout, self.max_pixels, self.grace = workers, timeout, max_pixels, grace
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def warm(self) -> None:
        """Start the workers now (imports take a second or two) rather than on the first request."""
        for f in [self._pool.submit(_ping) for _ in range(self.workers)]:
            f.result()

    def run(self, fn: Callable, *args) -> Union[object, str]:
        with self._lock:
            pool = self._pool
        try:
            return pool.submit(fn, *args, self.max_pixels, self.timeout).result(timeout=self.timeout + self.grace)
        except (FutureTimeout, BrokenProcessPool) as exc:
            log.warning("decoder process %s; starting a new one", "hung" if isinstance(exc, FutureTimeout) else "died")
            with self._lock:
                if self._pool is pool:
                    self._pool = self._new_pool()
            _stop(pool)
            return "unreadable: the decoder stopped on this image"

    def close(self) -> None:
        """Stop the worker processes now (a server that exits must not leave them behind)."""
        _stop(self._pool)


def _stop(pool: ProcessPoolExecutor) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.kill()
    for proc in processes:
        proc.join(timeout=5)


def _ping() -> bool:
    return True


class Thumbnails:
    """JPEG thumbnails of the collection's images, ``size`` px on the longer side, made on first request
    from the path the features record for that id and kept under ``folder``."""

    def __init__(self, folder: Path, pool: DecodePool, size: int = 256) -> None:
        self.folder, self.pool, self.size = folder / f"thumbs-{size}", pool, size

    def _file(self, rid: str) -> Path:
        h = hashlib.sha1(rid.encode("utf-8")).hexdigest()
        return self.folder / h[:2] / f"{h}.jpg"

    def etag(self, rid: str, path: Optional[str]) -> str:
        return '"' + hashlib.sha1(f"{rid}\0{path}\0{self.size}".encode("utf-8")).hexdigest()[:20] + '"'

    def get(self, rid: str, path: Optional[str]) -> Union[bytes, str]:
        """The thumbnail's bytes, or the reason it cannot be made."""
        if not path:
            return "missing: the features record no image path for this id"
        f = self._file(rid)
        if f.is_file():
            return f.read_bytes()
        result = self.pool.run(thumbnail, path, self.size)
        if isinstance(result, bytes):
            f.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(f, result)
        return result


def placeholder_png(size: int = 64) -> bytes:
    """A plain grey square shown where a thumbnail cannot be made."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (226, 226, 226))
    d = ImageDraw.Draw(img)
    d.line((size * 0.3, size * 0.3, size * 0.7, size * 0.7), fill=(150, 150, 150), width=3)
    d.line((size * 0.7, size * 0.3, size * 0.3, size * 0.7), fill=(150, 150, 150), width=3)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
