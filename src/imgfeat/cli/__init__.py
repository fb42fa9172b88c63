"""Command line: a thin layer over :mod:`imgfeat.api` (and the tools). The extract flags are
generated from :class:`ExtractOptions`, the same object the Python API uses: names, types,
defaults and choices come from its fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import typing
from typing import Optional, Sequence

from .._version import __version__
from ..errors import ImgfeatError, disk_full_message, is_disk_full
from ..options import ExtractOptions, option_fields
from ..outputs.names import extensions
from .common import at_least, check_outputs, comma_list, flag_of, positive


def _api():
    """The Python API (the engines, the store), imported by the command that runs: ``--help`` and an argument error
    import nothing beyond the standard library."""
    from .. import api

    return api


def _add_option_arguments(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(ExtractOptions)
    for f in option_fields():
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        hint = hints[f.name]
        if hint is bool:
            parser.add_argument(flag, action="store_true", help=meta["help"])
            continue
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        kind = base if base in (int, float) else str
        default = None if f.default is dataclasses.MISSING else f.default
        constraint = meta.get("constraint")
        parser.add_argument(flag, type=kind, default=default, choices=constraint.choices if constraint else None,
                            required=meta.get("cli_required", False),
                            help=meta["help"] + ("" if default is None else f" (default: {default})"))


def _cmd_extract(args: argparse.Namespace) -> int:
    opts = ExtractOptions(**{f.name: getattr(args, f.name) for f in option_fields()})
    if opts.out is None:
        raise ImgfeatError(f"imgfeat extract needs --out FILE ({' '.join(extensions())}) or a store directory")
    result = _api().extract(options=opts, progress=None)
    if not opts.quiet:
        print(result.summary(), file=sys.stderr)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    if args.clip:
        from ..models.clip import list_pretrained

        for name in list_pretrained():
            print(name)
        return 0
    rows = [("name", "dim", "input", "default layer", "weights", "offline")]
    for spec in _api().list_models():
        h, w = spec.preprocess.crop_size
        rows.append((spec.name, str(spec.dim), f"{h}x{w}", spec.default_layer or "(pooled)",
                     spec.weights.describe(), "yes" if spec.weights.available() else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip())
    print("\nAlso: timm:<name> for any timm model (its pretrained weights download from the hub when online),\n"
          "and clip:<arch>/<pretrained> for CLIP-family models with a text tower (pip install 'imgfeat[clip]'; "
          "`imgfeat models --clip` lists the pairs).")
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    for node in _api().list_layers(args.model):
        print(node)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import format_table, run_bench

    rows, facts = run_bench(model=args.model, random_weights=args.random_weights, sets=args.sets,
                            images=args.images, workdir=args.workdir, seconds=args.seconds,
                            naive_images=args.naive_images, log=lambda m: print(m, file=sys.stderr),
                            precisions=args.precision)
    print(f"machine: {facts['cpu']}, {facts['cores']} cores, GPU: {facts['gpu']}, torch {facts['torch']}; "
          f"model {facts['model']}{' (random weights)' if args.random_weights else ''}")
    print(format_table(rows, markdown=args.markdown))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info = _api().store_info(args.store, full=args.full)
    m, report = info["manifest"], info["report"]
    pending = report["pending"]
    repair = f"imgfeat repair {args.store}"
    if args.json:
        print(json.dumps({"store": args.store, **{k: m.get(k) for k in (
            "model", "layer", "pool", "dim", "dtype", "relu", "l2", "input", "precision", "generation", "updated",
            "live_rows", "live_errors", "dead_rows", "removed_total", "superseded_total", "last_run",
            "last_compaction")}, "skipped": m.get("skipped") or {},
            "shards": len(m.get("segments") or m.get("shards") or []), "pending": pending,
            "corrupt": report["corrupt"], "missing": report.get("missing", []), "damage": report["damage"],
            "repair": repair if report["corrupt"] else None}))
        return 1 if report["corrupt"] else 0
    print(f"store     {args.store}")
    print(f"model     {m['model']}  layer {m['layer']}  pool {m['pool']}  dim {m['dim']}  dtype {m['dtype']}"
          f"  relu {m['relu']}  l2 {m['l2']}")
    print(f"input     {m['input']}  (start {m['start']}, stop {m['stop']})")
    if m.get("generation") is not None:
        segments = m.get("segments") or []
        print(f"state     generation {m['generation']}" + (f", updated {m['updated']}" if m.get("updated") else
                                                           " (nothing published yet)"))
        print(f"shards    {len(segments)} live ({m['shard_size']} inputs each)"
              + (f"; an update is in progress, shards pending: {_ranges(pending)}" if pending else ""))
        print(f"rows      {m.get('live_rows', 0)} live vectors, {m.get('live_errors', 0)} error rows; "
              f"{m.get('dead_rows', 0)} dead rows kept in shards until `imgfeat compact` "
              f"({m.get('removed_total', 0)} removed, {m.get('superseded_total', 0)} superseded over time)")
        last = m.get("last_run") or {}
        if last and not last.get("converted"):
            print("last run  " + ", ".join(f"{last.get(k, 0)} {k}" for k in ("added", "changed", "removed",
                                                                          "unchanged")))
        compacted = m.get("last_compaction")
        if compacted:
            print(f"compacted {compacted.get('at', '')}: {compacted['compacted']} shard(s) rewritten without "
                  f"{compacted['dropped_rows']} dead rows")
    else:
        print(f"shards    {report['done']} done of {m['total_shards'] if m['total_shards'] is not None else '?'}"
              f" ({m['shard_size']} inputs each)" + (f", pending: {_ranges(pending)}" if pending else ""))
        print(f"rows      {report['rows']} vectors, {report['errors']} error rows")
    if m.get("skipped"):
        from collections import Counter

        from ..data.formats import describe_skipped

        print(f"skipped   {describe_skipped(Counter(m['skipped']))}: in the input, not in the store")
    print(f"imgfeat   {m['imgfeat_version']}")
    if m.get("fidelity"):
        from ..engines.fidelity import describe

        print(f"precision {describe(m['fidelity'])}")
    elif m.get("precision", "fp32") != "fp32":
        print(f"precision {m['precision']}")
    missing = report.get("missing", [])
    damaged = [f for f in report["corrupt"] if f not in missing]
    if missing:
        print(f"MISSING   {len(missing)} file(s) of published shards are gone: {', '.join(missing[:10])}")
    if damaged:
        print(f"CORRUPT   {len(damaged)} file(s) are truncated or fail their checksum: {', '.join(damaged[:10])}")
    if report["corrupt"]:
        shards = report["shards_damaged"]
        print(f"repair    `{repair}` re-extracts shard(s) {_ranges(shards)} from their images (or rerun the extract "
              "command that made the store); no reader hands their vectors on until then")
        return 1
    how = "read now" if args.full else "checked once per file state, remembered; --full reads every byte again"
    print(f"verified  every file of the {len(m.get('segments') or m.get('shards') or [])} published shard(s) matches "
          f"its size and checksum ({report['files']} files, {how})")
    return 0


def _cmd_repair(args: argparse.Namespace) -> int:
    from ..engines.update import repair_options
    from ..outputs.store import FeatureStore

    store = FeatureStore.existing(args.store)
    found = store.damage(full=True)
    if not found:
        print(f"imgfeat: nothing to repair: every file of {args.store}'s published shards matches its size and "
              "checksum (each read now)", file=sys.stderr)
        return 0
    shards = sorted({d.shard for d in found})
    for d in found:
        print(f"imgfeat: {store.shard_dir / d.name} {d.what}", file=sys.stderr)
    if args.drop:
        with store.writer_lock():
            rows = store.drop_shards(shards)
        print(f"imgfeat: dropped shard(s) {_ranges(shards)} from the live set: {rows:,} vector(s) fewer; generation "
              f"{store.generation}", file=sys.stderr)
        return 0
    opts = repair_options(store, args.data, args.store)
    print(f"imgfeat: re-extracting shard(s) {_ranges(shards)} from {opts.data}", file=sys.stderr)
    result = _api().extract(options=opts, progress=None)
    print(result.summary(), file=sys.stderr)
    left = FeatureStore.existing(args.store).damage()
    if left:
        print(f"imgfeat: error: {len(left)} file(s) are still damaged after the repair, first "
              f"{store.shard_dir / left[0].name}", file=sys.stderr)
        return 1
    return 0


def _ranges(values: list[int]) -> str:
    out, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(out)


def _cmd_compact(args: argparse.Namespace) -> int:
    from ..outputs.store import FeatureStore

    store = FeatureStore.existing(args.store)
    with store.writer_lock():
        done = store.compact()
    print(f"imgfeat: compacted {args.store}: {done['rewritten']} shard(s) rewritten without their "
          f"{done['dropped_rows']} dead rows; {done['files_removed']} unreferenced file(s) removed "
          f"({done['bytes_freed'] / 1e6:.1f} MB)", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if args.to == "lance":
        from ..outputs.lance import export_lance
        from ..tools.labels import read_labels

        files = dict(spec.split("=", 1) if "=" in spec else ("label", spec) for spec in args.labels)
        done = export_lance(args.store, args.out, {name: read_labels(path) for name, path in files.items()},
                            verify=True if args.verify else None)
        what = (f"{done['added']} added, {done['updated']} updated, {done['removed']} removed" if done["written"]
                else "nothing to change: the dataset already holds this state")
        if done.get("repaired"):
            what += f"; {done['repaired']} row(s) that differed from the store (or repeated an id) written again"
        what += "; every row compared with the store" + ("" if done.get("verified") else
                                                         " by id, path and labels (--verify compares the vectors too)")
        print(f"imgfeat: {args.store} (generation {done['generation']}) -> {args.out}: {what}; {done['rows']} rows, "
              f"version {done['version']}", file=sys.stderr)
        if args.json:
            print(json.dumps(done))
        return 0
    if args.labels:
        raise ImgfeatError("--labels adds label columns to a Lance dataset (--to lance); a file export has none")
    from ..outputs.checks import check_output_file

    check_output_file(args.out, "OUT", [("STORE", args.store)])  # a file's checks (a dataset is a folder or a URI)
    n = _api().export_store(args.store, args.out)
    print(f"imgfeat: exported {n} vectors from {args.store} -> {args.out}", file=sys.stderr)
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help, when it has one worth saying (not None, not a flag's False) and the
    help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and "default" not in text and default not in (None, False, argparse.SUPPRESS)
                and not isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction,
                                            argparse._VersionAction))):
            shown = ",".join(default) if isinstance(default, (tuple, list)) else "%(default)s"
            text += f" (default: {shown})"
        return text


def _set_formatter(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _set_formatter(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgfeat", description="Deep feature vectors for image collections.")
    parser.add_argument("--version", action="version", version=f"imgfeat {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    ext = sub.add_parser("extract", help="one feature vector per image",
                         description="Extract one feature vector per image and stream them to --out.")
    _add_option_arguments(ext)
    ext.set_defaults(func=_cmd_extract)
    models = sub.add_parser("models", help="list the registered backbones")
    models.add_argument("--clip", action="store_true", help="list the clip:<arch>/<pretrained> pairs open_clip knows")
    models.set_defaults(func=_cmd_models)
    from ..bench import SETS
    from ..models.names import PRECISIONS

    bench = sub.add_parser("bench", help="measure forward ceiling, decode, end-to-end and naive rates",
                           description="Generate JPEG sets from real photos and measure, in one run: the forward "
                                       "ceiling per backend and batch size, the physical limit, decode rates per "
                                       "worker count, imgfeat end-to-end with default flags and a naive baseline.")
    bench.add_argument("--model", default="efficientnet_lite0", help="the backbone to measure")
    bench.add_argument("--random-weights", action="store_true", help="for models whose weights are not offline")
    bench.add_argument("--sets", default=("imagenet", "camera"), type=comma_list(tuple(SETS)),
                       help="comma list of: imagenet (500x375), camera (4000x3000)")
    bench.add_argument("--images", type=at_least(1), default=300, help="JPEGs per set (generated once, then reused)")
    bench.add_argument("--naive-images", type=at_least(1), default=40, help="images timed for the naive baseline")
    bench.add_argument("--seconds", type=positive, default=3.0, help="time per forward measurement")
    bench.add_argument("--precision", default=("fp32",), type=comma_list(PRECISIONS, "all"),
                       help="comma list of fp32, bf16, int8, fp16, or all: end-to-end at each, its ratio to fp32 and "
                            "its fidelity against fp32 (accepted whatever the figures)")
    bench.add_argument("--workdir", default=None, help="where the JPEG sets live (default: the imgfeat cache)")
    bench.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    bench.set_defaults(func=_cmd_bench)
    info = sub.add_parser("info", help="summarise a feature store and verify its shards")
    info.add_argument("store", help="a feature store directory (imgfeat extract --out DIR)")
    info.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    info.add_argument("--full", action="store_true",
                      help="read every file's checksum again, even where the same file state was checked before")
    info.set_defaults(func=_cmd_info)
    repair = sub.add_parser("repair", help="re-extract a store's damaged shards from their images",
                            description="Check every file of a store's published shards (each read now); re-extract "
                                        "each damaged shard from its images, in its place, with the options the "
                                        "store recorded, as its next generation. Inputs whose images are gone are "
                                        "dropped, counted.")
    repair.add_argument("store", help="a feature store directory")
    repair.add_argument("--data", default=None,
                        help="the input the store was made from, where it moved or the store does not record it "
                             "(default: the input the store records)")
    repair.add_argument("--drop", action="store_true",
                        help="drop the damaged shards' rows from the live set instead, as the next generation (their "
                             "images are gone for good); said with the count")
    repair.set_defaults(func=_cmd_repair, param_flags={"store": "STORE"})
    compact = sub.add_parser("compact", help="rewrite a store's shards without their removed and superseded rows",
                             description="Rewrite the shards of a feature store that hold dead rows (images "
                                         "removed from the input, or superseded by a changed file) without them, "
                                         "and delete the files no published state refers to. Readers see the old "
                                         "state or the new one, never a mix.")
    compact.add_argument("store", help="a feature store directory")
    compact.set_defaults(func=_cmd_compact, param_flags={"store": "STORE"})
    export = sub.add_parser("export", help="convert a feature store to one file (" + " ".join(extensions()) + "), or "
                                           "keep a Lance dataset in step with it (--to lance)")
    export.add_argument("store", help="a feature store directory")
    export.add_argument("out", help="the file to write; its extension picks the format (" + " ".join(extensions()) + ")"
                                    "; with --to lance, the dataset's path or URI")
    export.add_argument("--to", choices=("file", "lance"), default="file",
                        help="lance: a Lance dataset (pip install 'imgfeat[lance]') with id (its primary key), path, "
                             "vector and label columns, updated in place on the next export: rows added, changed "
                             "and removed since, nothing written when nothing changed")
    export.add_argument("--labels", action="append", default=[], metavar="[NAME=]TSV",
                        help="with --to lance: a column NAME (default: label) from a TSV id<TAB>label; repeatable")
    export.add_argument("--verify", action="store_true",
                        help="with --to lance: compare every vector of the dataset with the store's (done anyway "
                             "while the store's vectors are under 2 GiB; ids, paths and labels are always compared)")
    export.add_argument("--json", action="store_true", help="with --to lance: print what was done as JSON")
    export.set_defaults(func=_cmd_export, param_flags={"out": "OUT", "store": "STORE"})
    from .serve import add_parser as add_serve
    from .text import add_parsers as add_text
    from .tools import add_parsers

    add_parsers(sub)
    add_text(sub)
    add_serve(sub)
    layers = sub.add_parser("layers", help="list the node names --layer accepts for a model")
    layers.add_argument("model", help="a model name (imgfeat models) or timm:<name>")
    layers.set_defaults(func=_cmd_layers, param_flags={"model": "MODEL"})
    _set_formatter(parser)
    return parser


def _message(exc: ImgfeatError, args: argparse.Namespace) -> str:
    """The error as the user should read it: a parameter is named by the flag they typed (``--data``, or the
    command's own name for it, ``param_flags``), not by the Python name behind it."""
    text = str(exc)
    param = getattr(exc, "param", None)
    if param and f"The '{param}' parameter" in text:
        text = text.replace(f"The '{param}' parameter", flag_of(args, param), 1)
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_Format())
    handler.addFilter(_own_info_only)
    level = logging.DEBUG if args.verbose else logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, handlers=[handler])
    try:
        check_outputs(args)
        return args.func(args)
    except ImgfeatError as exc:  # a usage error exits 2; a damaged file (``exit_code``) 1
        print(f"imgfeat: error: {_message(exc, args)}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("imgfeat: interrupted; no partial output was left under the final name", file=sys.stderr)
        return 130
    except MemoryError as exc:  # numpy says how much it asked for; the machine had less
        asked = f" ({exc})" if str(exc) else ""
        print(f"imgfeat: error: out of memory{asked}; this machine has {_available()} available. "
              + _memory_advice(args), file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader of stdout went away (`imgfeat ... --json | head`): stop quietly, as Unix tools do; stdout
        # is pointed at /dev/null so the interpreter's final flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:  # after BrokenPipeError, one of its kinds
        if not is_disk_full(exc):
            raise
        print(f"imgfeat: error: {disk_full_message(exc, _output_of(args), _written_before(exc, args))}",
              file=sys.stderr)
        return 1


def _available() -> str:
    from ..tools.memory import available_bytes, human

    return human(available_bytes())


def _memory_advice(args: argparse.Namespace) -> str:
    """How to make the command fit, by what it was doing."""
    hints = []
    if hasattr(args, "max_memory"):
        hints.append("--max-memory sets what it may hold (it works in blocks that fit, or says what it needs)")
    if hasattr(args, "index") or hasattr(args, "approx"):
        hints.append("a compressed index (e.g. IVF4096,PQ32 for --index/--approx) holds 32 bytes a vector instead of "
                     "all of them")
    hints.append("nothing half-written was left under the output's name")
    return "; ".join(hints)


def _output_of(args: argparse.Namespace) -> Optional[str]:
    """The first output the command declared (``output_files``, ``output_dirs``, ``output_prefixes``), or the store
    it changes: where a full disk most likely is."""
    names = [*getattr(args, "output_files", ()), *getattr(args, "output_dirs", ()),
             *getattr(args, "output_prefixes", ()), "out", "store"]
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, str):
            return value
    return None


def _written_before(exc: OSError, args: argparse.Namespace) -> str:
    """What was left on disk when it filled up, and how to go on, by command."""
    written = getattr(exc, "imgfeat_written", None)  # set by the engines: (store?, shards, images)
    if written is not None and written[0]:
        return (f"{written[1]} shard(s) ({written[2]:,} images) of this run were finished and are kept; free some "
                "space and rerun the same command: it resumes where it stopped")
    if args.func is _cmd_extract and written is not None:
        return (f"{written[2]:,} vectors were computed but the output is not written (nothing half-written is left "
                "under its name); free some space and rerun, or write to a store (--out DIR), which resumes")
    if args.func is _cmd_compact:
        return ("the store is unchanged (compaction publishes only when every shard is rewritten); free some space "
                "and rerun imgfeat compact")
    if args.func is _cmd_extract:
        return ("nothing half-written is left under the output's name; free some space and rerun the same command "
                "(a store, --out DIR, resumes where it stopped)")
    if hasattr(args, "workdir") and args.func is not _cmd_bench:  # dedup, diffuse: their work files
        return ("its work files are removed and the output is not written; free some space, or give --workdir a "
                "folder on a disk with room, and rerun the command")
    return "the output is incomplete; free some space and rerun the command"


class _Format(logging.Formatter):
    """``imgfeat: message`` for what the user is told, ``imgfeat: WARNING: message`` when something is wrong."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
        return f"imgfeat: {level}{record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else "")


def _own_info_only(record: logging.LogRecord) -> bool:
    """Without -v: imgfeat's own INFO lines (an accepted fidelity, a scaled index) and everyone's warnings."""
    return record.levelno >= logging.WARNING or record.name.startswith("imgfeat") or record.levelno < logging.INFO
