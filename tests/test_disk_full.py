"""A full disk (issue 29.3) is one line, never a traceback: which file system is full, what was kept, that a rerun
resumes; exit status 1. The tests fill a small tmpfs they mount (root only); without the right to mount they skip."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_image

import imgfeat
from imgfeat.cli import main

MODEL = ["--model", "squeezenet1_1", "--backend", "torch", "--workers", "0"]


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs at tmp_path/fs; ``resize(kb)`` changes its size. Skipped where this process may not mount."""
    mnt = tmp_path / "fs"
    mnt.mkdir()

    def resize(kb: int, first: bool = False) -> None:
        opts = f"size={kb}k" if first else f"remount,size={kb}k"
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], check=True, capture_output=True)

    if shutil.which("mount") is None:
        pytest.skip("no mount command: a small file system cannot be made")
    try:
        resize(64, first=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {getattr(exc, 'stderr', exc)!r}")
    try:
        yield mnt, resize
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def photos12(tmp_path):
    folder = tmp_path / "photos"
    for i in range(12):
        write_image(folder / f"p{i:02d}.png", size=(64, 48), seed=i)
    return folder


def fill(mnt: Path) -> None:
    """Take what room is left on the file system (unbuffered writes until it refuses)."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("imgfeat: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_store_on_a_full_disk_says_so_and_a_rerun_finishes_it(small_fs, photos12, capsys):
    mnt, resize = small_fs
    store = mnt / "store"
    assert main(["extract", "--data", str(photos12), "--out", str(store), "--shard-size", "2", *MODEL]) == 1
    line = _one_line_error(capsys)
    assert "no space left on the device holding" in line and str(mnt) in line
    assert "of this run were finished and are kept" in line and "rerun the same command" in line
    resize(1024)
    assert main(["extract", "--data", str(photos12), "--out", str(store), "--shard-size", "2", *MODEL]) == 0
    ids, X = imgfeat.load(str(store))
    assert sorted(ids) == sorted(p.name for p in photos12.iterdir())  # every row once
    assert "already done" in capsys.readouterr().err


def test_a_file_output_on_a_full_disk_leaves_nothing_half_written(small_fs, photos12, capsys):
    mnt, resize = small_fs
    resize(24)
    assert main(["extract", "--data", str(photos12), "--out", str(mnt / "f.npy"), *MODEL]) == 1
    line = _one_line_error(capsys)
    assert "no space left" in line and "nothing half-written is left" in line and "rerun" in line
    assert [p.name for p in mnt.iterdir()] == []


def test_compact_and_audit_on_a_full_disk(small_fs, photos12, tmp_path, capsys):
    mnt, resize = small_fs
    resize(2048)
    store = mnt / "store"
    assert main(["extract", "--data", str(photos12), "--out", str(store), "--shard-size", "4", "--l2", *MODEL]) == 0
    for p in sorted(photos12.iterdir())[:3]:
        p.unlink()
    assert main(["extract", "--data", str(photos12), "--out", str(store), "--shard-size", "4", "--l2", *MODEL]) == 0
    before = imgfeat.load(str(store))
    used = shutil.disk_usage(mnt).used // 1024
    resize(used + 8)  # room for a few small files, not for a rewritten shard
    fill(mnt)
    capsys.readouterr()
    assert main(["compact", str(store)]) == 1
    line = _one_line_error(capsys)
    assert "no space left" in line and "the store is unchanged" in line
    after = imgfeat.load(str(store))
    assert list(after[0]) == list(before[0]) and np.array_equal(np.asarray(after[1]), np.asarray(before[1]))
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{rid}\t{'ab'[i % 2]}\n" for i, rid in enumerate(before[0])))
    assert main(["audit", "--features", str(store), "--labels", str(labels), "--k", "3", "--out",
                 str(mnt / "report")]) == 1
    line = _one_line_error(capsys)
    assert "no space left" in line and "rerun" in line


def test_the_serve_cache_on_a_full_disk_is_a_warning(small_fs, photos12, tmp_path, caplog):
    pytest.importorskip("fastapi")
    from imgfeat.serve.collection import Collection

    mnt, resize = small_fs
    store = tmp_path / "store"
    assert main(["extract", "--data", str(photos12), "--out", str(store), "--l2", *MODEL]) == 0
    fill(mnt)
    c = Collection(store, cache=mnt / "cache", index="IVF2,Flat")  # the index cannot be kept: still served
    assert len(c.search(c.vector(0), 3)) == 3
    D, I = c.neighbour_lists()
    assert I.shape == (12, 11) and c.map()["xy"].shape == (12, 2)
    assert "not cached: no space left on the device" in caplog.text


def test_a_writer_that_hits_a_full_disk_without_mounting_anything(photos12, tmp_path, monkeypatch, capsys):
    """The same rule where the tests may not mount: the third shard's commit raises ENOSPC."""
    from imgfeat.outputs.store import ShardWriter

    real, calls = ShardWriter.commit, []

    def full(self):
        calls.append(self)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.store.path / "shards"))
        return real(self)

    monkeypatch.setattr(ShardWriter, "commit", full)
    store = tmp_path / "store"
    assert main(["extract", "--data", str(photos12), "--out", str(store), "--shard-size", "2", *MODEL]) == 1
    line = _one_line_error(capsys)
    assert f"no space left on the device holding {store / 'shards'}" in line
    assert "2 shard(s) (4 images) of this run were finished and are kept" in line
    monkeypatch.setattr(ShardWriter, "commit", real)
    assert main(["extract", "--data", str(photos12), "--out", str(store), "--shard-size", "2", *MODEL]) == 0
    assert "2 already done" in capsys.readouterr().err
    ids, _ = imgfeat.load(str(store))
    assert sorted(ids) == sorted(p.name for p in photos12.iterdir())


