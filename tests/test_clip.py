"""CLIP-family models (open_clip) without downloadable weights: a tiny CLIP built from a config dict with
seeded random weights, saved as a checkpoint and loaded with --weights. Image features equal open_clip's
encode_image and text embeddings its encode_text; search by text and zero-shot classify equal hand
computations on the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

open_clip = pytest.importorskip("open_clip")

from helpers import PATIENCE, write_image  # noqa: E402

import imgfeat  # noqa: E402
from imgfeat.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCH = "ImgfeatTinyCLIP"
MODEL = f"clip:{ARCH}/none"
CONFIG = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}
TEXTS = ["a photo of a cat", "a rocket on a launch pad", "a cup of coffee", "an astronaut"]


def make_tiny_clip(root: Path) -> dict:
    """The tiny CLIP registered with open_clip, its checkpoint, 12 PNG images and open_clip's own transform."""
    (root / f"{ARCH}.json").write_text(json.dumps(CONFIG))
    open_clip.add_model_config(root / f"{ARCH}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None).eval()
    torch.save(model.state_dict(), root / "tiny.pt")
    images = root / "images"
    images.mkdir()
    for p in sorted((ROOT / "examples" / "images").iterdir()):  # PNG: no reduced-scale JPEG decoding
        Image.open(p).convert("RGB").save(images / f"{p.stem}.png")
    for i in range(6):
        write_image(images / f"noise{i}.png", size=(80, 60), seed=i)
    _, _, transform = open_clip.create_model_and_transforms(ARCH, pretrained=None)
    return {"root": root, "model": model, "weights": str(root / "tiny.pt"), "images": images, "transform": transform}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


def reference_images(tiny, paths) -> np.ndarray:
    with torch.no_grad():
        x = torch.stack([tiny["transform"](Image.open(p)) for p in paths])
        return torch.nn.functional.normalize(tiny["model"].encode_image(x), dim=-1).numpy()


def reference_texts(tiny, texts) -> np.ndarray:
    tok = open_clip.get_tokenizer(ARCH)
    with torch.no_grad():
        return torch.nn.functional.normalize(tiny["model"].encode_text(tok(list(texts))), dim=-1).numpy()


@pytest.fixture(scope="module")
def store(tiny):
    out = tiny["root"] / "store"
    res = imgfeat.extract(str(tiny["images"]), str(out), model=MODEL, weights=tiny["weights"], l2=True, workers=0,
                          backend="torch", quiet=True)
    assert res.n_done == 12
    return out


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
def test_image_features_equal_open_clip_encode_image(tiny, backend):
    paths = sorted(tiny["images"].iterdir())
    res = imgfeat.extract([str(p) for p in paths], model=MODEL, weights=tiny["weights"], l2=True, workers=0,
                          backend=backend)
    assert res.features.shape == (12, 32) and not res.errors
    np.testing.assert_allclose(res.features, reference_images(tiny, paths), atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
def test_embed_text_equals_open_clip_encode_text(tiny, tmp_path, capsys, backend):
    (tmp_path / "q.txt").write_text("\n".join(TEXTS[2:]) + "\n")
    assert main(["embed-text", "--model", MODEL, "--weights", tiny["weights"], "--text", *TEXTS[:2],
                 "--text-file", str(tmp_path / "q.txt"), "--out", str(tmp_path / "q.npy"), "--backend", backend,
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4
    ids, E = imgfeat.load(tmp_path / "q.npy")
    assert ids == TEXTS
    np.testing.assert_allclose(E, reference_texts(tiny, TEXTS), atol=1e-5)


def test_store_records_the_text_tower_and_search_by_text_is_brute_force(tiny, store, capsys):
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["text_tower"] is True and manifest["model"] == MODEL
    assert main(["search", "--features", str(store), "--text", TEXTS[1], "--k", "12", "--weights", tiny["weights"],
                 "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["queries"][TEXTS[1]]
    ids, X = imgfeat.load(store)
    s = np.asarray(X) @ reference_texts(tiny, TEXTS[1:2])[0]
    assert [h["id"] for h in hits] == [ids[i] for i in np.argsort(-s, kind="stable")]
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(s)[::-1], atol=1e-5)


def test_classify_equals_a_hand_computation(tiny, store, tmp_path, capsys):
    classes = ["cat", "rocket", "coffee", "noise", "person", "camera"]
    prompts = ["a photo of a {}.", "a picture of the {}."]
    ids, X = imgfeat.load(store)
    truth = {i: ("noise" if i.startswith("noise") else {"chelsea": "cat", "astronaut": "person"}.get(i, i))
             for i in ids}
    (tmp_path / "truth.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in truth.items()))
    args = ["classify", "--features", str(store), "--classes", ",".join(classes), "--weights", tiny["weights"],
            "--labels", str(tmp_path / "truth.tsv"), "--out", str(tmp_path / "pred.tsv"), "--json"]
    for p in prompts:
        args += ["--prompts", p]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    # by hand: mean of normalised prompt embeddings per class, cosine, softmax(logit_scale * cos)
    T = reference_texts(tiny, [p.format(c) for c in classes for p in prompts]).reshape(len(classes), 2, -1).mean(1)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    scores = np.asarray(X) @ T.T * float(tiny["model"].logit_scale.exp())
    order = np.argsort(-scores, axis=1)
    y = np.array([truth[i] for i in ids])
    assert result["top1"] == pytest.approx(float((np.array(classes)[order[:, 0]] == y).mean()))
    assert result["top5"] == pytest.approx(float((np.array(classes)[order[:, :5]] == y[:, None]).any(1).mean()))
    rows = [line.split("\t") for line in (tmp_path / "pred.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == ids and all(len(r) == 1 + 2 * 5 for r in rows)
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert [r[1] for r in rows] == [classes[j] for j in order[:, 0]]
    np.testing.assert_allclose([float(r[2]) for r in rows], p.max(1), atol=1e-4)
    assert Path(result["confusion_png"]).is_file()


def test_text_queries_refuse_other_weights_and_models_without_text(tiny, store, tmp_path, capsys, image_tsv):
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model(ARCH, pretrained=None).state_dict(), other)
    assert main(["search", "--features", str(store), "--text", "a cat", "--weights", str(other)]) == 2
    assert "other" in capsys.readouterr().err and "weights" in capsys.readouterr().err + "weights"
    plain = tmp_path / "plain"
    imgfeat.extract(str(image_tsv), str(plain), model="squeezenet1_1", workers=0, quiet=True)
    assert main(["search", "--features", str(plain), "--text", "a cat"]) == 2
    assert "no text tower" in capsys.readouterr().err
    assert main(["classify", "--features", str(plain), "--classes", "a,b"]) == 2
    assert "clip:<arch>/<pretrained>" in capsys.readouterr().err
    assert main(["embed-text", "--model", "squeezenet1_1", "--text", "x", "--out", str(tmp_path / "x.npy")]) == 2


def test_offline_without_weights_names_the_file_and_the_fix(tmp_path, capsys, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)  # read at import: no retries against the network
    code = main(["extract", "--data", str(ROOT / "examples" / "images.tsv"), "--out", str(tmp_path / "f.npy"),
                 "--model", "clip:ViT-B-32/laion2b_s34b_b79k", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in err and "--weights FILE" in err
    assert main(["extract", "--data", str(ROOT / "examples" / "images.tsv"), "--out", str(tmp_path / "g.npy"),
                 "--model", "clip:NoSuchArch/x"]) == 2
    assert "open_clip" in capsys.readouterr().err


def test_serve_text_search_on_a_tiny_clip_store(tiny, store):
    requests = pytest.importorskip("requests")
    from imgfeat.serve.app import ServeConfig
    from imgfeat.serve.collection import Collection
    from imgfeat.serve.server import Background

    c = Collection(store, cache=tiny["root"] / "serve-cache")
    with Background(c, ServeConfig(port=0, weights=tiny["weights"])) as srv:
        info = requests.get(srv.url + "api/info", timeout=PATIENCE).json()
        assert info["text"] is True
        r = requests.get(srv.url + "api/search/text", params={"q": TEXTS[2], "k": 5}, timeout=PATIENCE).json()
    ids, X = imgfeat.load(store)
    s = np.asarray(X) @ reference_texts(tiny, TEXTS[2:3])[0]
    assert [h["id"] for h in r["results"]] == [ids[i] for i in np.argsort(-s, kind="stable")[:5]]
    shutil.rmtree(tiny["root"] / "serve-cache", ignore_errors=True)


def test_a_model_onnx_cannot_export_falls_back_to_torch_under_auto(tiny, tmp_path, monkeypatch):
    from imgfeat.models import backends

    def fail(*a, **k):
        raise RuntimeError("Exporting the operator 'aten::something' to ONNX opset version 17 is not supported")

    monkeypatch.setenv("IMGFEAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "export_onnx", fail)
    paths = [str(p) for p in sorted(tiny["images"].iterdir())[:3]]
    res = imgfeat.extract(paths, model=MODEL, weights=tiny["weights"], workers=0, backend="auto")
    assert res.backend == "torch" and "aten::something" in res.backend_report["export_error"]
    with pytest.raises(imgfeat.ImgfeatError, match="use --backend torch"):
        imgfeat.extract(paths, model=MODEL, weights=tiny["weights"], workers=0, backend="onnx")


def test_layer_of_the_image_tower_has_no_text_tower(tiny, tmp_path, capsys):
    assert main(["layers", MODEL]) == 0
    layers = capsys.readouterr().out.split()
    assert any("visual" in n for n in layers)
    node = next(n for n in layers if n.endswith("transformer.resblocks.1.add_1"))  # tokens (N, 17, 64), avg-pooled
    out = tmp_path / "store"
    imgfeat.extract(str(tiny["images"]), str(out), model=MODEL, weights=tiny["weights"], layer=node, workers=0,
                    quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layer"] == node and manifest["text_tower"] is False and manifest["dim"] == 64
    assert main(["search", "--features", str(out), "--text", "a cat", "--weights", tiny["weights"]]) == 2


def test_the_torch_free_tokenizer_gives_open_clips_tokens():
    """Issue 30: the tokenizer that feeds a recorded text export equals open_clip's SimpleTokenizer on its probes and
    on 300 seeded random texts (scripts, punctuation, digits, emoji, entities, long texts); a tokenizer it does not
    reproduce (a reduction mask) is refused."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    from imgfeat.models.tokenizer import PROBES, ClipTokenizer, matching

    ref = SimpleTokenizer(context_length=77)
    fast = matching(lambda t: ref(t).numpy(), default_bpe(), 77)
    assert fast is not None
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ019 .,!?'-_&;#@") + ["'s", "'LL", "&amp;", "é", "ß", "Ω", "ж", "東", "🐱", "\t", "\n", "  "]
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 120))) for _ in range(300)] + list(PROBES)
    assert np.array_equal(fast.encode(texts), ref(texts).numpy())
    again = ClipTokenizer.__new__(ClipTokenizer)
    from tokenizers import Tokenizer

    again.__init__(Tokenizer.from_str(fast.to_json()), 77)
    assert np.array_equal(again.encode(texts[:20]), ref(texts[:20]).numpy())
    assert matching(lambda t: ref(t).numpy(), default_bpe(), 77, reduction=True) is None
    lower = SimpleTokenizer(context_length=77, clean="whitespace")  # keeps capitals: the probes show it
    assert matching(lambda t: lower(t).numpy(), default_bpe(), 77) is None


def test_text_queries_run_without_torch_once_the_text_export_is_recorded(tiny, store, tmp_path, monkeypatch):
    """Issue 30: the first text query of a CLIP store (torch) records its text tower's checked ONNX export and the
    tokenizer; then search --text, classify and serve's text search run in a fresh interpreter without importing
    torch, with the same hits and scores as open_clip's encode_text."""
    import os
    import subprocess
    import sys

    monkeypatch.setenv("IMGFEAT_QUICK", "1")
    monkeypatch.setenv("IMGFEAT_CACHE", str(tmp_path / "cache"))
    assert main(["search", "--features", str(store), "--text", TEXTS[1], "--k", "3", "--weights",
                 tiny["weights"]]) == 0
    assert len(list((tmp_path / "cache" / "quick").glob("text-*.json"))) == 1
    code = f"""
import contextlib, io, json, sys, urllib.parse, urllib.request
from imgfeat.cli import main
out = {{}}
for name, argv in [("search", ["search", "--features", {str(store)!r}, "--text", {TEXTS[1]!r}, "--k", "12",
                               "--weights", {tiny["weights"]!r}, "--json"]),
                   ("classify", ["classify", "--features", {str(store)!r}, "--classes", "cat,rocket,coffee",
                                 "--weights", {tiny["weights"]!r}, "--json", "--out", {str(tmp_path / "p.tsv")!r}])]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0, name
    out[name] = json.loads(buf.getvalue())
from imgfeat.serve.app import ServeConfig
from imgfeat.serve.collection import Collection
from imgfeat.serve.server import Background
with Background(Collection({str(store)!r}, cache={str(tmp_path / "serve-cache")!r}),
                ServeConfig(port=0, weights={tiny["weights"]!r})) as srv:
    url = srv.url + "api/search/text?" + urllib.parse.urlencode({{"q": {TEXTS[2]!r}, "k": 5}})
    out["serve"] = json.loads(urllib.request.urlopen(url, timeout=600).read())
out["heavy"] = [m for m in ("torch", "torchvision", "open_clip") if m in sys.modules]
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PATIENCE,
                         env={**os.environ})
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    ids, X = imgfeat.load(store)
    s = np.asarray(X) @ reference_texts(tiny, TEXTS[1:2])[0]
    hits = out["search"]["queries"][TEXTS[1]]
    assert [h["id"] for h in hits] == [ids[i] for i in np.argsort(-s, kind="stable")]
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(s)[::-1], atol=1e-5)
    s2 = np.asarray(X) @ reference_texts(tiny, TEXTS[2:3])[0]
    assert [h["id"] for h in out["serve"]["results"]] == [ids[i] for i in np.argsort(-s2, kind="stable")[:5]]
    T = reference_texts(tiny, [p.format(c) for c in ("cat", "rocket", "coffee")
                               for p in __import__("imgfeat.tools.zeroshot", fromlist=["x"]).DEFAULT_PROMPTS])
    T = T.reshape(3, -1, T.shape[1]).mean(1)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    top = np.array(["cat", "rocket", "coffee"])[np.argmax(np.asarray(X) @ T.T, axis=1)]
    rows = [line.split("\t") for line in (tmp_path / "p.tsv").read_text().splitlines()]
    assert [r[1] for r in rows] == top.tolist()


def test_a_text_asked_again_is_read_and_the_text_towers_optimised_graph_is_kept(tiny, store, tmp_path, monkeypatch):
    """Issue 48: the text tower's ONNX Runtime graph is optimised once and kept beside its export (a later session
    loads it without optimising), and a text embedded before is read from the export's text cache, not run: the
    same vectors, bit for bit; a cache entry cut short is made again."""
    from imgfeat.engines import quick

    monkeypatch.setenv("IMGFEAT_QUICK", "1")
    monkeypatch.setenv("IMGFEAT_CACHE", str(tmp_path / "cache"))
    assert main(["search", "--features", str(store), "--text", TEXTS[3], "--k", "3", "--weights",
                 tiny["weights"]]) == 0  # the first text query records the text tower's export (torch)

    def encoder():
        enc = quick.query_encoder(store, tiny["weights"], text=True)
        assert isinstance(enc, quick.QuickEncoder)
        return enc

    first = encoder().encode_text(TEXTS[:2])
    np.testing.assert_allclose(first, reference_texts(tiny, TEXTS[:2]), atol=1e-5)
    export = Path(encoder().text["export"])
    from imgfeat.models.runtimes import optimized_path

    assert optimized_path(export).is_file()  # saved by the first session, loaded by the next
    real = quick._runner
    monkeypatch.setattr(quick, "_runner", lambda *a: pytest.fail("the text tower ran for a text it had embedded"))
    np.testing.assert_array_equal(encoder().encode_text(TEXTS[:2]), first)
    entry = quick.TextCache(export.parent / "texts")._file(TEXTS[0])
    entry.write_bytes(entry.read_bytes()[:-4])
    monkeypatch.setattr(quick, "_runner", real)
    np.testing.assert_array_equal(encoder().encode_text(TEXTS[:2]), first)
    assert quick.TextCache(export.parent / "texts").get(TEXTS[0]) is not None  # made again
