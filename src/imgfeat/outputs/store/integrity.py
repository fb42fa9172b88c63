"""A store that notices damage: every reader checks a shard's files before it hands a vector on.

Each file a shard publishes carries its size and fast checksum (xxh3-128, recorded by the writer beside its sha256;
about 20 GB/s, so checking costs less than reading). A file is checked once per *state*: its inode, size, mtime and
ctime (ctime cannot be set back, so a write that restores the mtime still shows) are remembered after a check
passes, or after the writer wrote it, and a second read pays one ``stat``. They are remembered in the user's cache
(``$IMGFEAT_CACHE/verified/``, a log per store path), never in the store: readers write nothing into a store, and a
read-only store is checked the same way. Where the cache cannot be written, every open checks again.

A file that fails is never handed on: the reader raises :class:`StoreDamagedError`, one line naming the file and
the repair (``imgfeat repair STORE`` re-extracts the shard from the images the store recorded; see
``engines.update``). Stores written before fast checksums are checked against their sha256 the same way.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ...errors import DamagedFileError
from ...files import cache_dir, checksums, file_state, sha256, xxh3

log = logging.getLogger("imgfeat.outputs.store")



class StoreDamagedError(DamagedFileError):
    """A store's file is missing, truncated or fails its checksum: its vectors are not handed on (exit status 1)."""


@dataclass(frozen=True)
class Damage:
    """One damaged file of a published shard."""

    shard: int
    kind: str  # vectors, ids, errors, inputs, dead
    name: str
    what: str  # "is missing", "is truncated (...)", "fails its checksum"

    @property
    def inventory_lost(self) -> bool:
        """Whether the shard's list of inputs is gone with it (its inventory or its dead-inputs file): a repair
        finds its images by id in the input instead of by the shard's own records."""
        return self.kind in ("inputs", "dead")


def repair_command(store: str | os.PathLike) -> str:
    return f"imgfeat repair {store}"


def damage_message(store: str | os.PathLike, found: list[Damage]) -> str:
    """One line: the first damaged file, how many more, and the command that repairs them."""
    first = found[0]
    more = f" (and {len(found) - 1} more damaged file(s))" if len(found) > 1 else ""
    return (f"{Path(store) / 'shards' / first.name} {first.what}{more}: no vector of that shard is handed on. "
            f"`{repair_command(store)}` re-extracts it from its images (or rerun the extract command that made "
            "the store); `imgfeat info` lists every damaged file")


def file_entry(path: Path) -> dict:
    """What a segment records of a file it publishes: name, size, sha256 and the fast checksum."""
    sha, fast = checksums(path)
    return {"name": path.name, "sha256": sha, "xxh3": fast, "bytes": path.stat().st_size}


class Verified:
    """The checks remembered of a store: file name -> the state that passed (a log in the user's cache, appended a
    line at a time, the last line of a name wins; rewritten when it has grown to several lines a file)."""

    def __init__(self, store_path: Path) -> None:
        self.store_path = Path(store_path)
        self.path = self._where()
        self.seen: dict[str, str] = {}
        self.lines = 0
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    name, _, state = line.rstrip("\n").partition("\t")
                    if state:
                        self.seen[name] = state
                        self.lines += 1
        except OSError:
            pass

    def _where(self) -> Optional[Path]:
        key = hashlib.sha256(str(self.store_path.resolve()).encode()).hexdigest()[:20]
        return cache_dir() / "verified" / f"{key}.log"

    def passed(self, name: str, st: os.stat_result) -> bool:
        return self.seen.get(name) == file_state(st)

    def remember(self, paths: Iterable[Path]) -> None:
        """Record the current state of ``paths`` as checked (best effort: a store nobody may write is checked again
        next time)."""
        lines = []
        for p in paths:
            try:
                state = file_state(p.stat())
            except OSError:
                continue
            if self.seen.get(p.name) != state:
                self.seen[p.name] = state
                lines.append(f"{p.name}\t{state}\n")
        if not lines or self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:  # O_APPEND: concurrent writers' lines never mix
                fh.write("".join(lines))
            self.lines += len(lines)
            if self.lines > 4 * len(self.seen) + 1024:
                self._rewrite()
        except OSError as exc:
            log.debug("checks of %s not remembered (%s): they are made again on the next read", self.store_path, exc)
            self.path = None

    def _rewrite(self) -> None:
        from ...files import write_atomic

        names = {p.name for p in (self.store_path / "shards").iterdir()} if (self.store_path / "shards").is_dir() \
            else set()
        keep = {n: s for n, s in self.seen.items() if n in names}
        write_atomic(self.path, "".join(f"{n}\t{s}\n" for n, s in keep.items()).encode())
        self.seen, self.lines = keep, len(keep)


def _check_file(path: Path, entry: dict, verified: Optional[Verified], full: bool) -> Optional[str]:
    """None when ``path`` holds what ``entry`` recorded, else what is wrong with it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if "bytes" in entry and st.st_size != entry["bytes"]:
        return f"is truncated or overwritten ({st.st_size:,} bytes, {entry['bytes']:,} written)"
    if not full and verified is not None and verified.passed(path.name, st):
        return None
    try:
        if "xxh3" in entry:
            ok = xxh3(path) == entry["xxh3"]
        elif "sha256" in entry:
            ok = sha256(path) == entry["sha256"]
        else:
            ok = True  # a file written before checksums were recorded: its size is all there is to check
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not ok:
        return "fails its checksum (its bytes changed after it was written)"
    if verified is not None:
        verified.remember([path])
    return None


def segment_files(seg: dict) -> list[tuple[str, dict]]:
    """(kind, entry) of every file a published segment reads: its shard files and its dead-inputs file."""
    out = [(kind, f) for kind, f in seg.get("files", {}).items()]
    if seg.get("dead"):
        out.append(("dead", seg.get("dead_file") or {"name": seg["dead"]}))
    return out


def find_damage(shard_dir: Path, segments: list[dict], verified: Optional[Verified],
                full: bool = False) -> list[Damage]:
    """Every damaged file of ``segments`` (``full``: checksums read even where a state was checked before)."""
    found = []
    for seg in segments:
        for kind, entry in segment_files(seg):
            what = _check_file(shard_dir / entry["name"], entry, verified, full)
            if what is not None:
                found.append(Damage(int(seg["shard"]), kind, entry["name"], what))
    return found
