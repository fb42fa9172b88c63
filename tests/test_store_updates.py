"""A store follows its collection (issue 20): images added, changed, removed and renamed in a folder, a TSV, tar
shards and a zip; after each run the store's live ids equal the input's and every vector equals a fresh
extraction of its file; a second run does nothing; interrupted updates, two writers, readers during an update,
an input that suddenly reads as mostly gone, and stores written before generations."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import PATIENCE, write_image

import imgfeat
from imgfeat.cli import main
from imgfeat.outputs.store import FeatureStore, StoreLockedError

MODEL = dict(model="squeezenet1_1", backend="torch", workers=0, quiet=True)


def _ex(data, out, **kw):
    return imgfeat.extract(str(data) if not isinstance(data, list) else data, str(out),
                           **{**MODEL, "shard_size": 2, **kw})


def _live(out) -> dict:
    ids, mat = imgfeat.load(out)
    assert len(ids) == len(set(ids)), "an id twice in the live view"
    return dict(zip(ids, np.asarray(mat)))


def _fresh(data) -> dict:
    ref = imgfeat.extract(str(data), **MODEL)
    return dict(zip(ref.ids, ref.features))


def _same(out, data) -> None:
    live, ref = _live(out), _fresh(data)
    assert sorted(live) == sorted(ref)
    for k in ref:
        np.testing.assert_allclose(live[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)  # float32 sums differ by ulps


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_added_changed_removed_and_renamed_images_in_a_folder(folder, tmp_path, photos, monkeypatch):
    out = tmp_path / "store"
    first = _ex(folder, out)
    assert first.update == {"added": 5, "changed": 0, "removed": 0, "unchanged": 0, "duplicates": 0, "kept": 0,
                            "converted": 0}
    names = sorted(p.name for p in folder.iterdir())
    shutil.copy(folder / names[1], folder / "aaa_new.jpg")  # sorts first
    (folder / names[0]).unlink()
    res = _ex(folder, out)
    assert (res.update["added"], res.update["removed"], res.update["unchanged"], res.n_done) == (1, 1, 4, 1)
    assert "1 added, 0 changed, 1 removed, 4 unchanged" in res.summary()
    _same(out, folder)

    write_image(folder / names[2], size=(300, 200), seed=7, fmt="JPEG")  # other content under the same name
    _touch_later(folder / names[2])
    res = _ex(folder, out)
    assert (res.update["changed"], res.update["unchanged"], res.n_done) == (1, 4, 1)
    _same(out, folder)

    os.rename(folder / names[3], folder / "renamed.jpg")
    res = _ex(folder, out)
    assert (res.update["added"], res.update["removed"]) == (1, 1)
    _same(out, folder)

    import imgfeat.engines.fidelity as local  # the model is built there, imported by the engine when needed

    def never(*a, **k):
        raise AssertionError("a model was built though nothing changed")

    monkeypatch.setattr(local, "build_measured", never)
    again = _ex(folder, out)  # nothing changed: no decode, no model
    assert again.model is None and again.update["unchanged"] == 5 and again.n_done == 0
    assert "nothing to extract" in again.summary()


def test_a_tsv_edited_in_the_middle(tmp_path, photos):
    names = sorted(p.name for p in photos.glob("*.jpg"))
    tsv = tmp_path / "list.tsv"
    tsv.write_text("".join(f"{n}\t{photos / n}\n" for n in names[:4]))
    out = tmp_path / "store"
    _ex(tsv, out)
    lines = [f"{n}\t{photos / n}\n" for n in names[:4]]
    lines.insert(2, f"inserted\t{photos / names[4]}\n")
    del lines[0]
    tsv.write_text("".join(lines))
    res = _ex(tsv, out)
    assert (res.update["added"], res.update["removed"], res.update["unchanged"]) == (1, 1, 3)
    _same(out, tsv)


def _tar(path: Path, files: dict[str, Path]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, src in files.items():
            tf.add(src, arcname=name)


def test_tar_shards_appear_and_disappear(tmp_path, photos):
    names = sorted(photos.glob("*.jpg"))
    shards = tmp_path / "shards"
    shards.mkdir()
    _tar(shards / "000001.tar", {"a1.jpg": names[0], "a2.jpg": names[1]})
    _tar(shards / "000002.tar", {"b1.jpg": names[2]})
    out = tmp_path / "store"
    pattern = str(shards / "*.tar")
    _ex(pattern, out)
    _tar(shards / "000000.tar", {"z1.jpg": names[3], "z2.jpg": names[4]})  # a new shard that sorts first
    (shards / "000002.tar").unlink()
    res = _ex(pattern, out)
    assert (res.update["added"], res.update["removed"], res.update["unchanged"]) == (2, 1, 2)
    _same(out, pattern)


def test_a_zip_whose_member_changed(tmp_path, photos):
    names = sorted(photos.glob("*.jpg"))
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(names[0], "one.jpg")
        zf.write(names[1], "two.jpg")
    out = tmp_path / "store"
    _ex(archive, out)
    with zipfile.ZipFile(archive, "w") as zf:  # two.jpg now holds another photo; one.jpg moved in the file
        zf.write(names[2], "two.jpg")
        zf.write(names[0], "one.jpg")
    res = _ex(archive, out)
    assert res.update["changed"] == 2 and res.update["added"] == res.update["removed"] == 0
    _same(out, archive)


def test_readers_see_the_old_state_until_the_new_one_is_published(folder, tmp_path, monkeypatch):
    import imgfeat.engines.update as update_mod

    out = tmp_path / "store"
    _ex(folder, out)
    before = _live(out)
    shutil.copy(next(folder.iterdir()), folder / "zz_new.jpg")
    real = update_mod.publish
    seen = {}

    def publish_and_look(store, upd):
        seen["before"] = sorted(_live(out))  # every new shard is written, nothing published
        manifest = real(store, upd)
        seen["after"] = sorted(_live(out))
        return manifest

    monkeypatch.setattr(update_mod, "publish", publish_and_look)
    _ex(folder, out)
    assert seen["before"] == sorted(before) and seen["after"] == sorted(before) + ["zz_new.jpg"]


@pytest.mark.slow
@pytest.mark.timing
def test_kill_9_during_an_update_then_rerun_is_exact(tmp_path, photos):
    src = tmp_path / "img"
    for i in range(24):
        write_image(src / f"{i:03d}.jpg", size=(300, 200), seed=i, fmt="JPEG")
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "imgfeat", "extract", "--data", str(src), "--out", str(out), "--model",
           "squeezenet1_1", "--backend", "torch", "--batch-size", "2", "--shard-size", "4", "--workers", "1",
           "--quiet"]
    subprocess.run(cmd, check=True, timeout=PATIENCE)
    for i in range(24, 48):  # an update of 24 new images and 4 changed ones, killed in the middle
        write_image(src / f"{i:03d}.jpg", size=(300, 200), seed=i, fmt="JPEG")
    for i in range(4):
        write_image(src / f"{i:03d}.jpg", size=(300, 200), seed=100 + i, fmt="JPEG")
        _touch_later(src / f"{i:03d}.jpg")
    store = FeatureStore(out)
    gen = store.generation
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline and proc.poll() is None:  # wait for a new shard, then kill mid-flight
        if len(FeatureStore(out).unpublished()) >= 2:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if killed:
        assert FeatureStore(out).generation == gen  # nothing published: readers still see the old state
        assert sorted(_live(out)) == [f"{i:03d}.jpg" for i in range(24)]
    res = subprocess.run(cmd[:-1], check=True, timeout=PATIENCE, capture_output=True, text=True)
    assert "removed" in res.stderr
    _same(out, src)
    assert FeatureStore(out).verify()["corrupt"] == []


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(folder, tmp_path):
    import socket

    out = tmp_path / "store"
    _ex(folder, out)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "since": "then"}))
        with pytest.raises(StoreLockedError, match=f"pid {sleeper.pid} on this machine, since then"):
            _ex(folder, out)
        (out / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": "elsewhere", "since": "then"}))
        with pytest.raises(StoreLockedError, match="delete .*\\.lock"):
            _ex(folder, out)
    finally:
        sleeper.kill()
        sleeper.wait()
    (out / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "since": "then"}))
    assert _ex(folder, out).model is None  # the pid is gone: its lock is taken over
    assert not (out / ".lock").exists()


def test_an_input_that_reads_as_mostly_gone_needs_prune(tmp_path, photos, capsys):
    src = tmp_path / "many"
    for i in range(20):
        write_image(src / f"{i:02d}.png", seed=i)
    out = tmp_path / "store"
    _ex(src, out)
    for i in range(12):
        (src / f"{i:02d}.png").unlink()
    assert main(["extract", "--data", str(src), "--out", str(out), "--model", "squeezenet1_1", "--backend",
                 "torch"]) == 2
    assert "would remove 12 of the store's 20 inputs (60%)" in capsys.readouterr().err
    assert len(_live(out)) == 20
    res = _ex(src, out, prune=True)
    assert res.update["removed"] == 12
    _same(out, src)
    for p in src.iterdir():
        p.unlink()
    with pytest.raises(imgfeat.ImgfeatError, match="holds no images"):
        _ex(src, out, prune=True)


def test_append_adds_and_never_removes(tmp_path, photos):
    names = sorted(photos.glob("*.jpg"))
    out = tmp_path / "store"
    _ex([(p.name, str(p)) for p in names[:3]], out)
    res = _ex([(p.name, str(p)) for p in names[3:5]], out, append=True)
    assert (res.update["added"], res.update["removed"], res.update["kept"]) == (2, 0, 3)
    assert sorted(_live(out)) == sorted(p.name for p in names[:5])


def test_parts_share_one_plan_and_the_last_publishes(folder, tmp_path):
    out = tmp_path / "store"
    _ex(folder, out, shard_size=1)
    for i in range(3):
        write_image(folder / f"new{i}.png", seed=i)
    first = _ex(folder, out, shard_size=1, shard="0/2")
    assert not first.published and sorted(_live(out)) == sorted(p.name for p in folder.iterdir()
                                                                if not p.name.startswith("new"))
    second = _ex(folder, out, shard_size=1, shard="1/2")
    assert second.published
    _same(out, folder)


def _as_format_1(out: Path) -> None:
    """Make ``out`` a store as written before generations (format_version 1): no segments, no inventories."""
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("generation", "segments", "updated", "live_rows", "live_errors", "dead_rows", "last_run",
                "removed_total", "superseded_total", "options", "extract"):
        manifest.pop(key, None)
    manifest["format_version"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    for p in (out / "shards").glob("*.inputs.parquet"):
        p.unlink()
    for p in (out / "shards").glob("*.done.json"):  # markers as they were: three files, each with its sha256 only
        marker = json.loads(p.read_text())
        marker["files"] = {k: {f: v for f, v in e.items() if f != "xxh3"} for k, e in marker["files"].items()
                           if k != "inputs"}
        p.write_text(json.dumps(marker))


def test_an_old_store_opens_and_updates_once_converted(folder, tmp_path, capsys):
    out = tmp_path / "store"
    _ex(folder, out)
    _as_format_1(out)
    shutil.rmtree(out / "update", ignore_errors=True)
    assert sorted(_live(out)) == sorted(p.name for p in folder.iterdir())  # old stores read as before
    write_image(folder / "zz.png", seed=3)
    assert main(["extract", "--data", str(folder), "--out", str(out), "--model", "squeezenet1_1", "--backend",
                 "torch", "--shard-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "1 added, 0 changed, 0 removed, 5 unchanged" in err and "converted 3 shard(s)" in err
    _same(out, folder)
    assert FeatureStore(out).generation == 2


def test_an_old_store_is_converted_by_its_writer_not_by_readers(folder, tmp_path, capsys):
    """Issue 30: format 1 is converted once, when a writer opens the store (the writer lock: extract, compact);
    readers read it as it is and write nothing."""
    out = tmp_path / "store"
    _ex(folder, out)
    _as_format_1(out)
    before = sorted(p.name for p in out.rglob("*"))
    assert sorted(_live(out)) == sorted(p.name for p in folder.iterdir())
    imgfeat.load(out)
    assert sorted(p.name for p in out.rglob("*")) == before and FeatureStore(out).generation is None
    assert main(["compact", str(out)]) == 0  # the writer lock converts first, then compacts
    store = FeatureStore(out)
    assert store.generation is not None and store.converted == 0 and sorted(_live(out)) == sorted(
        p.name for p in folder.iterdir())
    assert len(list((out / "shards").glob("*.inputs.parquet"))) == len(store.segments())


def test_info_and_compact(folder, tmp_path, capsys):
    out = tmp_path / "store"
    _ex(folder, out)
    victim = sorted(folder.iterdir())[1]
    victim.unlink()
    _ex(folder, out)
    before = _live(out)
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["generation"], info["live_rows"], info["dead_rows"], info["removed_total"]) == (2, 4, 1, 1)
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "generation 2" in text and "4 live vectors" in text and "1 dead rows" in text
    assert main(["compact", str(out)]) == 0
    assert "1 shard(s) rewritten without their 1 dead rows" in capsys.readouterr().err
    after = _live(out)
    assert sorted(after) == sorted(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    store = FeatureStore(out)
    assert store.manifest["dead_rows"] == 0 and store.verify()["corrupt"] == []
    published = {seg["shard"] for seg in store.segments()}
    assert {int(p.name[:6]) for p in (out / "shards").iterdir()} == published
    # issue 29.12: the compaction keeps the last extraction's counts and adds its own line
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "last run  0 added, 0 changed, 1 removed, 4 unchanged" in text
    assert "shard(s) rewritten without 1 dead rows" in text
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["last_run"]["removed"] == 1 and info["last_compaction"]["dropped_rows"] == 1


def test_a_running_server_follows_the_store(folder, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="imgfeat")
    pytest.importorskip("fastapi")
    import requests

    from imgfeat.serve.app import ServeConfig
    from imgfeat.serve.collection import Collection
    from imgfeat.serve.server import Background

    out = tmp_path / "store"
    _ex(folder, out, l2=True)
    names = sorted(p.name for p in folder.iterdir())
    collection = Collection(out, cache=tmp_path / "cache")
    before_index = collection.knn.index_
    with Background(collection, ServeConfig(port=0)) as srv:
        def get(path, **params):
            return requests.get(srv.url + path, params=params, timeout=PATIENCE)

        assert get("api/info").json()["count"] == 5
        write_image(folder / "zz_new.png", size=(120, 90), seed=11)
        (folder / names[0]).unlink()
        _ex(folder, out, l2=True)
        info = get("api/info").json()  # no restart: the next request sees the new state
        assert info["count"] == 5
        assert get(f"api/neighbours/{names[0]}").status_code == 404
        hits = get("api/neighbours/zz_new.png", k=4).json()["results"]
        assert len(hits) == 4 and "zz_new.png" not in [h["id"] for h in hits]
        assert get("thumb/zz_new.png").status_code == 200
        # the index was updated, not rebuilt: same results as a fresh collection of the new state
        live = srv.app.state.live.current
        assert live.generation == 2 and live.knn.index_ is not before_index
        assert "index updated: 1 rows removed, 1 added (of 5)" in caplog.text
        fresh = Collection(out, cache=tmp_path / "cache2")
        q = fresh.vector(fresh.row_of["zz_new.png"])
        assert [h.row for h in live.search(q, 5)] == [h.row for h in fresh.search(q, 5)]
        assert [live.ids[h.row] for h in live.search(q, 5)] == [fresh.ids[h.row] for h in fresh.search(q, 5)]


def test_the_diff_of_a_changed_folder(folder, tmp_path):
    """The diff (one DuckDB join): added, changed, removed, unchanged and repeated ids; what to extract, in input
    order; the dead (shard, position) of the removed and the superseded inputs."""
    from imgfeat.data.sources import ListSource
    from imgfeat.engines.update import diff, write_listing

    out = tmp_path / "store"
    _ex(folder, out)
    names = sorted(p.name for p in folder.iterdir())
    store = FeatureStore(out)
    where = {r["id"]: (r["shard"], r["spos"]) for r in store.inventory().to_pylist()}
    (folder / names[0]).unlink()
    write_image(folder / names[1], seed=5, fmt="JPEG")
    _touch_later(folder / names[1])
    records = [(p.name, str(p)) for p in sorted(folder.iterdir())]
    records += [("new1", str(folder / names[2])), (names[2], str(folder / names[3])), ("new2", str(folder / names[4]))]
    listing = tmp_path / "listing.parquet"
    write_listing(ListSource(tuple(records)), listing, 2)
    upd, pending = diff(store, listing)
    assert (upd.added, upd.changed, upd.removed, upd.unchanged, upd.duplicates) == (2, 1, 1, 3, 1)
    assert upd.inputs == len(records) and pending.tolist() == [0, 4, 6]  # the changed file, the two new ids
    assert sorted((s, p) for s, ps in upd.dead.items() for p in ps.tolist()) == sorted([where[names[0]],
                                                                                         where[names[1]]])
    kept, _ = diff(store, listing, append=True)
    assert (kept.kept, kept.removed) == (1, 0) and sorted(kept.dead) == [where[names[1]][0]]


class _Inventory:
    """What the diff reads of a store: its inventory, shard by shard."""

    def __init__(self, tables) -> None:
        self.tables = tables

    def iter_inventory(self, segments=None):
        return iter(self.tables)


def test_the_diff_runs_out_of_core_with_the_same_answer(tmp_path, monkeypatch):
    """Issue 30: the diff stays within its memory limit by spilling (64 MB, 2 threads, on 400k records a side):
    the same counts, positions and dead pairs as a plain dictionary computation."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgfeat.engines import update
    from imgfeat.engines.update import diff

    monkeypatch.setattr(update, "available_cores", lambda: 2)  # DuckDB's memory per thread: the same on any machine

    rng = np.random.default_rng(0)
    n = 400_000
    stored = np.arange(n)
    listed = np.concatenate([np.delete(stored, rng.choice(n, 3000, replace=False)), np.arange(n, n + 2000)])
    listed = np.insert(listed, rng.choice(len(listed), 500), listed[rng.choice(len(listed), 500)])
    changed = set(rng.choice(n, 4000, replace=False).tolist())
    ids = [f"d/{i:08d}.jpg" for i in listed.tolist()]
    fps = [f"{i}-{'b' if i in changed else 'a'}" for i in listed.tolist()]
    pq.write_table(pa.table({"id": ids, "fp": fps}), tmp_path / "listing.parquet", row_group_size=50_000)
    tables = [pa.table({"id": [f"d/{i:08d}.jpg" for i in range(s, min(n, s + 50_000))],
                        "sfp": [f"{i}-a" for i in range(s, min(n, s + 50_000))],
                        "shard": np.full(min(n, s + 50_000) - s, s // 50_000), "spos": np.arange(min(n, s + 50_000) - s)})
              for s in range(0, n, 50_000)]
    upd, pending = diff(_Inventory(tables), tmp_path / "listing.parquet", memory_limit="64MB")
    first: dict = {}
    for pos, (rid, fp) in enumerate(zip(ids, fps)):
        first.setdefault(rid, (pos, fp))
    store = {f"d/{i:08d}.jpg": (i // 50_000, i % 50_000, f"{i}-a") for i in range(n)}
    want_pending = sorted(p for rid, (p, fp) in first.items() if rid not in store or store[rid][2] != fp)
    want_dead = sorted((s, q) for rid, (s, q, sfp) in store.items() if rid not in first or first[rid][1] != sfp)
    assert pending.tolist() == want_pending
    assert sorted((s, q) for s, qs in upd.dead.items() for q in qs.tolist()) == want_dead
    assert upd.duplicates == len(ids) - len(first) and upd.removed == sum(rid not in first for rid in store)
    assert not list(tmp_path.glob("spill.*"))  # what spilled is gone


@pytest.mark.parametrize("index", ["exact", "ivf"])
def test_duplicates_neighbours_and_uploads_after_each_kind_of_update(folder, tmp_path, photos, index):
    """Issue 29.1: a served store updated by an add, a change, a removal and a rename answers duplicates,
    neighbours and uploads exactly as a server started on the new state (the index is updated, not rebuilt)."""
    pytest.importorskip("fastapi")
    import requests

    from helpers import wait_until

    from imgfeat.serve.app import ServeConfig
    from imgfeat.serve.collection import Collection
    from imgfeat.serve.server import Background

    out = tmp_path / "store"
    shutil.copy(folder / sorted(p.name for p in folder.iterdir())[1], folder / "copy_of_1.jpg")  # a duplicate pair
    _ex(folder, out, l2=True)
    collection = Collection(out, cache=tmp_path / "cache", index=index)
    upload = (folder / "copy_of_1.jpg").read_bytes()

    def check(srv, step):
        def get(path, **params):
            r = requests.get(srv.url + path, params=params, timeout=PATIENCE)
            return r

        live = srv.app.state.live.get()
        fresh = Collection(out, cache=tmp_path / f"fresh-{step}", index=index)
        assert live.ids == fresh.ids, step
        dup = wait_until(lambda: (lambda r: r.json() if r.status_code == 200 else None)(
            get("api/duplicates", threshold=0.99)), f"duplicates after {step}", interval=0.05)
        want = sorted(sorted(fresh.ids[r] for r in g) for g in fresh.duplicate_groups(0.99))
        assert sorted(sorted(i["id"] for i in g) for g in dup["groups"]) == want, step
        for rid in fresh.ids:
            got = [h["id"] for h in get(f"api/neighbours/{rid}", k=3).json()["results"]]
            assert got == [fresh.ids[h.row] for h in fresh.search(fresh.vector(fresh.row_of[rid]), 3,
                                                                  exclude=fresh.row_of[rid])], (step, rid)
        r = requests.post(srv.url + "api/search/image", params={"k": 2}, data=upload,
                          headers={"Content-Type": "image/jpeg"}, timeout=PATIENCE)
        assert r.status_code == 200, (step, r.text)
        assert {h["id"] for h in r.json()["results"]} == {"copy_of_1.jpg", sorted(fresh.ids)[1]} or \
            "copy_of_1.jpg" not in fresh.ids, step

    with Background(collection, ServeConfig(port=0)) as srv:
        check(srv, "start")
        names = sorted(p.name for p in folder.iterdir() if p.name != "copy_of_1.jpg")
        steps = [("add", lambda: write_image(folder / "zz_new.png", size=(120, 90), seed=11)),
                 ("change", lambda: (write_image(folder / names[2], size=(80, 60), seed=5),
                                     _touch_later(folder / names[2]))),
                 ("remove", lambda: (folder / names[3]).unlink()),
                 ("rename", lambda: (folder / names[4]).rename(folder / "renamed.jpg"))]
        for step, change in steps:
            change()
            _ex(folder, out, l2=True)
            check(srv, step)


def test_no_model_is_built_when_there_is_nothing_to_embed(tmp_path, photos):
    """Issue 29.10: --append with nothing new, --prune with removals only, and a rerun after the input was moved
    build no model (the vectors' options are the store's); a new model still does."""
    names = sorted(photos.glob("*.jpg"))
    out = tmp_path / "store"
    _ex([(p.name, str(p)) for p in names[:4]], out)
    res = _ex([(p.name, str(p)) for p in names[:2]], out, append=True)
    assert res.model is None and res.update["added"] == 0 and res.n_done == 0
    res = _ex([(p.name, str(p)) for p in names[:3]], out, prune=True)  # one removal, nothing new
    assert res.model is None and res.update["removed"] == 1 and sorted(_live(out)) == sorted(p.name for p in names[:3])
    moved = tmp_path / "moved.tsv"  # the same images listed from another input file
    moved.write_text("".join(f"{p.name}\t{p}\n" for p in names[:3]))
    assert _ex(moved, out).model is None
    with pytest.raises(imgfeat.ImgfeatError):  # another model: built, compared, refused
        _ex(moved, out, model="resnet18")


def test_a_new_generation_updates_serves_cached_index_and_removes_the_old(folder, tmp_path, monkeypatch, caplog):
    """Issue 31: a server started on a store that gained a generation since its index was cached updates that index
    (rows removed and added, no training) rather than building it, answers as an index built on the new state, and
    the index files and derived data of the old state are gone. ``auto`` on a small budget takes PQ codes re-ranked
    against the store, and the tuned settings come back with the cached index."""
    pytest.importorskip("faiss")
    import logging

    from imgfeat.serve.collection import Collection
    from imgfeat.tools import autoindex

    monkeypatch.setattr(autoindex, "PCA_FROM", (4, 10**6))
    monkeypatch.setattr(autoindex, "EXACT_UP_TO", 4)
    out, cache = tmp_path / "store", tmp_path / "cache"
    for i in range(20):  # 4-bit PQ codebooks train 16 centroids each
        write_image(folder / f"s{i:02d}.png", size=(64 + i, 48), seed=100 + i)
    _ex(folder, out, l2=True)
    first = Collection(out, cache=cache, max_memory=80_000)
    assert ",PQ" in first.index_name and "re-ranked x" in first.knn.description
    files = sorted(p.name for p in first.index_cache.folder.iterdir() if not p.name.startswith("."))  # not seals
    assert len(files) == 3 and any(f.endswith(f"{first.key}.faiss") for f in files)
    (first.cache / "marker").write_text("derived data of the first state")

    names = sorted(p.name for p in folder.iterdir())
    (folder / names[3]).unlink()
    write_image(folder / "zz_new.png", size=(120, 90), seed=11)
    _ex(folder, out, l2=True)
    with caplog.at_level(logging.INFO, logger="imgfeat.serve.indexes"):
        second = Collection(out, cache=cache, max_memory=80_000)
    assert "index updated: 1 rows removed, 1 added" in caplog.text
    assert second.knn.description == first.knn.description.replace(first.knn.index, second.knn.index)
    assert not (first.cache).exists()  # the old state's derived data
    files = sorted(p.name for p in second.index_cache.folder.iterdir())  # the seals of the old state went with it
    assert len(files) == 5 and all(first.key not in f for f in files) and any(second.key in f for f in files)

    fresh = Collection(out, cache=tmp_path / "fresh", index="exact")
    for rid in fresh.ids:
        row = fresh.row_of[rid]
        want = [fresh.ids[h.row] for h in fresh.search(fresh.vector(row), 3, exclude=row)]
        assert [second.ids[h.row] for h in second.search(second.vector(row), 3, exclude=row)] == want, rid
    again = Collection(out, cache=cache, max_memory=80_000)  # the same state: loaded as it is, nothing rewritten
    assert sorted(p.name for p in again.index_cache.folder.iterdir()) == files
