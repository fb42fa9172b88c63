"""Sink conformance: every registered format streams, commits atomically and round-trips through
``imgfeat.load`` and through its own standard library."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

import imgfeat
from imgfeat.files import partial_path
from imgfeat.outputs.formats import extensions, open_sink, output_files
from imgfeat.outputs.sinks import ErrorLog

EXTS = extensions()


def _batches(dim=5, dtype=np.float32):
    rng = np.random.default_rng(0)
    return [
        (["a", "b b", "caf\u00e9"], ["/p/a.jpg", "/p/b.jpg", "/p/c.jpg"], rng.standard_normal((3, dim)).astype(dtype)),
        (["d"], ["/p/d.jpg"], rng.standard_normal((1, dim)).astype(dtype)),
    ]


def _write(path, batches, dtype=np.float32):
    sink = open_sink(path)
    sink.open(batches[0][2].shape[1], np.dtype(dtype))
    for ids, paths, feats in batches:
        sink.write(ids, paths, feats)
    return sink


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip_through_load(tmp_path, ext, dtype):
    out = tmp_path / f"f{ext}"
    batches = _batches(dtype=dtype)
    sink = _write(out, batches, dtype)
    assert not out.exists(), "the final name must appear only at close"
    sink.close()
    ids, mat = imgfeat.load(out)
    assert ids == ["a", "b b", "caf\u00e9", "d"]
    expected = np.concatenate([b[2] for b in batches])
    np.testing.assert_array_equal(np.asarray(mat, dtype=dtype), expected)
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


@pytest.mark.parametrize("ext", EXTS)
def test_abort_leaves_nothing(tmp_path, ext):
    out = tmp_path / f"f{ext}"
    _write(out, _batches()).abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", EXTS)
def test_empty_output_is_valid(tmp_path, ext):
    out = tmp_path / f"f{ext}"
    sink = open_sink(out)
    sink.open(5, np.dtype(np.float32))
    sink.close()
    ids, mat = imgfeat.load(out)
    assert ids == [] and len(mat) == 0


def test_standard_libraries_read_the_files(tmp_path):
    batches = _batches()
    expected = np.concatenate([b[2] for b in batches])
    for ext in (".tsv", ".pkl", ".h5", ".npy", ".parquet"):
        _write(tmp_path / f"f{ext}", batches).close()

    lines = (tmp_path / "f.tsv").read_text().splitlines()
    assert lines[1].split("\t")[0] == "b b"
    np.testing.assert_array_equal(np.array([json.loads(l.split("\t")[1]) for l in lines], np.float32), expected)

    with open(tmp_path / "f.pkl", "rb") as fh:
        d = pickle.load(fh)
    np.testing.assert_array_equal(d["caf\u00e9"], expected[2])

    with h5py.File(tmp_path / "f.h5") as f:
        np.testing.assert_array_equal(f["features"][:], expected)
        assert f["ids"].asstr()[:].tolist() == ["a", "b b", "caf\u00e9", "d"]
        assert f["features"].chunks is not None

    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), expected)
    assert (tmp_path / "f.ids.txt").read_text().splitlines() == ["a", "b b", "caf\u00e9", "d"]
    assert [p.name for p in output_files(tmp_path / "f.npy")] == ["f.npy", "f.ids.txt"]

    table = pq.read_table(tmp_path / "f.parquet")
    assert table.column_names == ["id", "path", "feature"]
    np.testing.assert_array_equal(np.array(table.column("feature").to_pylist(), np.float32), expected)


def test_pickle_refuses_duplicate_ids(tmp_path):
    sink = open_sink(tmp_path / "f.pkl")
    sink.open(2, np.dtype(np.float32))
    assert sink.write(["x", "y"], ["1", "2"], np.ones((2, 2), np.float32)) == []
    rejected = sink.write(["x"], ["3"], np.zeros((1, 2), np.float32))
    assert rejected and rejected[0][0] == 0 and "duplicate id" in rejected[0][1]


def test_unknown_extension_is_a_clear_error(tmp_path):
    with pytest.raises(imgfeat.InvalidParameterError, match="'out' parameter"):
        open_sink(tmp_path / "f.csv")


def test_error_log_commits_and_clears_stale_lists(tmp_path):
    out = tmp_path / "f.tsv"
    log = ErrorLog(out)
    log.write([("id\t1", "/p", "missing: file\ndoes not exist")])
    assert not (tmp_path / "f.tsv.errors.tsv").exists()
    log.close()
    assert (tmp_path / "f.tsv.errors.tsv").read_text() == "id 1\t/p\tmissing: file does not exist\n"
    ErrorLog(out).close()  # a later clean run
    assert not (tmp_path / "f.tsv.errors.tsv").exists()
    assert not partial_path(tmp_path / "f.tsv.errors.tsv").exists()


def test_seen_ids_keeps_the_first_occurrence_across_merged_runs(monkeypatch):
    from imgfeat.outputs.targets import SeenIds

    monkeypatch.setattr(SeenIds, "RECENT", 100)  # many runs and merges on a small input
    seen = SeenIds()
    rng = np.random.default_rng(0)
    stream = [f"id{int(x)}" for x in rng.integers(0, 3000, size=10_000)]
    got = np.concatenate([seen.first(stream[s:s + 37]) for s in range(0, len(stream), 37)])
    first, want = set(), []
    for i in stream:
        want.append(i not in first)
        first.add(i)
    assert got.tolist() == want and len(seen._runs) < 12
