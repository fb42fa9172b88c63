"""``imgfeat pca fit|apply``: a streaming PCA fitted on features, then applied. Parsing and printing only: the work is
in ``imgfeat.tools``."""

from __future__ import annotations

from ..outputs.names import extensions
from .common import at_least, emit, ending, features_arg


def _pca_fit(args) -> int:
    from ..outputs.formats import iter_blocks
    from ..tools.pca import StreamingPCA

    pca = StreamingPCA(n_components=args.dim, whiten=args.whiten).fit(b for _, b in iter_blocks(args.features))
    pca.save(args.out)
    kept = float(pca.explained_variance_ratio_.sum())
    return emit(args, {"out": args.out, "n": pca.n_samples_seen_, "input_dim": int(pca.mean_.shape[0]),
                        "dim": args.dim, "explained_variance_ratio": kept},
                 [f"PCA {pca.mean_.shape[0]} -> {args.dim} on {pca.n_samples_seen_} vectors keeps "
                  f"{kept:.1%} of the variance -> {args.out}"])


def _pca_apply(args) -> int:
    import numpy as np

    from ..outputs.formats import iter_blocks
    from ..tools.labels import check_dim
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


def add_parser(sub) -> None:
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
