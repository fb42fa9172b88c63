"""What the subcommands share: printing a result (text or ``--json``), the ``--features`` argument, and the
store's own model for queries (image or text) made as its vectors were."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ImgfeatError


def emit(args: argparse.Namespace, result: dict, lines: list[str]) -> int:
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(lines))
    return 0


def features_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, help="an imgfeat output file or feature store")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def store_encoder(features: str, weights):
    """The store's model, weights checked against its manifest (for image and text queries)."""
    from ..engines.encode import StoreEncoder

    if not Path(features).is_dir():
        raise ImgfeatError("image and text queries need a feature store (its manifest names the model and weights); "
                           f"{features} is a file: query by id")
    return StoreEncoder.for_store(features, weights)
