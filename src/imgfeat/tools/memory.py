"""Memory budgets: what the machine has, a ``--max-memory`` size as users write it, and a refusal before the work
(with the figure it would need) instead of a MemoryError half-way."""

from __future__ import annotations

import os
import re
from typing import Optional

from ..errors import ImgfeatError, bad_param

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
          "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}


def available_bytes() -> int:
    """Memory a new allocation can have now: the machine's MemAvailable (Linux), else its physical memory, and at
    most what the process's memory cgroup leaves (a container's limit: Docker, Kubernetes and Slurm set one; the
    kernel kills a process that goes over it, whatever the machine has free), as the JVM and Go runtimes read it."""
    machine = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    machine = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if machine is None:
        try:
            machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            machine = 8 * 2**30
    left = cgroup_available()
    return machine if left is None else min(machine, left)


UNLIMITED = 2**60  # cgroup v1 writes "no limit" as about 2^63 rounded down to a page


def cgroup_available(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> Optional[int]:
    """What the memory cgroup of this process leaves for new anonymous memory: its limit (the tightest of its
    ancestors') less the anonymous memory charged to it (file pages, the store's memory-mapped vectors among
    them, are reclaimed under the limit and do not count). None where no limit is set, or cgroups cannot be read.
    cgroup v2 (``memory.max``, ``memory.stat`` anon) and v1 (``memory.stat`` hierarchical_memory_limit,
    total_rss)."""
    try:
        with open(proc_cgroup, encoding="utf-8") as fh:
            lines = [line.rstrip("\n").split(":", 2) for line in fh if line.count(":") >= 2]
    except OSError:
        return None
    v1 = next((path for _, controllers, path in lines if "memory" in controllers.split(",")), None)
    if v1 is not None:
        stat = _stat(os.path.join(root, "memory", v1.lstrip("/"), "memory.stat")) or \
            _stat(os.path.join(root, "memory", "memory.stat"))  # a cgroup namespace mounts its own at the root
        limit = stat.get("hierarchical_memory_limit") if stat else None
        if limit is None or limit >= UNLIMITED:
            return None
        return max(0, limit - stat.get("total_rss", stat.get("rss", 0)))
    v2 = next((path for hid, controllers, path in lines if hid == "0" and controllers == ""), None)
    if v2 is None:
        return None
    folder = os.path.join(root, v2.lstrip("/"))
    if not os.path.isdir(folder):
        folder = root
    limits, probe = [], folder
    while True:  # every ancestor's memory.max bounds this cgroup
        try:
            with open(os.path.join(probe, "memory.max"), encoding="ascii") as fh:
                value = fh.read().strip()
            if value != "max":
                limits.append(int(value))
        except (OSError, ValueError):
            pass
        if os.path.normpath(probe) == os.path.normpath(root) or probe in ("/", ""):
            break
        probe = os.path.dirname(probe)
    if not limits:
        return None
    stat = _stat(os.path.join(folder, "memory.stat")) or {}
    return max(0, min(limits) - stat.get("anon", 0))


def _stat(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="ascii") as fh:
            return {k: int(v) for k, v in (line.split() for line in fh if len(line.split()) == 2)}
    except (OSError, ValueError):
        return None


def parse_size(text: Optional[str], name: str = "max_memory") -> Optional[int]:
    """``"1.5GB"``, ``"800M"``, ``"2GiB"`` or a number of bytes; None stays None (the machine's)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not m or float(m.group(1)) <= 0:
        raise bad_param(name, "a size such as 800MB, 1.5GB or 2GiB", text)
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def budget(max_memory: Optional[str], cap: Optional[int] = None) -> int:
    """The bytes a command may hold: ``--max-memory``, else what the machine has available now (at most ``cap``:
    what the command's work gains nothing beyond)."""
    given = parse_size(max_memory)
    if given is not None:
        return given
    return min(available_bytes(), cap) if cap else available_bytes()


def refuse_unless(need: int, have: int, what: str, hint: str) -> None:
    """Refuse, before any work, a job whose smallest form needs more than ``have`` bytes."""
    if need > have:
        raise ImgfeatError(f"{what} needs at least {human(need)} of memory; the budget is {human(have)} "
                           f"(--max-memory, else what this machine has available). {hint}")


def release_freed_heap() -> None:
    """Hand the heap pages freed since back to the system (glibc's ``malloc_trim``; nothing elsewhere). glibc keeps
    freed small blocks for reuse: after an index built or updated in memory is dropped for its memory-mapped file
    (serve at 10M: the 8,192 IVF lists of 64-byte codes, each under malloc's mmap threshold) the process would hold
    its 0.7 GB until exit."""
    import ctypes
    import sys

    try:
        ctypes.CDLL(None).malloc_trim(0)  # the C library the process already has loaded
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows): nothing to hand back
        pass
    pa = sys.modules.get("pyarrow")  # Arrow's own allocator keeps what it freed too (ids and paths read as columns)
    if pa is not None:
        pa.default_memory_pool().release_unused()
