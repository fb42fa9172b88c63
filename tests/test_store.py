"""The sharded feature store: layout, resume, refusal of a different job, kill -9 safety,
--shard I/N parts, info / export / load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import imgfeat
from imgfeat.cli import main
from imgfeat.outputs.store import FeatureStore, StoreMismatchError

from helpers import expected_ids as _expected_ids
from helpers import PATIENCE, die_before_publishing, write_image

ROOT = Path(__file__).resolve().parents[1]


def _run(tsv, out, **kw):
    kw = {"model": "squeezenet1_1", "backend": "torch", "workers": 0, "batch_size": 3, "shard_size": 5, **kw}
    return imgfeat.extract(str(tsv), str(out), **kw)


def test_store_layout_manifest_and_load(image_tsv, tmp_path):
    out = tmp_path / "features"
    res = _run(image_tsv, out)
    assert (res.n_done, res.n_failed, res.shards_written) == (23, 2, 5)
    assert f"2 failed (reasons in {out}/shards/*.errors.tsv)" in res.summary()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total_inputs"] == 25 and manifest["total_shards"] == 5
    assert [s["shard"] for s in manifest["shards"]] == [0, 1, 2, 3, 4]
    assert manifest["shards"][1]["errors"] == 1 and manifest["shards"][1]["rows"] == 4
    assert sorted(p.name for p in (out / "shards").iterdir() if p.name.startswith("000001")) == [
        "000001.done.json", "000001.errors.tsv", "000001.ids.parquet", "000001.inputs.parquet", "000001.npy"]
    ids, mat = imgfeat.load(out)
    assert ids == _expected_ids() and mat.shape == (23, 512)
    ref = imgfeat.extract(str(image_tsv), model="squeezenet1_1", backend="torch", workers=0)
    full = np.asarray(mat)
    np.testing.assert_allclose(full, ref.features, atol=1e-5)  # batch 3 vs 32: float rounding only
    np.testing.assert_array_equal(mat[[0, 22, 5]], full[[0, 22, 5]])
    np.testing.assert_array_equal(mat[3:9], full[3:9])
    np.testing.assert_array_equal(mat[-1], full[-1])
    np.testing.assert_array_equal(mat[2, 10:20], full[2, 10:20])
    assert sum(len(b) for b in mat.iter_blocks(4)) == 23
    assert "missing" in (out / "shards" / "000001.errors.tsv").read_text()


def test_rerun_resumes_and_skips_done_shards(image_tsv, tmp_path, capsys, monkeypatch):
    out = tmp_path / "features"
    with die_before_publishing():
        _run(image_tsv, out)
    assert imgfeat.load(out)[0] == []  # readers never see an unpublished state
    (out / "shards" / "000002.done.json").unlink()  # as if the run had died in shard 2
    (out / "shards" / "000003.npy").write_bytes(b"garbage")  # and shard 3's vectors were never renamed
    (out / "shards" / "000003.done.json").unlink()
    capsys.readouterr()
    res = _run(image_tsv, out, workers=2, progress=True)
    assert (res.shards_written, res.shards_skipped, res.n_done) == (2, 3, 9)  # img18 in shard 3 is bad
    assert "25/25" in capsys.readouterr().err  # the bar counts the shards done by the earlier run
    manifest = json.loads((out / "manifest.json").read_text())  # counted in the same pass, skipped shards too
    assert (manifest["total_inputs"], manifest["total_shards"], len(manifest["shards"])) == (25, 5, 5)
    ids, mat = imgfeat.load(out)
    assert ids == _expected_ids()
    assert FeatureStore(out).verify()["corrupt"] == []


def test_a_different_job_is_refused(image_tsv, tmp_path):
    out = tmp_path / "features"
    _run(image_tsv, out)
    with pytest.raises(StoreMismatchError, match="layer: store has 'features.12', this run 'features.9'"):
        _run(image_tsv, out, layer="features.9")
    with pytest.raises(StoreMismatchError, match="model"):
        _run(image_tsv, out, model="efficientnet_lite0")


def test_parts_together_equal_the_whole(image_tsv, tmp_path):
    whole = tmp_path / "whole"
    _run(image_tsv, whole)
    parts = tmp_path / "parts"
    a = _run(image_tsv, parts, shard="0/2")
    b = _run(image_tsv, parts, shard="1/2")
    assert (a.shards_written, b.shards_written) == (3, 2)
    ids_w, mat_w = imgfeat.load(whole)
    ids_p, mat_p = imgfeat.load(parts)
    assert ids_p == ids_w
    np.testing.assert_array_equal(np.asarray(mat_p), np.asarray(mat_w))
    # file outputs: the parts are disjoint and cover the input
    r = [imgfeat.extract(str(image_tsv), model="squeezenet1_1", backend="torch", workers=0, shard_size=4,
                         shard=f"{i}/3") for i in range(3)]
    assert sorted(sum((x.ids for x in r), [])) == _expected_ids()


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after the raising line runs, no except/finally cleans up the store."""


