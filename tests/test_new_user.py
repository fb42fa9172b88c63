"""What a new user hits following the README (issue 19): inputs never overwritten, outputs checked before any
work, one clear line instead of a traceback, weights as the store recorded them, defaults that agree across
tools, and options that do nothing refused instead of ignored."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import PATIENCE, write_image

import imgfeat
from imgfeat.cli import main

pytest.importorskip("faiss")


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _never(*args, **kwargs):
    raise AssertionError("the work started before the output was checked")


@pytest.fixture
def work(tmp_path, monkeypatch, photos):
    """A working folder with a TSV of the example photos, a small .npy of features with ids, labels."""
    monkeypatch.chdir(tmp_path)
    names = sorted(p.name for p in photos.glob("*.jpg"))
    (tmp_path / "list.tsv").write_text("".join(f"{n}\t{photos / n}\n" for n in names))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", X)
    (tmp_path / "f.ids.txt").write_text("".join(f"i{k}\n" for k in range(60)))
    (tmp_path / "lab.tsv").write_text("".join(f"i{k}\t{'ab'[k % 2]}\n" for k in range(60)))
    return tmp_path


# ----------------------------------------------------------------------------- data loss and silent writes
def test_an_output_that_is_the_input_is_refused(work, capsys):
    before = (work / "list.tsv").read_bytes()
    assert main(["extract", "--data", "list.tsv", "--out", "list.tsv"]) == 2
    assert "is the input --data list.tsv: refusing to overwrite it" in _err(capsys)
    assert (work / "list.tsv").read_bytes() == before


def test_an_output_inside_the_input_folder_is_refused(work, photo_dir, capsys):
    for out in (photo_dir / "f.npy", photo_dir / "store"):
        assert main(["extract", "--data", str(photo_dir), "--out", str(out)]) == 2
        assert "is inside the input folder --data" in _err(capsys)
        assert not out.exists()


def test_a_folder_that_is_not_a_store_is_refused_as_a_store(work, photo_dir, tmp_path, capsys):
    other = tmp_path / "my_photos"
    other.mkdir()
    write_image(other / "holiday.jpg")
    assert main(["extract", "--data", "list.tsv", "--out", str(other)]) == 2
    err = _err(capsys)
    assert "is a folder that is not a feature store: it holds 1 entry (holiday.jpg)" in err
    assert sorted(os.listdir(other)) == ["holiday.jpg"]


@pytest.mark.parametrize("out,message", [
    ("/proc/x.npy", "cannot be written"),
    ("no/such/folder/f.npy", "the folder no/such/folder does not exist"),
    ("adir.npy", "is a folder; give a file name"),
])
def test_an_unwritable_extract_output_is_refused_before_the_model_is_built(work, capsys, monkeypatch, out, message):
    import imgfeat.engines.fidelity as local  # the model is built there, imported by the engine when needed

    (work / "adir.npy").mkdir()
    monkeypatch.setattr(local, "build_measured", _never)
    assert main(["extract", "--data", "list.tsv", "--out", out]) == 2
    assert message in _err(capsys)


@pytest.mark.parametrize("argv,never", [
    (["pca", "fit", "--features", "f.npy", "--dim", "2", "--out", "/proc/p.npz"], "imgfeat.tools.pca.StreamingPCA.fit"),
    (["pca", "apply", "--features", "f.npy", "--pca", "p.npz", "--out", "missing/r.npy"], None),
    (["knn", "--features", "f.npy", "--k", "3", "--out", "/proc/g.npz"], "imgfeat.tools.knn.KNNIndex.fit"),
    (["knn", "--features", "f.npy", "--k", "3", "--raw", "missing/g"], "imgfeat.tools.knn.KNNIndex.fit"),
    (["dedup", "--features", "f.npy", "--out", "adir"], "imgfeat.tools.dedup.neighbour_lists"),
    (["predict", "--features", "f.npy", "--probe", "probe.pkl", "--out", "/proc/p.tsv"], None),
    (["map", "--features", "f.npy", "--out", "/proc/m.png"], "imgfeat.tools.maps.embed_2d"),
    (["map", "--features", "f.npy", "--out", "m.png", "--mosaic", "missing/mo.png"], "imgfeat.tools.maps.embed_2d"),
    (["diffuse", "--features", "f.npy", "--labels", "lab.tsv", "--out", "/proc/d.tsv"],
     "imgfeat.tools.diffusion.LabelDiffusion.fit"),
    (["probe", "--features", "f.npy", "--labels", "lab.tsv", "--out-dir", "/proc/probe"],
     "imgfeat.tools.probe.LinearProbe.fit"),
    (["export", "store", "/proc/e.npy"], None),
])
def test_unwritable_tool_outputs_are_refused_before_any_work(work, capsys, monkeypatch, argv, never):
    (work / "adir").mkdir()
    if never:
        monkeypatch.setattr(never, _never)
    assert main(argv) == 2
    err = _err(capsys)
    assert "cannot be written" in err or "does not exist" in err or "is a folder" in err, err


# ----------------------------------------------------------------------------- one line, not a traceback
def test_an_ivf_factory_larger_than_the_data_is_scaled_down_with_a_warning(work, capsys, caplog):
    assert main(["knn", "--features", "f.npy", "--k", "3", "--approx", "IVF65536,Flat", "--out", "g.npz",
                 "--json"]) == 0
    assert "IVF65536,Flat needs at least 2555904 vectors" in caplog.text and "using IVF1,Flat" in caplog.text
    assert np.load(work / "g.npz")["I"].shape == (60, 3)


def test_an_index_that_cannot_train_on_the_data_says_why(work, capsys):
    assert main(["knn", "--features", "f.npy", "--k", "3", "--approx", "IVF4,PQ4", "--out", "g.npz"]) == 2
    assert "cannot be trained on 60 vectors" in _err(capsys)


@pytest.mark.parametrize("kind", ["missing", "features pickle", "npz"])
def test_predict_with_something_else_than_a_probe(work, capsys, kind):
    path = {"missing": "nope.pkl", "features pickle": "feat.pkl", "npz": "x.npz"}[kind]
    if kind == "features pickle":
        (work / "feat.pkl").write_bytes(pickle.dumps({"i0": np.zeros(3)}))
    if kind == "npz":
        np.savez(work / "x.npz", a=np.zeros(2))
    assert main(["predict", "--features", "f.npy", "--probe", path, "--out", "p.tsv"]) == 2
    err = _err(capsys)
    assert f"--probe {path}" in err
    assert ("No such file" in err) if kind == "missing" else ("not a" in err and "probe" in err)


def test_a_binary_labels_file_is_one_line(work, capsys):
    assert main(["probe", "--features", "f.npy", "--labels", "f.npy"]) == 2
    assert "labels file f.npy is not UTF-8 text" in _err(capsys)


def test_embed_text_with_a_missing_text_file(work, capsys):
    pytest.importorskip("open_clip")
    assert main(["embed-text", "--model", "clip:RN50/openai", "--text-file", "missing.txt", "--out", "t.npy",
                 "--random-weights"]) == 2
    assert "--text-file missing.txt: No such file" in _err(capsys)


def test_weights_files_that_do_not_fit_are_one_line(work, capsys):
    import torch
    import torchvision

    np.save(work / "w.npy", np.zeros(3))
    assert main(["extract", "--data", "list.tsv", "--out", "a.npy", "--model", "squeezenet1_1", "--weights",
                 "w.npy", "--backend", "torch"]) == 2
    assert "is a NumPy array file (.npy): expected a state dict" in _err(capsys)
    torch.save(torchvision.models.squeezenet1_0(weights=None).state_dict(), work / "sq10.pth")
    assert main(["extract", "--data", "list.tsv", "--out", "b.npy", "--model", "squeezenet1_1", "--weights",
                 "sq10.pth", "--backend", "torch"]) == 2
    err = _err(capsys)
    assert len(err.strip().splitlines()) == 1, err
    assert "file sq10.pth does not fit squeezenet1_1" in err and "tensors have other shapes" in err


def test_a_closed_pipe_ends_quietly(work):
    X = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    np.save(work / "big.npy", X)
    (work / "big.ids.txt").write_text("".join(f"v{k}\n" for k in range(2000)))
    queries = " ".join(f"v{k}" for k in range(200))
    cmd = (f"{sys.executable} -m imgfeat search --features big.npy --k 50 --json --query {queries} | head -c 300 "
           ">/dev/null")
    out = subprocess.run(["bash", "-c", cmd], cwd=work, capture_output=True, text=True, timeout=PATIENCE)
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr


# ----------------------------------------------------------------------------- offline and non-default weights
@pytest.mark.parametrize("model", ["timm:resnet18", "clip:ViT-B-32/laion2b_s34b_b79k"])
def test_an_offline_hub_model_fails_at_once_naming_the_cache(work, capsys, model):
    pytest.importorskip("timm")
    if model.startswith("clip:"):
        pytest.importorskip("open_clip")
    assert main(["extract", "--data", "list.tsv", "--out", "x.npy", "--model", model]) == 2
    err = _err(capsys)
    assert "the hub is offline (HF_HUB_OFFLINE is set)" in err
    assert os.path.join(os.environ["HF_HOME"], "hub", "models--") in err and "--weights FILE" in err


def test_hub_offline_notices_an_unreachable_endpoint(monkeypatch):
    import socket

    from imgfeat.models.weights import hub_offline

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert "cannot be reached" in hub_offline(f"http://127.0.0.1:{port}")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub_offline(f"http://127.0.0.1:{server.getsockname()[1]}") is None


def test_stores_remember_how_their_weights_were_chosen(work, photos, capsys, tmp_path):
    import torch
    import torchvision

    rnd = tmp_path / "rnd"
    imgfeat.extract(str(photos), str(rnd), model="squeezenet1_1", random_weights=True, backend="torch", workers=0,
                    quiet=True)
    assert json.loads((rnd / "manifest.json").read_text())["weights_source"] == "random"
    assert main(["search", "--features", str(rnd), "--query", str(photos / "coffee.jpg"), "--k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queries"][str(photos / "coffee.jpg")][0]["id"] == "coffee.jpg"

    torch.manual_seed(1)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), work / "mine.pth")
    own = tmp_path / "own"
    imgfeat.extract(str(photos), str(own), model="squeezenet1_1", weights=str(work / "mine.pth"), backend="torch",
                    workers=0, quiet=True)
    assert main(["search", "--features", str(own), "--query", str(photos / "coffee.jpg")]) == 2
    assert "extracted with --weights mine.pth: pass the same --weights FILE" in _err(capsys)
    assert main(["search", "--features", str(own), "--query", str(photos / "coffee.jpg"), "--k", "1", "--json",
                 "--weights", str(work / "mine.pth")]) == 0
    assert json.loads(capsys.readouterr().out)["queries"][str(photos / "coffee.jpg")][0]["id"] == "coffee.jpg"
    assert main(["search", "--features", str(own), "--query", str(photos / "coffee.jpg"), "--random-weights"]) == 2
    assert "extracted with --weights mine.pth of squeezenet1_1" in _err(capsys)


# ----------------------------------------------------------------------------- surprising results
def test_diffuse_refuses_k_at_or_above_n(work, capsys):
    assert main(["diffuse", "--features", "f.npy", "--labels", "lab.tsv", "--k", "60", "--json"]) == 2
    assert "--k must be an integer below the number of vectors (60)" in _err(capsys)


def test_diffuse_auto_refits_on_every_label_and_says_when_validation_is_small(tmp_path, capsys):
    from test_tools import clusters, write_features, write_labels

    X, y = clusters(n_per=40, k=4, d=16, spread=2.0, seed=3)
    ids = write_features(tmp_path / "ls.h5", X)
    write_labels(tmp_path / "few.tsv", ids[::8], y[::8])  # 20 labels, 5 per class
    write_labels(tmp_path / "test.tsv", ids[1::2], y[1::2])
    args = ["diffuse", "--features", str(tmp_path / "ls.h5"), "--labels", str(tmp_path / "few.tsv"), "--test-labels",
            str(tmp_path / "test.tsv"), "--k", "10", "--json"]
    assert main(args + ["--iterations", "auto"]) == 0
    auto = json.loads(capsys.readouterr().out)
    assert auto["labelled"] == 20 and auto["refit_on_all_labels"] is True  # not 16: the held-out 4 come back
    assert "choice of iterations is noisy" in auto["validation_note"]
    scores = auto["validation"]
    best = max(scores.values())
    assert auto["iterations"] == max(int(t) for t, v in scores.items() if v == best)  # ties: more iterations
    assert main(args + ["--iterations", str(auto["iterations"])]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert fixed["diffusion"] == auto["diffusion"] and fixed["logreg"] == auto["logreg"]


def test_knn_defaults_to_cosine_like_every_tool(work, capsys):
    from imgfeat.tools.knn import KNNIndex

    X = np.load(work / "f.npy") * np.linspace(0.1, 10, 60, dtype=np.float32)[:, None]  # unnormalised
    np.save(work / "u.npy", X)
    (work / "u.ids.txt").write_text((work / "f.ids.txt").read_text())
    assert main(["knn", "--features", "u.npy", "--k", "5", "--out", "g.npz"]) == 0
    _, want = KNNIndex(metric="cosine").fit(X).graph(X, 5)
    _, ip = KNNIndex(metric="ip").fit(X).graph(X, 5)
    got = np.load(work / "g.npz")["I"]
    assert (got == want).all() and not (got == ip).all()


def test_dedup_groups_keep_their_promise():
    """A chain a - b - c where a and c are not near-duplicates: a group never holds both."""
    from imgfeat.tools.dedup import duplicate_groups

    angles = np.radians([0.0, 15.0, 30.0, 90.0, 91.0, 180.0])
    X = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    ids = ["a", "b", "c", "d", "e", "f"]
    threshold = float(np.cos(np.radians(20)))  # a-b and b-c pass, a-c (30 degrees) does not
    groups = duplicate_groups(X, ids, threshold=threshold, k=5)
    Xn = {i: x / np.linalg.norm(x) for i, x in zip(ids, X)}
    for g in groups:
        assert all(float(Xn[g[0]] @ Xn[m]) >= threshold - 1e-6 for m in g[1:])
    assert groups[0] == ["b", "a", "c"] and groups[1] == ["d", "e"]  # b has two pairs: the representative


def test_map_draws_unlabelled_points_grey_behind_the_classes(tmp_path):
    from PIL import Image

    from imgfeat.tools.maps import scatter_png

    coords = np.random.default_rng(0).standard_normal((300, 2)).astype(np.float32)
    labels = [None if i % 3 else f"class{i % 12}" for i in range(300)]
    scatter_png(coords, labels, str(tmp_path / "m.png"))
    px = np.asarray(Image.open(tmp_path / "m.png").convert("RGB")).reshape(-1, 3).astype(int)
    assert (np.abs(px - [200, 200, 200]).sum(axis=1) < 6).sum() > 50  # the grey of unlabelled points


def test_class_colours_are_distinct_beyond_ten():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from imgfeat.tools.maps import class_colours

    for n in (11, 20, 30):
        colours = np.array([c[:3] for c in class_colours(n, plt)])
        dist = np.abs(colours[:, None] - colours[None]).sum(axis=2) + np.eye(n) * 9
        assert len(colours) == n and dist.min() > 0.04


def test_map_mosaic_without_paths_is_refused_before_the_layout(work, capsys, monkeypatch):
    monkeypatch.setattr("imgfeat.tools.maps.embed_2d", _never)
    assert main(["map", "--features", "f.npy", "--out", "m.png", "--mosaic", "mo.png"]) == 2
    assert "does not record image paths" in _err(capsys)


def test_pca_refuses_more_components_than_vectors_allow(work, capsys):
    np.save(work / "six.npy", np.random.default_rng(0).standard_normal((6, 20)).astype(np.float32))
    (work / "six.ids.txt").write_text("".join(f"s{k}\n" for k in range(6)))
    assert main(["pca", "fit", "--features", "six.npy", "--dim", "6", "--out", "p.npz"]) == 2
    assert "--dim must be an integer below the number of vectors fitted (6)" in _err(capsys)
    assert not (work / "p.npz").exists()
    assert main(["pca", "fit", "--features", "six.npy", "--dim", "5", "--out", "p.npz"]) == 0


def test_bench_uses_the_images_asked_for_not_the_whole_cached_set(tmp_path, monkeypatch):
    import imgfeat.bench as bench

    bench.make_image_set(tmp_path, "imagenet", 5)  # an earlier, larger run
    seen = []

    def stop(data, *args, **kwargs):
        seen.append(list(data))
        raise KeyboardInterrupt

    import imgfeat.api

    monkeypatch.setattr(imgfeat.api, "extract", stop)  # bench imports it when it measures (issue 48: not at --help)
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(model="squeezenet1_1", random_weights=True, sets=("imagenet",), images=3, workdir=tmp_path,
                        batch_sizes=(1,), seconds=0.01, naive_images=1, log=lambda m: None)
    assert [Path(p).name for p in seen[0]] == ["00000.jpg", "00001.jpg", "00002.jpg"]


def test_knn_overlap_of_a_tiny_sample_is_not_a_figure():
    from imgfeat.engines.fidelity import _knn_overlap, knn_text

    A = np.random.default_rng(0).standard_normal((11, 4))
    assert _knn_overlap(A, -A, 10) is None
    assert knn_text({"knn10_overlap": None}) == "kNN@10 overlap n/a (needs more than 11 images)"
    B = np.random.default_rng(1).standard_normal((40, 4))
    other = np.random.default_rng(2).standard_normal((40, 4))
    assert _knn_overlap(B, B, 10) == 1.0 and _knn_overlap(B, other, 10) < 0.6


# ----------------------------------------------------------------------------- quiet and misleading
@pytest.mark.parametrize("argv,message", [
    (["extract", "--data", "list.tsv", "--out", "a.npy", "--calibrate", "list.tsv"],
     "--calibrate must be given only with --precision int8"),
    (["extract", "--data", "list.tsv", "--out", "a.npy", "--min-fidelity", "0.5"],
     "--min-fidelity must be given only with a --precision below fp32"),
    (["extract", "--data", "list.tsv", "--out", "a.npy", "--ray-address", "auto"],
     "--ray-address must be given only with --engine ray"),
    (["extract", "--data", "list.tsv", "--out", "a.npy", "--precision", "int8", "--calibrate", "missing.tsv"],
     "--calibrate must be an existing input"),
    (["knn", "--features", "f.npy", "--k", "3", "--out", "g.npz", "--nlist", "8"], "--nlist sets the cells"),
    (["knn", "--features", "f.npy", "--k", "3", "--out", "g.npz", "--approx", "hnsw", "--nlist", "8"],
     "it does nothing with --approx hnsw"),
    (["diffuse", "--features", "f.npy", "--labels", "lab.tsv", "--shots", "2", "--json"],
     "give --novel-classes FILE with it"),
    (["diffuse", "--features", "f.npy", "--labels", "lab.tsv"], "computed and thrown away"),
    (["search", "--features", "x.jpg", "--query", "i0"], "--features must be"),
    (["info", "nonexistent"], "nonexistent does not exist"),
])
def test_options_that_would_do_nothing_and_errors_in_the_users_words(work, capsys, argv, message):
    assert main(argv) == 2
    assert message in _err(capsys)


def test_info_says_a_missing_shard_file_is_missing(work, photo_dir, capsys):
    imgfeat.extract(str(photo_dir), "store", backend="torch", workers=0, shard_size=2, quiet=True)
    (work / "store" / "shards" / "000001.npy").unlink()
    assert main(["info", "store"]) == 1
    out = capsys.readouterr().out
    assert "MISSING   1 file(s) of published shards are gone: 000001.npy" in out and "CORRUPT" not in out
    assert "imgfeat repair store" in out


def test_accepted_fidelity_is_information_and_layers_prints_no_warning(work):
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    out = subprocess.run([sys.executable, "-m", "imgfeat", "layers", "efficientnet_lite0"], capture_output=True,
                         text=True, timeout=PATIENCE, env=env)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    from imgfeat.cli import _Format, _own_info_only

    import logging

    record = logging.LogRecord("imgfeat.engines.fidelity", logging.INFO, "", 0, "int8 (onnx) ...", None, None)
    assert _Format().format(record) == "imgfeat: int8 (onnx) ..." and _own_info_only(record)
    other = logging.LogRecord("numba", logging.INFO, "", 0, "chatter", None, None)
    assert not _own_info_only(other)


@pytest.mark.parametrize("argv,needle", [
    (["knn", "--help"], "(default: 16)"),
    (["search", "--help"], "(default: cosine)"),
    (["probe", "--help"], "(default: logreg)"),
    (["map", "--help"], "(default: tsne)"),
    (["dedup", "--help"], "(default: 0.95)"),
    (["serve", "--help"], "(default: 8765)"),
    (["info", "--help"], "a feature store directory"),
    (["pca", "fit", "--help"], "scale each component to unit variance"),
])
def test_help_says_what_each_option_does_and_its_default(capsys, argv, needle):
    with pytest.raises(SystemExit):
        main(argv)
    assert needle in " ".join(capsys.readouterr().out.split())
