"""Second attempts of failed decodes, each alone in a process that has decoded nothing before.

Pillow (and the codec libraries under it) keep state inside a process: with Pillow 13.0.0, once
``200x32_p_bl_raw_origin.tga`` has been decoded, ``pillow.ico`` fails to load in the same process. So before
a failure becomes an error row, the decode worker asks :class:`FreshProcess` to try that file again: a helper
interpreter (``python -m imgfeat.data.fresh``, started on the first failure, so healthy inputs never pay for
it) imports the decoder, never decodes, and forks one child per file; the child decodes under the same pixel
limit and deadline and answers through a pipe. A fork of a process that has decoded nothing is clean, costs
milliseconds, and re-imports nothing (multiprocessing's forkserver and spawn re-run the user's ``__main__`` in
every child). The helper exits when its parent does (its stdin closes).

Messages are length-prefixed pickles over the helper's stdin/stdout, between processes of the same program.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from typing import Optional

from .decode import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS, DecodeResult, decode_record

_HEADER = struct.Struct("<Q")
GRACE = 20.0  # seconds past the decode deadline before a silent child (or helper) is killed
STOPPED = "unreadable: the decoder stopped on this image"


def _send(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int, deadline: Optional[float]):
    """One message from ``fd``; None at end of file; TimeoutError past ``deadline`` (a monotonic time)."""
    def read(n: int) -> Optional[bytes]:
        chunks, got = [], 0
        while got < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise TimeoutError
            chunk = os.read(fd, n - got)
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    header = read(_HEADER.size)
    if header is None:
        return None
    body = read(_HEADER.unpack(header)[0])
    return None if body is None else pickle.loads(body)


def _wait_deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + timeout + GRACE


class FreshProcess:
    """``attempt(path, offset, size, pp, max_pixels, timeout)``: ``decode_record`` in a new process forked
    from a clean helper. A helper that dies or stops answering is replaced; the file then gets a reason."""

    def __init__(self) -> None:
        self._proc: Optional[subprocess.Popen] = None

    def _helper(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-m", "imgfeat.data.fresh"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, close_fds=True, bufsize=0)
        return self._proc

    def attempt(self, path: str, offset: Optional[int], size: Optional[int], pp,
                max_pixels: int = DEFAULT_MAX_PIXELS,
                timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT) -> DecodeResult:
        proc = self._helper()
        try:
            _send(proc.stdin.fileno(), (path, offset, size, pp, max_pixels, timeout))
            # the helper's first answer also waits for its imports (numpy, Pillow): a few seconds at most
            answer = _recv(proc.stdout.fileno(), None if timeout is None else time.monotonic() + timeout + GRACE + 30)
        except (OSError, TimeoutError):
            answer = None
        if answer is None:  # the helper died or hung: start a new one next time
            self.close()
            return STOPPED
        return answer

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_FRESH: dict[int, FreshProcess] = {}


def fresh_attempt(path: str, offset: Optional[int], size: Optional[int], pp, max_pixels: int,
                  timeout: Optional[float]) -> DecodeResult:
    """The calling process's own :class:`FreshProcess` (a forked worker never shares its parent's helper)."""
    client = _FRESH.get(os.getpid())
    if client is None:
        _FRESH.clear()  # a helper inherited through fork belongs to the parent
        client = _FRESH[os.getpid()] = FreshProcess()
    return client.attempt(path, offset, size, pp, max_pixels, timeout)


def _child(request: tuple, w: int) -> None:
    try:
        result = decode_record(*request)
    except BaseException as exc:  # noqa: BLE001 - decode_record never raises; be sure anyway
        result = f"unreadable: {type(exc).__name__}: {exc}"
    _send(w, result)


def main() -> None:
    """The helper: one forked child per request, killed if silent past the deadline."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which closes our stdin
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr  # nothing but answers may reach the parent's pipe
    while True:
        request = _recv(stdin, None)
        if request is None:
            return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                _child(request, w)
            finally:
                os._exit(0)
        os.close(w)
        try:
            answer = _recv(r, _wait_deadline(request[-1]))
        except TimeoutError:
            answer = None
        if answer is None:
            os.kill(pid, signal.SIGKILL)
            answer = STOPPED
        os.close(r)
        os.waitpid(pid, 0)
        _send(stdout, answer)


if __name__ == "__main__":
    main()