def test_manifest_appears_whole_or_not_at_all(image_tsv, tmp_path, monkeypatch):
    """A run killed while creating the manifest leaves no manifest, so the rerun starts cleanly.

    (It used to create the file first and write it after: killed in between, the store was left
    with an empty manifest.json that no rerun could read.)
    """
    import imgfeat.files as store_mod

    out = tmp_path / "features"
    real_link = os.link

    def killed_before_link(src, dst):
        if Path(dst).name != "manifest.json":
            return real_link(src, dst)
        assert json.loads(Path(src).read_text())["dim"] == 512  # the temporary file is complete
        raise _Killed

    monkeypatch.setattr(store_mod.os, "link", killed_before_link)
    with pytest.raises(_Killed):
        _run(image_tsv, out)
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(store_mod.os, "link", real_link)
    res = _run(image_tsv, out)
    assert res.n_done == 23 and json.loads((out / "manifest.json").read_text())["total_inputs"] == 25
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


def test_manifest_without_hard_links_and_a_second_writer(image_tsv, tmp_path, monkeypatch):
    import imgfeat.files as store_mod

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(store_mod.os, "link", no_links)
    out = tmp_path / "features"
    _run(image_tsv, out)
    assert imgfeat.load(out)[0] == _expected_ids()
    with pytest.raises(StoreMismatchError, match="layer"):  # an existing manifest is never overwritten
        _run(image_tsv, out, layer="features.9")


def test_damaged_manifest_is_a_clear_error(image_tsv, tmp_path):
    out = tmp_path / "features"
    _run(image_tsv, out)
    (out / "manifest.json").write_text("")
    with pytest.raises(imgfeat.ImgfeatError, match="manifest.json is damaged"):
        _run(image_tsv, out)
    assert main(["info", str(out)]) != 0


def test_bad_shard_argument():
    with pytest.raises(imgfeat.InvalidParameterError, match="'shard' parameter"):
        imgfeat.extract(".", shard="2/2")


def test_info_and_export(image_tsv, tmp_path, capsys):
    out = tmp_path / "features"
    _run(image_tsv, out)
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "generation 1" in text and "5 live" in text and "23 live vectors, 2 error rows" in text and "verified" in text
    assert main(["export", str(out), str(tmp_path / "all.parquet")]) == 0
    ids, mat = imgfeat.load(tmp_path / "all.parquet")
    assert ids == _expected_ids() and mat.shape == (23, 512)
    npy = out / "shards" / "000004.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF  # flip one bit of one vector
    npy.write_bytes(bytes(data))
    assert main(["info", str(out)]) == 1
    assert "CORRUPT" in capsys.readouterr().out


@pytest.mark.timing
@pytest.mark.slow
def test_kill_9_at_any_moment_then_rerun_loses_and_duplicates_nothing(tmp_path):
    """Really kill a running extraction (SIGKILL) several times, then finish it."""
    n = 60
    lines = []
    for i in range(n):
        write_image(tmp_path / "img" / f"{i:03d}.jpg", size=(300, 200), seed=i)
        lines.append(f"id{i:03d}\timg/{i:03d}.jpg")
    (tmp_path / "list.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "imgfeat.cli", "extract", "--data", str(tmp_path / "list.tsv"), "--out", str(out),
           "--model", "squeezenet1_1", "--backend", "torch", "--batch-size", "2", "--shard-size", "4",
           "--workers", "1", "--quiet"]
    rng = np.random.default_rng(0)
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        before = len(FeatureStore(out).done_shards()) if (out / "manifest.json").exists() else 0
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline and proc.poll() is None:  # wait for progress, then kill mid-flight
            if (out / "manifest.json").exists() and len(FeatureStore(out).done_shards()) > before:
                break
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0, 0.4)))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2
    subprocess.run(cmd, check=True, timeout=PATIENCE)
    ids, mat = imgfeat.load(out)
    assert ids == [f"id{i:03d}" for i in range(n)]  # each exactly once, in input order
    ref = imgfeat.extract(str(tmp_path / "list.tsv"), model="squeezenet1_1", backend="torch", workers=0)
    np.testing.assert_allclose(np.asarray(mat), ref.features, atol=1e-5)
    assert FeatureStore(out).verify()["corrupt"] == []
    assert not list((out / "shards").glob("*.partial"))


