"""imgfeat audit against cleanlab's own default path (issue 22), on Fashion-MNIST features.

    apt-get install dataset-fashion-mnist
    python benchmarks/audit.py --workdir /tmp/fmnist-audit            # extracts the 70k images once (cached)

1. Features of the 60k training and 10k test images from the default model (a feature store, extracted once).
2. 5% of the training labels flipped at random (``--seed``): precision, recall and AUROC of the label-issue
   flags and scores against the flipped set, time and peak memory, for imgfeat's audit (faiss graph) and for
   cleanlab's default path on the same (L2-normalised) features (its scikit-learn kNN), at k = 10 and 30.
   Each run in a fresh process (peak RSS sampled).
3. Near-duplicate pairs across train and test, and the probe's test accuracy before and after dropping the
   flagged training images.
4. imgfeat's audit at ``--big`` generated vectors with an IVF index, and cleanlab's default path on growing
   subsets of them until one takes longer than ``--budget`` seconds.

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from fashion_mnist import CLASSES, SRC, read_idx  # noqa: E402 - the example's dataset path, classes and IDX reader


def features(work: Path) -> tuple[list, np.ndarray, np.ndarray, list]:
    """(ids, X, labels as ints, splits) of the 70k images, extracted once into work/features."""
    import imgfeat
    from imgfeat.api import store_info
    from PIL import Image

    store = work / "features"
    x = {"train": read_idx(SRC / "train-images-idx3-ubyte.gz"), "test": read_idx(SRC / "t10k-images-idx3-ubyte.gz")}
    y = {"train": read_idx(SRC / "train-labels-idx1-ubyte.gz"), "test": read_idx(SRC / "t10k-labels-idx1-ubyte.gz")}
    if not (store / "manifest.json").is_file() or store_info(store)["manifest"].get("live_rows") != 70_000:
        for split in x:
            (work / "images" / split).mkdir(parents=True, exist_ok=True)
            for i, a in enumerate(x[split]):
                p = work / "images" / split / f"{i:05d}.png"
                if not p.exists():
                    Image.fromarray(a, "L").save(p)
        imgfeat.extract(str(work / "images"), str(store), quiet=True)
    ids, X = imgfeat.load(store)
    truth = {f"{s}/{i:05d}.png": int(v) for s in y for i, v in enumerate(y[s])}
    return ids, np.asarray(X, np.float32), np.array([truth[i] for i in ids]), [i.split("/")[0] for i in ids]


RUN = textwrap.dedent("""
    import json, os, sys, threading, time
    import numpy as np
    X = np.load(sys.argv[1], mmap_mode="r"); y = np.load(sys.argv[2], allow_pickle=True); k = int(sys.argv[3])
    which = sys.argv[4]
    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    X = np.ascontiguousarray(X); base, peak, on = rss(), [0], [True]
    def sample():
        while on[0]:
            peak[0] = max(peak[0], rss()); time.sleep(0.01)
    t = threading.Thread(target=sample, daemon=True); t.start(); t0 = time.perf_counter()
    if which == "imgfeat":
        from imgfeat.tools.audit import DatasetAudit
        index = sys.argv[5] if len(sys.argv) > 6 else "auto"  # the last argument is the output file
        nprobe = int(sys.argv[6]) if len(sys.argv) > 7 else 16
        a = DatasetAudit(k=k, index=index, issues=("label",), nprobe=nprobe).fit(X, list(y))
        score, flag = a.issues_["label"]["score"], a.issues_["label"]["flag"]
        extra = {"index": a.summary_["index"], "recall": a.summary_.get("graph_recall", {}).get("recall_at_k")}
    else:
        extra = {}
        from cleanlab import Datalab
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        lab = Datalab(data={"label": list(y)}, label_name="label", verbosity=0)
        lab.find_issues(features=Xn, issue_types={"label": {"k": k}})
        issues = lab.get_issues("label")
        score, flag = issues["label_score"].to_numpy(), issues["is_label_issue"].to_numpy()
    seconds = time.perf_counter() - t0; on[0] = False; t.join()
    np.save(sys.argv[-1], np.stack([score, flag.astype(float)]))
    print(json.dumps({"seconds": seconds, "peak_mb": (max(peak[0], rss()) - base) / 2**20, **extra}))
