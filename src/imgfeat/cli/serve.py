"""``imgfeat serve``: the web app and HTTP API over one features output."""

from __future__ import annotations

import argparse
import sys

from ..errors import bad_param
from ..models.names import BACKENDS
from .common import at_least, index_args, label_spec, labels_args, port, positive


def _serve(args: argparse.Namespace) -> int:
    from ..errors import require

    require("fastapi", "serve", "imgfeat serve")
    from ..serve.app import ServeConfig
    from ..serve.collection import Collection
    from ..serve.server import run

    for name in ("max_k", "dup_k", "decode_workers"):
        if getattr(args, name) < 1:
            raise bad_param(name.replace("_", "-"), "an integer >= 1", getattr(args, name))
    if args.max_upload_mb <= 0:
        raise bad_param("max-upload-mb", "a number > 0", args.max_upload_mb)
    from ..tools.memory import parse_size

    collection = Collection(args.features, labels=label_spec(args), map_coords=args.map, index=args.index,
                            index_file=args.index_file, nprobe=args.nprobe, dup_k=args.dup_k,
                            max_memory=parse_size(args.max_memory) if args.max_memory else None)
    config = ServeConfig(host=args.host, port=args.port, token=args.token, allow_hosts=tuple(args.allow_host),
                         cors=tuple(args.cors), max_upload=int(args.max_upload_mb * 1024 * 1024), max_k=args.max_k,
                         decode_workers=args.decode_workers, weights=args.weights, backend=args.backend,
                         audit=args.audit)
    try:
        run(collection, config, open_browser=args.open)
    except KeyboardInterrupt:  # Ctrl-C is how a server is meant to stop
        pass
    print("imgfeat serve: stopped", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="a local web app and HTTP API: search, map and review duplicates",
                       description="Serve a features output (a store, or any file imgfeat writes) as a web app and "
                                   "an HTTP API under /api/ (described at /openapi.json), until Ctrl-C. Derived "
                                   "data (index, map, neighbour lists, thumbnails) is cached under $IMGFEAT_CACHE/"
                                   "serve/; the store itself is only read.")
    p.add_argument("features", help="a feature store directory or a features file")
    p.add_argument("--map", help="2-D coordinates id<TAB>x<TAB>y (imgfeat map --coords); default: computed on first "
                                 "use (t-SNE up to 20,000 vectors, PCA above) and cached")
    labels_args(p, "TSV id<TAB>label: map colours, label filter and labels on results")
    index_args(p, graph=False, memory="2GB for auto (10M 256-d vectors take PQ codes, the vectors stay on disk), or "
                                      "what the machine has available if less")
    p.add_argument("--index-file", help="a faiss index file of these features to load (memory-mapped where faiss "
                                        "allows); written there after building when it does not exist")
    p.add_argument("--nprobe", type=at_least(1), default=16, help="IVF cells visited per query")
    p.add_argument("--dup-k", type=at_least(1), default=10, help="neighbours per image examined for duplicates")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (anything but loopback prints a warning)")
    p.add_argument("--port", type=port, default=8765, help="port to listen on (0 picks a free port)")
    p.add_argument("--token", help="require this secret on every request (Authorization: Bearer, or the printed link)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another host name requests may use (behind a proxy); repeatable")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN", help="allow this origin (off by default)")
    p.add_argument("--max-upload-mb", type=positive, default=20.0, help="largest upload accepted")
    p.add_argument("--max-k", type=at_least(1), default=1000, help="deepest result rank a client may page to")
    p.add_argument("--decode-workers", type=at_least(1), default=2, help="processes decoding uploads and thumbnails")
    p.add_argument("--weights", help="the --weights FILE the store was extracted with, if any (image queries)")
    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="backend of the model for image queries (torch: no export step at start)")
    p.add_argument("--audit", metavar="REPORT", help="an imgfeat audit --out folder: review its suspects on /audit "
                                                    "(decisions kept in the serve cache, downloadable as "
                                                    "--corrections for probe, diffuse and audit)")
    p.add_argument("--open", action="store_true", help="open the app in a browser")
    p.set_defaults(func=_serve, param_flags={"features": "FEATURES", "path": "FEATURES"})
