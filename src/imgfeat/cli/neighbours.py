"""``imgfeat knn``, ``search`` and ``dedup``: kNN graphs, nearest neighbours of queries, near-duplicate groups. Parsing
and printing only: the work is in ``imgfeat.tools``."""

from __future__ import annotations

import logging
import os

from ..errors import ImgfeatError
from ..tools.names import METRICS, RAW_SUFFIXES
from .common import at_least, emit, ending, features_arg, index_args, store_encoder, weights_args

log = logging.getLogger(__name__)


def _knn(args) -> int:
    from ..outputs.formats import open_matrix
    from ..tools.graph import build_graph
    from ..tools.memory import budget

    if not args.out and not args.raw:
        raise ImgfeatError("imgfeat knn needs --out graph.npz, --raw PREFIX, or both")
    if args.nlist is not None and args.approx not in ("ivf", "join"):
        raise ImgfeatError("--nlist sets the cells of --approx ivf or join (a factory string names its own: IVF4096,...); "
                           f"it does nothing with --approx {args.approx}")

    ids, X = open_matrix(args.features)
    if args.engine == "ray" and (args.out or not args.raw):
        raise ImgfeatError("--engine ray writes the graph block by block: give --raw PREFIX (on storage every node "
                           "reads, as --features is) and no --out")
    if args.ray_address and args.engine != "ray":
        raise ImgfeatError("--ray-address is the cluster of --engine ray")
    def on_ray(index, X, ids, k, npz, raw):
        from ..tools.raygraph import ray_graph

        return ray_graph(index, args.features, ids, k, raw, address=args.ray_address)

    graph = build_graph(X, ids, args.k, index=args.approx, memory=budget(args.max_memory), metric=args.metric,
                        nprobe=args.nprobe, nlist=args.nlist, what="imgfeat knn", raw=args.raw, npz=args.out,
                        recall_sample=args.recall_sample,
                        write=on_ray if args.engine == "ray" else None)
    index = graph.index
    result = {"out": args.out, "n": len(ids), "k": args.k, "metric": args.metric,
              "index": index.description, "memory": index.plan_.as_dict()}
    if args.raw:
        result["raw"] = [f"{args.raw}{ext}" for ext in RAW_SUFFIXES]
    where = " and ".join(x for x in (args.out, args.raw and f"{args.raw}.{{int32,float32,ids.txt}}") if x)
    lines = [f"{args.k}-NN graph of {len(ids)} vectors ({result['index']}, {args.metric}) -> {where}"]
    if graph.recall is not None:
        result["recall_at_k"] = graph.recall["recall_at_k"]
        lines.append(f"recall@{args.k} against exact on {graph.recall['sampled_rows']} queries: "
                     f"{result['recall_at_k']:.4f}")
    return emit(args, result, lines)


def _search(args) -> int:
    import numpy as np

    from ..outputs.formats import open_matrix
    from ..outputs.idindex import id_index
    from ..tools.exact import exact_search

    if not args.query and not args.text:
        raise ImgfeatError("imgfeat search needs --query ID|IMAGE [...] and/or --text TEXT [...]")
    ids, X = open_matrix(args.features)
    index_of = id_index(ids)
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
    # one rule with knn and serve's /api/neighbours: a query by id does not find itself. The store is streamed once
    # (exact, a block of rows at a time): a few queries never need an index of the whole collection in memory
    D, I = exact_search(X, Q, min(args.k + 1, len(ids)), args.metric)
    own = [index_of.get(q, -1) if q in queries else -1 for q in names]
    hits = {q: [{"id": ids[j], "score": float(d)} for d, j in zip(Ds, Js) if j != self_row and j >= 0][:args.k]
            for q, Ds, Js, self_row in zip(names, D, I, own)}
    lines = [f"{q}\t{r + 1}\t{h['id']}\t{h['score']:.4f}" for q, hs in hits.items() for r, h in enumerate(hs)]
    return emit(args, {"queries": hits}, lines)