""")


def run(which: str, X_path: Path, y_path: Path, k: int, out: Path, *extra: str, timeout=None) -> dict:
    res = subprocess.run([sys.executable, "-c", RUN, str(X_path), str(y_path), str(k), which, *extra, str(out)],
                         capture_output=True, text=True, timeout=timeout)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def scores(out: Path, flipped: np.ndarray) -> tuple[float, float, float]:
    from sklearn.metrics import roc_auc_score

    score, flag = np.load(out)
    flag = flag.astype(bool)
    truth = np.zeros(len(score), bool)
    truth[flipped] = True
    precision = (flag & truth).sum() / max(flag.sum(), 1)
    recall = (flag & truth).sum() / truth.sum()
    return float(precision), float(recall), float(roc_auc_score(truth, -score))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/fmnist-audit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--big", type=int, default=1_000_000, help="vectors of the scale run (0: skip it)")
    ap.add_argument("--budget", type=float, default=600.0)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ids, X, y, splits = features(work)
    train = np.array([s == "train" for s in splits])
    Xtr, ytr = X[train], y[train]
    rng = np.random.default_rng(args.seed)
    flipped = np.sort(rng.choice(len(ytr), len(ytr) // 20, replace=False))
    noisy = ytr.copy()
    noisy[flipped] = (noisy[flipped] + rng.integers(1, 10, len(flipped))) % 10
    np.save(work / "Xtr.npy", Xtr)
    np.save(work / "ytr.npy", np.array([CLASSES[v] for v in noisy], dtype=object))
    print(f"Fashion-MNIST train: {len(ytr):,} images, {len(flipped):,} labels flipped (5%, seed {args.seed})\n")
    print("| k | method | precision | recall | AUROC | time | speed-up over cleanlab | peak memory |\n"
          "|---|---|---|---|---|---|---|---|")
    flags, base = {}, {}
    for k in (10, 30):
        for which, index in (("cleanlab", ""), ("imgfeat", "exact"), ("imgfeat", "auto")):
            out = work / f"{which}-{index}-{k}.npy"
            m = run(which, work / "Xtr.npy", work / "ytr.npy", k, out, *([index, "16"] if index else []))
            p, r, auc = scores(out, flipped)
            if which == "cleanlab":
                label, base[k] = "cleanlab default (scikit-learn kNN on the features)", m["seconds"]
            else:
                label = f"imgfeat audit (--index {index}: {m['index']} graph" + (
                    f", sampled recall@{k} {m['recall']:.4f})" if m.get("recall") is not None else ")")
            print(f"| {k} | {label} | {p:.4f} | {r:.4f} | {auc:.4f} | {m['seconds']:.1f} s | "
                  f"{base[k] / m['seconds']:.1f}x | {m['peak_mb']:,.0f} MB |")
            flags[(which, index, k)] = np.load(out)[1].astype(bool)

    # leaks and the probe without the flagged images
    from imgfeat.tools.audit import DatasetAudit
    from imgfeat.tools.probe import LinearProbe

    audit = DatasetAudit(k=10, issues=("leak",)).fit(X, None, splits)
    closest = audit.leaks_[:3]
    print(f"\ntrain/test near-duplicate pairs (cosine >= {audit.summary_['leak']['threshold']:.4f}): "
          f"{audit.summary_['leak']['pairs']:,}; closest: " + ", ".join(f"{ids[a]} ~ {ids[b]} ({c:.4f})"
                                                                          for a, b, c in closest))
    test = ~train
    keep = ~flags[("imgfeat", "auto", 10)]
    before = LinearProbe(classifier="logreg", C=1.0).fit(Xtr, noisy).report(X[test], y[test])["top1"]
    after = LinearProbe(classifier="logreg", C=1.0).fit(Xtr[keep], noisy[keep]).report(X[test], y[test])["top1"]
    print(f"\nprobe (logistic regression, C=1) test top-1 trained on the noisy labels: {before:.4f}; without the "
          f"{int((~keep).sum()):,} flagged images: {after:.4f}\n")

    if not args.big:
        return
    # scale: generated clustered vectors
    gen = np.random.default_rng(1)
    centres = gen.standard_normal((100, 64)).astype(np.float32) * 3
    lab = gen.integers(0, 100, args.big)
    big = (centres[lab] + gen.standard_normal((args.big, 64)).astype(np.float32))
    np.save(work / "Xbig.npy", big)
    del big
    np.save(work / "ybig.npy", np.array([f"c{v}" for v in lab], dtype=object))
    print("| vectors | method | time | peak memory |\n|---|---|---|---|")
    m = run("imgfeat", work / "Xbig.npy", work / "ybig.npy", 10, work / "big-imgfeat.npy", "IVF1024,Flat")
    print(f"| {args.big:,} | imgfeat audit (IVF1024,Flat) | {m['seconds']:.0f} s | {m['peak_mb']:,.0f} MB |")
    n = 62_500
    while n <= args.big:
        Xs, ys = np.load(work / "Xbig.npy", mmap_mode="r")[:n], np.load(work / "ybig.npy", allow_pickle=True)[:n]
        np.save(work / "Xs.npy", Xs)
        np.save(work / "ys.npy", ys)
        try:
            m = run("cleanlab", work / "Xs.npy", work / "ys.npy", 10, work / "s.npy", timeout=args.budget)
        except subprocess.TimeoutExpired:
            print(f"| {n:,} | cleanlab default (sklearn kNN) | > {args.budget:.0f} s (stopped) | |")
            break
        print(f"| {n:,} | cleanlab default (sklearn kNN) | {m['seconds']:.0f} s | {m['peak_mb']:,.0f} MB |")
        if m["seconds"] > args.budget / 4:
            print(f"| {args.big:,} | cleanlab default, extrapolated (kNN cost grows as n^2) | "
                  f"~{m['seconds'] * (args.big / n) ** 2:,.0f} s | |")
            break
        n *= 2


if __name__ == "__main__":
    main()
