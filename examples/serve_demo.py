"""A collection to look at with ``imgfeat serve``: the 10,000 Fashion-MNIST test images, their features
(EfficientNet-Lite0, a feature store), their labels and a t-SNE map. Needs Debian's dataset-fashion-mnist
(apt-get install dataset-fashion-mnist) and imgfeat[serve].

    python examples/serve_demo.py --workdir /tmp/fmnist-serve
    imgfeat serve /tmp/fmnist-serve/features --labels /tmp/fmnist-serve/labels.tsv --map /tmp/fmnist-serve/map.coords.tsv
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from fashion_mnist import CLASSES, SRC, read_idx  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/fmnist-serve")
    ap.add_argument("--n", type=int, default=10_000, help="test images to use (of 10,000)")
    args = ap.parse_args()
    work = Path(args.workdir)
    x = read_idx(SRC / "t10k-images-idx3-ubyte.gz")[: args.n]
    y = read_idx(SRC / "t10k-labels-idx1-ubyte.gz")[: args.n]
    (work / "images").mkdir(parents=True, exist_ok=True)
    lines, labels = [], []
    for i, (a, c) in enumerate(zip(x, y)):
        path = work / "images" / f"{i:05d}.png"
        if not path.exists():
            Image.fromarray(a, "L").save(path)
        lines.append(f"{i:05d}\t{path}\n")
        labels.append(f"{i:05d}\t{CLASSES[c]}\n")
    (work / "list.tsv").write_text("".join(lines))
    (work / "labels.tsv").write_text("".join(labels))
    for cmd in (["extract", "--data", str(work / "list.tsv"), "--out", str(work / "features")],
                ["map", "--features", str(work / "features"), "--labels", str(work / "labels.tsv"),
                 "--out", str(work / "map.png"), "--coords", str(work / "map.coords.tsv")]):
        print("$ imgfeat " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "imgfeat", *cmd], check=True)
    print(f"imgfeat serve {work / 'features'} --labels {work / 'labels.tsv'} --map {work / 'map.coords.tsv'}")


if __name__ == "__main__":
    main()
