"""What the subcommands share: printing a result (text or ``--json``), the ``--features`` argument, and the
store's own model for queries (image or text) made as its vectors were."""

from __future__ import annotations

import argparse
import json
from typing import Optional


# Arguments that name something a command reads: an output may be none of them.
INPUT_ARGS = ("data", "calibrate", "features", "labels", "test_labels", "background", "pca", "probe",
              "novel_classes", "text_file", "store", "splits", "corrections", "audit")


def flag_of(args: argparse.Namespace, name: str) -> str:
    """How the user spelled the argument behind ``name`` (``--test-labels``; a command may rename it)."""
    return getattr(args, "param_flags", {}).get(name) or "--" + name.replace("_", "-")


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: every output the command will write can be written and is none of its inputs. A
    command declares them with ``set_defaults(output_files=(...), output_dirs=(...), output_prefixes=(...))``."""
    from ..outputs.checks import check_output_dir, check_output_file

    inputs = [(flag_of(args, n), getattr(args, n)) for n in INPUT_ARGS if getattr(args, n, None)]
    for name in getattr(args, "output_files", ()):
        if getattr(args, name, None):
            check_output_file(getattr(args, name), flag_of(args, name), inputs)
    for name in getattr(args, "output_prefixes", ()):  # PREFIX.int32, PREFIX.float32, ...: one folder
        if getattr(args, name, None):
            check_output_file(getattr(args, name) + ".int32", flag_of(args, name), inputs)
    for name in getattr(args, "output_dirs", ()):
        if getattr(args, name, None):
            check_output_dir(getattr(args, name), flag_of(args, name), inputs, what="folder of this command")


def emit(args: argparse.Namespace, result: dict, lines: list[str]) -> int:
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(lines))
    return 0


def features_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, help="an imgfeat output file or feature store")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def store_encoder(args: argparse.Namespace, purpose: str = "image and text queries are embedded", text: bool = True):
    """The store's query encoder for ``--features`` as ``engines.quick.query_encoder`` chooses it (the one chooser of
    every query path), weights as the store records them or as ``--weights`` / ``--random-weights`` say."""
    from ..engines.quick import query_encoder

    return query_encoder(args.features, args.weights, random_weights=True if getattr(args, "random_weights", False)
                         else None, text=text, purpose=purpose)


def weights_args(p: argparse.ArgumentParser) -> None:
    """How a query's model gets its weights: as the store records (default), or said again."""
    p.add_argument("--weights", help="the --weights FILE the store was extracted with (a store records that it "
                                     "was, not the file)")
    p.add_argument("--random-weights", action="store_true",
                   help="the seeded random weights (default: as the store records; its weights hash is checked)")


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


def labels_args(p: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    """``--labels TSV`` or ``--labels-from-folder [LEVEL]``: the one way every command that reads labels takes them
    (``label_spec`` turns them into what ``tools.labels.labels_for`` reads)."""
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--labels", help=help)
    group.add_argument("--labels-from-folder", nargs="?", const=-1, type=int, metavar="LEVEL",
                       help="take each image's label from its class folder (CLASS/image.jpg, as torchvision's "
                            "ImageFolder): -1, the default, is the folder holding the image, -2 the one above, 0 the "
                            "first folder of its id (the path relative to the input folder)")


def label_spec(args: argparse.Namespace):
    """The labels the user gave: a TSV path, a ``FolderLabels``, or None."""
    level = getattr(args, "labels_from_folder", None)
    if level is not None:
        from ..tools.labels import FolderLabels

        return FolderLabels(level)
    return getattr(args, "labels", None)


def index_args(p: argparse.ArgumentParser, *, flag: str = "--index", graph: bool = True,
               memory: str = "what the machine has available") -> None:
    """The one ``--index`` (``knn``: ``--approx``) and ``--max-memory`` of every command that builds an index:
    ``graph`` for the commands that build a graph of the vectors against themselves (they may take the join)."""
    from ..tools.names import INDEXES

    kinds = INDEXES + (("join",) if graph else ())
    last = ("the join of k-means cells (each cell searched exactly among its nearest cells, the vectors read from "
            "disk in storage order)" if graph else "compressed PQ codes whose candidates are re-ranked against the "
            "vectors")
    p.add_argument(flag, default="auto", metavar="auto|" + "|".join(kinds) + "|FACTORY",
                   help=f"the faiss index: auto (chosen by size within --max-memory: exact while it fits half of it, "
                        f"pca for high dimensions, ivf, then {last}; an approximate one is tuned to recall@k >= 0.95 "
                        "and says what it reached), one of those by name, or a faiss index_factory string such as "
                        "IVF4096,PQ32")
    p.add_argument("--max-memory", metavar="SIZE",
                   help=f"memory the command may hold (e.g. 4GB; default: {memory}, never more than its container's "
                        "limit allows); auto chooses within it, the plan is logged before the work, and an index that "
                        "does not fit is refused with the figure")


def corrections_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corrections", help="a review's decisions on --labels (id<TAB>keep|relabel|drop<TAB>new_label: "
                                         "the TSV imgfeat serve --audit's review page downloads)")
