"""Decoding in a pool of spawned processes (the server's uploads and thumbnails: a pathological file must not
take a server thread or its Pillow state with it).

``DecodePool.run(fn, *args)`` calls ``fn(*args, max_pixels, timeout)`` in a worker process (the signature of
``data.decode``'s ``decode_bytes`` and ``thumbnail``); a worker that hangs past the deadline or dies is replaced
and the call answers with a reason string, like a bad file in ``extract``. (``extract``'s second attempts of
failed decodes use ``data.fresh``: one clean process per file.)
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Optional, Union

from .decode import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


class DecodePool:
    """A pool of ``workers`` decoding processes; see the module docstring."""

    def __init__(self, workers: int = 2, timeout: Optional[float] = 10.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 grace: float = 20.0) -> None:
        # ``timeout``: the decode deadline inside the worker (None: none); ``grace``: how much longer the caller
        # waits before it gives up on a worker that does not answer at all
        self.workers, self.timeout, self.max_pixels, self.grace = workers, timeout, max_pixels, grace
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def warm(self, timeout: Optional[float] = None) -> None:
        """Start the workers now (imports take a second or two) rather than on the first request; ``timeout``
        bounds the wait (``concurrent.futures.TimeoutError`` past it)."""
        with self._lock:
            pool = self._pool
        for f in [pool.submit(_ping) for _ in range(self.workers)]:
            f.result(timeout=timeout)

    def run(self, fn: Callable, *args) -> Union[object, str]:
        with self._lock:
            pool = self._pool
        wait = None if self.timeout is None else self.timeout + self.grace
        try:
            return pool.submit(fn, *args, self.max_pixels, self.timeout).result(timeout=wait)
        except (FutureTimeout, BrokenProcessPool) as exc:
            log.warning("decoder process %s; starting a new one", "hung" if isinstance(exc, FutureTimeout) else "died")
            with self._lock:
                if self._pool is pool:
                    self._pool = self._new_pool()
            _stop(pool)
            return "unreadable: the decoder stopped on this image"

    def close(self) -> None:
        """Stop the worker processes now (a caller that exits must not leave them behind)."""
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
