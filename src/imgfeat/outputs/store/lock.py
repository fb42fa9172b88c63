"""One writer at a time: the store's lock file (a dead holder's lock is taken over), and the check ``--shard``
parts make instead of taking it."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from ...errors import READ_ONLY_ERRNOS, ImgfeatError
from ...files import create_atomic
from .layout import LOCK, StoreLockedError


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


def _created(path: Path, data: bytes) -> bool:
    """``create_atomic`` of the lock, a store that cannot be written said in one line (a read-only mount, another
    user's folder): nothing is changed, readers still read it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return create_atomic(path, data)
    except OSError as exc:
        if exc.errno not in READ_ONLY_ERRNOS:
            raise
        raise ImgfeatError(f"{path.parent} cannot be written ({exc.strerror}): nothing was changed. Readers still "
                           "read it; to update, repair or compact it, make it writable (or copy it somewhere that "
                           "is)") from None


class Locking:
    """The writer lock of a ``FeatureStore`` (mixed into it)."""

    @contextmanager
    def writer_lock(self):
        """One writer at a time: ``STORE/.lock`` holds the writer's pid, host and start time. A lock left by a
        process that is gone (same host) is taken over; one from another host is reported with how to clear it."""
        import socket
        import time as _time

        path = self.path / LOCK
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": _time.strftime("%Y-%m-%d %H:%M:%S")}
        data = json.dumps(mine).encode()
        while not _created(path, data):
            try:
                held = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # it went away (or is being replaced): try again
            if held.get("host") == mine["host"] and not _alive(held.get("pid")):
                stale = path.with_name(f"{LOCK}.stale.{os.getpid()}")
                try:
                    os.rename(path, stale)
                except FileNotFoundError:
                    continue
                if json.loads(stale.read_text()) != held:  # another process took it over first: give it back
                    os.rename(stale, path)
                    continue
                stale.unlink()
                continue
            where = "this machine" if held.get("host") == mine["host"] else f"host {held.get('host')}"
            raise StoreLockedError(
                f"{self.path} is being written by another imgfeat extract (pid {held.get('pid')} on {where}, since "
                f"{held.get('since')}); wait for it to finish"
                + ("" if held.get("host") == mine["host"] else
                   f". If that process is gone, delete {path} (a lock from another machine cannot be checked)"))
        try:
            self.upgrade()  # a store written before generations: converted once, by its first writer
            yield
        finally:
            try:
                if json.loads(path.read_text()) == mine:
                    path.unlink()
            except (OSError, ValueError):
                pass

    @contextmanager
    def writing(self, part: bool = False):
        """What a run that writes the store holds: the writer lock, or for a ``--shard I/N`` part (parts share one
        plan and take no lock) the check that no other writer holds it."""
        if not part:
            with self.writer_lock():
                yield
            return
        held = self._held_lock()
        if held:
            raise StoreLockedError(f"{self.path} is being written by another imgfeat extract (pid {held.get('pid')} "
                                   f"on {held.get('host')}, since {held.get('since')}); run the parts after it")
        self.upgrade()
        yield

    def _held_lock(self) -> Optional[dict]:
        """The writer lock's holder when a live process holds it."""
        import socket

        try:
            held = json.loads((self.path / LOCK).read_text())
        except (OSError, ValueError):
            return None
        if held.get("host") == socket.gethostname() and not _alive(held.get("pid")):
            return None
        return held
