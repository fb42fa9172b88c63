"""``imgfeat diffuse``: label diffusion for low-shot learning, scored against a logistic-regression baseline. Parsing
and printing only: the work is in ``imgfeat.tools``."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Optional, Sequence

from ..errors import ImgfeatError, bad_param
from ..tools.names import ITERATION_GRID
from .common import at_least, corrections_arg, emit, features_arg, index_args, label_spec, labels_args, positive

log = logging.getLogger(__name__)


VALIDATION_FRACTION = 0.2
# the diffusion's default budget: 1M rows x 100 classes propagate in one block within it (more memory does not make
# the same work faster: 176 s either way at 1M x 30 neighbours x 100 classes, BENCHMARKS.md)
DEFAULT_MEMORY = 2**30


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


def _with_background(args, ids: Sequence[str], X) -> tuple[Sequence[str], object]:
    """The graph's vectors: the features, then ``--background``'s (ids no label can name), both read from disk as
    the graph asks (never copied into memory: the paper's 100M background images are exactly there)."""
    from ..outputs.formats import open_matrix
    from ..tools.exact import Stacked

    if not args.background:
        return ids, X
    bids, bX = open_matrix(args.background)
    if bX.shape[1] != X.shape[1]:
        raise bad_param("background", f"features of dimension {X.shape[1]}", f"dimension {bX.shape[1]}")
    return list(ids) + [f"\0bg{i}" for i in range(len(bids))], Stacked(X, bX)


def _graph(args, all_ids: Sequence[str], all_X, work: str, memory: int):
    """The kNN graph the labels diffuse over: ``--graph PREFIX`` (``knn --raw``'s files, memory-mapped), or built
    here block by block into ``work`` (the index chosen by size with ``--index auto``, as ``audit`` does)."""
    from ..outputs.idindex import lines_equal
    from ..tools.graph import RAW_SUFFIXES, RawGraph, build_graph

    if args.graph:
        ids_file = f"{args.graph}{RAW_SUFFIXES[2]}"
        # compared with the features' ids a chunk at a time: never a second copy of them (10M ids: 190 MB)
        if os.path.isfile(ids_file) and not lines_equal(ids_file, all_ids, "--graph ids"):
            raise ImgfeatError(f"--graph {args.graph} holds the graph of rows that are not the rows of --features"
                               f"{' and --background' if args.background else ''} ({len(all_ids):,}, in order): make "
                               "it with imgfeat knn --raw on the same features")
        return RawGraph.open(args.graph, ids=all_ids), "given", None
    if args.k >= len(all_ids):
        raise bad_param("k", f"an integer below the number of vectors ({len(all_ids)}): each needs k others", args.k)
    built = build_graph(all_X, all_ids, args.k, index=args.index, memory=memory, what="the graph of imgfeat diffuse",
                        raw=os.path.join(work, "graph"))
    return RawGraph.open(os.path.join(work, "graph"), ids=all_ids), built.description, built.recall


def _tuned(run, y: Sequence, final_y: Sequence, truth: list, grid_max: int):
    """``--iterations auto``: one diffusion to the grid's largest count scores the held-out rows at each count of the
    grid; the best count is run again from ``final_y`` (every given label outside the low-shot protocol). Returns
    (model, iterations, validation scores, a note when the held-out set is too small to choose well)."""
    from ..tools.diffusion import best_iterations, top_k, validation_warning

    tuned = run(y, grid_max, ITERATION_GRID)
    iterations, scores, _ = best_iterations(tuned.tracked_, tuned.classes_, truth, top_k(len(tuned.classes_)))
    return run(final_y, iterations), iterations, scores, validation_warning(len(truth), len(tuned.classes_))


def _split(args, given: dict[str, str], auto: bool) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """The labels the diffusion starts from, the labelled images held out to score it, and the novel classes: the
    low-shot protocol's draw with ``--novel-classes``, a validation share of each class for ``--iterations auto``,
    else every given label."""
    from ..tools.diffusion import lowshot_split, validation_split

    if args.novel_classes:
        novel = _read_classes(args.novel_classes)
        return (*lowshot_split(given, novel, args.shots or 1, args.seed), novel)
    if auto:
        return (*validation_split(given, VALIDATION_FRACTION, args.seed), set())
    return given, {}, set()


def _timed(seconds: dict, part: str, work, *args, **kwargs):
    """``work(*args, **kwargs)``, its time added to ``seconds[part]``."""
    start = time.perf_counter()
    try:
        return work(*args, **kwargs)
    finally:
        seconds[part] = seconds.get(part, 0.0) + time.perf_counter() - start


def _diffuse(args) -> int:
    from ..outputs.formats import open_matrix
    from ..tools.labels import align, apply_corrections, labels_for, read_labels, without_error_rows
    from ..outputs.idindex import id_index, ids_nbytes
    from ..tools.diffusion import GraphDiffusion, RowLabels, scored_against_logreg
    from ..tools.graph import locality_order
    from ..tools.memory import budget, human

    auto = args.iterations == "auto"
    iterations = _iterations(args)
    if args.shots is not None and not args.novel_classes:
        raise ImgfeatError("--shots is the number of labels per novel class: give --novel-classes FILE with it")
    if not args.test_labels and not args.out and not args.json:
        raise ImgfeatError("imgfeat diffuse needs --test-labels (to score it), --out (the predicted labels), or "
                           "--json; otherwise the result is computed and thrown away")
    memory = budget(args.max_memory, DEFAULT_MEMORY)
    ids, X = open_matrix(args.features)  # memory-mapped: the graph is built and read block by block
    given, _ = without_error_rows(labels_for(label_spec(args), ids, args.features), ids, args.features)
    given = apply_corrections(given, args.corrections)
    labels, validation, novel = _split(args, given, auto)
    Xl, yl, _ = align(ids, X, labels)
    if len(set(yl.tolist())) < 2:
        raise ImgfeatError(f"{label_spec(args)} holds a single class; diffusion needs at least 2")
    all_ids, all_X = _with_background(args, ids, X)
    row = id_index(ids)  # no dict of every id: 12 bytes a row
    # the budget is the command's: what the ids and their lookup hold is not the graph's or the diffusion's
    held = ids_nbytes(ids) + row.nbytes + (0 if all_ids is ids else ids_nbytes(all_ids))
    log.info("the ids and their lookup hold %s of the %s budget", human(held), human(memory))
    test = read_labels(args.test_labels) if args.test_labels else {}
    tids: list = []
    if test:
        Xt, yt, tids = align(ids, X, test, "test labels")
    test_rows = [row[i] for i in tids]
    val_rows = [r for r in map(row.get, validation) if r is not None]
    y = RowLabels.of(all_ids, labels)  # the labelled rows only: no Python object per row
    GraphDiffusion.plan(len(all_ids), args.k, len(set(yl.tolist())), memory, held)  # a budget too small: said now
    with tempfile.TemporaryDirectory(prefix="imgfeat-diffuse-", dir=args.workdir) as work:
        seconds: dict = {}  # where the time went, in --json
        graph, index, recall = _timed(seconds, "graph", _graph, args, all_ids, all_X, work, memory - held)
        # near rows numbered near while they diffuse: the products read the cache
        order = _timed(seconds, "renumbering", locality_order, all_X)

        def run(labels_of_rows, t: int, track=()):
            diffusion = GraphDiffusion(iterations=t, memory=memory, folder=work, held=held)
            return _timed(seconds, "diffusion", diffusion.fit, graph, labels_of_rows, keep_rows=test_rows,
                          track_rows=val_rows, track_iterations=track, order=order)

        result = {"n": len(all_ids), "labelled": int(len(yl)), "k": graph.k, "iterations": iterations,
                  "index": index}
        if auto:
            # the held-out labels choose the iterations; then the diffusion runs at that count, outside the low-shot
            # protocol with every given label (the held-out ones back in)
            model, iterations, scores, note = _tuned(run, y, y if novel else RowLabels.of(all_ids, given),
                                                     [validation[ids[r]] for r in val_rows], iterations)
            result.update(iterations=iterations, validation={str(t): v for t, v in scores.items()},
                          validation_images=len(val_rows))
            if note:
                result["validation_note"] = note
            if not novel:
                Xl, yl, _ = align(ids, X, given)
                result.update(labelled=int(len(yl)), refit_on_all_labels=True)
        else:
            model = run(y, iterations)
    result["memory"] = model.memory_
    result["seconds"] = {part: round(sec, 1) for part, sec in seconds.items()}
    if recall is not None:
        result["graph_recall"] = recall
    if novel:
        result.update(novel_classes=sorted(novel), shots=args.shots or 1, seed=args.seed)
    lines = _summary(model, result, graph.k, len(val_rows) if auto else None, bool(novel))
    if test:
        diff, lr = scored_against_logreg(model.scores_, model.classes_, yt, Xl, yl, Xt, frozenset(novel), args.C)
        result.update(test=int(len(yt)), accuracy=diff["top1_all"], logreg_accuracy=lr["top1_all"],
                      diffusion=diff, logreg=lr)
        for name, sc in (("diffusion", diff), ("logistic regression", lr)):
            lines.append(f"{name:20s} on {len(yt)} test images: " + ", ".join(
                f"{key.replace('_', ' ')} {value:.4f}" for key, value in sc.items()))
    if args.out:
        _write_labels(args.out, ids, model)
        result["out"] = args.out
    return emit(args, result, lines)


def _summary(model, result: dict, k: int, held_out: Optional[int], novel: bool) -> list[str]:
    """The report's lines on the diffusion itself: its graph, memory plan, iterations (and what chose them when
    ``held_out`` labelled images did) and the graph's sampled recall."""
    from ..tools.diffusion import top_k
    from ..tools.memory import human

    plan, recall = model.memory_, result.get("graph_recall")
    lines = [f"diffused {result['labelled']} labels over a {k}-NN graph of {result['n']} vectors ({result['index']}), "
             f"{result['iterations']} iterations, in {human(plan['bytes'])} ({plan['blocks']} block(s) of "
             f"{plan['columns']} classes; the graph {'in memory' if plan['csr_in_memory'] else 'on disk'})"
             + (f" (chosen on {held_out} held-out labelled images: top-{top_k(len(model.classes_))} "
                f"{result['validation'][str(result['iterations'])]:.4f}"
                + (", then run with all labels" if not novel else "") + ")" if held_out is not None else "")]
    if recall is not None:
        lines.append(f"the graph's recall@{k} against exact neighbours of {recall['sampled_rows']} sampled rows: "
                     f"{recall['recall_at_k']:.4f}")
    if result.get("validation_note"):
        lines.append("note: " + result["validation_note"])
    return lines


def _write_labels(path: str, ids, model) -> None:
    """``--out``: id<TAB>predicted label for every row, written a block at a time."""
    with open(path, "w", encoding="utf-8") as fh:
        for s in range(0, len(ids), 65536):
            fh.writelines(f"{i}\t{model.classes_[c]}\n" for i, c in zip(ids[s:s + 65536],
                                                                        model.labels_[s:s + 65536].tolist()))


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
    index_args(diffuse, memory="1 GiB, or what the machine has available if less: the class scores go through "
                                     "in blocks that fit")
    diffuse.add_argument("--graph", metavar="PREFIX",
                         help="diffuse over this graph (imgfeat knn --raw PREFIX on the same features), memory-mapped, "
                              "instead of building one")
    diffuse.add_argument("--workdir", help="folder for the graph and its normalised form while it runs (default: the "
                                           "system's temporary folder)")
    diffuse.add_argument("--C", type=positive, default=1.0, help="C of the logistic-regression baseline")
    diffuse.add_argument("--out", help="TSV id<TAB>predicted label")
    diffuse.set_defaults(func=_diffuse, output_files=("out",), param_flags={"path": "--features"})
