"""Tasks for ``DecodePool`` tests, in a module of their own: a spawned worker imports the module of the function
it runs, and this one imports nothing heavy (the test module would pull in FastAPI, torch and the server)."""

from __future__ import annotations

import os
import time


def pid(max_pixels, timeout) -> int:
    """The worker's process id: a replaced worker answers with another."""
    return os.getpid()


def hang(seconds, max_pixels, timeout) -> int:
    """A decoder that does not answer (far longer than the pool's deadline)."""
    time.sleep(seconds)
    return os.getpid()


def crash(max_pixels, timeout):
    os._exit(3)
