"""Issue 32: a store kept in step with a Lance dataset (``imgfeat export STORE --to lance PATH``): a round trip equal
to the store bit for bit, an add/change/remove/rename followed by a second export equal to a fresh export, a third
export that writes nothing, two exports at once that leave no duplicate id, another identity refused, and the
dataset read by DuckDB and Polars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_image

lance = pytest.importorskip("lance", reason="pylance is not installed (pip install 'imgfeat[lance]')")

import imgfeat  # noqa: E402
from imgfeat.cli import main  # noqa: E402
from imgfeat.errors import ImgfeatError  # noqa: E402
from imgfeat.outputs.lance import KEY, export_lance  # noqa: E402

MODEL = dict(model="squeezenet1_1", backend="torch", workers=0, quiet=True)


def _ex(folder: Path, out: Path):
    return imgfeat.extract(str(folder), str(out), **{**MODEL, "shard_size": 3})


def _rows(uri) -> dict:
    t = lance.dataset(str(uri)).to_table()
    ids = t.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id twice in the dataset"
    vectors = np.stack(t.column("vector").to_numpy(zero_copy_only=False)) if len(ids) else np.zeros((0, 0))
    return {i: (p, v) for i, p, v in zip(ids, t.column("path").to_pylist(), vectors)}


def _store_rows(store) -> dict:
    from imgfeat.outputs.store import FeatureStore

    return {i: (p, np.asarray(v)) for ids, paths, X in FeatureStore(store).iter_shards()
            for i, p, v in zip(ids, paths, X)}


def _same(uri, store) -> None:
    got, want = _rows(uri), _store_rows(store)
    assert sorted(got) == sorted(want)
    for rid, (path, vector) in want.items():
        assert got[rid][0] == path and np.array_equal(got[rid][1], vector), rid  # bit for bit


def test_round_trip_follow_updates_and_no_op(folder, tmp_path):
    store, uri = tmp_path / "store", tmp_path / "ds.lance"
    _ex(folder, store)
    first = export_lance(store, str(uri))
    assert first["written"] and first["added"] == 5 and first["rows"] == 5
    _same(uri, store)
    ds = lance.dataset(str(uri))
    meta = json.loads(ds.schema.metadata[b"imgfeat"])
    assert meta["identity"]["model"] == "squeezenet1_1" and meta["identity"]["dim"] == 512
    assert ds.schema.field("id").metadata == {b"lance-schema:unenforced-primary-key": b"true"}
    assert str(ds.schema.field("vector").type) == "fixed_size_list<item: float>[512]"

    names = sorted(p.name for p in folder.iterdir())
    write_image(folder / "zz_new.png", size=(120, 90), seed=11)  # add
    write_image(folder / names[0], size=(80, 60), seed=5)  # change
    st = (folder / names[0]).stat()
    os.utime(folder / names[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (folder / names[1]).unlink()  # remove
    (folder / names[2]).rename(folder / "renamed.jpg")  # rename
    _ex(folder, store)
    second = export_lance(store, str(uri))
    assert second["written"] and (second["added"], second["updated"], second["removed"]) == (2, 1, 2)
    _same(uri, store)
    fresh = export_lance(store, str(tmp_path / "fresh.lance"))
    assert sorted(_rows(tmp_path / "fresh.lance")) == sorted(_rows(uri)) and fresh["rows"] == second["rows"]
    version = lance.dataset(str(uri)).version
    third = export_lance(store, str(uri))
    assert not third["written"] and lance.dataset(str(uri)).version == version == third["version"]


def test_labels_duckdb_polars_and_another_identity(folder, tmp_path, capsys):
    import duckdb
    import polars as pl

    store, uri = tmp_path / "store", tmp_path / "ds.lance"
    _ex(folder, store)
    names = sorted(p.name for p in folder.iterdir())
    (tmp_path / "cls.tsv").write_text("".join(f"{n}\t{'cat' if i % 2 else 'dog'}\n" for i, n in enumerate(names)))
    assert main(["export", str(store), str(uri), "--to", "lance", "--labels", f"cls={tmp_path / 'cls.tsv'}",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 5
    ds = lance.dataset(str(uri))  # noqa: F841 - read by name in DuckDB's SQL
    counts = duckdb.sql("SELECT cls, count(*) AS n, count(DISTINCT id) AS ids FROM ds GROUP BY cls ORDER BY cls").fetchall()
    assert counts == [("cat", 2, 2), ("dog", 3, 3)]
    frame = pl.scan_lance(str(uri)).filter(pl.col("cls") == "cat").select("id", "vector").collect()
    assert sorted(frame["id"].to_list()) == [names[1], names[3]] and len(frame["vector"][0]) == 512
    with pytest.raises(ImgfeatError, match="other --labels"):
        export_lance(store, str(uri))

    meta = json.loads(ds.schema.metadata[b"imgfeat"])
    meta["identity"]["model"] = "resnet50"
    ds.update_schema_metadata({"imgfeat": json.dumps(meta)})
    with pytest.raises(ImgfeatError, match="another identity.*model resnet50.*model squeezenet1_1"):
        export_lance(store, str(uri), {"cls": {}})


def test_two_exports_at_once_leave_no_duplicate_id(folder, tmp_path):
    """Two export processes started together on an existing dataset, after the store gained rows: whichever order
    Lance commits them in, every id is there once and the dataset equals the store."""
    store, uri = tmp_path / "store", tmp_path / "ds.lance"
    _ex(folder, store)
    export_lance(store, str(uri))
    for i in range(4):
        write_image(folder / f"new{i}.png", size=(70 + i, 50), seed=20 + i)
    _ex(folder, store)
    argv = [sys.executable, "-m", "imgfeat", "export", str(store), str(uri), "--to", "lance"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    assert all(rc == 0 for *_, rc in results), results
    _same(uri, store)
    assert lance.dataset(str(uri)).count_rows() == 9


def test_export_of_a_non_imgfeat_dataset_is_refused(folder, tmp_path):
    import pyarrow as pa

    store, uri = tmp_path / "store", tmp_path / "other.lance"
    _ex(folder, store)
    lance.write_dataset(pa.table({"id": ["a"], KEY: [1]}), str(uri))
    with pytest.raises(ImgfeatError, match="did not write"):
        export_lance(store, str(uri))


def test_the_readmes_lance_snippets_work_as_written(folder, tmp_path, monkeypatch, capsys):
    """The README's "Query your vectors with DuckDB" and "Search with Lance" blocks, run as written next to a dataset
    exported as the README's command does."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Vectors where the rest of your data lives", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(snippets) == 2
    store = tmp_path / "store"
    _ex(folder, store)
    names = sorted(p.name for p in folder.iterdir())
    (tmp_path / "labels.tsv").write_text("".join(f"{n}\t{'cat' if i % 2 else 'dog'}\n" for i, n in enumerate(names)))
    monkeypatch.chdir(tmp_path)
    command = re.search(r"```bash\n(imgfeat export .*?)\n```", section).group(1).split()
    assert main(command[1:]) == 0
    for code in snippets:
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "dog" in out and names[0] in out  # DuckDB's table, then the nearest rows to the first vector
