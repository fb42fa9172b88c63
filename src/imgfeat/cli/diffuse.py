"""``imgfeat diffuse``: label diffusion for low-shot learning, scored against a logistic-regression baseline. Parsing
and printing only: the work is in ``imgfeat.tools``."""

from __future__ import annotations

import numpy as np

from ..errors import ImgfeatError, bad_param
from ..outputs.formats import read_features
from ..tools.diffusion import ITERATION_GRID
from ..tools.labels import align, apply_corrections, labels_for, read_labels, without_error_rows
from .common import at_least, corrections_arg, emit, features_arg, index_metavar, label_spec, labels_args, positive


VALIDATION_FRACTION = 0.2


def _read_classes(path: str) -> set[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            classes = {line.strip() for line in fh if line.strip()}
    except OSError as exc:
        raise ImgfeatError(f"--novel-classes {path}: {exc.strerror or exc}") from None
    if not classes:
        raise ImgfeatError(f"--novel-classes {path} names no class (one class per line)")
    return classes


def _iterations(args) -> int:
    try:
        iterations = max(ITERATION_GRID) if args.iterations == "auto" else int(args.iterations)
    except ValueError:
        raise bad_param("iterations", "an integer >= 1 or 'auto'", args.iterations) from None
    if iterations < 1:
        raise bad_param("iterations", "an integer >= 1 or 'auto'", args.iterations)
    return iterations


def _with_background(args, ids: list, X: np.ndarray) -> tuple[list, np.ndarray]:
    """The graph's vectors: the features, then ``--background``'s (ids no label can name)."""
    if not args.background:
        return ids, X
    bids, bX = read_features(args.background)
    if bX.shape[1] != X.shape[1]:
        raise bad_param("background", f"features of dimension {X.shape[1]}", f"dimension {bX.shape[1]}")
    return ids + [f"\0bg{i}" for i in range(len(bids))], np.concatenate([X, bX])


def _diffuse(args) -> int:
    from ..tools.diffusion import LabelDiffusion, TunedLabelDiffusion, lowshot_split, scored_against_logreg, \
        validation_split

    auto = args.iterations == "auto"
    iterations = _iterations(args)
    if args.shots is not None and not args.novel_classes:
        raise ImgfeatError("--shots is the number of labels per novel class: give --novel-classes FILE with it")
    if not args.test_labels and not args.out and not args.json:
        raise ImgfeatError("imgfeat diffuse needs --test-labels (to score it), --out (the predicted labels), or "
                           "--json; otherwise the result is computed and thrown away")
    ids, X = read_features(args.features)
    given, _ = without_error_rows(labels_for(label_spec(args), ids, args.features), ids, args.features)
    given = apply_corrections(given, args.corrections)
    labels = given
    novel: set[str] = set()
    validation: dict[str, str] = {}
    if args.novel_classes:
        novel = _read_classes(args.novel_classes)
        labels, validation = lowshot_split(labels, novel, args.shots or 1, args.seed)
    elif auto:
        labels, validation = validation_split(labels, VALIDATION_FRACTION, args.seed)
    Xl, yl, _ = align(ids, X, labels)
    if len(set(yl.tolist())) < 2:
        raise ImgfeatError(f"{label_spec(args)} holds a single class; diffusion needs at least 2")
    all_ids, all_X = _with_background(args, ids, X)
    if args.k >= len(all_ids):
        raise bad_param("k", f"an integer below the number of vectors ({len(all_ids)}): each needs k others", args.k)
    row = {i: r for r, i in enumerate(ids)}
    test = read_labels(args.test_labels) if args.test_labels else {}
    if test:
        Xt, yt, tids = align(ids, X, test, "test labels")
    y = [labels.get(i) for i in all_ids]
    result = {"n": len(all_ids), "labelled": int(len(yl)), "k": args.k, "iterations": iterations}
    if auto:
        # the held-out labels choose the iterations; outside the low-shot protocol every given label is then used
        refit = None if novel else [given.get(i) for i in all_ids]
        model = TunedLabelDiffusion(k=args.k, index=args.index).fit(
            all_X, y, {row[i]: c for i, c in validation.items() if i in row}, refit_y=refit)
        iterations = model.iterations_
        result.update(iterations=iterations, validation={str(t): v for t, v in model.validation_scores_.items()},
                      validation_images=model.n_validation_)
        if model.validation_warning_:
            result["validation_note"] = model.validation_warning_
        if refit is not None:
            Xl, yl, _ = align(ids, X, given)
            result.update(labelled=int(len(yl)), refit_on_all_labels=True)
    else:
        model = LabelDiffusion(k=args.k, iterations=iterations, index=args.index).fit(all_X, y)
    if novel:
        result.update(novel_classes=sorted(novel), shots=args.shots or 1, seed=args.seed)
    lines = [f"diffused {len(yl)} labels over a {args.k}-NN graph of {len(all_ids)} vectors, {iterations} iterations"
             + (f" (chosen on {model.n_validation_} held-out labelled images: top-{model.top_k_} "
                f"{model.validation_scores_[iterations]:.4f}"
                + (", then run with all labels" if not novel else "") + ")" if auto else "")]
    if auto and model.validation_warning_:
        lines.append("note: " + model.validation_warning_)
    if test:
        diff, lr = scored_against_logreg(model.label_distributions_[[row[i] for i in tids]], model.classes_, yt, Xl,
                                         yl, Xt, frozenset(novel), args.C)
        result.update(test=int(len(yt)), accuracy=diff["top1_all"], logreg_accuracy=lr["top1_all"],
                      diffusion=diff, logreg=lr)
        for name, sc in (("diffusion", diff), ("logistic regression", lr)):
            lines.append(f"{name:20s} on {len(yt)} test images: " + ", ".join(
                f"{key.replace('_', ' ')} {value:.4f}" for key, value in sc.items()))
    if args.out:
        pred = dict(zip(all_ids, model.transduction_))
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.writelines(f"{i}\t{pred[i]}\n" for i in ids)
        result["out"] = args.out
    return emit(args, result, lines)


def add_parser(sub) -> None:
    diffuse = sub.add_parser("diffuse", help="label propagation for low-shot learning")
    features_arg(diffuse)
    labels_args(diffuse, "TSV id<TAB>label of the few labelled images", required=True)
    diffuse.add_argument("--test-labels", help="TSV id<TAB>label to score the unlabelled part")
    corrections_arg(diffuse)
    diffuse.add_argument("--background", help="more unlabelled features added to the graph")
    diffuse.add_argument("--novel-classes", help="low-shot protocol: a file of class names (one per line) that get "
                                                 "only --shots labels each, drawn with --seed; the other classes "
                                                 "keep all their labels; scores are reported for all, base and novel")
    diffuse.add_argument("--shots", type=at_least(1), default=None,
                         help="labels per novel class (with --novel-classes; default: 1)")
    diffuse.add_argument("--seed", type=int, default=0, help="draw of the novel labels / of the validation split")
    diffuse.add_argument("--k", type=at_least(1), default=30, help="neighbours per vector in the graph")
    diffuse.add_argument("--iterations", default="20",
                         help=f"diffusion iterations, or 'auto': the best of {list(ITERATION_GRID)} by top-5 "
                              "(top-1 with <= 5 classes) on labelled training images held out of the sources (the "
                              f"undrawn novel images, or {VALIDATION_FRACTION * 100:.0f}%% of each class)")
    diffuse.add_argument("--index", default="exact", metavar=index_metavar(),
                         help="faiss index of the kNN graph (as imgfeat knn --approx), e.g. IVF4096,PQ32 "
                              "for a large --background set")
    diffuse.add_argument("--C", type=positive, default=1.0, help="C of the logistic-regression baseline")
    diffuse.add_argument("--out", help="TSV id<TAB>predicted label")
    diffuse.set_defaults(func=_diffuse, output_files=("out",), param_flags={"path": "--features"})
