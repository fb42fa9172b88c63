"""Issue 49: a command's default memory budget is what its container allows, not what the host has free: the memory
cgroup's limit (v2 ``memory.max`` of the cgroup and its ancestors, v1 ``hierarchical_memory_limit``) less the
anonymous memory charged to it. Read from a made-up cgroup tree, and (as root, where cgroup v1 is mounted) from a
real cgroup a child process is moved into."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgfeat.tools.memory import available_bytes, budget, cgroup_available

MB = 2**20


def _v1(tmp_path: Path, limit: int, rss: int, path: str = "/job/step") -> tuple[str, str]:
    proc = tmp_path / "cgroup"
    proc.write_text(f"9:pids:/\n4:memory:{path}\n1:cpu,cpuacct:/\n0::/\n")
    folder = tmp_path / "fs" / "memory" / path.lstrip("/")
    folder.mkdir(parents=True)
    (folder / "memory.stat").write_text(f"cache 123\nrss {rss}\nhierarchical_memory_limit {limit}\n"
                                        f"total_cache 999999\ntotal_rss {rss}\n")
    return str(proc), str(tmp_path / "fs")


def test_a_v1_limit_less_the_anonymous_memory_charged(tmp_path):
    assert cgroup_available(*_v1(tmp_path, 1536 * MB, 200 * MB)) == 1336 * MB  # the page cache is not counted


def test_a_v1_cgroup_without_a_limit_is_none(tmp_path):
    assert cgroup_available(*_v1(tmp_path, 9223372036854771712, 200 * MB)) is None


def test_v2_takes_the_tightest_ancestor_and_its_own_anon(tmp_path):
    root = tmp_path / "fs"
    leaf = root / "kubepods" / "pod1" / "ctr"
    leaf.mkdir(parents=True)
    (root / "kubepods" / "memory.max").write_text("max\n")
    (root / "kubepods" / "pod1" / "memory.max").write_text(f"{1024 * MB}\n")
    (leaf / "memory.max").write_text(f"{4096 * MB}\n")
    (leaf / "memory.stat").write_text(f"anon {100 * MB}\nfile {700 * MB}\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    assert cgroup_available(str(proc), str(root)) == 924 * MB
    (root / "kubepods" / "pod1" / "memory.max").write_text("max\n")
    assert cgroup_available(str(proc), str(root)) == 3996 * MB


def test_v2_in_a_cgroup_namespace_reads_the_root(tmp_path):
    """Inside a container the cgroup is mounted at the root and /proc/self/cgroup says '0::/'."""
    root = tmp_path / "fs"
    root.mkdir()
    (root / "memory.max").write_text(f"{2048 * MB}\n")
    (root / "memory.stat").write_text(f"anon {48 * MB}\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    assert cgroup_available(str(proc), str(root)) == 2000 * MB


def test_no_cgroup_information_is_none(tmp_path):
    assert cgroup_available(str(tmp_path / "missing"), str(tmp_path)) is None
    (tmp_path / "cgroup").write_text("0::/\n")
    assert cgroup_available(str(tmp_path / "cgroup"), str(tmp_path / "nothing-mounted")) is None


def test_the_budget_is_the_containers(monkeypatch):
    from imgfeat.tools import memory

    monkeypatch.setattr(memory, "cgroup_available", lambda: 300 * MB)  # far below what this machine has free
    assert available_bytes() == 300 * MB
    assert budget(None) == 300 * MB and budget("2GB") == 2 * 2**30  # --max-memory still says what it says
    monkeypatch.setattr(memory, "cgroup_available", lambda: None)
    assert available_bytes() > 300 * MB


@pytest.fixture
def v1_cgroup():
    """A real cgroup v1 memory cgroup of 512 MB (root, with the v1 memory controller mounted), removed after."""
    base = Path("/sys/fs/cgroup/memory")
    if not (base / "cgroup.procs").is_file() or os.geteuid() != 0:
        pytest.skip("no cgroup v1 memory controller to make a cgroup in (needs root)")
    folder = base / f"imgfeat-test-{os.getpid()}"
    try:
        folder.mkdir()
        (folder / "memory.limit_in_bytes").write_text(str(512 * MB))
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here: {exc}")
    yield folder
    for _ in range(100):  # bounded: the child has exited, the kernel empties the cgroup
        try:
            folder.rmdir()
            break
        except OSError:
            os.sched_yield()


def test_a_process_in_a_limited_cgroup_budgets_within_the_limit(v1_cgroup):
    code = "from imgfeat.tools.memory import budget; print(budget(None))"
    script = f"echo $$ > {v1_cgroup}/cgroup.procs && exec {sys.executable} -c '{code}'"
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert 0 < int(out.stdout.strip()) <= 512 * MB


class _Huge:
    """A matrix of more rows than int32 can number, never read: the refusal must come first."""

    shape = (2**31, 4)
    ndim = 2
    dtype = __import__("numpy").dtype("float32")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        raise AssertionError("read before the refusal")


@pytest.mark.parametrize("make", ["knn", "join", "dedup"])
def test_more_rows_than_int32_numbers_are_refused_before_any_work(make):
    """Issue 49: row numbers are int32 in neighbour lists, graphs and cells; past 2^31 - 1 rows they would wrap
    silently. One line, before anything is read."""
    pytest.importorskip("faiss")
    from imgfeat.errors import ImgfeatError
    from imgfeat.tools.celljoin import CellJoin
    from imgfeat.tools.dedup import neighbour_lists
    from imgfeat.tools.knn import KNNIndex

    run = {"knn": lambda: KNNIndex(metric="cosine").fit(_Huge()),
           "join": lambda: CellJoin(metric="cosine").fit(_Huge()),
           "dedup": lambda: neighbour_lists(_Huge(), 10)}[make]
    with pytest.raises(ImgfeatError, match="2,147,483,648 vectors are more than the 2,147,483,647 rows"):
        run()


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_search_streams_the_collection_in_blocks_and_equals_the_exact_index(metric):
    """Issue 49: `search` reads the collection a block of rows at a time (never an index of all of it in memory);
    tiny blocks give what faiss's exact index gives."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("faiss")
    from imgfeat.tools.exact import exact_search
    from imgfeat.tools.knn import KNNIndex

    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 16)).astype(np.float32)
    Q = rng.standard_normal((4, 16)).astype(np.float32)
    D, I = exact_search(X, Q, 10, metric, block=7)
    D0, I0 = KNNIndex(metric=metric, index="exact").fit(X).search(Q, 10)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-5)