def _vectors(path: Path, n: int = 3000) -> None:
    from test_tools import write_features

    write_features(path, np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32),
                   [f"i{i}" for i in range(n)])


_DEDUP_ON = """
import sys
from imgfeat.cli import main
sys.exit(main(["dedup", "--features", sys.argv[1], "--workdir", sys.argv[2], "--index", "exact", "--out",
               sys.argv[3]]))
"""


def test_dedup_work_files_on_a_full_disk_are_one_line_not_a_bus_error(small_fs, tmp_path):
    """Its work files (the neighbour lists; a graph's files are made the same way) are memory-mapped and written in place: on a full disk the blocks
    they need are refused when the file is made, one line, never a SIGBUS that kills the process when a page of a
    sparse file is written later (run in a child process so that a SIGBUS fails this test, not the suite)."""
    mnt, _ = small_fs  # 64 KB: the lists of 3,000 vectors at k = 10 take 264 KB
    _vectors(tmp_path / "f.npy")
    run = subprocess.run([sys.executable, "-c", _DEDUP_ON, str(tmp_path / "f.npy"), str(mnt), str(tmp_path / "g.tsv")],
                         capture_output=True, text=True)
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])  # -7 / 135 for SIGBUS
    assert "Traceback" not in run.stderr
    assert f"no space left on the device holding {mnt}" in run.stderr and "give --workdir a folder" in run.stderr
    assert not (tmp_path / "g.tsv").exists() and list(mnt.iterdir()) == []  # nothing left behind


def test_a_work_file_that_cannot_be_reserved_without_mounting_anything(tmp_path, monkeypatch, capsys):
    """The same where the tests may not mount: reserving the lists' blocks raises ENOSPC, said in one line with the
    file it was for; a file system that cannot reserve at all (EOPNOTSUPP) gets the plain sparse file."""
    from imgfeat.files import mapped_for_writing

    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, size: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP,
                                                                                                   "not supported")))
    m = mapped_for_writing(tmp_path / "a.npy", (10, 3), np.int32, npy=True)
    m[:] = 7
    m.flush()
    assert np.load(tmp_path / "a.npy").sum() == 210
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, size: (_ for _ in ()).throw(OSError(errno.ENOSPC,
                                                                                                   "No space")))
    _vectors(tmp_path / "f.npy")
    work = tmp_path / "work"
    work.mkdir()
    assert main(["dedup", "--features", str(tmp_path / "f.npy"), "--workdir", str(work), "--index", "exact"]) == 1
    line = _one_line_error(capsys)
    assert f"no space left on the device holding {work}" in line and "float32.npy" in line
    assert list(work.iterdir()) == []
    monkeypatch.setattr(os, "posix_fallocate", real)
    assert main(["dedup", "--features", str(tmp_path / "f.npy"), "--workdir", str(work), "--index", "exact"]) == 0
