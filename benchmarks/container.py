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
from scale import PLANTED, make, planted_sources, tree_anon_mb  # noqa: E402

import json  # noqa: E402

import numpy as np  # noqa: E402

FLIPPED = 0.01  # audit: the share of rows whose label (its cluster's class) is changed to another class

ROOT = Path(__file__).resolve().parents[1]
CGROUPS = Path("/sys/fs/cgroup/memory")


def commands(folder: Path) -> dict:
    f = str(folder / "f.npy")
    return {
        "search": ["search", "--features", f, "--query", "img000000005", "--k", "10"],
        "knn": ["knn", "--features", f, "--k", "10", "--raw", str(folder / "graph"), "--json"],
        "dedup": ["dedup", "--features", f, "--out", str(folder / "dups.tsv"), "--json"],
        "diffuse": ["diffuse", "--features", f, "--labels", str(folder / "train.tsv"), "--test-labels",
                    str(folder / "test.tsv"), "--json"],
        "audit": ["audit", "--features", f, "--labels", str(folder / "all.tsv"), "--out", str(folder / "report"),
                  "--json"],
    }


def all_labels(folder: Path, rows: int) -> None:
    """``all.tsv``: every row labelled with its cluster's class (as ``scale.make`` labels train and test), a
    ``FLIPPED`` share changed to another class; the flipped ids in ``flipped.txt``."""
    if (folder / "all.tsv").is_file():
        return
    from scale import CLASSES, CLUSTERS

    rng = np.random.default_rng(0)
    rng.standard_normal((CLUSTERS, 256))  # scale.make's draws, in its order: the same clusters
    label = rng.integers(0, CLUSTERS, rows) % CLASSES
    flipped = np.random.default_rng(5).choice(rows, int(rows * FLIPPED), replace=False)
    given = label.copy()
    given[flipped] = (label[flipped] + 1 + np.random.default_rng(6).integers(0, CLASSES - 1, len(flipped))) % CLASSES
    with open(folder / "all.tsv", "w") as fh:
        for s in range(0, rows, 100_000):
            fh.write("".join(f"img{i:09d}\tc{c:03d}\n" for i, c in zip(range(s, s + 100_000), given[s:s + 100_000])))
    (folder / "flipped.txt").write_text("".join(f"img{i:09d}\n" for i in sorted(flipped)))


def quality(name: str, folder: Path, rows: int, out: str) -> str:
    """What each command's answer is worth, from its output: the graph's recall, diffusion's top-1, the planted
    near-copies grouped, the flipped labels found."""
    try:
        r = json.loads(out) if out.strip().startswith("{") else {}
        if name == "knn":
            return f"recall@10 {r.get('recall_at_k', 1.0):.3f} ({r.get('index')})"
        if name == "diffuse":
            return f"top-1 {r['accuracy']:.3f} (logistic regression {r['logreg_accuracy']:.3f})"
        if name == "dedup":
            group = dict(line.rstrip("\n").split("\t")[::-1] for line in open(folder / "dups.tsv"))
            pairs = zip(planted_sources(rows).tolist(), range(rows - PLANTED, rows))
            found = sum(group.get(f"img{a:09d}") is not None and group.get(f"img{a:09d}") == group.get(f"img{b:09d}")
                        for a, b in pairs)
            return f"{found}/{PLANTED} planted near-copies grouped"
        if name == "audit":
            flipped = set((folder / "flipped.txt").read_text().split())
            flagged = [line.split("\t")[0] for line in open(folder / "report" / "label.tsv") if line.split("\t")[2] == "1"]
            hit = len(flipped.intersection(flagged))
            return f"flips found {hit / len(flipped):.3f}, precision {hit / max(1, len(flagged)):.3f}"
        if name == "search":
            return f"{len(out.splitlines())} lines"
    except (OSError, KeyError, ValueError) as e:
        return f"not read: {e}"
    return ""


def drop_page_cache() -> None:
    """Start each command with the store out of the page cache: pages cached before (by the run that wrote the
    collection, or the command before) are charged to the cgroup that first read them, so a command would read a
    3 GB store from memory that its own 1.5 GiB limit never sees."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def in_cgroup(argv: list[str], env: dict, limit: int, name: str) -> tuple[float, float, int, str, str]:
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
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
        oom, stat = cgroup_state(group)
        faults = int(stat.get("total_pgmajfault", 0))
        killed = proc.returncode in (-9, 137) or "oom_kill 1" in oom
        outcome = "killed (out of memory)" if killed else "ok" if proc.returncode == 0 else \
            f"exit {proc.returncode}: {err.strip().splitlines()[-1][:120] if err.strip() else ''}"
        return wall, peak, faults, outcome, out
    finally:
        remove_cgroup(group)


def cgroup_state(group: Path) -> tuple[str, dict]:
    """The cgroup's ``memory.oom_control`` text and its ``memory.stat`` counters."""
    oom = (group / "memory.oom_control").read_text() if (group / "memory.oom_control").exists() else ""
    return oom, dict(line.split() for line in (group / "memory.stat").read_text().splitlines() if len(line.split()) == 2)