def test_the_search_command_builds_no_index(tmp_path, monkeypatch, capsys):
    np = pytest.importorskip("numpy")
    pytest.importorskip("faiss")
    from imgfeat.cli import main
    from imgfeat.tools import knn

    X = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", X)
    (tmp_path / "f.ids.txt").write_text("".join(f"r{i}\n" for i in range(300)))
    monkeypatch.setattr(knn.KNNIndex, "fit", lambda *a, **k: pytest.fail("search built an index of the collection"))
    assert main(["search", "--features", str(tmp_path / "f.npy"), "--query", "r5", "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    want = [f"r{j}" for j in np.argsort(-(Xn @ Xn[5]))[1:4]]
    assert [line.split("\t")[2] for line in lines] == want


def test_knn_with_default_flags_makes_a_graph_where_the_exact_index_does_not_fit(tmp_path, capsys):
    """Issue 49: `knn` with default flags chooses its index within the budget (`--approx auto`): exact while it fits
    half of it, else the join of cells, with its recall sampled; before, it asked for the exact index and was
    refused (or, without the container's limit, killed)."""
    import json

    np = pytest.importorskip("numpy")
    pytest.importorskip("faiss")
    from imgfeat.cli import main

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    X = centres[rng.integers(0, 40, 20000)] + 0.3 * rng.standard_normal((20000, 32)).astype(np.float32)
    np.save(tmp_path / "f.npy", X)
    (tmp_path / "f.ids.txt").write_text("".join(f"r{i}\n" for i in range(len(X))))
    argv = ["knn", "--features", str(tmp_path / "f.npy"), "--k", "5", "--raw", str(tmp_path / "g"), "--json"]
    assert main(argv + ["--max-memory", "2MB"]) == 0  # the exact index (2.6 MB) does not fit half of it
    small = json.loads(capsys.readouterr().out)
    assert "exact" not in small["index"] and small["recall_at_k"] >= 0.9
    assert main(argv) == 0  # the machine's budget: exact
    assert json.loads(capsys.readouterr().out)["index"].startswith("exact")
