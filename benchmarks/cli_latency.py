"""How long the command line takes to answer (issues 24 and 48): whole processes, median of ``--runs`` after a
warm-up, this checkout against a previous release (``--baseline``, a git ref: its ``src/`` is taken with ``git
archive`` and put first on ``PYTHONPATH``), both measured in the same run on the same machine.

    python benchmarks/cli_latency.py --runs 5
    python benchmarks/cli_latency.py --runs 5 --baseline 6f63bd4

Each side has its own cache folder (``IMGFEAT_CACHE``); the warm-up run makes what a warm command finds there (the
model's export and its record, a text tower's export). The CLIP store is made with a weights file (ViT-B-32 with a
seeded random checkpoint: no hub weights offline), as issue 48's scripts do. ``search --text`` and ``classify`` are
measured warm (the same text again, as a user repeating or paging a query) and, for the text query, with a text never
asked before (a new query: the text tower runs). Prints a Markdown table; "torch" says whether this checkout's
command imported torch (``-X importtime``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# main as it landed before issue 48 (CI passed at stop 45): the previous release these figures are compared with
DEFAULT_BASELINE = "6f63bd4"
_fresh = itertools.count()


def timed(argv: list[str], env: dict, runs: int, fresh_text: bool = False) -> float:
    """Median wall seconds over ``runs`` of ``argv`` in fresh processes, after one untimed warm-up. ``fresh_text``:
    the last argument gets a number no run used before (a text query never asked)."""
    def args() -> list[str]:
        return argv[:-1] + [f"{argv[-1]} {next(_fresh)}"] if fresh_text else argv

    subprocess.run(args(), env=env, check=True, capture_output=True)  # warm-up: page cache, exports, records
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(args(), env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def imports_torch(argv: list[str], env: dict) -> bool:
    trace = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, check=True, capture_output=True,
                           text=True).stderr
    return any(line.split("|")[-1].strip() == "torch" for line in trace.splitlines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="the git ref of the release to compare with")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgfeat-latency-"))
    base_src = work / "baseline"
    base_src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
    py = sys.executable
    sides = {"now": {**os.environ, "IMGFEAT_CACHE": str(work / "cache-now"), "PYTHONPATH": str(ROOT / "src")},
             "baseline": {**os.environ, "IMGFEAT_CACHE": str(work / "cache-baseline"),
                          "PYTHONPATH": str(base_src / "src")}}
    imgfeat = [py, "-m", "imgfeat"]
    data = str(ROOT / "examples" / "images.tsv")
    store = str(work / "store")
    now = sides["now"]
    subprocess.run(imgfeat + ["extract", "--data", data, "--out", store, "--quiet"], env=now, check=True,
                   capture_output=True)
    clip, ckpt = str(work / "clip-store"), str(work / "vit-b-32.pt")
    subprocess.run([py, "-c", "import open_clip, torch; torch.manual_seed(0); torch.save(open_clip."
                    f"create_model('ViT-B-32', pretrained=None).state_dict(), {ckpt!r})"], check=True,
                   capture_output=True)
    subprocess.run(imgfeat + ["extract", "--data", data, "--out", clip, "--model", "clip:ViT-B-32/none", "--weights",
                              ckpt, "--quiet"], env=now, check=True, capture_output=True)
    text = ["search", "--features", clip, "--k", "3", "--weights", ckpt, "--text", "a cat"]
    classify = ["classify", "--features", clip, "--weights", ckpt, "--classes", "cat,dog,coffee"]
    tsv = str(work / "six.tsv")
    rows = [  # (label, argv after `python -m imgfeat`, goal in s, fresh text)
        ("`imgfeat --help`", ["--help"], 0.5, False),
        ("`imgfeat extract --help`", ["extract", "--help"], None, False),
        ("`imgfeat info STORE`", ["info", store], None, False),
        ("6 photos (500x375) to a TSV, warm", ["extract", "--data", data, "--out", tsv, "--quiet"], 1.5, False),
        ("`search --text` on a CLIP store, warm (the same text again)", text, 1.5, False),
        ("`search --text` on a CLIP store, a text never asked before", text, None, True),
        ("`classify` on a CLIP store, warm", classify, 1.5, False),
    ]
    print(f"{args.runs} runs each after a warm-up, median wall time of the whole process; baseline: {args.baseline}\n")
    print("| command | now | baseline | now / baseline | goal | imports torch (now) |\n|---|---|---|---|---|---|")
    for label, argv, goal, fresh in rows:
        walls = {}
        for side, env in sides.items():  # (the TSV is replaced by each run, as a user's rerun replaces it)
            walls[side] = timed(imgfeat + argv, env, args.runs, fresh)
        heavy = imports_torch(imgfeat + argv, now)
        print(f"| {label} | {walls['now']:.2f} s | {walls['baseline']:.2f} s | {walls['now'] / walls['baseline']:.2f} "
              f"| {f'< {goal} s' if goal else ''} | {'yes' if heavy else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
