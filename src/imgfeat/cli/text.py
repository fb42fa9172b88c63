"""Text commands for CLIP-family stores: ``classify`` (zero-shot labels) and ``embed-text``."""

from __future__ import annotations

from pathlib import Path

from ..errors import ImgfeatError
from ..models.names import BACKENDS
from ..outputs.names import extensions
from .common import at_least, emit, features_arg, store_encoder, weights_args


def _read_texts(args) -> list[str]:
    texts = list(args.text or [])
    if args.text_file:
        try:
            with open(args.text_file, encoding="utf-8") as fh:
                texts += [line.rstrip("\r\n") for line in fh if line.strip()]
        except OSError as exc:
            raise ImgfeatError(f"--text-file {args.text_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ImgfeatError(f"--text-file {args.text_file} is not UTF-8 text (one text per line)") from None
    if not texts:
        raise ImgfeatError("give the texts with --text T [T ...] or --text-file FILE (one per line)")
    return texts


def _classify(args) -> int:
    import numpy as np

    from ..outputs.formats import open_matrix
    from ..tools.labels import align, read_labels
    from ..tools.probe import confusion_png
    from ..tools.zeroshot import DEFAULT_PROMPTS, ZeroShotClassifier, prompts_for

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    templates = args.prompts or list(DEFAULT_PROMPTS)
    enc = store_encoder(args, "classify embeds the class prompts", text=True)
    T = enc.encode_text(prompts_for(classes, templates))
    scale, bias, sigmoid = enc.text_scoring()
    clf = ZeroShotClassifier(classes=classes, n_templates=len(templates), logit_scale=scale, logit_bias=bias,
                             sigmoid=sigmoid).fit(T)
    ids, X = open_matrix(args.features)
    k = min(args.top_k, len(classes))
    result: dict = {"n": len(ids), "classes": classes, "templates": len(templates), "out": args.out}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            for s in range(0, len(ids), 65536):
                P = clf.predict_proba(X[s:s + 65536])
                order = np.argsort(-P, axis=1)[:, :k]
                for rid, row, p in zip(ids[s:s + 65536], order, P):
                    fh.write(rid + "".join(f"\t{classes[j]}\t{p[j]:.5f}" for j in row) + "\n")
    lines = [f"zero-shot over {len(classes)} classes x {len(templates)} prompts for {len(ids)} vectors"
             + (f" -> {args.out} (id, then top-{k} label<TAB>probability)" if args.out else "")]
    if args.labels:
        Xl, yl, _ = align(ids, X, read_labels(args.labels), require_all=False)
        report = clf.report(Xl, yl)
        png = str(Path(args.out or args.labels).with_suffix(".confusion.png"))
        confusion_png(report, png)
        result.update(top1=report["top1"], top5=report["top5"], labelled=report["n"], per_class=report["per_class"],
                      confusion_png=png)
        lines.append(f"against {args.labels}: top-1 {report['top1']:.4f}, top-5 {report['top5']:.4f} on "
                     f"{report['n']} labelled vectors; confusion matrix -> {png}")
    return emit(args, result, lines)


def _embed_text(args) -> int:
    from ..outputs.formats import write_blocks
    from ..models.backbone import build_feature_model
    from ..models.clip import text_embeddings
    from ..models.registry import get_model_spec

    spec = get_model_spec(args.model)
    if not spec.text_tower:
        raise ImgfeatError(f"{args.model} has no text tower: embed-text needs a clip:<arch>/<pretrained> model")
    texts = _read_texts(args)
    from ..models.backends import text_executor
    from ..options import available_cores

    model = build_feature_model(spec, None, None, args.weights, args.random_weights)
    run = text_executor(model.body, model.body.tokenize(texts[:64]), args.backend, available_cores())
    E = text_embeddings(model.body, texts, run=run)
    n = write_blocks(args.out, E.shape[1], "float32", [(texts, [""] * len(texts), E)])
    return emit(args, {"out": args.out, "n": n, "dim": int(E.shape[1]), "weights": model.fingerprint()},
                 [f"{n} text embeddings ({E.shape[1]}-d, L2-normalised, {spec.name}) -> {args.out}"])


def add_parsers(sub) -> None:
    c = sub.add_parser("classify", help="zero-shot labels from class names (CLIP-family stores)")
    features_arg(c)
    c.add_argument("--classes", required=True, help="comma-separated class names")
    c.add_argument("--prompts", action="append", metavar="TEMPLATE",
                   help="a prompt template with {} for the class name; repeatable (default: an ensemble of 7)")
    c.add_argument("--labels", help="TSV id<TAB>label: print top-1/top-5 accuracy and write a confusion PNG")
    c.add_argument("--top-k", type=at_least(1), default=5, help="labels written per image")
    c.add_argument("--out", help="TSV id, then top-k label<TAB>probability")
    weights_args(c)
    c.set_defaults(func=_classify, output_files=("out",), param_flags={"path": "--features"})
    e = sub.add_parser("embed-text", help="text embeddings of a CLIP-family model")
    e.add_argument("--model", required=True, help="clip:<arch>/<pretrained>")
    e.add_argument("--text", nargs="+", help="texts")
    e.add_argument("--text-file", help="one text per line")
    e.add_argument("--weights", help="an open_clip checkpoint file instead of the pretrained weights")
    e.add_argument("--random-weights", action="store_true", help="seeded random weights (speed tests)")
    e.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="runs the text tower (auto: torch; onnx/openvino: exported once, cached, checked)")
    e.add_argument("--out", required=True, help="output file (" + " ".join(extensions()) + "); ids are the texts")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_embed_text, output_files=("out",))


__all__ = ["add_parsers"]
