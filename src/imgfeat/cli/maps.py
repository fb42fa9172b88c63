"""``imgfeat map``: a t-SNE/UMAP scatter PNG, its coordinates and a thumbnail mosaic. Parsing and printing only: the
work is in ``imgfeat.tools``."""

from __future__ import annotations

from pathlib import Path

from ..tools.names import METHODS
from .common import at_least, emit, features_arg, label_spec, labels_args


def _map(args) -> int:
    import numpy as np

    from ..outputs.formats import read_features, read_paths
    from ..tools.labels import align, labels_for, without_error_rows
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


def add_parser(sub) -> None:
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
