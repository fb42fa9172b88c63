"""How long the command line takes to answer (issue 24): whole processes, median of ``--runs`` after a warm-up.

    python benchmarks/cli_latency.py --runs 5

Each command runs in a fresh process with its own cache folder (``IMGFEAT_CACHE``), after one untimed run that
exports the model (and records it for the quick path). Baselines measured in the same run: ``python -c "import
torch"`` and, for the small job, the same command on the full path (``IMGFEAT_QUICK=0``: torch, the network built,
then the same cached ONNX export). Prints a Markdown table; the "modules" column says whether torch was imported
(``-X importtime``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMGFEAT = [sys.executable, "-m", "imgfeat"]


def timed(argv: list[str], env: dict, runs: int) -> tuple[float, bool]:
    """(median wall seconds over ``runs``, whether torch was imported) of ``argv`` in fresh processes."""
    subprocess.run(argv, env=env, check=True, capture_output=True)  # warm-up: page cache, exports, records
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
    trace = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], env=env, check=True, capture_output=True,
                           text=True).stderr
    torch_imported = any(line.split("|")[-1].strip() == "torch" for line in trace.splitlines())
    return statistics.median(walls), torch_imported


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgfeat-latency-"))
    env = {**os.environ, "IMGFEAT_CACHE": str(work / "cache")}
    data = str(ROOT / "examples" / "images.tsv")
    store = str(work / "store")
    subprocess.run(IMGFEAT + ["extract", "--data", data, "--out", store, "--quiet"], env=env, check=True,
                   capture_output=True)
    query = str(next(p for p in sorted((ROOT / "examples" / "images").iterdir()) if p.suffix == ".jpg"))
    # text queries: a CLIP store (ViT-B-32; no hub weights offline: a seeded random checkpoint given as --weights)
    clip, ckpt = str(work / "clip-store"), str(work / "vit-b-32.pt")
    subprocess.run([sys.executable, "-c", "import open_clip, torch; torch.manual_seed(0); torch.save(open_clip."
                    f"create_model('ViT-B-32', pretrained=None).state_dict(), {ckpt!r})"], check=True,
                   capture_output=True)
    subprocess.run(IMGFEAT + ["extract", "--data", data, "--out", clip, "--model", "clip:ViT-B-32/none",
                              "--weights", ckpt, "--quiet"], env=env, check=True, capture_output=True)
    text = ["search", "--features", clip, "--text", "a cat", "--k", "3", "--weights", ckpt]
    classify = ["classify", "--features", clip, "--classes", "cat,dog,coffee", "--weights", ckpt]
    rows = [
        ("`python -c \"import torch\"` (baseline)", [sys.executable, "-c", "import torch"], env),
        ("`imgfeat --help`", IMGFEAT + ["--help"], env),
        ("`imgfeat extract --help`", IMGFEAT + ["extract", "--help"], env),
        ("`imgfeat models`", IMGFEAT + ["models"], env),
        ("`imgfeat info STORE`", IMGFEAT + ["info", store], env),
        ("`imgfeat search --features STORE --query ID`", IMGFEAT + ["search", "--features", store, "--query",
                                                                    "chelsea", "--k", "3"], env),
        ("`imgfeat extract` of 6 photos to .npy, full path (`IMGFEAT_QUICK=0`, baseline)",
         IMGFEAT + ["extract", "--data", data, "--out", str(work / "f.npy"), "--quiet"], {**env, "IMGFEAT_QUICK": "0"}),
        ("`imgfeat extract` of 6 photos to .npy, quick path",
         IMGFEAT + ["extract", "--data", data, "--out", str(work / "q.npy"), "--quiet"], env),
        ("`imgfeat extract` into a store that holds every input (nothing to do)",
         IMGFEAT + ["extract", "--data", data, "--out", store, "--quiet"], env),
        ("`imgfeat search --features STORE --query IMAGE`, full path (`IMGFEAT_QUICK=0`: the store's model in torch)",
         IMGFEAT + ["search", "--features", store, "--query", query, "--k", "3"], {**env, "IMGFEAT_QUICK": "0"}),
        ("`imgfeat search --features STORE --query IMAGE`, quick path (the store's recorded export)",
         IMGFEAT + ["search", "--features", store, "--query", query, "--k", "3"], env),
        ("`imgfeat search --features CLIP_STORE --text \"a cat\"`, full path (`IMGFEAT_QUICK=0`: ViT-B-32 in torch)",
         IMGFEAT + text, {**env, "IMGFEAT_QUICK": "0"}),
        ("`imgfeat search --features CLIP_STORE --text \"a cat\"`, quick path (the text tower's recorded export)",
         IMGFEAT + text, env),
        ("`imgfeat classify --features CLIP_STORE --classes cat,dog,coffee`, full path (`IMGFEAT_QUICK=0`)",
         IMGFEAT + classify, {**env, "IMGFEAT_QUICK": "0"}),
        ("`imgfeat classify --features CLIP_STORE --classes cat,dog,coffee`, quick path",
         IMGFEAT + classify, env),
    ]
    print(f"{args.runs} runs each after a warm-up, median wall time of the whole process\n")
    print("| command | wall | imports torch | ratio to `import torch` |\n|---|---|---|---|")
    base = None
    for label, argv, e in rows:
        wall, heavy = timed(argv, e, args.runs)
        base = base or wall
        print(f"| {label} | {wall:.2f} s | {'yes' if heavy else 'no'} | {wall / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