def test_store_identity_of_a_center_crop_model_is_unchanged(image_tsv, tmp_path):
    """Stores written before crop_mode existed still resume: the default mode is not recorded."""
    store = tmp_path / "store"
    imgfeat.extract(str(image_tsv), str(store), model="squeezenet1_1", backend="torch", workers=0)
    manifest = json.loads((store / "manifest.json").read_text())
    assert "crop_mode" not in manifest["preprocess"] and manifest["preprocess"]["resize_size"] == 256


def test_engines_table_matches_the_option():
    from imgfeat.engines import ENGINES
    from imgfeat.options import ENGINES as NAMES

    assert tuple(ENGINES) == NAMES


def test_store_matrix_slices_and_arrays_equal_the_live_rows(tmp_path):
    """Issue 30: a StoreMatrix read whole or by slices (step 1 part by part, other steps by index) equals the
    concatenated live rows, across empty parts, parts with dead rows and negative bounds."""
    from imgfeat.outputs.store import StoreMatrix

    rng = np.random.default_rng(0)
    files, keeps, live = [], [], []
    for i, n in enumerate([5, 0, 7, 3, 9, 1]):
        a = rng.normal(size=(n, 4)).astype(np.float32)
        np.save(tmp_path / f"{i}.npy", a)
        files.append(tmp_path / f"{i}.npy")
        keep = None if i % 2 == 0 else np.sort(rng.choice(n, n // 2, replace=False)).astype(np.int64)
        keeps.append(keep)
        live.append(a if keep is None else a[keep])
    ref = np.concatenate(live)
    m = StoreMatrix(files, 4, np.float32, keeps)
    assert np.array_equal(np.asarray(m), ref) and np.asarray(m, dtype=np.float64).dtype == np.float64
    for sl in (slice(None), slice(2, 9), slice(3, 3), slice(-4, None), slice(0, 100), slice(None, None, 2),
               slice(8, 1, -1), slice(5, 6), slice(len(ref) - 1, None)):
        assert np.array_equal(m[sl], ref[sl]), sl
    assert np.array_equal(m[[0, -1, 3]], ref[[0, -1, 3]]) and np.array_equal(m[4], ref[4])


def test_one_vector_identity_from_a_run_and_from_its_manifest(image_tsv, tmp_path):
    """Issue 30: the identity a run computes is the one its store records and reads back; a manifest written before
    a field existed reads its default; the store compares exactly these fields and the job's scope."""
    from imgfeat.engines.pipeline import build_pipeline, vector_identity
    from imgfeat.options import ExtractOptions
    from imgfeat.outputs.identity import SCOPE, VectorIdentity
    from imgfeat.outputs.store import IDENTITY, FeatureStore

    out = tmp_path / "store"
    imgfeat.extract(str(image_tsv), str(out), model="squeezenet1_1", backend="torch", workers=0, l2=True)
    manifest = FeatureStore.existing(out).manifest
    read = VectorIdentity.from_manifest(manifest)
    opts = ExtractOptions(model="squeezenet1_1", backend="torch", workers=0, l2=True)
    import torch

    made = vector_identity(build_pipeline(opts.model_part, opts.exec_part, torch.device("cpu")), opts.post_part, "fp32")
    assert read == VectorIdentity(**made.as_dict()) and read.l2 and read.dim == 512
    old = {k: v for k, v in manifest.items() if k != "precision"}
    assert VectorIdentity.from_manifest(old).precision == "fp32"
    assert IDENTITY == VectorIdentity.keys() + SCOPE
    assert read.model_key("v") == VectorIdentity(**{**read.as_dict(), "l2": False}).model_key("v")  # model part only
