"""Large-input sources: WebDataset tar shards, parquet and CSV tables, URLs through fsspec."""

from __future__ import annotations

import functools
import http.server
import io
import shutil
import tarfile
import threading
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import PATIENCE, die_before_publishing

import imgfeat
from imgfeat.data.sources import open_source

NAMES = ["chelsea.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg"]


def _extract(data, **kw):
    return imgfeat.extract(data, **{"model": "squeezenet1_1", "backend": "torch", "workers": 0, **kw})


@pytest.fixture
def reference(photos):
    res = _extract([(n.split(".")[0], str(photos / n)) for n in NAMES])
    return dict(zip(res.ids, res.features))


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_tar_shards(tmp_path, photos, reference):
    for k, names in enumerate((NAMES[:2], NAMES[2:])):
        with tarfile.open(tmp_path / f"{k:06d}.tar", "w") as tar:
            for n in names:
                key = n.split(".")[0]
                _add(tar, f"{key}.jpg", (photos / n).read_bytes())
                _add(tar, f"{key}.txt", b"a caption, not an image")
            if k == 1:
                _add(tar, "broken.jpg", b"\xff\xd8 not really a jpeg")
    with tarfile.open(tmp_path / "000002.tar.gz", "w:gz") as tar:
        _add(tar, "x.jpg", (photos / NAMES[0]).read_bytes())
    shutil.copy(tmp_path / "000002.tar.gz", tmp_path / "000002.tar")  # a compressed tar named .tar
    res = _extract(str(tmp_path / "{000000..000003}.tar"))
    assert res.ids == ["chelsea", "coffee", "rocket", "astronaut"]
    for rid, vec in zip(res.ids, res.features):
        np.testing.assert_allclose(vec, reference[rid], atol=1e-5)
    reasons = {row[0]: row[2] for row in res.errors}
    assert reasons["broken"].startswith("not an image")
    assert "compressed tars are not supported" in reasons["000002.tar"]
    assert reasons["000003.tar"].startswith("missing")
    assert any(row[1].endswith("000001.tar::broken.jpg") for row in res.errors)


