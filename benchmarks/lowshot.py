"""The low-shot protocol of large-scale diffusion (Douze et al., CVPR 2018) on Fashion-MNIST.

Base classes keep all their training labels, novel classes get ``n`` labels each (n = 1, 2, 5; seeds 1-5);
the graph holds the first ``--train`` training images and the 10,000 test images; ``imgfeat diffuse
--iterations auto`` chooses the number of iterations on the novel training images that were not drawn.
Reported: top-1 and top-5 on the test images (all, base, novel classes), diffusion and the logistic-regression
baseline on the same labels, mean +- std over the seeds.

    python benchmarks/lowshot.py --workdir /tmp/imgfeat-lowshot

Needs Debian's dataset-fashion-mnist. Every diffusion is an ``imgfeat diffuse`` command (printed before it runs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from precision import fashion_mnist  # benchmarks/precision.py: PNG files written once

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NOVEL = CLASSES[5:]


def imgfeat(*args: str) -> dict:
    print("$ imgfeat " + " ".join(shlex.quote(a) for a in args), file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, "-m", "imgfeat.cli", *args], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    return json.loads(out) if "--json" in args else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/imgfeat-lowshot")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--k", type=int, default=30)
    args = ap.parse_args()
    work = Path(args.workdir)
    folder, labels = fashion_mnist(work, args.train, 10_000)
    for split in ("train", "test"):
        (work / f"{split}.tsv").write_text("".join(f"{i}\t{CLASSES[c]}\n" for i, c in labels.items()
                                                   if i.startswith(split + "/")))
    (work / "novel.txt").write_text("".join(c + "\n" for c in NOVEL))
    feats = work / "features"
    imgfeat("extract", "--data", str(folder), "--out", str(feats), "--model", args.model, "--quiet")
    table = []
    for shots in (1, 2, 5):
        runs = [imgfeat("diffuse", "--features", str(feats), "--labels", str(work / "train.tsv"), "--test-labels",
                        str(work / "test.tsv"), "--novel-classes", str(work / "novel.txt"), "--shots", str(shots),
                        "--seed", str(seed), "--k", str(args.k), "--iterations", "auto", "--json")
                for seed in range(1, args.seeds + 1)]
        table.append((shots, runs))

    keys = [f"top{k}_{g}" for g in ("novel", "base", "all") for k in (1, 5)]
    print(f"\n{args.model} features, graph of {args.train} train + 10000 test images, k={args.k}; base: "
          f"{', '.join(CLASSES[:5])}; novel: {', '.join(NOVEL)}; mean +- std over seeds 1-{args.seeds}\n")
    print("| novel labels per class | method | iterations (chosen) | " + " | ".join(k.replace("_", " ") for k in keys)
          + " |")
    print("|" + "---|" * (3 + len(keys)))
    for shots, runs in table:
        its = sorted({r["iterations"] for r in runs})
        for method in ("diffusion", "logreg"):
            cells = []
            for key in keys:
                v = np.array([r[method][key] for r in runs])
                cells.append(f"{v.mean():.4f} +- {v.std():.4f}")
            name = "diffusion" if method == "diffusion" else "logistic regression"
            print(f"| {shots} | {name} | {','.join(map(str, its)) if method == 'diffusion' else ''} | "
                  + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
