"""Peak memory of imgfeat extract against the input's length (issue: lazy inputs, bounded memory).

    python benchmarks/memory.py            # 10k vs 1M-line TSV, --stop 200 (squeezenet1_1)
    python benchmarks/memory.py --full     # also a complete 1M-row run into a feature store

Every run is a fresh subprocess; the figure is the peak RSS of the largest process in it
(main process or decode worker), from getrusage(RUSAGE_CHILDREN) in a wrapper process.
The full run uses a tiny registered CNN (32x32 input) so that 1M rows take minutes, not hours;
rows cycle over 1,000 small generated PNGs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

WRAP = r"""
import resource, subprocess, sys, time, json
t = time.time()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(json.dumps({"rc": rc.returncode, "seconds": time.time() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "summary": rc.stderr.strip().splitlines()[-1] if rc.stderr.strip() else ""}))
"""

TINY = r"""
import sys, torch
from torch import nn
import imgfeat
from imgfeat.models.registry import ModelSpec, register_model
from imgfeat.models.preprocess import Preprocess
from imgfeat.models.weights import UrlWeights

def build():
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 64, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())

register_model(ModelSpec(name="tiny_cnn", family="torchvision", build=build,
                         preprocess=Preprocess(crop_size=(32, 32), resize_size=32), default_layer="5", dim=64,
                         weights=UrlWeights("http://127.0.0.1:9/none.pth")))
res = imgfeat.extract(sys.argv[1], sys.argv[2], model="tiny_cnn", random_weights=True, batch_size=256,
                      shard_size=50_000, quiet=True)
print(res.summary(), file=sys.stderr)
"""


def measure(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="also run all 1M rows with a tiny CNN")
    ap.add_argument("--workdir", default=tempfile.gettempdir() + "/imgfeat-memory")
    args = ap.parse_args()
    work = Path(args.workdir)
    (work / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(1000):
        p = work / "img" / f"{i:04d}.png"
        if not p.exists():
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(p)
    for n in (10_000, 1_000_000):
        tsv = work / f"list_{n}.tsv"
        if not tsv.exists():
            with open(tsv, "w") as fh:
                fh.writelines(f"id{i:07d}\timg/{i % 1000:04d}.png\n" for i in range(n))
    imgfeat = [sys.executable, "-m", "imgfeat.cli", "extract"]
    measure([*imgfeat, "--data", str(work / "list_10000.tsv"), "--out", str(work / "o.npy"),
             "--model", "squeezenet1_1", "--stop", "200"])  # warm-up: the one-off export and backend timing
    rows = []
    for n in (10_000, 1_000_000):
        r = measure([*imgfeat, "--data", str(work / f"list_{n}.tsv"), "--out", str(work / "o.npy"),
                     "--model", "squeezenet1_1", "--stop", "200"])
        rows.append((f"{n:,}-line TSV, --stop 200, squeezenet1_1", r))
    if args.full:
        store = work / "store_1m"
        subprocess.run(["rm", "-rf", str(store)], check=True)
        r = measure([sys.executable, "-c", TINY, str(work / "list_1000000.tsv"), str(store)])
        rows.append(("1,000,000-row TSV, full run, tiny CNN -> feature store", r))
    print("| run | peak RSS (MB) | wall (s) | imgfeat summary |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['peak_rss_mb']:.0f} | {r['seconds']:.1f} | {r['summary']} |")


if __name__ == "__main__":
    main()
