"""CLI subcommands of the downstream tools: argument parsing and printing over ``imgfeat.tools``.
Each takes ``--features`` (any imgfeat output or store) and ``--json`` (print the result as one
JSON object on stdout)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ImgfeatError, bad_param
from ..outputs.formats import extensions, iter_blocks, open_matrix, read_features, read_paths
from ..tools.diffusion import ITERATION_GRID
from ..tools.knn import INDEXES, METRICS, RAW_SUFFIXES
from ..tools.labels import (align, apply_corrections, check_dim, labels_for, read_corrections, read_labels,
                            without_error_rows)
from ..tools.maps import METHODS
from ..tools.probe import CLASSIFIERS
from .common import (at_least, emit, ending, features_arg, fraction_open, label_spec, labels_args, positive,
                     store_encoder, weights_args)


_INDEX_METAVAR = "|".join(INDEXES) + "|FACTORY"


# ----------------------------------------------------------------------------- pca
def _pca_fit(args) -> int:
    from ..tools.pca import StreamingPCA

    pca = StreamingPCA(n_components=args.dim, whiten=args.whiten).fit(b for _, b in iter_blocks(args.features))
    pca.save(args.out)
    kept = float(pca.explained_variance_ratio_.sum())
    return emit(args, {"out": args.out, "n": pca.n_samples_seen_, "input_dim": int(pca.mean_.shape[0]),
                        "dim": args.dim, "explained_variance_ratio": kept},
                 [f"PCA {pca.mean_.shape[0]} -> {args.dim} on {pca.n_samples_seen_} vectors keeps "
                  f"{kept:.1%} of the variance -> {args.out}"])


def _pca_apply(args) -> int:
    from ..outputs.formats import write_blocks
    from ..tools.pca import StreamingPCA

    pca = StreamingPCA.load(args.pca)

    def reduced():
        for ids, block in iter_blocks(args.features):
            check_dim("features", pca.mean_.shape[0], block.shape[1], f"the PCA was fitted on {args.pca}")
            yield ids, [""] * len(ids), pca.transform(block)

    n = write_blocks(args.out, pca.components_.shape[0], np.float32, reduced())
    return emit(args, {"out": args.out, "n": n, "dim": int(pca.components_.shape[0])},
                 [f"{n} vectors reduced to {pca.components_.shape[0]}-d -> {args.out}"])


# ----------------------------------------------------------------------------- probe
def _probe(args) -> int:
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


# ----------------------------------------------------------------------------- map
def _map(args) -> int:
    from ..tools.maps import embed_2d, mosaic_png, scatter_png

    ids, X = read_features(args.features)
    paths = read_paths(args.features) if args.mosaic else None  # a file without paths: said before t-SNE runs
    labels = None
    if label_spec(args) is not None:
        lab, _ = without_error_rows(labels_for(label_spec(args), ids, args.features), ids, args.features)
        align(ids, X, lab)  # the same check as every tool: labelled ids must be in the features
        if args.only_labelled:
            keep = np.array([i in lab for i in ids])
            ids, X = [i for i in ids if i in lab], X[keep]
        labels = [lab.get(i) for i in ids]
    if args.limit and len(ids) > args.limit:
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(ids))[: args.limit])
        ids, X = [ids[i] for i in keep], X[keep]
        labels = [labels[i] for i in keep] if labels is not None else None
    coords = embed_2d(X, args.method, args.seed)
    scatter_png(coords, labels, args.out, title=f"{args.method} of {len(ids)} vectors")
    coords_path = args.coords or str(Path(args.out).with_suffix(".coords.tsv"))
    with open(coords_path, "w", encoding="utf-8") as fh:
        fh.writelines(f"{i}\t{x:.5f}\t{y:.5f}\n" for i, (x, y) in zip(ids, coords))
    result = {"png": args.out, "coords": coords_path, "n": len(ids), "method": args.method}
    if args.mosaic:
        result["mosaic"] = args.mosaic
        result["thumbnails"] = mosaic_png(coords, [paths.get(i, "") for i in ids], args.mosaic)
    return emit(args, result, [f"{args.method} map of {len(ids)} vectors -> {args.out} (coordinates {coords_path})"]
                 + ([f"mosaic of {result['thumbnails']} thumbnails -> {args.mosaic}"] if args.mosaic else []))


def _image_file(text: str) -> str:
    """argparse type: a file name whose extension matplotlib can write."""
    import argparse

    from matplotlib.backend_bases import FigureCanvasBase

    kinds = sorted(FigureCanvasBase.get_supported_filetypes())
    if Path(text).suffix.lower().lstrip(".") not in kinds:
        raise argparse.ArgumentTypeError(f"expected an image file name ending in one of {', '.join(kinds)}, "
                                         f"got {text!r}")
    return text


# ----------------------------------------------------------------------------- knn
def _knn(args) -> int:
    from ..tools.knn import KNNIndex, sampled_recall, save_graph

    if not args.out and not args.raw:
        raise ImgfeatError("imgfeat knn needs --out graph.npz, --raw PREFIX, or both")
    if args.nlist is not None and args.approx != "ivf":
        raise ImgfeatError("--nlist sets the cells of --approx ivf (a factory string names its own: IVF4096,...); "
                           f"it does nothing {'without --approx' if not args.approx else 'with --approx ' + args.approx}")

    ids, X = open_matrix(args.features)
    index = KNNIndex(metric=args.metric, index=args.approx or "exact", nlist=args.nlist, nprobe=args.nprobe)
    index.fit(X)
    approx_rows = save_graph(index, X, ids, args.k, npz=args.out, raw=args.raw)
    result = {"out": args.out, "n": len(ids), "k": args.k, "metric": args.metric, "index": args.approx or "exact"}
    if args.raw:
        result["raw"] = [f"{args.raw}{ext}" for ext in RAW_SUFFIXES]
    where = " and ".join(x for x in (args.out, args.raw and f"{args.raw}.{{int32,float32,ids.txt}}") if x)
    lines = [f"{args.k}-NN graph of {len(ids)} vectors ({result['index']}, {args.metric}) -> {where}"]
    if args.approx:
        result["recall_at_k"], n = sampled_recall(X, approx_rows, args.k, args.metric, args.recall_sample)
        lines.append(f"recall@{args.k} against exact on {n} queries: {result['recall_at_k']:.4f}")
    return emit(args, result, lines)


# ----------------------------------------------------------------------------- search
def _search(args) -> int:
    from ..tools.knn import KNNIndex

    if not args.query and not args.text:
        raise ImgfeatError("imgfeat search needs --query ID|IMAGE [...] and/or --text TEXT [...]")
    ids, X = open_matrix(args.features)
    index_of = {rid: i for i, rid in enumerate(ids)}
    queries = list(args.query or [])
    files = [q for q in queries if q not in index_of]
    vectors: dict = {}  # query -> its vector; results are printed in the order the queries were given
    for q in queries:
        if q in index_of:
            vectors[q] = np.asarray(X[index_of[q]], dtype=np.float32)
    if files or args.text:
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise ImgfeatError(f"queries are neither ids of {args.features} nor image files: {missing[:5]}")
        # one model for image and text queries; image queries alone may take the quick path (no torch)
        encoder = store_encoder(args, "query images and texts are embedded", text=bool(args.text))
        if files:
            vectors.update(zip(files, encoder.encode_files(files)))
        if args.text:
            vectors.update(zip(args.text, encoder.encode_text(args.text)))
    names = list(dict.fromkeys(queries + list(args.text or [])))
    Q = np.stack([np.asarray(vectors[q], np.float32) for q in names])
    # one rule with knn and serve's /api/neighbours: a query by id does not find itself
    D, I = KNNIndex(metric=args.metric).fit(X).search(Q, min(args.k + 1, len(ids)))
    own = [index_of.get(q, -1) if q in queries else -1 for q in names]
    hits = {q: [{"id": ids[j], "score": float(d)} for d, j in zip(Ds, Js) if j != self_row and j >= 0][:args.k]
            for q, Ds, Js, self_row in zip(names, D, I, own)}
    lines = [f"{q}\t{r + 1}\t{h['id']}\t{h['score']:.4f}" for q, hs in hits.items() for r, h in enumerate(hs)]
    return emit(args, {"queries": hits}, lines)


# ----------------------------------------------------------------------------- dedup
def _dedup(args) -> int:
    from ..tools.dedup import duplicate_groups

    ids, X = open_matrix(args.features)
    groups = duplicate_groups(X, ids, threshold=args.threshold, k=args.k, index=args.index)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.writelines(f"{g}\t{i}\n" for g, members in enumerate(groups) for i in members)
    result = {"groups": len(groups), "duplicates": sum(len(g) - 1 for g in groups), "n": len(ids),
              "threshold": args.threshold, "out": args.out, "largest": groups[:5]}
    lines = [f"{len(groups)} groups of near-duplicates among {len(ids)} vectors (each image's cosine to its group's "
             f"first image >= {args.threshold}); {result['duplicates']} could be dropped"
             + (f" -> {args.out}" if args.out else "")]
    lines += ["  " + ", ".join(g) for g in groups[:10]]
    return emit(args, result, lines)


# ----------------------------------------------------------------------------- diffuse
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


def _scores(hits: dict[str, np.ndarray], groups: dict[str, np.ndarray], ks: tuple[int, ...]) -> dict:
    return {f"top{k}_{g}": float(hits[k][mask].mean()) for k in ks for g, mask in groups.items() if mask.any()}


def _diffuse(args) -> int:
    from ..tools.diffusion import LabelDiffusion, TunedLabelDiffusion, lowshot_split, topk_hits, validation_split
    from ..tools.probe import LinearProbe

    auto = args.iterations == "auto"
    try:
        iterations = max(ITERATION_GRID) if auto else int(args.iterations)
    except ValueError:
        raise bad_param("iterations", "an integer >= 1 or 'auto'", args.iterations) from None
    if iterations < 1:
        raise bad_param("iterations", "an integer >= 1 or 'auto'", args.iterations)
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
    all_ids, all_X = ids, X
    if args.background:
        bids, bX = read_features(args.background)
        if bX.shape[1] != X.shape[1]:
            raise bad_param("background", f"features of dimension {X.shape[1]}", f"dimension {bX.shape[1]}")
        all_ids, all_X = ids + [f"\0bg{i}" for i in range(len(bids))], np.concatenate([X, bX])
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
    ks = (1, 5) if len(model.classes_) > 5 else (1,)
    lines = [f"diffused {len(yl)} labels over a {args.k}-NN graph of {len(all_ids)} vectors, {iterations} iterations"
             + (f" (chosen on {model.n_validation_} held-out labelled images: top-{model.top_k_} "
                f"{model.validation_scores_[iterations]:.4f}"
                + (", then run with all labels" if not novel else "") + ")" if auto else "")]
    if auto and model.validation_warning_:
        lines.append("note: " + model.validation_warning_)
    if test:
        F_test = model.label_distributions_[[row[i] for i in tids]]
        groups = {"all": np.ones(len(yt), bool)}
        if novel:
            groups.update(base=np.array([t not in novel for t in yt]), novel=np.array([t in novel for t in yt]))
        diff_hits = {k: topk_hits(F_test, model.classes_, yt, k) for k in ks}
        base = LinearProbe(classifier="logreg", C=args.C).fit(Xl, yl)
        lr_hits = {k: topk_hits(base.decision_function(Xt), base.classes_, yt, k) for k in ks}
        diff, lr = _scores(diff_hits, groups, ks), _scores(lr_hits, groups, ks)
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


# ----------------------------------------------------------------------------- audit
def _audit(args) -> int:
    from ..tools.audit import ISSUES, DatasetAudit, write_report

    ids, X = read_features(args.features)
    spec = label_spec(args)
    given = labels_for(spec, ids, args.features) if spec is not None else {}
    given, no_vector = without_error_rows(given, ids, args.features)
    decisions = read_corrections(args.corrections)
    dropped = {i for i, (d, _) in decisions.items() if d == "drop" and i in given}
    given = apply_corrections(given, args.corrections)
    split_of: dict[str, str] = {}
    if args.test_labels:
        test, test_no_vector = without_error_rows(read_labels(args.test_labels), ids, args.features, "test labels")
        no_vector += test_no_vector
        split_of = {**{i: "train" for i in given}, **{i: "test" for i in test}}
        given = {**given, **test}
    elif args.splits:
        split_of, _ = without_error_rows(read_labels(args.splits), ids, args.features, "splits")
    for what, table in (("labels", given), ("splits", split_of)):
        if table:
            align(ids, X, table, what)  # every labelled id must have a vector (error rows were left out above)
    issues = [i.strip() for i in args.issues.split(",") if i.strip()]
    left_out = left_dropped = 0
    if given and len(given) < len(ids):  # audit the labelled part, and say so
        keep = np.array([i in given or i in split_of for i in ids])
        left_dropped = sum(1 for i, k in zip(ids, keep) if not k and i in dropped)
        left_out = int((~keep).sum()) - left_dropped
        ids, X = [i for i, k in zip(ids, keep) if k], X[keep]
    labels = [given.get(i) for i in ids] if given else None
    splits = [split_of.get(i) for i in ids] if split_of else None
    audit = DatasetAudit(k=args.k, index=args.index, issues=issues, leak_threshold=args.leak_threshold,
                         nprobe=args.nprobe)
    audit.fit(X, labels, splits)
    kept = {i for i, (d, _) in decisions.items() if d == "keep"}
    audit.keep(np.array([i in kept for i in ids], bool))  # what a reviewer kept is not flagged again
    out = Path(args.out)
    summary = write_report(audit, out, ids, labels, splits, _paths_or_none(args.features),
                           {"unlabelled_left_out": left_out, "dropped_by_corrections": left_dropped,
                            "labels_without_vector": no_vector})
    lines = [f"audit of {len(ids)} vectors (k={args.k}, {audit.summary_['index']} graph) -> {out}/"]
    if "graph_recall" in audit.summary_:
        lines.append(f"  graph recall@{args.k} against exact neighbours: {audit.summary_['graph_recall']['recall_at_k']}"
                     f" ({audit.summary_['graph_recall']['sampled_rows']} rows sampled)")
    for name in ISSUES:
        s = audit.summary_.get(name)
        if s is None:
            continue
        if "skipped" in s:
            lines.append(f"  {name}: skipped ({s['skipped']})")
        elif name == "leak":
            lines.append(f"  leak: {s['pairs']} near-duplicate pairs across splits (cosine >= {s['threshold']:.4f})")
        else:
            lines.append(f"  {name}: {s['flagged']} flagged" + (f", dataset score {s['score']:.4f}"
                                                                 if s.get("score") is not None else ""))
    for name in ISSUES:
        if audit.summary_.get(name, {}).get("kept_by_review"):
            lines.append(f"  ({audit.summary_[name]['kept_by_review']} {name} suspect(s) you kept in review are not "
                         "flagged again)")
    if left_out:
        lines.append(f"  ({left_out} vectors without a label were left out: the labelled part was audited)")
    if left_dropped:
        lines.append(f"  ({left_dropped} image(s) dropped by your corrections were left out)")
    if no_vector:
        lines.append(f"  ({no_vector} labelled image(s) have no vector: they are error rows of {args.features}, "
                     "their files could not be read; left out)")
    return emit(args, summary, lines)


def _paths_or_none(features: str) -> Optional[dict]:
    try:
        return read_paths(features)
    except ImgfeatError:
        return None


def corrections_arg(p) -> None:
    p.add_argument("--corrections", help="a review's decisions on --labels (id<TAB>keep|relabel|drop<TAB>new_label: "
                                         "the TSV imgfeat serve --audit's review page downloads)")


def _add_pca(sub) -> None:
    pca = sub.add_parser("pca", help="streaming PCA: fit, then apply")
    pca_sub = pca.add_subparsers(dest="pca_command", required=True)
    fit = pca_sub.add_parser("fit", help="fit a PCA on features, block by block")
    features_arg(fit)
    fit.add_argument("--dim", type=at_least(1), required=True, help="output dimension")
    fit.add_argument("--whiten", action="store_true", help="scale each component to unit variance")
    fit.add_argument("--out", type=ending(".npz"), required=True, help="the fitted PCA (.npz)")
    fit.set_defaults(func=_pca_fit, output_files=("out",), param_flags={"n_components": "--dim", "path": "--features"})
    apply = pca_sub.add_parser("apply", help="reduce features with a fitted PCA")
    features_arg(apply)
    apply.add_argument("--pca", required=True, help="a PCA written by imgfeat pca fit (.npz)")
    apply.add_argument("--out", required=True, help="a file ending in " + " ".join(extensions()))
    apply.set_defaults(func=_pca_apply, output_files=("out",), param_flags={"path": "--features"})


def _add_probe(sub) -> None:
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


def _add_map(sub) -> None:
    mp = sub.add_parser("map", help="t-SNE / UMAP map as a scatter PNG (+ thumbnail mosaic)")
    features_arg(mp)
    labels_args(mp, "TSV id<TAB>label to colour the points")
    mp.add_argument("--method", choices=METHODS, default="tsne",
                    help="tsne (scikit-learn, PCA to 50 first) or umap (pip install 'imgfeat[umap]')")
    mp.add_argument("--out", type=_image_file, required=True, help="scatter image (.png, .svg, .pdf, .jpg ...)")
    mp.add_argument("--coords", help="TSV id<TAB>x<TAB>y (default: next to --out)")
    mp.add_argument("--mosaic", help="also draw the images at their positions into this PNG")
    mp.add_argument("--only-labelled", action="store_true", help="map only the ids that --labels names")
    mp.add_argument("--limit", type=at_least(1), default=None, help="map a seeded random sample of this many vectors")
    mp.add_argument("--seed", type=int, default=0, help="seed of the layout and of --limit's sample")
    mp.set_defaults(func=_map, output_files=("out", "coords", "mosaic"), param_flags={"path": "--features"})


def _add_knn(sub) -> None:
    knn = sub.add_parser("knn", help="exact or approximate kNN graph (faiss)")
    features_arg(knn)
    knn.add_argument("--k", type=at_least(1), required=True, help="neighbours per vector (the vector itself excluded)")
    knn.add_argument("--out", type=ending(".npz"),
                     help=".npz with I (int32), D (float32) and ids (the graph is held in memory to "
                          "write it; for 100M rows use --raw alone)")
    knn.add_argument("--metric", choices=METRICS, default="cosine",
                     help="cosine (every tool's default) normalises each block as it is read; ip is the raw inner "
                          "product (the same on --l2 features); l2 the Euclidean distance")
    knn.add_argument("--approx", default=None, metavar="|".join(INDEXES[1:]) + "|FACTORY",
                     help="approximate index: ivf, hnsw, pca (PCA-128 candidates re-ranked on the full vectors: "
                          "near-exact and faster for high-dimensional features; cosine and l2 only), or a faiss "
                          "index_factory string such as 'IVF65536,PQ32' (compressed codes, for 100M-vector graphs)")
    knn.add_argument("--nlist", type=at_least(1), default=None,
                     help="IVF cells of --approx ivf (default: 4 sqrt(n), at most n/39)")
    knn.add_argument("--nprobe", type=at_least(1), default=16, help="IVF cells visited per query (with --approx)")
    knn.add_argument("--raw", help="write PREFIX.int32, PREFIX.float32 (row-major N x k, streamed block by "
                                   "block) and PREFIX.ids.txt")
    knn.add_argument("--recall-sample", type=at_least(1), default=1000,
                     help="queries scored against the exact graph to report an --approx graph's recall")
    knn.set_defaults(func=_knn, output_files=("out",), output_prefixes=("raw",),
                     param_flags={"path": "--features", "index": "--approx"})


def _add_search(sub) -> None:
    search = sub.add_parser("search", help="nearest neighbours of query ids or images")
    features_arg(search)
    search.add_argument("--query", nargs="+", help="ids in the features, or image files")
    search.add_argument("--text", nargs="+", help="texts (stores of CLIP-family models)")
    search.add_argument("--k", type=at_least(1), default=10, help="results per query (a query by id is not its own)")
    search.add_argument("--metric", choices=METRICS, default="cosine", help="similarity, as imgfeat knn --metric")
    weights_args(search)
    search.set_defaults(func=_search, param_flags={"path": "--features"})


def _add_dedup(sub) -> None:
    dedup = sub.add_parser("dedup", help="groups of near-duplicate images")
    features_arg(dedup)
    dedup.add_argument("--threshold", type=float, default=0.95,
                       help="cosine similarity each member of a group has at least with the group's first image "
                            "(its representative)")
    dedup.add_argument("--k", type=at_least(1), default=10, help="neighbours examined per image")
    dedup.add_argument("--index", default="exact", metavar=_INDEX_METAVAR,
                       help="faiss index (as imgfeat knn --approx)")
    dedup.add_argument("--out", help="TSV group<TAB>id, each group's representative first")
    dedup.set_defaults(func=_dedup, output_files=("out",), param_flags={"path": "--features"})


def _add_diffuse(sub) -> None:
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
    diffuse.add_argument("--index", default="exact", metavar=_INDEX_METAVAR,
                         help="faiss index of the kNN graph (as imgfeat knn --approx), e.g. IVF4096,PQ32 "
                              "for a large --background set")
    diffuse.add_argument("--C", type=positive, default=1.0, help="C of the logistic-regression baseline")
    diffuse.add_argument("--out", help="TSV id<TAB>predicted label")
    diffuse.set_defaults(func=_diffuse, output_files=("out",), param_flags={"path": "--features"})


def _add_audit(sub) -> None:
    from ..tools.audit import ISSUES

    audit = sub.add_parser("audit", help="label errors, outliers, near-duplicates and train/test leaks (cleanlab)",
                           description="Find what is wrong with a labelled collection from its features: cleanlab's "
                                       "label, outlier and near-duplicate issues computed on imgfeat's faiss kNN "
                                       "graph, and near-duplicate pairs across splits (leaks). Writes one TSV per "
                                       "issue, summary.json and a picture of the worst flagged images.")
    features_arg(audit)
    labels_args(audit, "TSV id<TAB>label (the training labels); without labels the label issue is skipped")
    corrections_arg(audit)
    split = audit.add_mutually_exclusive_group()
    split.add_argument("--test-labels", help="TSV id<TAB>label of the test split (audited too; leaks are pairs across "
                                             "the two)")
    split.add_argument("--splits", help="TSV id<TAB>split name, for leaks across any splits")
    audit.add_argument("--k", type=at_least(1), default=10, help="neighbours per image in the kNN graph")
    audit.add_argument("--index", default="auto", metavar="auto|" + _INDEX_METAVAR,
                       help="faiss index of the graph (as imgfeat knn --approx): auto is exact below 20,000 vectors "
                            "or 512 dimensions and pca above (PCA-128 candidates re-ranked on the full vectors: "
                            "near-exact, about 3x faster), ivf above 500,000 vectors; the recall of a non-exact graph, "
                            "sampled, is in summary.json")
    audit.add_argument("--nprobe", type=at_least(1), default=16, help="IVF cells visited per query (an IVF --index)")
    audit.add_argument("--issues", default=",".join(ISSUES), help=f"comma list of {', '.join(ISSUES)}")
    audit.add_argument("--leak-threshold", type=float, default=None,
                       help="cosine at or above which a cross-split pair is a leak (default: cleanlab's near-"
                            "duplicate rule, within 0.13 of the median nearest-neighbour distance)")
    audit.add_argument("--out", required=True, help="report folder")
    audit.set_defaults(func=_audit, output_dirs=("out",), param_flags={"path": "--features"})


def add_parsers(sub) -> None:
    """Add the tools' subcommands to the ``imgfeat`` parser."""
    _add_audit(sub)
    _add_pca(sub)
    _add_probe(sub)
    _add_map(sub)
    _add_knn(sub)
    _add_search(sub)
    _add_dedup(sub)
    _add_diffuse(sub)
