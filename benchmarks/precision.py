"""Lower precision against fp32 on real images: speed, per-image fidelity, neighbours and a linear probe.

For each precision (fp32, bf16, int8 by default) this runs ``imgfeat extract`` end-to-end (its fidelity check
accepted whatever the figures, ``--min-fidelity 0``, so that every figure is measured) on

- a corpus of real, odd images (``--corpus``: a folder or TSV; Pillow's own test images are a good one: flat,
  tiny, palette, 16-bit, CMYK; ``pip download --no-binary :all: --no-deps pillow`` then ``Tests/images``):
  images/s, cosine to the fp32 vector of the same image (min / 1st percentile / median, how many below 0.99),
  and the overlap of each image's 10 nearest neighbours in the whole corpus;
- Fashion-MNIST (Debian's dataset-fashion-mnist): the first ``--train`` training and ``--test`` test images,
  L2-normalised features, logistic regression with C chosen on the fp32 features by 3-fold cross-validation and
  kept for every precision: top-1 on the test images, and the kNN@10 overlap of the test images.

    python benchmarks/precision.py --model efficientnet_lite0 --corpus /tmp/pillow/pillow-13.0.0/Tests/images
    python benchmarks/precision.py --model resnet50 --random-weights --corpus ...   # speed only: no real weights

Each run is what a user gets with the default ``--min-fidelity 0.99``: the check may keep the first layers in
fp32 (the backend column says how many); a precision the check refuses is run again with ``--min-fidelity 0``
to measure it anyway ("refused, forced"). Prints one Markdown table per model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import imgfeat
from imgfeat.engines.fidelity import FidelityError
from imgfeat.tools.knn import KNNIndex
from imgfeat.tools.probe import LinearProbe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from fashion_mnist import SRC as FMNIST, read_idx  # noqa: E402 - the example's IDX reader


def fashion_mnist(work: Path, n_train: int, n_test: int) -> tuple[Path, dict[str, int]]:
    """PNG files of the first images of each split (written once) and their labels by id."""
    folder, labels = work / "fmnist", {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        x = read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")[:n]
        y = read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")[:n]
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i, (a, label) in enumerate(zip(x, y)):
            path = folder / split / f"{i:05d}.png"
            if not path.exists():
                Image.fromarray(a, "L").save(path)
            labels[f"{split}/{i:05d}.png"] = int(label)
    return folder, labels


def knn_overlap(A: np.ndarray, B: np.ndarray, k: int = 10) -> float:
    """Mean share of each image's k nearest neighbours (cosine; imgfeat's own exact kNN graph) that B keeps."""
    a = KNNIndex(metric="cosine").fit(A).graph(A, k)[1]
    b = KNNIndex(metric="cosine").fit(B).graph(B, k)[1]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())]))


def run(data: str, model: str, precision: str, random_weights: bool, l2: bool) -> tuple[dict, float, dict]:
    """Extract as a user would (default --min-fidelity 0.99: the fidelity check may keep the first layers in
    fp32); when the check refuses the precision, extract again with --min-fidelity 0 (no fp32 layers) so that
    its figures are still measured, and say so."""
    refused = None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        try:
            res = imgfeat.extract(data, Path(tmp) / "f.npy", model=model, precision=precision,
                                  random_weights=random_weights, l2=l2, quiet=True)
        except FidelityError as exc:
            refused = str(exc)
            print(f"refused: {refused}", file=sys.stderr)
            res = imgfeat.extract(data, Path(tmp) / "f.npy", model=model, precision=precision, min_fidelity=0,
                                  random_weights=random_weights, l2=l2, quiet=True)
        seconds = time.perf_counter() - t0  # with the fidelity check, quantisation and export (cached after)
        ids, X = imgfeat.load(Path(tmp) / "f.npy")
        vectors = dict(zip(ids, np.asarray(X, dtype=np.float64)))
    return vectors, res.images_per_s, {**res.backend_report.get("fidelity", {}), "backend": res.backend,
                                        "seconds_with_setup": seconds, "refused": refused}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--precisions", default="fp32,bf16,int8")
    ap.add_argument("--corpus", help="folder or TSV of odd real images (Pillow's Tests/images)")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--workdir", default="/tmp/imgfeat-precision")
    args = ap.parse_args()
    precisions = args.precisions.split(",")
    work = Path(args.workdir)
    rows = {p: {} for p in precisions}

    if args.corpus:
        ref = None
        for p in precisions:
            print(f"corpus: {p} ...", file=sys.stderr, flush=True)
            vec, rate, fid = run(args.corpus, args.model, p, args.random_weights, False)
            if ref is None:
                ref = vec
            ids = [i for i in ref if i in vec]
            R, L = np.stack([ref[i] for i in ids]), np.stack([vec[i] for i in ids])
            cos = (R * L).sum(1) / np.maximum(np.linalg.norm(R, axis=1) * np.linalg.norm(L, axis=1), 1e-30)
            rows[p].update(corpus_n=len(ids), corpus_rate=rate, backend=fid["backend"], head=fid.get("fp32_head"),
                           refused=fid["refused"] is not None,
                           cos_min=cos.min(), cos_p1=np.percentile(cos, 1), cos_med=np.median(cos),
                           below=int((cos < 0.99).sum()), corpus_knn=knn_overlap(R, L))

    if FMNIST.is_dir():
        folder, labels = fashion_mnist(work, args.train, args.test)
        ref, C = None, None
        for p in precisions:
            print(f"fashion-mnist: {p} ...", file=sys.stderr, flush=True)
            vec, rate, fid = run(str(folder), args.model, p, args.random_weights, True)
            train = [i for i in vec if i.startswith("train/")]
            test = [i for i in vec if i.startswith("test/")]
            Xtr, Xte = np.stack([vec[i] for i in train]), np.stack([vec[i] for i in test])
            ytr, yte = [labels[i] for i in train], [labels[i] for i in test]
            probe = LinearProbe(C=C).fit(Xtr, ytr)
            C = probe.C_
            if ref is None:
                ref = Xte
            rows[p].update(fm_rate=rate, probe=probe.report(Xte, yte)["top1"], C=C, fm_knn=knn_overlap(ref, Xte),
                           fm_gate=fid.get("cosine_p1"), fm_backend=fid["backend"], fm_head=fid.get("fp32_head"),
                           fm_refused=fid["refused"] is not None)
    else:
        print(f"no {FMNIST} (apt-get install dataset-fashion-mnist): probe columns skipped", file=sys.stderr)

    base = rows[precisions[0]]
    print(f"\nmodel {args.model}{' (random weights)' if args.random_weights else ''}, "
          f"corpus {args.corpus}, Fashion-MNIST {args.train} train / {args.test} test\n")
    print("| precision | backend | corpus images/s | x fp32 | cosine min | p1 | median | < 0.99 | kNN@10 corpus | "
          "F-MNIST images/s | x fp32 | probe top-1 | kNN@10 F-MNIST |")
    print("|" + "---|" * 13)
    for p in precisions:
        r = rows[p]
        def how(head, refused):
            return " refused, forced" if refused else (f" (first {head:.0%} fp32)" if head else "")

        head = how(r.get("head"), r.get("refused")) + (
            f" / F-MNIST:{how(r.get('fm_head'), r.get('fm_refused')) or ' whole'}" if "fm_rate" in r and p != "fp32"
            else "")

        def f(key, fmt):
            return format(r[key], fmt) if key in r else ""

        ratio = f"{r['corpus_rate'] / base['corpus_rate']:.2f}" if "corpus_rate" in r else ""
        fm_ratio = f"{r['fm_rate'] / base['fm_rate']:.2f}" if "fm_rate" in r else ""
        print(f"| {p} | {r.get('backend', r.get('fm_backend', ''))}{head} | {f('corpus_rate', '.1f')} | {ratio} | "
              f"{f('cos_min', '.4f')} | {f('cos_p1', '.4f')} | {f('cos_med', '.5f')} | {f('below', 'd')} | "
              f"{f('corpus_knn', '.3f')} | {f('fm_rate', '.1f')} | {fm_ratio} | {f('probe', '.4f')} | "
              f"{f('fm_knn', '.3f')} |")


if __name__ == "__main__":
    main()
