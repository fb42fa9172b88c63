"""The science after extraction at scale (issue 31): each command with its default flags on synthetic clustered
collections, in a fresh process: wall time, peak anonymous memory (RssAnon summed over the process tree, sampled
every 50 ms: the pages of memory-mapped files are left out, as they are reclaimable) and quality.

    python benchmarks/scale.py --rows 100000 1000000
    python benchmarks/scale.py --rows 1000000 --commands knn dedup     # the other commands, same collection
    python benchmarks/scale.py --rows --ids 10000000     # serve's id lookup alone: a dict against IdIndex
    python benchmarks/scale.py --rows 10000000 --intrinsic 32     # image-like vectors: noise in 32 dimensions

The collection: unit vectors (256-d) around 1,000 cluster centres (noise 0.35 per dimension relative to the centre's
norm), the class of a vector its cluster modulo 100 (100 classes); features written as .npy + ids by the project's
own writer (``outputs.formats.write_blocks``), read memory-mapped. ``diffuse``: 5 labels per class (the low-shot
setting), scored on 10,000 other vectors; quality is the diffusion's top-1 and that of the logistic regression on
the same labels. ``knn --approx auto``: its reported recall@30 (sampled rows against exact neighbours). ``dedup``:
the last ``PLANTED`` vectors are near-copies (cosine ~0.99) of random others, and quality is how many of those pairs
land in one group. Prints a Markdown table and each command's slope against the smaller size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM, CLUSTERS, CLASSES = 256, 1000, 100
PLANTED = 1000  # dedup: near-copies of random earlier vectors, the collection's last rows


def make(rows: int, folder: Path, intrinsic: int = 0) -> None:
    from imgfeat.outputs.formats import write_blocks

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    cluster = rng.integers(0, CLUSTERS, rows)
    # --intrinsic R: the same noise energy in a random R-dimensional subspace, plus a tenth of it everywhere (the low
    # intrinsic dimension of image features, as benchmarks/serve.py --intrinsic makes them)
    basis = (np.random.default_rng(2).standard_normal((intrinsic, DIM)).astype(np.float32) / np.sqrt(intrinsic)
             if intrinsic else None)
    first = np.zeros((min(rows - PLANTED, 50_000), DIM), np.float32)  # the planted copies' originals: among the first rows

    def blocks():
        for s in range(0, rows, 100_000):
            c = cluster[s:s + 100_000]
            if basis is None:
                X = centres[c] + 0.35 * rng.standard_normal((len(c), DIM)).astype(np.float32)
            else:
                X = centres[c] + 0.35 * (rng.standard_normal((len(c), intrinsic)).astype(np.float32) @ basis
                                         + 0.1 * rng.standard_normal((len(c), DIM)).astype(np.float32))
            X /= np.linalg.norm(X, axis=1, keepdims=True)
            if s == 0:
                first[:] = X[:len(first)]
            copies = np.arange(s, s + len(c)) >= rows - PLANTED  # near-copies of the first rows
            if copies.any():
                src = planted_sources(rows)[np.arange(s, s + len(c))[copies] - (rows - PLANTED)]
                X[copies] = first[src] + 0.006 * rng.standard_normal((int(copies.sum()), DIM)).astype(np.float32)
                X[copies] /= np.linalg.norm(X[copies], axis=1, keepdims=True)
            ids = [f"img{i:09d}" for i in range(s, s + len(c))]
            yield ids, ids, X

    write_blocks(str(folder / "f.npy"), DIM, "float32", blocks())
    label = cluster % CLASSES
    train = np.concatenate([rng.choice(np.flatnonzero(label == c), 5, replace=False) for c in range(CLASSES)])
    rest = np.setdiff1d(np.arange(rows), train)
    test = rng.choice(rest, min(10_000, len(rest)), replace=False)
    for name, rows_ in (("train", train), ("test", test)):
        (folder / f"{name}.tsv").write_text("".join(f"img{i:09d}\tc{label[i]:03d}\n" for i in sorted(rows_)))


def planted_sources(rows: int) -> np.ndarray:
    """The rows the last ``PLANTED`` rows copy, among the first 50,000."""
    return np.random.default_rng(1).choice(min(rows - PLANTED, 50_000), PLANTED, replace=False)


def tree_anon_mb(pid: int) -> float:
    """RssAnon of ``pid`` and its descendants, in MiB (the kernel counts kB: 1,024 bytes)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1]) / 1024
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except OSError:
            pass
    return total


def measured(argv: list[str]) -> tuple[float, float, str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0, peak = time.perf_counter(), 0.0
    while proc.poll() is None:
        peak = max(peak, tree_anon_mb(proc.pid))
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err[-2000:]}")
    return time.perf_counter() - t0, peak, out


def self_anon_mb() -> float:
    return tree_anon_mb(os.getpid())


