"""A lost machine costs its shards, not the run (issue 23): a Ray cluster of several one-CPU nodes on this machine
(``ray.cluster_utils.Cluster``, as Ray's own tests do). A node removed mid-run, an actor killed with SIGKILL, a
node added mid-run, and a shard whose image takes its actor down: the store equals the local engine's.

Faults are injected from the driver after the first shard's report (``engines.ray._ON_REPORT``), so what happens
does not depend on the machine's speed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from helpers import ray_cluster, wait_until, write_image

import imgfeat

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

OPTS = {"model": "squeezenet1_1", "backend": "torch", "batch_size": 2, "shard_size": 2, "quiet": True}


@pytest.fixture
def images(tmp_path) -> Path:
    lines = []
    for i in range(12):
        write_image(tmp_path / "img" / f"{i:02d}.png", size=(64, 48), seed=i)
        lines.append(f"id{i:02d}\timg/{i:02d}.png")
    (tmp_path / "list.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.tsv"


@pytest.fixture
def cluster(monkeypatch):
    tests = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", tests + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("IMGFEAT_PILLOW_PLUGINS", "killer_plugin")  # read by every actor process
    with ray_cluster() as c:
        yield c


def _hook(monkeypatch, action):
    import imgfeat.engines.ray as engine

    calls = []

    def after(report):
        calls.append(report)
        if len(calls) == 1:
            action(report)

    monkeypatch.setattr(engine, "_ON_REPORT", after)
    return calls


def _same_as_local(images, out, tmp_path):
    ref = imgfeat.extract(str(images), str(tmp_path / "local"), workers=0, **OPTS)
    assert ref.n_done == 12
    ids_l, mat_l = imgfeat.load(tmp_path / "local")
    ids_r, mat_r = imgfeat.load(out)
    assert ids_r == ids_l and len(set(ids_r)) == len(ids_r) == 12
    np.testing.assert_allclose(np.asarray(mat_r), np.asarray(mat_l), rtol=1e-5, atol=1e-5)


def _wait_for_cpus(n: int) -> None:
    wait_until(lambda: int(ray.cluster_resources().get("CPU", 0)) == n, f"{n} CPUs in the cluster")


@pytest.mark.timing
def test_a_node_removed_mid_run(cluster, images, tmp_path, monkeypatch):
    node = cluster.add_node(num_cpus=1)
    _wait_for_cpus(2)
    _hook(monkeypatch, lambda report: cluster.remove_node(node))
    out = tmp_path / "store"
    res = imgfeat.extract(str(images), str(out), engine="ray", **OPTS)
    assert res.actors_lost >= 1 and res.shards_retried >= 1 and not res.failed_shards and res.published
    _same_as_local(images, out, tmp_path)


@pytest.mark.timing
def test_an_actor_killed_mid_shard(cluster, images, tmp_path, monkeypatch):
    cluster.add_node(num_cpus=1)
    _wait_for_cpus(2)
    _hook(monkeypatch, lambda report: os.kill(report["pid"], signal.SIGKILL))
    out = tmp_path / "store"
    res = imgfeat.extract(str(images), str(out), engine="ray", **OPTS)
    assert res.actors_lost == 1 and res.shards_retried >= 1 and res.published
    assert "1 actor(s) lost" in res.summary()
    _same_as_local(images, out, tmp_path)


def test_a_node_added_mid_run_gets_shards(cluster, images, tmp_path, monkeypatch):
    seen = {}

    def add(report):
        seen["first"] = report["pid"]
        cluster.add_node(num_cpus=1)
        _wait_for_cpus(2)

    _hook(monkeypatch, add)
    out = tmp_path / "store"
    res = imgfeat.extract(str(images), str(out), engine="ray", **OPTS)
    newcomers = {pid: n for pid, n in res.by_worker.items() if pid != seen["first"]}
    assert newcomers and sum(newcomers.values()) >= 1  # the new node's actor did work
    _same_as_local(images, out, tmp_path)


def test_a_shard_that_kills_its_actor_twice_is_reported_and_the_rest_finish(cluster, images, tmp_path):
    cluster.add_node(num_cpus=1)
    _wait_for_cpus(2)
    (tmp_path / "img" / "bad.killer").write_bytes(b"KILLME" + bytes(100))
    lines = images.read_text().splitlines()
    lines.insert(5, "bad\timg/bad.killer")  # shard 2 (records 4, 5)
    images.write_text("\n".join(lines) + "\n")
    out = tmp_path / "store"
    res = imgfeat.extract(str(images), str(out), engine="ray", **OPTS)
    assert [s for s, _ in res.failed_shards] == [2] and "died 2 times" in res.failed_shards[0][1]
    assert res.actors_lost == 2 and not res.published and res.shards_written == 6  # 7 shards, one not done
    assert "NOT done" in res.summary()
    again = imgfeat.extract(str(images), str(out), engine="ray", **OPTS)
    assert [s for s, _ in again.failed_shards] == [2] and again.shards_written == 0 and again.shards_skipped == 6
