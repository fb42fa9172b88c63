"""What the subcommands share: printing a result (text or ``--json``), the ``--features`` argument, and the
store's own model for queries (image or text) made as its vectors were."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

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


def at_least(low: int):
    """argparse type: an integer >= ``low`` (a clear usage error otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


def _number(allowed: str, ok):
    """argparse type: a number for which ``ok(value)`` holds (``allowed`` says which, in the error)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text}")
        return value
    return parse


positive = _number("a number > 0", lambda v: v > 0)
fraction_open = _number("a number between 0 and 1 (exclusive)", lambda v: 0 < v < 1)


def port(text: str) -> int:
    value = at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535 (0: any free port), got {value}")
    return value


def ending(*suffixes: str):
    """argparse type: a path ending in one of ``suffixes``."""
    def parse(text: str) -> str:
        if not text.lower().endswith(suffixes):
            raise argparse.ArgumentTypeError(f"expected a file name ending in {' or '.join(suffixes)}, got {text!r}")
        return text
    return parse


def comma_list(allowed: tuple[str, ...], everything: Optional[str] = None):
    """argparse type: a comma list of ``allowed`` values (or ``everything``, meaning all of them)."""
    def parse(text: str) -> tuple[str, ...]:
        values = allowed if text == everything else tuple(v.strip() for v in text.split(",") if v.strip())
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(allowed)}"
                                             + (f" or {everything}" if everything else "") + f", got {text!r}")
        return values
    return parse