def id_lookup(n: int) -> None:
    """serve's id -> row: the dict it held before issue 31 against ``IdIndex``, built over the same n ids (the ids
    themselves are held either way): memory each adds, build time, and 100,000 lookups."""
    import gc

    from imgfeat.outputs.idindex import IdIndex

    ids = [f"photos/{i // 1000:05d}/{i:09d}.jpg" for i in range(n)]
    probe = [ids[i] for i in np.random.default_rng(0).integers(0, n, 100_000)]
    print(f"| id lookup over {n:,} ids | build | memory added | 100,000 lookups |\n|---|---|---|---|")
    for name, make_index in (("dict (before)", lambda ids: {rid: i for i, rid in enumerate(ids)}), ("IdIndex", IdIndex)):
        gc.collect()
        before, t0 = self_anon_mb(), time.perf_counter()
        index = make_index(ids)
        build, added = time.perf_counter() - t0, self_anon_mb() - before
        t0 = time.perf_counter()
        assert all(index.get(rid) is not None for rid in probe)
        print(f"| {name} | {build:.1f} s | {added:,.0f} MB | {time.perf_counter() - t0:.2f} s |", flush=True)
        del index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=["diffuse"])
    ap.add_argument("--ids", type=int, default=0, help="measure serve's id lookup over this many ids")
    ap.add_argument("--intrinsic", type=int, default=0,
                    help="noise in a random subspace of this many dimensions (image-like vectors), not isotropic")
    args = ap.parse_args()
    if args.ids:
        id_lookup(args.ids)
    if not args.rows:
        return
    print("| command (default flags) | rows | wall | peak RssAnon | quality |\n|---|---|---|---|---|")
    prev: dict = {}
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="imgfeat-scale-") as tmp:
            folder = Path(tmp)
            make(rows, folder, args.intrinsic)
            for command in args.commands:
                wall, peak, quality = COMMANDS[command](folder, rows)
                print(f"| `{command}` | {rows:,} | {wall:.0f} s | {peak:,.0f} MB | {quality} |", flush=True)
                if command in prev:
                    rows0, wall0, peak0 = prev[command]
                    slope = np.log(wall / wall0) / np.log(rows / rows0)
                    print(f"| `{command}` slope {rows0:,} -> {rows:,} | | n^{slope:.2f} | x{peak / peak0:.2f} | "
                          f"100M projected: {wall * (1e8 / rows) ** slope / 3600:.1f} h |", flush=True)
                prev[command] = (rows, wall, peak)


def run_diffuse(folder: Path, rows: int) -> tuple[float, float, str]:
    wall, peak, out = measured([sys.executable, "-m", "imgfeat", "diffuse", "--features", str(folder / "f.npy"),
                                "--labels", str(folder / "train.tsv"), "--test-labels", str(folder / "test.tsv"),
                                "--out", str(folder / "pred.tsv"), "--json"])
    r = json.loads(out)
    recall = r.get("graph_recall")
    return wall, peak, (f"top-1 {r['accuracy']:.3f} (logistic regression {r['logreg_accuracy']:.3f}); index "
                        f"{r['index']}" + (f", graph recall@{r['k']} {recall['recall_at_k']:.3f}" if recall else "")
                        + f"; {r['memory']['blocks']} block(s) of {r['memory']['columns']} classes; "
                        + ", ".join(f"{part} {sec:.0f} s" for part, sec in r["seconds"].items()))


def run_knn(folder: Path, rows: int) -> tuple[float, float, str]:
    wall, peak, out = measured([sys.executable, "-m", "imgfeat", "knn", "--features", str(folder / "f.npy"), "--k",
                                "30", "--approx", "auto", "--raw", str(folder / "graph"), "--json"])
    r = json.loads(out)
    return wall, peak, f"index {r['index']}, recall@30 {r.get('recall_at_k', 1.0):.3f}"


def run_dedup(folder: Path, rows: int) -> tuple[float, float, str]:
    wall, peak, out = measured([sys.executable, "-m", "imgfeat", "dedup", "--features", str(folder / "f.npy"),
                                "--out", str(folder / "groups.tsv"), "--json"])
    r = json.loads(out)
    group = {}
    for line in open(folder / "groups.tsv"):
        g, i = line.rstrip("\n").split("\t")
        group[i] = g
    pairs = zip(planted_sources(rows).tolist(), range(rows - PLANTED, rows))
    found = sum(group.get(f"img{a:09d}") is not None and group.get(f"img{a:09d}") == group.get(f"img{b:09d}")
                for a, b in pairs)
    return wall, peak, f"{found}/{PLANTED} planted near-copies grouped; {r['groups']:,} groups; index {r['index']}"


COMMANDS = {"diffuse": run_diffuse, "knn": run_knn, "dedup": run_dedup}


if __name__ == "__main__":
    main()
