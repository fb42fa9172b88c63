"""imgfeat serve's HTTP API against the real server (uvicorn on a loopback port): every route, the search
results against brute force, and every bad input and security rule of the issue."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")

from helpers import PATIENCE, wait_until, write_image  # noqa: E402

from imgfeat.api import extract  # noqa: E402
from imgfeat.outputs.formats import open_matrix  # noqa: E402
from imgfeat.serve.app import ServeConfig  # noqa: E402
from imgfeat.serve.collection import Collection  # noqa: E402
from imgfeat.serve.server import Background, warnings_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples" / "images"


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def make_collection(root: Path) -> dict:
    """A store of the six example photos, a re-encoded copy of one (a near duplicate), 13 noise images,
    one image deleted after extraction (its thumbnail must 404); labels photo/noise."""
    images = root / "images"
    images.mkdir(parents=True)
    lines, labels = [], {}
    for p in sorted(PHOTOS.iterdir()):
        shutil.copy(p, images / p.name)
        lines.append(f"{p.stem}\t{images / p.name}")
        labels[p.stem] = "photo"
    Image.open(PHOTOS / "chelsea.jpg").save(images / "chelsea-copy.jpg", quality=80)
    lines.append(f"chelsea-copy\t{images / 'chelsea-copy.jpg'}")
    labels["chelsea-copy"] = "photo"
    for i in range(13):
        write_image(images / f"noise{i:02d}.png", size=(96, 80), seed=i)
        lines.append(f"dir/noise{i:02d}\t{images / f'noise{i:02d}.png'}")  # ids with a slash
        labels[f"dir/noise{i:02d}"] = "noise"
    (root / "list.tsv").write_text("\n".join(lines) + "\n")
    store = root / "store"
    extract(str(root / "list.tsv"), str(store), workers=0, quiet=True)
    (images / "noise12.png").unlink()  # the features stay; the image is gone
    (root / "labels.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in labels.items()))
    return {"store": store, "labels": root / "labels.tsv", "images": images}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    os.environ.setdefault("IMGFEAT_CACHE", str(root / "cache"))
    data = make_collection(root)
    before = _snapshot(data["store"])
    collection = Collection(data["store"], labels=str(data["labels"]), cache=root / "serve-cache")
    config = ServeConfig(port=0, max_upload=2 * 1024 * 1024, max_json=64 * 1024, max_k=30)
    with Background(collection, config) as srv:
        yield {**data, "url": srv.url, "collection": collection, "app": srv.app}
    assert _snapshot(data["store"]) == before, "the server wrote into the store"


def get(served, path, **kw):
    r = requests.get(served["url"] + path.lstrip("/"), timeout=PATIENCE, **kw)
    assert "Traceback" not in r.text
    return r


def post(served, path, **kw):
    r = requests.post(served["url"] + path.lstrip("/"), timeout=PATIENCE, **kw)
    assert "Traceback" not in r.text
    return r


def raw_get(served, path: str, headers=None) -> tuple[int, bytes]:
    """A request whose path is sent byte for byte (requests would normalise ``..``)."""
    host, port = served["url"].split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=PATIENCE)
    headers = {"Host": f"{host}:{port}", **(headers or {})}
    conn.putrequest("GET", path, skip_host=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def brute_force(served, query: np.ndarray, rows=None) -> tuple[list[str], np.ndarray]:
    ids, X = open_matrix(served["store"])
    X = np.asarray(X, np.float32)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    s = Xn @ (query / np.linalg.norm(query))
    order = [i for i in np.argsort(-s, kind="stable") if rows is None or i in rows]
    return [ids[i] for i in order], s[order]


# ----------------------------------------------------------------------------- routes
def test_info_and_openapi(served):
    info = get(served, "/api/info").json()
    assert info["count"] == 20 and info["model"] == "efficientnet_lite0" and info["dim"] == 1280
    assert info["labels"] == ["noise", "photo"] and info["text"] is False and info["store"] is True
    assert info["identity"]["weights"] == served["collection"].manifest["weights"]
    spec = get(served, "/openapi.json").json()
    for route in ("/api/info", "/api/neighbours/{id}", "/api/search/image", "/api/map", "/api/duplicates",
                  "/api/rows", "/thumb/{id}"):
        assert route in spec["paths"], route
    # what this collection cannot serve is not in its schema (no text tower; no audit report)
    assert "/api/search/text" not in spec["paths"] and "/api/audit/decision" not in spec["paths"]
    assert get(served, "/docs").status_code == 404  # the docs page would load a CDN


def test_neighbours_equal_brute_force_and_page(served):
    c = served["collection"]
    res = get(served, "/api/neighbours/chelsea", params={"k": 10}).json()
    want_ids, want_scores = brute_force(served, c.vector(c.row_of["chelsea"]))
    got = [r["id"] for r in res["results"]]
    assert got == want_ids[1:11]  # itself left out
    np.testing.assert_allclose([r["score"] for r in res["results"]], want_scores[1:11], atol=1e-5)
    assert got[0] == "chelsea-copy" and res["results"][0]["label"] == "photo"
    page2 = get(served, "/api/neighbours/chelsea", params={"k": 5, "offset": 5}).json()
    assert [r["id"] for r in page2["results"]] == got[5:10] and page2["more"] is True
    # a page that reaches past --max-k (30) is cut there: every schema-valid window is answered
    last = get(served, "/api/neighbours/chelsea", params={"k": 20, "offset": 15}).json()
    full = get(served, "/api/neighbours/chelsea", params={"k": 30}).json()
    assert [r["id"] for r in last["results"]] == [r["id"] for r in full["results"]][15:30]
    assert last["k"] == 15 and last["more"] is False
    # ids with a slash, URL-encoded
    r = get(served, "/api/neighbours/dir%2Fnoise03", params={"k": 3}).json()
    assert r["query"]["id"] == "dir/noise03" and len(r["results"]) == 3


def test_label_filter(served):
    c = served["collection"]
    res = get(served, "/api/neighbours/chelsea", params={"k": 5, "label": "noise"}).json()
    noise_rows = set(np.flatnonzero(c.codes == c.categories.index("noise")).tolist())
    want, _ = brute_force(served, c.vector(c.row_of["chelsea"]), noise_rows)
    assert [r["id"] for r in res["results"]] == want[:5]
    assert {r["label"] for r in res["results"]} == {"noise"}


def test_search_by_uploaded_image(served):
    data = (served["images"] / "coffee.jpg").read_bytes()
    res = post(served, "/api/search/image", params={"k": 3}, data=data, headers={"Content-Type": "image/jpeg"}).json()
    assert res["results"][0]["id"] == "coffee" and res["results"][0]["score"] > 0.9999


def ready_map(served) -> dict:
    """GET /api/map, asking again (bounded) while the map is being made (202)."""
    def ready():
        r = get(served, "/api/map")
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 202 and r.json()["status"] == "computing" and r.json()["step"], r.text
        return None

    return wait_until(ready, "map ready", interval=0.1)


def test_map_is_binary_geometry(served):
    c = served["collection"]
    meta = ready_map(served)
    assert meta["count"] == 20 and meta["method"] == "tsne" and meta["labels"] == ["noise", "photo"]
    xy = np.frombuffer(get(served, meta["xy"]).content, "<f4").reshape(-1, 2)
    rows = np.frombuffer(get(served, meta["rows"]).content, "<i4")
    codes = np.frombuffer(get(served, meta["codes"]).content, "<u2")
    assert xy.shape == (20, 2) and np.all(np.abs(xy) <= 1) and np.isfinite(xy).all()
    assert sorted(rows.tolist()) == list(range(20))
    assert [c.label_of(r) for r in rows] == [meta["labels"][k - 1] for k in codes]
    r = get(served, meta["xy"])
    assert r.headers["content-type"] == "application/octet-stream" and "etag" in r.headers


def test_map_from_a_coords_file(served, tmp_path):
    c = served["collection"]
    coords = tmp_path / "m.coords.tsv"
    coords.write_text("chelsea\t1\t2\ncoffee\t3\t-2\nnot-an-id\t0\t0\n")
    m = Collection(served["store"], map_coords=str(coords), cache=tmp_path / "cache").map()
    assert m["method"] == "file" and m["rows"].tolist() == [c.row_of["chelsea"], c.row_of["coffee"]]
    np.testing.assert_allclose(m["xy"], [[-0.475, 0.95], [0.475, -0.95]], atol=1e-6)  # aspect kept


def duplicates(served, **params) -> dict:
    """GET /api/duplicates, asking again (bounded) while the neighbour lists are computed (202)."""
    def ready():
        r = get(served, "/api/duplicates", params=params)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 202 and r.json()["status"] == "computing", r.text
        return None

    return wait_until(ready, "neighbour lists ready", interval=0.1)


@pytest.mark.timing
def test_duplicates_report_progress_while_neighbours_are_computed(served, tmp_path, monkeypatch):
    c = Collection(served["store"], cache=tmp_path / "cache")
    release = threading.Event()
    real = Collection._compute_neighbours

    def slow(self):
        release.wait(PATIENCE)
        real(self)

    monkeypatch.setattr(Collection, "_compute_neighbours", slow)
    with Background(c, ServeConfig(port=0)) as srv:
        r = requests.get(srv.url + "api/duplicates", params={"threshold": 0.9}, timeout=PATIENCE)
        assert r.status_code == 202 and r.json() == {"status": "computing", "ready": False, "done": 0, "total": 20}
        release.set()
        r = wait_until(lambda: (lambda r: r if r.status_code == 200 else None)(
            requests.get(srv.url + "api/duplicates", params={"threshold": 0.9}, timeout=PATIENCE)),
            "neighbour lists ready", interval=0.1)
        assert r.json()["groups_total"] >= 1
    assert (c.cache / "neighbours-exact-k10.I.npy").is_file()  # the next start reads them, memory-mapped
    D, I = Collection(served["store"], cache=c.cache_root)._cached_neighbours()
    assert isinstance(I, np.memmap) and I.shape == (20, 11)


@pytest.mark.timing
def test_the_map_says_what_it_computes_while_it_is_made(served, tmp_path, monkeypatch):
    """Issue 29.11: the first visit is told the step (reading, PCA, t-SNE) and how far it is, not 'loading...'."""
    import imgfeat.tools.maps as maps

    c = Collection(served["store"], cache=tmp_path / "cache")
    release = threading.Event()
    real = maps.embed_2d

    def slow(X, method="tsne", seed=0, perplexity=30.0, step=None):
        def held(what):
            step(what)
            if what.startswith("t-SNE"):
                release.wait(PATIENCE)
        return real(X, method, seed, perplexity, step=held)

    monkeypatch.setattr(maps, "embed_2d", slow)
    with Background(c, ServeConfig(port=0)) as srv:
        def progress():
            r = requests.get(srv.url + "api/map", timeout=PATIENCE)
            assert r.status_code == 202, r.text
            return r.json() if r.json()["step"].startswith("t-SNE") else None

        body = wait_until(progress, "the t-SNE step reported", interval=0.05)
        assert body["step"] == "t-SNE of 20 points (the longest step)" and (body["done"], body["total"]) == (1, 2)  # reading, then t-SNE (20 points: no PCA)
        assert body["ready"] is False and body["elapsed_s"] >= 0
        release.set()
        r = wait_until(lambda: (lambda r: r if r.status_code == 200 else None)(
            requests.get(srv.url + "api/map", timeout=PATIENCE)), "map ready", interval=0.1)
        assert r.json()["count"] == 20 and r.json()["method"] == "tsne"


def test_duplicates_match_imgfeat_dedup(served, tmp_path):
    from imgfeat.cli import main

    res = duplicates(served, threshold=0.9)
    assert res["groups_total"] >= 1
    assert any({"chelsea", "chelsea-copy"} <= {i["id"] for i in g} for g in res["groups"])
    tsv = get(served, "/api/duplicates.tsv", params={"threshold": 0.9}).text
    assert main(["dedup", "--features", str(served["store"]), "--threshold", "0.9", "--out", str(tmp_path / "d.tsv")]) == 0

    def groups(text):
        g: dict[str, set] = {}
        for line in text.splitlines():
            k, rid = line.split("\t")
            g.setdefault(k, set()).add(rid)
        return sorted(map(sorted, g.values()))

    assert groups(tsv) == groups((tmp_path / "d.tsv").read_text())
    lower = duplicates(served, threshold=0.3)
    assert lower["duplicates_total"] >= res["duplicates_total"]


def test_rows_json_binary_and_text(served):
    c = served["collection"]
    r = post(served, "/api/rows", json={"rows": [0, 5]}).json()
    assert r["count"] == 2 and [i["id"] for i in r["items"]] == [c.ids[0], c.ids[5]]
    body = np.array([1, 2, 3], "<i4").tobytes()
    r = post(served, "/api/rows", params={"limit": 2}, data=body, headers={"Content-Type": "application/octet-stream"})
    assert r.json()["count"] == 3 and len(r.json()["items"]) == 2
    r = post(served, "/api/rows", params={"format": "txt"}, data=body,
             headers={"Content-Type": "application/octet-stream"})
    assert r.text == "".join(c.ids[i] + "\n" for i in (1, 2, 3))


def test_thumbnails_cached_with_http_headers(served):
    r = get(served, "/thumb/coffee")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert max(im.size) == 256 and im.mode == "RGB"
    assert "max-age" in r.headers["cache-control"]
    again = get(served, "/thumb/coffee", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    cached = list((served["collection"].cache / "thumbs-256").rglob("*.jpg"))
    assert cached and any(p.read_bytes() == r.content for p in cached)


def test_thumbnail_of_missing_image_is_a_placeholder_404(served):
    r = get(served, "/thumb/dir/noise12")  # its file was deleted after extraction
    assert r.status_code == 404 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
    assert "no-store" in r.headers["cache-control"]
    assert get(served, "/api/info").status_code == 200


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("path,status,param", [
    ("/api/neighbours/no-such-id", 404, "id"),
    ("/api/neighbours/chelsea?k=0", 400, "k"),
    ("/api/neighbours/chelsea?k=abc", 400, "k"),
    ("/api/neighbours/chelsea?k=100000", 400, "k"),
    ("/api/neighbours/chelsea?offset=-1", 400, "offset"),
    ("/api/neighbours/chelsea?offset=30", 400, "offset"),  # at --max-k 30: the schema says offset <= 29
    ("/api/neighbours/chelsea?label=cats", 404, "label"),  # a label this collection does not have
    ("/api/search/text?q=a%20cat", 400, "q"),
    ("/api/search/text", 400, "q"),
    ("/api/duplicates?threshold=2", 400, "threshold"),
    ("/api/duplicates?threshold=abc", 400, "threshold"),
    ("/api/duplicates?limit=0", 400, "limit"),
    ("/api/rows", 405, None),
])
def test_malformed_requests_get_a_json_4xx_naming_the_parameter(served, path, status, param):
    r = get(served, path)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]
    if param:
        assert body["parameter"] == param


@pytest.mark.parametrize("make,ctype,status", [
    (lambda: b"this is not an image", "image/png", 400),
    (lambda: (PHOTOS / "coffee.jpg").read_bytes()[:3000], "image/jpeg", 400),  # truncated
    (lambda: b"", "image/png", 400),
    (lambda: (PHOTOS / "coffee.jpg").read_bytes(), "text/plain", 415),
    (lambda: (PHOTOS / "coffee.jpg").read_bytes(), "multipart/form-data; boundary=x", 415),
    (lambda: os.urandom(3 * 1024 * 1024), "image/jpeg", 413),  # over the 2 MB limit of this server
])
def test_bad_uploads(served, make, ctype, status):
    r = post(served, "/api/search/image", data=make(), headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["error"]
    assert get(served, "/api/info").status_code == 200  # still serving


def test_decompression_bomb_upload_is_413(served):
    buf = io.BytesIO()
    Image.new("1", (15000, 15000)).save(buf, "PNG")  # 225 MP in a few hundred kB
    assert len(buf.getvalue()) < 2 * 1024 * 1024
    r = post(served, "/api/search/image", data=buf.getvalue(), headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "too large" in r.json()["error"]


def test_upload_without_content_length_is_still_capped(served):
    def chunks():
        for _ in range(40):
            yield b"\0" * (100 * 1024)

    r = post(served, "/api/search/image", data=chunks(), headers={"Content-Type": "image/png"})
    assert r.status_code == 413


def test_oversized_and_malformed_json(served):
    big = json.dumps({"rows": list(range(20000))})  # > the 64 kB JSON limit of this server
    assert post(served, "/api/rows", data=big, headers={"Content-Type": "application/json"}).status_code == 413
    for body in ("{", '{"rows": "x"}', '{"rows": [1, "a"]}', "[]"):
        r = post(served, "/api/rows", data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["parameter"] == "rows"
    r = post(served, "/api/rows", json={"rows": [0, 999]})  # no row 999: like an id that does not exist
    assert r.status_code == 404 and r.json()["parameter"] == "rows"
    r = post(served, "/api/rows", data=b"abc", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400
    assert post(served, "/api/rows", data="rows=1", headers={"Content-Type": "text/plain"}).status_code == 415


@pytest.mark.parametrize("path", [
    "/thumb/../../../../etc/passwd", "/thumb/..%2F..%2F..%2Fetc%2Fpasswd", "/thumb/%2Fetc%2Fpasswd",
    "/thumb//etc/passwd", "/thumb/%252e%252e%252fetc%252fpasswd", "/static/../collection.py",
    "/static/..%2fcollection.py", "/static/%2e%2e/app.py", "/api/neighbours/..%2F..%2Fetc%2Fpasswd",
])
def test_no_request_path_reaches_the_file_system(served, path):
    status, body = raw_get(served, path)
    assert status == 404, (path, status)
    assert b"root:" not in body and b"import" not in body


def test_ids_outside_the_store_are_404_even_when_they_are_real_files(served):
    real = str(served["images"] / "coffee.jpg")
    assert get(served, "/thumb/" + real).status_code == 404
    assert get(served, "/api/neighbours/" + real).status_code == 404


def test_internal_errors_never_show_a_traceback(served, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(served["collection"], "search", boom)
    r = get(served, "/api/neighbours/chelsea")
    assert r.status_code == 500 and "secret" not in r.text and r.json()["error"].startswith("internal server error")


def test_the_server_never_fetches_a_client_given_url(served):
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write((PHOTOS / "coffee.jpg").read_bytes())

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/coffee.jpg"
        assert post(served, "/api/search/image", data=url, headers={"Content-Type": "text/uri-list"}).status_code == 415
        assert post(served, "/api/search/image", data=url, headers={"Content-Type": "image/jpeg"}).status_code == 400
        assert get(served, "/api/neighbours/" + url).status_code == 404
        assert get(served, "/thumb/" + url).status_code == 404
        assert get(served, "/api/search/text", params={"q": url}).status_code == 400
    finally:
        server.shutdown()
    assert hits == []


# ----------------------------------------------------------------------------- security
def test_dns_rebinding_host_header_is_refused(served):
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example"):
        status, body = raw_get(served, "/api/info", headers={"Host": host})
        assert status == 400 and b"host name" in body
    status, _ = raw_get(served, "/api/info", headers={"Host": "localhost"})
    assert status == 200


def test_cors_is_off_unless_asked(served, tmp_path):
    r = get(served, "/api/info", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    config = ServeConfig(port=0, cors=("http://ok.example",))
    with Background(served["collection"], config) as srv:
        r = requests.get(srv.url + "api/info", headers={"Origin": "http://ok.example"}, timeout=PATIENCE)
        assert r.headers["access-control-allow-origin"] == "http://ok.example"
        r = requests.get(srv.url + "api/info", headers={"Origin": "http://evil.example"}, timeout=PATIENCE)
        assert "access-control-allow-origin" not in r.headers


def test_token_is_required_on_every_route(served):
    config = ServeConfig(port=0, token="s3cret-token")
    with Background(served["collection"], config) as srv:
        u = srv.url
        for path in ("", "map", "api/info", "api/neighbours/chelsea", "thumb/coffee", "static/app.js", "openapi.json",
                     "api/map/xy.f32"):
            r = requests.get(u + path, timeout=PATIENCE, allow_redirects=False)
            assert r.status_code == 401 and r.json()["error"], path
        assert requests.get(u + "api/info", headers={"Authorization": "Bearer wrong"}, timeout=PATIENCE).status_code == 401
        assert requests.get(u + "api/info", headers={"Authorization": "Bearer s3cret-token"},
                            timeout=PATIENCE).status_code == 200
        assert requests.get(u + "?token=wrong", timeout=PATIENCE, allow_redirects=False).status_code == 401
        s = requests.Session()
        r = s.get(u + "map?token=s3cret-token", timeout=PATIENCE, allow_redirects=False)  # the printed one-time link
        assert r.status_code == 303 and r.headers["location"] == "/map"
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
        assert s.get(u + "map", timeout=PATIENCE).status_code == 200
        assert s.get(u + "api/info", timeout=PATIENCE).status_code == 200


def test_non_loopback_hosts_warn():
    assert warnings_for(ServeConfig(host="127.0.0.1")) == []
    lines = warnings_for(ServeConfig(host="0.0.0.0"))
    assert len(lines) == 2 and "--token" in lines[1]
    assert len(warnings_for(ServeConfig(host="0.0.0.0", token="x"))) == 1


def test_vendored_files_match_their_recorded_checksums():
    vendor = ROOT / "src" / "imgfeat" / "serve" / "static" / "vendor"
    table = (vendor / "README.md").read_text()
    rows = re.findall(r"\| `([^`]+)` \|.*\| ([0-9a-f]{64}) \|", table)
    assert len(rows) == 3
    for name, digest in rows:
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
        assert (vendor / f"LICENSE.{name.split('.')[0] if name != 'pub-sub-es.js' else 'pub-sub-es'}").is_file()


# ----------------------------------------------------------------------------- index choices and the CLI
def test_ivf_index_is_cached_and_loaded_from_a_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 32)).astype(np.float32)
    np.save(tmp_path / "f.npy", X)
    (tmp_path / "f.ids.txt").write_text("".join(f"v{i}\n" for i in range(3000)))
    c = Collection(tmp_path / "f.npy", index="IVF16,Flat", nprobe=16, cache=tmp_path / "cache")
    assert c.index_cache.path(c.key).is_file()
    hits = c.search(X[7], 10)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    exact = np.argsort(-(Xn @ Xn[7]))[:10]
    assert [h.row for h in hits] == exact.tolist()  # nprobe = nlist: exhaustive
    np.testing.assert_allclose([h.score for h in hits], (Xn @ Xn[7])[exact], atol=1e-5)
    again = Collection(tmp_path / "f.npy", index_file=str(c.index_cache.path(c.key)),
                       cache=tmp_path / "cache2")
    assert [h.row for h in again.search(X[7], 10)] == exact.tolist()
    assert c.info()["thumbnails"] is False
    flat = Collection(tmp_path / "f.npy", index="exact", index_file=str(tmp_path / "flat.faiss"),
                      cache=tmp_path / "cache3")
    assert (tmp_path / "flat.faiss").is_file()  # --index-file is written when it does not exist yet
    assert [h.row for h in flat.search(X[7], 10)] == exact.tolist()
    with pytest.raises(Exception, match="indexes 3000 vectors"):
        np.save(tmp_path / "g.npy", X[:100])
        (tmp_path / "g.ids.txt").write_text("".join(f"v{i}\n" for i in range(100)))
        Collection(tmp_path / "g.npy", index_file=str(c.index_cache.path(c.key)))


@pytest.mark.timing
@pytest.mark.slow
def test_cli_serve_prints_its_address_and_stops_cleanly(served, tmp_path):
    env = {**os.environ, "IMGFEAT_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "imgfeat", "serve", str(served["store"]), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        while "http://" not in line:  # the address is printed once the socket is bound (or the process exits)
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "imgfeat serve exited"
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        assert "20 vectors" in line
        info = requests.get(url + "api/info", timeout=PATIENCE).json()  # bound before printed: accepted, answered
        assert info["count"] == 20
        assert requests.get(url + "thumb/coffee", timeout=PATIENCE).status_code == 200  # starts a decode process
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert children
    finally:
        proc.send_signal(signal.SIGTERM)  # uvicorn re-raises it after shutting down
        assert proc.wait(timeout=PATIENCE) == 0
    def alive(pid):
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False

    # multiprocessing's resource tracker leaves once it sees the parent go
    wait_until(lambda: not [p for p in children if alive(p)], "imgfeat serve's child processes gone", interval=0.1)


def test_cli_serve_refuses_bad_options(served, capsys):
    from imgfeat.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(served["store"]), "--max-k", "0"])
    assert exit_.value.code == 2 and "--max-k: expected an integer >= 1" in capsys.readouterr().err
    assert main(["serve", str(served["store"]) + "-missing"]) == 2


@pytest.mark.timing
def test_decode_pool_replaces_a_hung_or_dead_worker():
    """A worker that hangs past the deadline or dies is replaced, and the replacement answers. How long a Python
    start takes is not the claim: each new worker is started (``warm``) before the call that is timed."""
    import pool_tasks

    from imgfeat.serve.media import DecodePool

    pool = DecodePool(workers=1, timeout=0.2, grace=5.0)
    try:
        pool.warm(timeout=PATIENCE)
        first = pool.run(pool_tasks.pid)
        assert isinstance(first, int)
        # a hang far longer than the deadline: a pool that waited for it would answer with a pid
        assert pool.run(pool_tasks.hang, PATIENCE).startswith("unreadable: the decoder stopped")
        pool.warm(timeout=PATIENCE)
        second = pool.run(pool_tasks.pid)
        assert isinstance(second, int) and second != first  # a fresh worker answers
        assert pool.run(pool_tasks.crash).startswith("unreadable")
        pool.warm(timeout=PATIENCE)
        third = pool.run(pool_tasks.pid)
        assert isinstance(third, int) and third not in (first, second)
    finally:
        pool.close()


def test_an_unknown_label_is_a_404_on_every_route_and_in_search(served):
    """Issue 30: one rule for an unknown label filter, whichever place finds it."""
    from imgfeat.serve.collection import UnknownLabel

    r = get(served, "/api/neighbours/chelsea", params={"label": "no-such-label"})
    assert r.status_code == 404 and r.json()["parameter"] == "label"
    data = (served["images"] / "coffee.jpg").read_bytes()
    r = post(served, "/api/search/image", params={"label": "no-such-label"}, data=data,
             headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 404 and r.json()["parameter"] == "label"
    with pytest.raises(UnknownLabel):
        served["collection"].search(served["collection"].vector(0), 3, label="no-such-label")


def test_a_large_collection_maps_a_sample_and_finds_duplicates_by_the_join(tmp_path, monkeypatch):
    """Issue 49: above ``MAP_POINTS`` rows the map is a PCA of that many rows drawn at random (read in storage
    order), not every row sent to the browser; and where ``auto`` builds a graph of this size by the join of cells
    (what ``dedup`` runs), the duplicates' neighbour lists come from it, read in storage order, not from one search
    of the served index a vector; the planted copies are found either way."""
    import imgfeat.serve.collection as coll
    from imgfeat.outputs.formats import write_blocks
    from imgfeat.tools.celljoin import CellJoin

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 16)).astype(np.float32)
    X = centres[rng.integers(0, 30, 30_000)] + 0.3 * rng.standard_normal((30_000, 16)).astype(np.float32)
    X[-20:] = X[:20] + 1e-3  # planted near-copies
    ids = [f"r{i}" for i in range(len(X))]
    write_blocks(str(tmp_path / "f.npy"), 16, "float32", iter([(ids, ids, X)]))
    monkeypatch.setattr(coll, "MAP_POINTS", 5_000)
    c = Collection(tmp_path / "f.npy", cache=tmp_path / "cache", max_memory=2**20)
    built = []
    real = coll.build_index
    monkeypatch.setattr(coll, "build_index", lambda *a, **kw: built.append(real(*a, **kw)) or built[-1])
    m = c.map()
    assert m["method"] == "pca" and len(m["rows"]) == 5_000 and (np.diff(m["rows"]) > 0).all()
    assert m["xy"].shape == (5_000, 2) and np.abs(m["xy"]).max() <= 1
    c.start_neighbours()
    D, I = c.neighbour_lists()
    assert len(built) == 1 and isinstance(built[0], CellJoin)
    groups = c.duplicate_groups(0.99)
    together = {frozenset(ids[r] for r in g) for g in groups}
    assert all(any({f"r{i}", f"r{len(X) - 20 + i}"} <= g for g in together) for i in range(20))


def test_ids_and_their_lookup_are_pages_of_the_cache_not_the_servers_memory(served, tmp_path, monkeypatch):
    """Issue 49: the ids and paths are an Arrow file in the cache read memory-mapped (their buffers lie in the
    file's mapping, not Arrow's allocator) and the id lookup a stable hash kept beside them; a second start reads
    neither from the store again, and answers the same rows."""
    import pyarrow as pa

    from imgfeat.outputs.store import FeatureStore

    first = Collection(served["store"], cache=tmp_path / "cache")
    ids = list(first.ids)
    assert isinstance(first.row_of._hashes, np.memmap) and (first.cache / "columns.arrow").is_file()
    before = pa.total_allocated_bytes()
    real = FeatureStore.load_columns

    def vectors_only(self, columns=("id", "path")):
        assert not columns, "the ids were read from the store again"
        return real(self, columns)

    monkeypatch.setattr(FeatureStore, "load_columns", vectors_only)
    second = Collection(served["store"], cache=tmp_path / "cache")
    assert list(second.ids) == ids and [second.row_of[i] for i in ids] == list(range(len(ids)))
    assert second.paths[0] == first.paths[0] and pa.total_allocated_bytes() - before < 4096
