"""Every subcommand walked as a new user would: damaged features files, missing files, empty inputs, wrong
types and ranges, labels that do not match. Each is one clear line on stderr and exit code 2, never a
traceback, a hang or a silent wrong answer."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

import imgfeat
from imgfeat.cli import main
from imgfeat.outputs.formats import FeaturesFileError


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save("ok.npy", rng.random((6, 4), dtype=np.float32))
    (tmp_path / "ok.ids.txt").write_text("".join(f"i{k}\n" for k in range(6)))
    (tmp_path / "notnpy.npy").write_text("hello, not an array")
    np.save("noids.npy", np.zeros((3, 4), np.float32))
    np.save("mismatch.npy", np.zeros((5, 4), np.float32))
    (tmp_path / "mismatch.ids.txt").write_text("a\nb\n")
    np.save("trunc.npy", np.zeros((50, 4), np.float32))
    (tmp_path / "trunc.ids.txt").write_text("".join(f"t{k}\n" for k in range(50)))
    data = (tmp_path / "trunc.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(data[:-100])
    np.save("onedim.npy", np.zeros(4, np.float32))
    (tmp_path / "onedim.ids.txt").write_text("a\n")
    np.save("zero.npy", np.zeros((0, 4), np.float32))
    (tmp_path / "zero.ids.txt").write_text("")
    with h5py.File(tmp_path / "nofeat.h5", "w") as f:
        f["x"] = np.zeros(3)
    (tmp_path / "garbage.h5").write_text("xx")
    (tmp_path / "bad.tsv").write_text("a\t[1, 2]\nb\tnot json\n")
    (tmp_path / "lab.tsv").write_text("i0\tx\ni1\ty\ni2\tx\ni3\ty\n")
    (tmp_path / "strangers.tsv").write_text("zz\tx\nyy\ty\n")
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "emptydir").mkdir()
    return tmp_path


# (file, message, exit status): a damaged or foreign file is 1, a usage error (no such file, nothing in it) 2
DAMAGED = [
    ("notnpy.npy", "not a NumPy .npy file", 1),
    ("noids.npy", "its ids file noids.ids.txt is missing", 1),
    ("mismatch.npy", "2 ids for 5 vectors", 1),
    ("trunc.npy", "not readable as imgfeat features", 1),
    ("onedim.npy", "1-d array", 1),
    ("zero.npy", "holds no feature vectors|PCA got no data", 2),
    ("nofeat.h5", "no 'features' and no 'ids' dataset", 1),
    ("garbage.h5", "not readable as imgfeat features", 1),
    ("bad.tsv", "line 2 is not 'id<TAB>\\[json vector\\]'", 1),
    ("nothere.npy", "must be an imgfeat output file or feature store", 2),
]


@pytest.mark.parametrize("command", [
    ["knn", "--k", "2", "--out", "g.npz"], ["dedup"], ["pca", "fit", "--dim", "2", "--out", "p.npz"],
    ["search", "--query", "i0"], ["probe", "--labels", "lab.tsv"], ["map", "--out", "m.png"],
    ["diffuse", "--labels", "lab.tsv", "--json"],
])
@pytest.mark.parametrize("name,message,status", DAMAGED)
def test_damaged_features_files_are_one_clear_line(files, capsys, command, name, message, status):
    argv = command[:2] + ["--features", name] + command[2:] if command[0] == "pca" else \
        command[:1] + ["--features", name] + command[1:]
    assert main(argv) == status
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_api_raises_the_same_clear_errors(files):
    with pytest.raises(FeaturesFileError, match="2 ids for 5 vectors"):
        imgfeat.load("mismatch.npy")
    with pytest.raises(FeaturesFileError, match="its ids file"):
        imgfeat.load("noids.npy")


def test_a_store_with_a_missing_shard_says_which_file(files, photo_dir, capsys):
    imgfeat.extract(str(photo_dir), "store", backend="torch", workers=0, shard_size=2, quiet=True)
    (files / "store" / "shards" / "000001.npy").unlink()
    for argv in (["knn", "--features", "store", "--k", "1", "--out", "g.npz"], ["export", "store", "x.npy"],
                 ["dedup", "--features", "store"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "store/shards/000001.npy is missing" in err and "imgfeat repair store" in err, err
        assert len(err.strip().splitlines()) == 1


BAD_OPTIONS = [
    (["knn", "--features", "ok.npy", "--k", "0", "--out", "g.npz"], "--k: expected an integer >= 1, got 0"),
    (["knn", "--features", "ok.npy", "--k", "-3", "--out", "g.npz"], "--k: expected an integer >= 1"),
    (["knn", "--features", "ok.npy", "--k", "two", "--out", "g.npz"], "--k: expected an integer >= 1, got 'two'"),
    (["knn", "--features", "ok.npy", "--k", "6", "--out", "g.npz"], "--k must be an integer < the number"),
    (["knn", "--features", "ok.npy", "--k", "2", "--out", "g.xyz"], "--out: expected a file name ending in .npz"),
    (["knn", "--features", "ok.npy", "--k", "2", "--out", "g.npz", "--approx", "nonsense"], "--approx must be one of"),
    (["search", "--features", "ok.npy", "--query", "i0", "--k", "0"], "--k: expected an integer >= 1"),
    (["search", "--features", "ok.npy", "--query", "zz"], "neither ids of ok.npy nor image files"),
    (["dedup", "--features", "ok.npy", "--k", "0"], "--k: expected an integer >= 1"),
    (["dedup", "--features", "ok.npy", "--threshold", "2"], "--threshold must be a cosine"),
    (["probe", "--features", "ok.npy", "--labels", "strangers.tsv"], "2 id\\(s\\) of the labels file have no"),
    (["probe", "--features", "ok.npy", "--labels", "missing.tsv"], "labels file missing.tsv: No such file"),
    (["probe", "--features", "ok.npy", "--labels", "empty.tsv"], "empty.tsv holds no labels"),
    (["probe", "--features", "ok.npy", "--labels", "lab.tsv", "--test-size", "2"], "--test-size: expected a number"),
    (["probe", "--features", "ok.npy", "--labels", "lab.tsv", "--C", "-1"], "--C: expected a number > 0"),
    (["map", "--features", "ok.npy", "--out", "m.xyz"], "--out: expected an image file name"),
    (["map", "--features", "ok.npy", "--labels", "strangers.tsv", "--out", "m.png"], "have no feature vector"),
    (["map", "--features", "ok.npy", "--out", "m.png", "--limit", "0"], "--limit: expected an integer >= 1"),
    (["pca", "fit", "--features", "ok.npy", "--dim", "0", "--out", "p.npz"], "--dim: expected an integer >= 1"),
    (["pca", "fit", "--features", "ok.npy", "--dim", "9", "--out", "p.npz"], "--dim must be an integer in"),
    (["pca", "fit", "--features", "ok.npy", "--dim", "2", "--out", "p.txt"], "--out: expected a file name ending"),
    (["pca", "apply", "--features", "ok.npy", "--pca", "missing.npz", "--out", "r.npy"], "PCA file missing.npz"),
    (["pca", "apply", "--features", "ok.npy", "--pca", "ok.npy", "--out", "r.npy"], "not a PCA written by"),
    (["diffuse", "--features", "ok.npy", "--labels", "strangers.tsv", "--json"], "have no feature vector"),
    (["diffuse", "--features", "ok.npy", "--labels", "lab.tsv", "--background", "missing.npy", "--json"], "--features must be"),
    (["diffuse", "--features", "ok.npy", "--labels", "lab.tsv", "--k", "0"], "--k: expected an integer >= 1"),
    (["info", "missing_store"], "missing_store does not exist"),
    (["info", "emptydir"], "emptydir is not an imgfeat feature store"),
    (["export", "missing_store", "out.npy"], "missing_store does not exist"),
    (["layers", "nosuchmodel"], "MODEL must be one of"),
    (["extract", "--data", "missing_dir", "--out", "f.npy"], "--data must be an existing input"),
    (["extract", "--data", "empty.tsv", "--out", "f.npy"], "the input holds no images to extract"),
    (["extract", "--data", "emptydir", "--out", "f.npy"], "the input holds no images to extract"),
    (["extract", "--data", "lab.tsv", "--out", "f.npy", "--start", "99"], "--start 99 is at or past its end"),
    (["extract", "--data", "emptydir", "--out", "f.npy", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["extract", "--data", "emptydir", "--out", "f.xyz"], "--out must be a file name ending"),
    (["classify", "--features", "ok.npy", "--classes", "a,b"], "--features must be a feature store"),
    (["serve", "ok.npy", "--port", "-1"], "--port: expected an integer >= 0"),
    (["serve", "ok.npy", "--port", "70000"], "--port: expected a port number 0-65535"),
    (["serve", "ok.npy", "--max-k", "0"], "--max-k: expected an integer >= 1"),
    (["serve", "missing.npy"], "FEATURES must be"),
    (["bench", "--images", "0"], "--images: expected an integer >= 1"),
    (["bench", "--sets", "nope"], "--sets: expected a comma list of imagenet, camera"),
    (["bench", "--precision", "fp8"], "--precision: expected a comma list of"),
]


@pytest.mark.parametrize("argv,message", BAD_OPTIONS, ids=[" ".join(a[:4]) for a, _ in BAD_OPTIONS])
def test_bad_options_are_one_clear_error(files, capsys, argv, message):
    with _exit_code() as code:
        code.value = main(argv)
    assert code.value == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err


class _exit_code:
    """main() returns 2 for imgfeat's errors; argparse exits with 2 for usage errors: both count."""

    def __enter__(self):
        self.value = None
        return self

    def __exit__(self, kind, exc, tb):
        if kind is SystemExit:
            self.value = exc.code
            return True
        return False