def remove_cgroup(group: Path) -> None:
    """Remove the cgroup once its processes are gone (bounded: a minute)."""
    for _ in range(600):
        try:
            group.rmdir()
            break
        except OSError:
            time.sleep(0.1)


def serve_in_cgroup(folder: Path, env: dict, limit: int, name: str, patience: float) -> tuple:
    """``imgfeat serve`` (default flags, a fresh cache) in a memory cgroup: the seconds until it answers, then a
    search, the map (its binary points) and the duplicates page, each asked until ready (bounded by ``patience``);
    (wall, peak RssAnon MB, major faults, outcome, quality)."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    group = CGROUPS / name
    drop_page_cache()
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(limit))
    cache = folder / "serve-cache"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    script = f'echo $$ > {group}/cgroup.procs && exec "$@"'
    argv = [sys.executable, "-m", "imgfeat", "serve", str(folder / "f.npy"), "--port", str(port)]
    proc = subprocess.Popen(["sh", "-c", script, "sh", *argv], env={**env, "IMGFEAT_CACHE": str(cache)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, t0, peak, marks = f"http://127.0.0.1:{port}", time.perf_counter(), 0.0, {}

    def ask(path: str):
        try:
            with urllib.request.urlopen(url + path, timeout=600) as r:
                return r.status, r.read()
        except OSError:
            return None, b""

    steps = [("start", "/api/info"), ("search", "/api/neighbours/img000000005?k=10"), ("map", "/api/map"),
             ("map points", "/api/map/xy.f32"), ("duplicates", "/api/duplicates?threshold=0.95"),
             ("groups", "/api/duplicates.tsv?threshold=0.95")]
    body, outcome = b"", "ok"
    try:
        for step, path in steps:
            while proc.poll() is None and time.perf_counter() - t0 < patience:
                peak = max(peak, tree_anon_mb(proc.pid))
                status, body = ask(path)
                if status == 200:
                    marks[step] = time.perf_counter() - t0
                    break
                time.sleep(1.0)
            if step not in marks:
                break
    finally:
        peak = max(peak, tree_anon_mb(proc.pid)) if proc.poll() is None else peak
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        oom, stat = cgroup_state(group)
        remove_cgroup(group)
    if "oom_kill 1" in oom or proc.returncode in (-9, 137):
        outcome = "killed (out of memory)"
    elif len(marks) < len(steps):
        outcome = f"not ready after {patience:.0f} s: {err.strip().splitlines()[-1][:100] if err.strip() else ''}"
    quality = ", ".join(f"{step} at {sec:.0f} s" for step, sec in marks.items())
    if "groups" in marks:
        group_of = dict(line.split("\t")[::-1] for line in body.decode().splitlines() if "\t" in line)
        rows = sum(1 for _ in open(folder / "f.ids.txt"))
        found = sum(group_of.get(f"img{a:09d}") is not None and group_of.get(f"img{a:09d}") == group_of.get(f"img{b:09d}")
                    for a, b in zip(planted_sources(rows).tolist(), range(rows - PLANTED, rows)))
        quality += f"; {found}/{PLANTED} planted near-copies grouped"
    return marks.get("groups", time.perf_counter() - t0), peak, int(stat.get("total_pgmajfault", 0)), outcome, quality


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--limit", default="1.5GiB", help="the cgroup's memory limit")
    ap.add_argument("--commands", nargs="+", default=["search", "knn", "dedup", "diffuse", "audit", "serve"])
    ap.add_argument("--serve-patience", type=float, default=3600.0, help="seconds serve's pages may take, in all")
    ap.add_argument("--baseline", default=None, help="a git ref whose commands run too, in the same cgroup")
    ap.add_argument("--workdir", default="/tmp/imgfeat-container", help="where the collection is made (kept)")
    args = ap.parse_args()
    from imgfeat.tools.memory import parse_size

    limit = parse_size(args.limit)
    folder = Path(args.workdir) / f"rows-{args.rows}"
    if not (folder / "f.npy").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        make(args.rows, folder, 32)
    all_labels(folder, args.rows)
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
    print("| command | code | wall | peak RssAnon | major page faults | outcome | quality |\n|---|---|---|---|---|---|---|")
    for name in args.commands:
        for side, env in sides.items():
            if name == "serve":
                wall, peak, faults, outcome, q = serve_in_cgroup(folder, env, limit, f"imgfeat-bench-{os.getpid()}-serve",
                                                                 args.serve_patience)
                print(f"| `serve` | {side} | {wall:.0f} s | {peak:,.0f} MiB | {faults:,} | {outcome} | {q} |", flush=True)
                continue
            wall, peak, faults, outcome, out = in_cgroup([sys.executable, "-m", "imgfeat", *table[name]], env, limit,
                                                         f"imgfeat-bench-{os.getpid()}-{name}")
            print(f"| `{name}` | {side} | {wall:.0f} s | {peak:,.0f} MiB | {faults:,} | {outcome} | "
                  f"{quality(name, folder, args.rows, out) if outcome == 'ok' else ''} |", flush=True)


if __name__ == "__main__":
    main()
