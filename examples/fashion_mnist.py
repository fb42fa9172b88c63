"""Fashion-MNIST demonstration: features from the bundled EfficientNet-Lite0, then a linear probe
against a raw-pixel baseline, a t-SNE map, and low-shot label diffusion against logistic regression.

Needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) and imgfeat[science].

    python examples/fashion_mnist.py --workdir /tmp/fmnist

Every step is an imgfeat command (printed before it runs); results are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SRC = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def imgfeat(*args: str) -> dict:
    cmd = [sys.executable, "-m", "imgfeat.cli", *args]
    print("$ imgfeat " + " ".join(shlex.quote(a) for a in args), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out) if "--json" in args else {}


def write_labels(path: Path, ids, labels) -> Path:
    path.write_text("".join(f"{i}\t{CLASSES[int(label)]}\n" for i, label in zip(ids, labels)))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/fmnist")
    ap.add_argument("--train", type=int, default=10_000, help="training images (the first N of the 60k)")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    work = Path(args.workdir)
    imgs = work / "images"
    splits = {"train": (read_idx(SRC / "train-images-idx3-ubyte.gz")[: args.train],
                        read_idx(SRC / "train-labels-idx1-ubyte.gz")[: args.train]),
              "test": (read_idx(SRC / "t10k-images-idx3-ubyte.gz"), read_idx(SRC / "t10k-labels-idx1-ubyte.gz"))}
    ids = {}
    for split, (x, y) in splits.items():
        (imgs / split).mkdir(parents=True, exist_ok=True)
        ids[split] = [f"{split}/{i:05d}.png" for i in range(len(x))]
        for rid, a in zip(ids[split], x):
            if not (imgs / rid).exists():
                Image.fromarray(a, "L").save(imgs / rid)
        write_labels(work / f"{split}_labels.tsv", ids[split], y)

    # Raw-pixel baseline features (784-d, scaled to [0, 1]) in the same format.
    from imgfeat.outputs.formats import open_sink

    raw = work / "raw_pixels.npy"
    sink = open_sink(raw)
    sink.open(784, np.dtype(np.float32))
    for split, (x, _) in splits.items():
        sink.write(ids[split], ids[split], x.reshape(len(x), -1).astype(np.float32) / 255.0)
    sink.close()

    feats = str(work / "features")
    imgfeat("extract", "--data", str(imgs), "--out", feats, "--model", "efficientnet_lite0")
    train, test = str(work / "train_labels.tsv"), str(work / "test_labels.tsv")
    rows = []
    for name, f in (("EfficientNet-Lite0 features (1280-d)", feats), ("raw pixels (784-d)", str(raw))):
        r = imgfeat("probe", "--features", f, "--labels", train, "--test-labels", test, "--classifier", "logreg",
                    "--out-dir", str(work / f"probe_{Path(f).stem}"), "--json")
        rows.append((f"logistic regression, {name}", r["train"], r["test"], r["top1"], r["C"]))
    r = imgfeat("probe", "--features", feats, "--labels", train, "--test-labels", test, "--classifier", "svm",
                "--out-dir", str(work / "probe_svm"), "--json")
    rows.append(("linear SVM, EfficientNet-Lite0 features (1280-d)", r["train"], r["test"], r["top1"], r["C"]))
    m = imgfeat("map", "--features", feats, "--labels", test, "--only-labelled", "--out", str(work / "tsne_test.png"),
                "--json")

    train_y = splits["train"][1]
    low = []
    for shots in (1, 2, 5):
        accs = []
        for seed in range(1, args.seeds + 1):
            rng = np.random.default_rng(seed)
            pick = np.concatenate([rng.choice(np.flatnonzero(train_y == c), shots, replace=False) for c in range(10)])
            few = write_labels(work / f"few_{shots}_{seed}.tsv", [ids["train"][i] for i in pick], train_y[pick])
            r = imgfeat("diffuse", "--features", feats, "--labels", str(few), "--test-labels", test, "--k", "30",
                        "--json")
            accs.append((r["accuracy"], r["logreg_accuracy"]))
        a = np.array(accs)
        low.append((shots, a[:, 0].mean(), a[:, 0].std(), a[:, 1].mean(), a[:, 1].std()))

    print("| probe | train | test | top-1 | C |\n|---|---|---|---|---|")
    for name, ntr, nte, acc, C in rows:
        print(f"| {name} | {ntr} | {nte} | {acc:.4f} | {C} |")
    print(f"\nt-SNE map of the {m['n']} test images: {m['png']}\n")
    print(f"| labels per class | diffusion (k=30, {10_000 + args.train} images in the graph) | logistic regression |")
    print("|---|---|---|")
    for shots, dm, ds, lm, ls in low:
        print(f"| {shots} | {dm:.4f} +- {ds:.4f} | {lm:.4f} +- {ls:.4f} |")


if __name__ == "__main__":
    main()
