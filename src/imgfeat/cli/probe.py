"""``imgfeat probe`` (a linear classifier on features and labels) and ``imgfeat predict`` (labels from a saved one).
Parsing and printing only: the work is in ``imgfeat.tools``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from ..errors import ImgfeatError, bad_param
from ..tools.names import CLASSIFIERS
from .common import corrections_arg, emit, features_arg, fraction_open, label_spec, labels_args, positive


def _probe(args) -> int:
    import numpy as np

    from ..outputs.formats import read_features
    from ..tools.labels import align, apply_corrections, labels_for, read_labels, without_error_rows
    from ..tools.probe import LinearProbe, confusion_png

    ids, X = read_features(args.features)
    given, _ = without_error_rows(labels_for(label_spec(args), ids, args.features), ids, args.features)
    Xtr, ytr, _ = align(ids, X, apply_corrections(given, args.corrections))
    if args.test_labels:
        Xte, yte, _ = align(ids, X, read_labels(args.test_labels), "test labels")
    else:
        from sklearn.model_selection import train_test_split

        strat = ytr if min(np.unique(ytr, return_counts=True)[1]) >= 2 else None
        Xtr, Xte, ytr, yte = train_test_split(Xtr, ytr, test_size=args.test_size, random_state=args.seed,
                                              stratify=strat)
    probe = LinearProbe(classifier=args.classifier, C=args.C, seed=args.seed).fit(Xtr, ytr)
    report = probe.report(Xte, yte)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "probe.pkl", "wb") as fh:
        pickle.dump(probe, fh)
    confusion_png(report, str(out / "confusion.png"))
    result = {"train": int(len(ytr)), "test": report["n"], "top1": report["top1"], "top5": report.get("top5"),
              "C": report["C"], "classifier": args.classifier, "per_class": report["per_class"],
              "probe": str(out / "probe.pkl"), "confusion_png": str(out / "confusion.png")}
    (out / "report.json").write_text(json.dumps({**result, "confusion": report["confusion"],
                                                 "classes": report["classes"]}, indent=1))
    lines = [f"{args.classifier} (C={report['C']}) trained on {len(ytr)}, tested on {report['n']}: "
             f"top-1 {report['top1']:.4f}" + (f", top-5 {report['top5']:.4f}" if "top5" in report else ""),
             *[f"  {c}: {a:.4f}" for c, a in report["per_class"].items()],
             f"probe -> {out / 'probe.pkl'}, confusion matrix -> {out / 'confusion.png'}"]
    return emit(args, result, lines)


def _load_probe(path: str):
    """A probe ``imgfeat probe`` saved (``probe.pkl``), or one clear line saying what the file is instead."""
    from ..tools.probe import LinearProbe

    try:
        with open(path, "rb") as fh:
            probe = pickle.load(fh)  # a probe this tool saved; never load pickles from untrusted sources
    except OSError as exc:
        raise ImgfeatError(f"--probe {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure: not a probe file
        raise ImgfeatError(f"--probe {path} is not a probe saved by imgfeat probe (probe.pkl): cannot read it "
                           f"as one ({type(exc).__name__})") from None
    if not isinstance(probe, LinearProbe) or not hasattr(probe, "model_"):
        raise ImgfeatError(f"--probe {path} holds a {type(probe).__name__}, not a fitted probe saved by "
                           "imgfeat probe (probe.pkl in its --out-dir)")
    return probe


def _predict(args) -> int:
    from ..outputs.formats import iter_blocks

    probe = _load_probe(args.probe)
    n = 0
    with open(args.out, "w", encoding="utf-8") as out:
        for ids, block in iter_blocks(args.features):
            expected = probe.model_.coef_.shape[1]
            if block.shape[1] != expected:
                raise bad_param("features", f"features of dimension {expected} (the probe's)", block.shape[1])
            out.writelines(f"{i}\t{p}\n" for i, p in zip(ids, probe.predict(block)))
            n += len(ids)
    return emit(args, {"out": args.out, "n": n}, [f"{n} predictions -> {args.out}"])


def add_parser(sub) -> None:
    probe = sub.add_parser("probe", help="linear SVM / logistic regression on features + labels")
    features_arg(probe)
    labels_args(probe, "TSV id<TAB>label (the training labels)", required=True)
    probe.add_argument("--test-labels", help="TSV id<TAB>label of a given test set")
    corrections_arg(probe)
    probe.add_argument("--test-size", type=fraction_open, default=0.2, help="seeded split when no --test-labels")
    probe.add_argument("--classifier", choices=CLASSIFIERS, default="logreg",
                       help="logreg: logistic regression (probabilities, top-5); svm: a linear SVM")
    probe.add_argument("--C", type=positive, default=None, help="regularisation (default: cross-validated)")
    probe.add_argument("--seed", type=int, default=0, help="seed of the train/test split and the classifier")
    probe.add_argument("--out-dir", default="probe", help="probe.pkl, confusion.png and report.json go here")
    probe.set_defaults(func=_probe, output_dirs=("out_dir",), param_flags={"path": "--features"})
    predict = sub.add_parser("predict", help="label features with a saved probe")
    features_arg(predict)
    predict.add_argument("--probe", required=True, help="probe.pkl from imgfeat probe's --out-dir")
    predict.add_argument("--out", required=True, help="TSV id<TAB>predicted label")
    predict.set_defaults(func=_predict, output_files=("out",), param_flags={"path": "--features"})
