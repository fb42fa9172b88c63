"""Every command with default flags inside a container's memory limit (issue 49): a cgroup v1 memory cgroup of
``--limit`` (default 1.5 GiB) made under ``/sys/fs/cgroup/memory`` (root), each command run in it, wall time, peak
RssAnon over the process tree, and whether the kernel killed it; optionally the same commands of a previous release
(``--baseline REF``: its ``src/`` from ``git archive``, first on ``PYTHONPATH``) in the same run. The collection is
``benchmarks/scale.py``'s (image-like clusters, ``--intrinsic 32``), made once in ``--workdir``.

    python benchmarks/container.py --rows 3000000 --commands search knn dedup diffuse --baseline 6f63bd4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale import make, tree_anon_mb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CGROUPS = Path("/sys/fs/cgroup/memory")


def commands(folder: Path) -> dict:
    f = str(folder / "f.npy")
    return {
        "search": ["search", "--features", f, "--query", "img000000005", "--k", "10"],
        "knn": ["knn", "--features", f, "--k", "10", "--raw", str(folder / "graph"), "--json"],
        "dedup": ["dedup", "--features", f, "--threshold", "0.99", "--out", str(folder / "dups.tsv"), "--json"],
        "diffuse": ["diffuse", "--features", f, "--labels", str(folder / "train.tsv"), "--test-labels",
                    str(folder / "test.tsv"), "--json"],
        "audit": ["audit", "--features", f, "--labels", str(folder / "train.tsv"), "--out", str(folder / "report")],
    }


def drop_page_cache() -> None:
    """Start each command with the store out of the page cache: pages cached before (by the run that wrote the
    collection, or the command before) are charged to the cgroup that first read them, so a command would read a
    3 GB store from memory that its own 1.5 GiB limit never sees."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def in_cgroup(argv: list[str], env: dict, limit: int, name: str) -> tuple[float, float, int, str]:
    """(wall s, peak RssAnon MB, major page faults, outcome) of ``argv`` run in a fresh memory cgroup of ``limit``
    bytes. The page faults tell a store read in storage order (few) from one read at random through a page cache
    smaller than it (many: each a read from the disk)."""
    group = CGROUPS / name
    drop_page_cache()
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        script = f'echo $$ > {group}/cgroup.procs && exec "$@"'
        proc = subprocess.Popen(["sh", "-c", script, "sh", *argv], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        t0, peak = time.perf_counter(), 0.0
        while proc.poll() is None:
            peak = max(peak, tree_anon_mb(proc.pid))
            time.sleep(0.1)
        _, err = proc.communicate()
        wall = time.perf_counter() - t0
        oom = (group / "memory.oom_control").read_text() if (group / "memory.oom_control").exists() else ""
        stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines() if len(line.split()) == 2)
        faults = int(stat.get("total_pgmajfault", 0))
        killed = proc.returncode in (-9, 137) or "oom_kill 1" in oom
        outcome = "killed (out of memory)" if killed else "ok" if proc.returncode == 0 else \
            f"exit {proc.returncode}: {err.strip().splitlines()[-1][:120] if err.strip() else ''}"
        return wall, peak, faults, outcome
    finally:
        for _ in range(600):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--limit", default="1.5GiB", help="the cgroup's memory limit")
    ap.add_argument("--commands", nargs="+", default=["search", "knn", "dedup", "diffuse", "audit"])
    ap.add_argument("--baseline", default=None, help="a git ref whose commands run too, in the same cgroup")
    ap.add_argument("--workdir", default="/tmp/imgfeat-container", help="where the collection is made (kept)")
    args = ap.parse_args()
    from imgfeat.tools.memory import parse_size

    limit = parse_size(args.limit)
    folder = Path(args.workdir) / f"rows-{args.rows}"
    if not (folder / "f.npy").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        make(args.rows, folder, 32)
    sides = {"now": {**os.environ, "PYTHONPATH": str(ROOT / "src")}}
    if args.baseline:
        base = Path(args.workdir) / f"src-{args.baseline}"
        if not base.is_dir():
            base.mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        sides[args.baseline] = {**os.environ, "PYTHONPATH": str(base / "src")}
    table = commands(folder)
    print(f"{args.rows:,} x 256 float32 ({args.rows * 1024 / 1e9:.1f} GB) in a {args.limit} memory cgroup, default "
          "flags\n")
    print("| command | code | wall | peak RssAnon | major page faults | outcome |\n|---|---|---|---|---|---|")
    for name in args.commands:
        for side, env in sides.items():
            wall, peak, faults, outcome = in_cgroup([sys.executable, "-m", "imgfeat", *table[name]], env, limit,
                                                    f"imgfeat-bench-{os.getpid()}-{name}")
            print(f"| `{name}` | {side} | {wall:.0f} s | {peak:,.0f} MB | {faults:,} | {outcome} |", flush=True)


if __name__ == "__main__":
    main()