def _zips(tmp_path, photos):
    """yfcc/12/345.zip (stored) and yfcc/12/346.zip (deflated, a folder, a caption and a corrupt member),
    yfcc/13/100.zip truncated mid-archive, and a member path file for the TSV form."""
    root = tmp_path / "yfcc"
    (root / "12").mkdir(parents=True)
    (root / "13").mkdir()
    with zipfile.ZipFile(root / "12" / "345.zip", "w", zipfile.ZIP_STORED) as z:
        z.writestr("678.jpg", (photos / NAMES[0]).read_bytes())
        z.writestr("679.jpg", (photos / NAMES[1]).read_bytes())
    with zipfile.ZipFile(root / "12" / "346.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("sub/", b"")
        z.writestr("sub/001.v2.jpg", (photos / NAMES[2]).read_bytes())
        z.writestr("002.txt", b"a caption")
        z.writestr("003.jpg", (photos / NAMES[3]).read_bytes())
        z.writestr("004.jpg", (photos / NAMES[0]).read_bytes())
    data = bytearray((root / "12" / "346.zip").read_bytes())
    with zipfile.ZipFile(root / "12" / "346.zip") as z:  # flip bytes inside 004.jpg's deflated data
        info = z.getinfo("004.jpg")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        for k in range(start + 20, start + 60):
            data[k] ^= 0x5A
    (root / "12" / "346.zip").write_bytes(bytes(data))
    with zipfile.ZipFile(tmp_path / "whole.zip", "w") as z:
        z.writestr("a.jpg", (photos / NAMES[0]).read_bytes())
    (root / "13" / "100.zip").write_bytes((tmp_path / "whole.zip").read_bytes()[:-40])  # no central directory
    return root


def test_zip_archives(tmp_path, photos, reference):
    root = _zips(tmp_path, photos)
    res = _extract(str(root / "*" / "*.zip"))
    assert res.ids == ["12/345/678", "12/345/679", "12/346/sub/001", "12/346/003"]
    expect = {"12/345/678": NAMES[0], "12/345/679": NAMES[1], "12/346/sub/001": NAMES[2], "12/346/003": NAMES[3]}
    for rid, vec in zip(res.ids, res.features):
        np.testing.assert_allclose(vec, reference[expect[rid].split(".")[0]], atol=1e-5)
    reasons = {row[0]: row[2] for row in res.errors}
    assert set(reasons) == {"12/346/004", "13/100"}
    assert reasons["12/346/004"].startswith("corrupt zip member") and reasons["13/100"].startswith("unreadable zip")
    # one archive, a brace pattern, and a TSV of archive.zip::member paths (relative to the TSV) read the same
    assert _extract(str(root / "12" / "345.zip")).ids == ["345/678", "345/679"]
    assert _extract(str(root / "12" / "{345,346}.zip")).ids == ["345/678", "345/679", "346/sub/001", "346/003"]
    tsv = root / "members.tsv"
    tsv.write_text("a\t12/346.zip::sub/001.v2.jpg\nb\t12/345.zip::679.jpg\nc\t12/345.zip::nope.jpg\n"
                   "d\t12/346.zip::004.jpg\n".replace("12/", str(root / "12") + "/"))
    res = _extract(str(tsv))
    assert res.ids == ["a", "b"]
    np.testing.assert_allclose(res.features[0], reference[NAMES[2].split(".")[0]], atol=1e-5)
    reasons = {row[0]: row[2] for row in res.errors}
    assert reasons["c"].startswith("missing: no member 'nope.jpg'")
    assert reasons["d"].startswith("corrupt zip member")


def test_zip_store_resumes_without_loss_or_duplicates(tmp_path, photos):
    root = _zips(tmp_path, photos)
    store = tmp_path / "store"
    full = _extract(str(root / "12" / "*.zip"), out=str(tmp_path / "whole"), shard_size=2, quiet=True)
    first = imgfeat.load(tmp_path / "whole")
    with die_before_publishing():  # the run dies after its shards, before publishing them
        _extract(str(root / "12" / "*.zip"), out=str(store), shard_size=2, quiet=True)
    (store / "shards" / "000001.done.json").unlink()  # ... and in shard 1
    again = _extract(str(root / "12" / "*.zip"), out=str(store), shard_size=2, quiet=True)
    ids, X = imgfeat.load(store)
    assert (again.shards_written, again.shards_skipped) == (1, 2) and ids == first[0]
    assert len(set(ids)) == len(ids) == full.n_done
    np.testing.assert_allclose(np.asarray(X), np.asarray(first[1]), atol=1e-6)


def test_parquet_and_csv_tables(tmp_path, photos, reference):
    for n in NAMES:
        shutil.copy(photos / n, tmp_path / n)
    ids = [n.split(".")[0] for n in NAMES]
    pq.write_table(pa.table({"id": ids, "path": NAMES, "label": [1, 2, 3, 4]}), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("label,url,id\n" + "".join(f"x,{n},{i}\n" for n, i in zip(NAMES, ids)))
    for name in ("t.parquet", "t.csv"):
        res = _extract(str(tmp_path / name))
        assert res.ids == ids, name
        for rid, vec in zip(res.ids, res.features):
            np.testing.assert_allclose(vec, reference[rid], atol=1e-5)
    assert open_source(str(tmp_path / "t.parquet")).count() == 4
    pq.write_table(pa.table({"name": ids}), tmp_path / "bad.parquet")
    with pytest.raises(imgfeat.InvalidParameterError,
                       match="an image column.*'path'/'url' column.*has columns \\['name'\\]"):
        list(open_source(str(tmp_path / "bad.parquet")).records())


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_urls_through_fsspec(tmp_path, photos, reference):
    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    www = tmp_path / "www"
    www.mkdir()
    for n in NAMES[:2]:
        shutil.copy(photos / n, www / n)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        tsv = tmp_path / "urls.tsv"
        tsv.write_text(f"chelsea\t{base}/chelsea.jpg\ngone\t{base}/nope.jpg\ncoffee\t{base}/coffee.jpg\n")
        res = _extract(str(tsv), workers=2)
    finally:
        server.shutdown()
        server.server_close()
    assert res.ids == ["chelsea", "coffee"]
    for rid, vec in zip(res.ids, res.features):
        np.testing.assert_allclose(vec, reference[rid], atol=1e-5)
    assert res.errors[0][0] == "gone" and res.errors[0][2].startswith("missing")


class _Stalls(http.server.BaseHTTPRequestHandler):
    """Answers 200 with a length, sends half the body, then goes silent (a stalled server)."""

    release = threading.Event()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\xff\xd8" + b"\0" * 49998)
        self.wfile.flush()
        self.release.wait(PATIENCE)  # stalls until the test is over

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.timing
@pytest.mark.parametrize("workers", [0, 2])
def test_a_stalled_url_becomes_a_timeout_row_not_a_hang(tmp_path, photos, reference, workers):
    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    _Stalls.release.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalls)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tsv = tmp_path / "list.tsv"
    tsv.write_text(f"chelsea\t{photos / 'chelsea.jpg'}\n"
                   f"stuck\thttp://127.0.0.1:{server.server_address[1]}/stuck.jpg\n"
                   f"coffee\t{photos / 'coffee.jpg'}\n")
    try:
        res = _extract(str(tsv), workers=workers, decode_timeout=5)
    finally:
        _Stalls.release.set()
        server.shutdown()
        server.server_close()
    assert res.ids == ["chelsea", "coffee"]
    np.testing.assert_allclose(res.features[1], reference["coffee"], atol=1e-5)
    assert [(r[0], r[2]) for r in res.errors] == [("stuck", "timeout: reading and decoding took longer than 5 s")]


@pytest.mark.parametrize("ext", [None, ".tsv", ".npy", ".h5", ".pkl", ".parquet"])
def test_an_id_repeated_across_parquet_files_is_written_once(tmp_path, photos, reference, ext, capsys):
    """Issue 29.2: every output keeps the first occurrence of an id and the summary counts the repeats."""
    from imgfeat.cli import main

    for n in NAMES:
        shutil.copy(photos / n, tmp_path / n)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c"], "path": [str(tmp_path / n) for n in NAMES[:3]]}),
                   shards / "0.parquet")
    # b, c again (other images: the first occurrence wins), d new, e an error row, then e again with a good image
    pq.write_table(pa.table({"id": ["b", "c", "d", "e", "e"],
                             "path": [str(tmp_path / n) for n in (NAMES[3], NAMES[3], NAMES[3])]
                             + [str(tmp_path / "bad.jpg"), str(tmp_path / NAMES[0])]}), shards / "1.parquet")
    if ext is None:
        res = _extract(str(shards / "*.parquet"))
        assert res.ids == ["a", "b", "c", "d"] and [e[0] for e in res.errors] == ["e"] and res.n_repeated == 3
        for rid, name in zip("abcd", (NAMES[0], NAMES[1], NAMES[2], NAMES[3])):
            np.testing.assert_allclose(res.features[res.ids.index(rid)], reference[name.split(".")[0]], rtol=1e-4,
                                       atol=1e-4)
        return
    out = tmp_path / f"f{ext}"
    assert main(["extract", "--data", str(shards / "*.parquet"), "--out", str(out), "--model", "squeezenet1_1",
                 "--backend", "torch", "--workers", "0"]) == 0
    assert "3 record(s) skipped: their id came earlier in the input" in capsys.readouterr().err
    ids, X = imgfeat.load(str(out))
    assert list(ids) == ["a", "b", "c", "d"] and len(X) == 4

