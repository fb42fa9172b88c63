"""Issue 31: the kNN graph's query side over a Ray cluster of two one-CPU nodes on this machine
(``ray.cluster_utils.Cluster``, as the extraction engine's fault tests): blocks of rows searched as tasks on the
nodes, each opening the saved index and the memory-mapped features itself; the graph files equal the local ones
byte for byte, for an exact index, for PQ codes re-ranked against the vectors, and for the join of k-means cells
(groups of cells as tasks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import ray_cluster

ray = pytest.importorskip("ray")
pytest.importorskip("faiss")
pytestmark = pytest.mark.slow

from imgfeat.cli import main  # noqa: E402
from imgfeat.outputs.formats import open_matrix, write_blocks  # noqa: E402
from imgfeat.tools.celljoin import CellJoin  # noqa: E402
from imgfeat.tools.graph import save_graph  # noqa: E402
from imgfeat.tools.knn import KNNIndex  # noqa: E402
from imgfeat.tools.raygraph import ray_graph  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster(nodes=2) as c:
        yield c


def _features(tmp_path: Path, n: int = 3000, d: int = 32) -> Path:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 6)).astype(np.float32) @ rng.standard_normal((6, d)).astype(np.float32)
    X += 0.1 * rng.standard_normal(X.shape).astype(np.float32)
    ids = [f"v{i:05d}" for i in range(n)]
    write_blocks(str(tmp_path / "f.npy"), d, "float32", [(ids, ids, X)])
    return tmp_path / "f.npy"


def _same_files(a: str, b: str) -> None:
    for ext in (".int32", ".float32", ".ids.txt"):
        assert Path(a + ext).read_bytes() == Path(b + ext).read_bytes(), ext


def test_ray_graph_equals_the_local_graph(cluster, tmp_path):
    features = _features(tmp_path)
    ids, X = open_matrix(features)
    assert int(ray.cluster_resources()["CPU"]) == 2 and len(ray.nodes()) == 2
    for name, rerank in (("exact", 0.0), ("IVF16,PQ8x4fs", 4.0)):
        knn = KNNIndex(metric="cosine", index=name, nprobe=4, rerank=rerank).fit(X)
        save_graph(knn, X, ids, 10, raw=str(tmp_path / f"local-{rerank}"))
        ray_graph(knn, str(features), ids, 10, str(tmp_path / f"ray-{rerank}"), block=500)  # 6 tasks
        _same_files(str(tmp_path / f"local-{rerank}"), str(tmp_path / f"ray-{rerank}"))
        assert Path(str(tmp_path / f"ray-{rerank}") + ".faiss").is_file()


def test_ray_join_of_cells_equals_the_local_join(cluster, tmp_path):
    """auto's graph above the exact sizes: groups of cells as tasks, the join shared through the object store, its
    rows (not consecutive) written in place; the files are the local join's."""
    features = _features(tmp_path)
    ids, X = open_matrix(features)
    join = CellJoin(metric="cosine", nlist=24, nprobe=2).fit(X)
    assert len(join.groups(500)) >= 4  # several tasks, each of whole cells
    save_graph(join, X, ids, 10, raw=str(tmp_path / "local"))
    ray_graph(join, str(features), ids, 10, str(tmp_path / "ray"), block=500)
    _same_files(str(tmp_path / "local"), str(tmp_path / "ray"))
    assert not Path(str(tmp_path / "ray") + ".faiss").exists()
    I = np.fromfile(str(tmp_path / "ray") + ".int32", np.int32).reshape(-1, 10)
    assert (I >= 0).all() and (I != np.arange(len(ids))[:, None]).all()  # every row written, never itself


def test_knn_engine_ray_from_the_command_line(cluster, tmp_path, capsys):
    features = _features(tmp_path, n=1200)
    assert main(["knn", "--features", str(features), "--k", "5", "--raw", str(tmp_path / "local")]) == 0
    assert main(["knn", "--features", str(features), "--k", "5", "--raw", str(tmp_path / "remote"), "--engine",
                 "ray", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 1200 and out["index"] == "exact"
    _same_files(str(tmp_path / "local"), str(tmp_path / "remote"))
    join = ["--approx", "join", "--nlist", "8"]
    assert main(["knn", "--features", str(features), "--k", "5", "--raw", str(tmp_path / "local-join")] + join) == 0
    assert main(["knn", "--features", str(features), "--k", "5", "--raw", str(tmp_path / "remote-join"), "--engine",
                 "ray", "--json"] + join) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["index"].startswith("join of 8 cells") and out["recall_at_k"] > 0.9
    _same_files(str(tmp_path / "local-join"), str(tmp_path / "remote-join"))
    assert main(["knn", "--features", str(features), "--k", "5", "--out", str(tmp_path / "g.npz"), "--engine",
                 "ray"]) == 2
    assert "--raw PREFIX" in capsys.readouterr().err


def test_a_graph_task_reads_the_vectors_without_the_ids(tmp_path):
    """Issue 49: each Ray task of a graph opens the features' vectors only (``open_vectors``): thousands of tasks
    over 100M rows would each read 2.5 GB of ids. An ids file cut short, which ``open_matrix`` refuses, is not read."""
    from imgfeat.errors import ImgfeatError
    from imgfeat.outputs.formats import open_vectors

    features = _features(tmp_path, n=500)
    _, X = open_matrix(features)
    ids_file = tmp_path / "f.ids.txt"
    ids_file.write_text("".join(ids_file.read_text().splitlines(keepends=True)[:10]))
    with pytest.raises(ImgfeatError):
        open_matrix(features)
    np.testing.assert_array_equal(open_vectors(features), X)