def _dedup(args) -> int:
    import tempfile

    import numpy as np

    from ..files import mapped_for_writing
    from ..outputs.formats import open_matrix
    from ..outputs.idindex import ids_nbytes
    from ..tools.autoindex import build_index, plan_index
    from ..tools.dedup import PAIR_BATCH, PAIR_BYTES, group_lines, grouping_bytes, groups_at, neighbour_lists
    from ..tools.memory import budget, human, refuse_unless

    ids, X = open_matrix(args.features)
    memory = budget(args.max_memory)
    plan = plan_index(len(X), X.shape[1], args.index, args.k, memory, "imgfeat dedup", graph=True)
    log.info(plan.line())
    # then the grouping, after the index is dropped: the ids, 12 bytes a row, and its pairs sorted in batches that
    # fit beside them (never above PAIR_BATCH: larger ones only save reading the pairs' file again)
    held = ids_nbytes(ids) + grouping_bytes(len(ids), 0)
    batch = int(min(PAIR_BATCH, max(2**14, (memory - held) // 2 // PAIR_BYTES)))
    refuse_unless(held + grouping_bytes(0, batch), memory, f"grouping the near-duplicates of {len(ids):,} vectors",
                  "Give --max-memory more.")
    log.info("memory plan: grouping holds the ids and 12 bytes a row (%s), and sorts %s pairs at a time (%s)",
             human(held), f"{batch:,}", human(grouping_bytes(0, batch)))
    knn = build_index(X, args.index, args.k, memory=memory, what="imgfeat dedup", graph=True, plan=plan)
    index, plan = knn.description, knn.plan_.as_dict()
    with tempfile.TemporaryDirectory(prefix="imgfeat-dedup-", dir=args.workdir) as work:
        def mapped(shape, dtype):  # the neighbour lists on disk, not held (88 bytes a row at --k 10)
            return mapped_for_writing(os.path.join(work, f"{np.dtype(dtype).name}.npy"), shape, dtype, npy=True)

        D, I = neighbour_lists(X, args.k, knn=knn, out=mapped)
        del knn
        groups = groups_at(D, I, args.threshold, batch=batch, folder=work)
        del D, I
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.writelines(group_lines(groups, ids))
    largest = [ids.take(g) if hasattr(ids, "take") else [ids[i] for i in g.tolist()] for g in groups[:10]]
    result = {"groups": len(groups), "duplicates": groups.duplicates, "n": len(ids),
              "threshold": args.threshold, "out": args.out, "largest": largest[:5], "index": index,
              "memory": plan}
    lines = [f"{len(groups)} groups of near-duplicates among {len(ids)} vectors (each image's cosine to its group's "
             f"first image >= {args.threshold}; {index} index); {result['duplicates']} could be dropped"
             + (f" -> {args.out}" if args.out else "")]
    lines += ["  " + ", ".join(g) for g in largest]
    return emit(args, result, lines)


def _add_knn(sub) -> None:
    knn = sub.add_parser("knn", help="exact or approximate kNN graph (faiss)")
    features_arg(knn)
    knn.add_argument("--k", type=at_least(1), required=True, help="neighbours per vector (the vector itself excluded)")
    knn.add_argument("--out", type=ending(".npz"),
                     help=".npz with I (int32), D (float32) and ids, as np.savez writes them (copied from the graph "
                          "on disk a chunk at a time: memory stays flat whatever N is)")
    knn.add_argument("--metric", choices=METRICS, default="cosine",
                     help="cosine (every tool's default) normalises each block as it is read; ip is the raw inner "
                          "product (the same on --l2 features); l2 the Euclidean distance")
    index_args(knn, flag="--approx")
    knn.add_argument("--nlist", type=at_least(1), default=None,
                     help="IVF cells of --approx ivf (default: 4 sqrt(n), at most n/39) or join (default: about "
                          "1,000 rows a cell)")
    knn.add_argument("--nprobe", type=at_least(1), default=16, help="IVF cells visited per query (with --approx)")
    knn.add_argument("--raw", help="write PREFIX.int32, PREFIX.float32 (row-major N x k, streamed block by "
                                   "block) and PREFIX.ids.txt")
    knn.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="ray: the graph as tasks over a Ray cluster (the index fitted here: auto's join of cells "
                          "through Ray's object store, a search index saved as PREFIX.faiss and memory-mapped by "
                          "each node; --features and --raw on storage every node reads); the graph is the local "
                          "one, file for file")
    knn.add_argument("--ray-address", help="the Ray cluster of --engine ray (default: RAY_ADDRESS, or a local one)")
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
    index_args(dedup)
    dedup.add_argument("--out", help="TSV group<TAB>id, each group's representative first")
    dedup.add_argument("--workdir", help="folder for the neighbour lists while it runs (88 bytes a vector at --k 10; "
                                         "default: the system's temporary folder)")
    dedup.set_defaults(func=_dedup, output_files=("out",), param_flags={"path": "--features"})


def add_parsers(sub) -> None:
    _add_knn(sub)
    _add_search(sub)
    _add_dedup(sub)
