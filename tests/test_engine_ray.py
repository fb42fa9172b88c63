"""--engine ray on a local Ray cluster started by the test (CPU only): the store it writes
equals the local engine's; without Ray the error names the install line."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import imgfeat
from imgfeat.outputs.store import FeatureStore

from helpers import die_before_publishing
from helpers import expected_ids as _expected_ids


def _opts(**kw):
    return {"model": "squeezenet1_1", "backend": "torch", "batch_size": 3, "shard_size": 5, **kw}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_store_equals_local_store(image_tsv, tmp_path, ray_cluster):
    local = tmp_path / "local"
    imgfeat.extract(str(image_tsv), str(local), workers=0, **_opts())
    distributed = tmp_path / "ray"
    res = imgfeat.extract(str(image_tsv), str(distributed), engine="ray", **_opts())
    assert (res.n_done, res.n_failed, res.shards_written) == (23, 2, 5)
    ids_l, mat_l = imgfeat.load(local)
    ids_r, mat_r = imgfeat.load(distributed)
    assert ids_r == ids_l == _expected_ids()
    # actors run 1 thread, the local engine 2: only summation order differs
    np.testing.assert_allclose(np.asarray(mat_r), np.asarray(mat_l), rtol=1e-5, atol=1e-5)
    report = FeatureStore(distributed).verify()
    assert (report["done"], report["total_shards"], report["corrupt"], report["errors"]) == (5, 5, [], 2)
    # resuming through Ray: a run that died before publishing, with two shards undone: only those are redone
    resumed = tmp_path / "resumed"
    with die_before_publishing():
        imgfeat.extract(str(image_tsv), str(resumed), engine="ray", **_opts())
    for k in (1, 3):
        (resumed / "shards" / f"{k:06d}.done.json").unlink()
    again = imgfeat.extract(str(image_tsv), str(resumed), engine="ray", **_opts())
    assert (again.shards_written, again.shards_skipped) == (2, 3)
    assert imgfeat.load(resumed)[0] == _expected_ids()
    # and a second run finds nothing to do: no actor, no model
    assert imgfeat.extract(str(image_tsv), str(resumed), engine="ray", **_opts()).model is None
    # a damaged shard is repaired through Ray as locally: re-extracted in its place (issue 47)
    victim = distributed / "shards" / "000002.npy"
    victim.write_bytes(victim.read_bytes()[:-8])
    healed = imgfeat.extract(str(image_tsv), str(distributed), engine="ray", **_opts())
    assert healed.update["shards_repaired"] == 1 and healed.shards_written == 1
    ids_h, mat_h = imgfeat.load(distributed)
    assert ids_h == ids_l
    np.testing.assert_allclose(np.asarray(mat_h), np.asarray(mat_l), rtol=1e-5, atol=1e-5)


def test_ray_engine_needs_a_store(tmp_path, ray_cluster):
    with pytest.raises(imgfeat.InvalidParameterError, match="feature store directory"):
        imgfeat.extract(".", str(tmp_path / "f.npy"), engine="ray", **_opts())


def test_without_ray_the_error_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(imgfeat.MissingDependencyError, match=r"pip install 'imgfeat\[ray\]'"):
        imgfeat.extract(".", str(tmp_path / "store"), engine="ray", **_opts())


@pytest.mark.slow
def test_ray_measures_a_lower_precision_and_int8_matches_the_local_engine(image_tsv, tmp_path, ray_cluster):
    from imgfeat.engines.fidelity import FidelityError

    with pytest.raises(FidelityError, match="1st-percentile cosine must reach --min-fidelity 0.99999"):
        imgfeat.extract(str(image_tsv), str(tmp_path / "refused"), engine="ray",
                        **_opts(precision="int8", backend="onnx", min_fidelity=0.99999))
    distributed = tmp_path / "ray"
    res = imgfeat.extract(str(image_tsv), str(distributed), engine="ray",
                          **_opts(precision="int8", backend="onnx", min_fidelity=0))
    manifest = FeatureStore(distributed).manifest
    assert manifest["fidelity"]["precision"] == "int8" and manifest["fidelity"]["calibration_images"] == 23
    local = imgfeat.extract(str(image_tsv), str(tmp_path / "local"), workers=0,
                            **_opts(precision="int8", backend="onnx", min_fidelity=0))
    assert res.n_done == local.n_done == 23
    # every actor quantised the same model from the driver's calibration images: the local engine's vectors
    ray_vectors, local_vectors = imgfeat.load(distributed)[1], imgfeat.load(tmp_path / "local")[1]
    np.testing.assert_allclose(np.asarray(ray_vectors), np.asarray(local_vectors), rtol=1e-4, atol=1e-4)
