"""``imgfeat audit``: what is wrong with a labelled collection (``tools.audit`` computes and writes the report).
Parsing and printing only: the work is in ``imgfeat.tools``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import ImgfeatError
from .common import at_least, corrections_arg, emit, features_arg, index_args, label_spec, labels_args


def _audit(args) -> int:
    import numpy as np

    from ..outputs.formats import open_matrix
    from ..outputs.idindex import StringColumn
    from ..tools.audit import DatasetAudit, write_report
    from ..tools.memory import parse_size
    from ..tools.names import ISSUES
    from ..tools.exact import RowView
    from ..tools.labels import (apply_corrections, label_rows, labels_for, read_corrections, read_labels,
                                without_error_rows)

    ids, X = open_matrix(args.features)  # memory-mapped, ids a column: read as the audit asks
    ids = ids if isinstance(ids, StringColumn) else StringColumn(ids)  # one id lookup for every table below
    spec = label_spec(args)
    given = labels_for(spec, ids, args.features) if spec is not None else {}
    given, no_vector = without_error_rows(given, ids, args.features)
    decisions = read_corrections(args.corrections)
    dropped = {i for i, (d, _) in decisions.items() if d == "drop" and i in given}
    given = apply_corrections(given, args.corrections)
    # labels and splits as one column of rows each (no dict of every id kept beside the ids)
    n = len(ids)
    label_of, split_of = np.full(n, None, object), np.full(n, None, object)
    train = label_rows(ids, given)
    label_of[train] = list(given.values())
    if args.test_labels:
        test, test_no_vector = without_error_rows(read_labels(args.test_labels), ids, args.features, "test labels")
        no_vector += test_no_vector
        split_of[train] = "train"
        rows = label_rows(ids, test, "test labels")
        label_of[rows], split_of[rows] = list(test.values()), "test"
        del test
    elif args.splits:
        splits, _ = without_error_rows(read_labels(args.splits), ids, args.features, "splits")
        split_of[label_rows(ids, splits, "splits")] = list(splits.values())
        del splits
    labelled = bool(given) or args.test_labels is not None
    del given, train
    issues = [i.strip() for i in args.issues.split(",") if i.strip()]
    left_out = left_dropped = 0
    keep = (label_of != None) | (split_of != None)  # noqa: E711 - an object column's missing entries
    if labelled and not keep.all():  # audit the labelled part, and say so
        left_dropped = sum(1 for i, k in zip(ids, keep.tolist()) if not k and i in dropped)
        left_out = int((~keep).sum()) - left_dropped
        ids, X = [i for i, k in zip(ids, keep.tolist()) if k], RowView(X, np.flatnonzero(keep))
        label_of, split_of = label_of[keep], split_of[keep]
    labels = label_of if labelled else None
    splits = split_of if (split_of != None).any() else None  # noqa: E711
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    audit = DatasetAudit(k=args.k, index=args.index, issues=issues, leak_threshold=args.leak_threshold,
                         nprobe=args.nprobe, workdir=str(out), memory=parse_size(args.max_memory))
    try:
        audit.fit(X, labels, splits)
        kept = {i for i, (d, _) in decisions.items() if d == "keep"}
        audit.keep(np.array([i in kept for i in ids], bool))  # what a reviewer kept is not flagged again
        summary = write_report(audit, out, ids, labels, splits, lambda wanted: _paths_or_none(args.features, wanted),
                               {"unlabelled_left_out": left_out, "dropped_by_corrections": left_dropped,
                                "labels_without_vector": no_vector})
    finally:
        audit.close()
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


def _paths_or_none(features: str, wanted: set) -> Optional[dict]:
    """The image paths of the ``wanted`` ids (the few a report draws), where the features record paths."""
    from ..outputs.formats import read_paths

    try:
        return read_paths(features, wanted)
    except ImgfeatError:
        return None


def add_parser(sub) -> None:
    from ..tools.names import ISSUES

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
    index_args(audit)
    audit.add_argument("--nprobe", type=at_least(1), default=16, help="IVF cells visited per query (an IVF --index)")
    audit.add_argument("--issues", default=",".join(ISSUES), help=f"comma list of {', '.join(ISSUES)}")
    audit.add_argument("--leak-threshold", type=float, default=None,
                       help="cosine at or above which a cross-split pair is a leak (default: cleanlab's near-"
                            "duplicate rule, within 0.13 of the median nearest-neighbour distance)")
    audit.add_argument("--out", required=True, help="report folder")
    audit.set_defaults(func=_audit, output_dirs=("out",), param_flags={"path": "--features"})
