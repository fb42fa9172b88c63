"""imgfeat serve under load: a generated 1M-vector store behind an IVF-PQ index, 32 concurrent clients on
loopback, a bounded number of queries; then the map in headless Chromium at 100k and 1M points.

    python benchmarks/serve.py                       # 1M vectors, the auto index, 32 clients
    python benchmarks/serve.py --n 100000 --queries 1000 --uploads 50
    python benchmarks/serve.py --n 10000000 --map-sizes "" --uploads 0   # issue 31: 10M, index and generations
    python benchmarks/serve.py --n 10000000 --map-sizes "" --uploads 0 --intrinsic 32   # vectors like image features

After the load runs, a generation adding 1% of the rows is published and the server started again: the time it
takes to update its cached index (rows added, nothing retrained), and the cache's index files after it (the old
state's are removed).

The store's vectors are generated (a mixture of 1,000 Gaussian clusters: isotropic unit noise around centres of scale
3, or with ``--intrinsic R`` noise in a random R-dimensional subspace plus 0.1 isotropic, the low intrinsic dimension
of image features), but its manifest is that of
a real extraction (EfficientNet-Lite0 cut at ``_blocks.15._bn2``, average-pooled: 320-d), so upload
search runs the real model and searches the same index. The server is the real ``imgfeat serve``
subprocess; its RSS is read from /proc while the clients run. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "examples" / "images").glob("*.jpg"))
LAYER = "_blocks.15._bn2"


def make_store(work: Path, n: int, seed: int = 0, intrinsic: int = 0) -> Path:
    from imgfeat.api import extract
    from imgfeat.outputs.store import FeatureStore

    store = work / f"store-{n}" if not intrinsic else work / f"store-{n}-r{intrinsic}"
    if (store / "manifest.json").is_file() and FeatureStore(store).manifest.get("total_inputs") == n:
        return store
    shutil.rmtree(store, ignore_errors=True)
    template = work / "template"
    shutil.rmtree(template, ignore_errors=True)
    extract([str(p) for p in PHOTOS], str(template), layer=LAYER, pool="avg", workers=0, quiet=True)
    m = FeatureStore(template).manifest
    identity = {k: m[k] for k in ("model", "layer", "pool", "weights", "preprocess", "dim", "dtype", "relu", "l2")}
    shard = 100_000
    identity.update(input=f"generated:{n}:{seed}", start=0, stop=None, shard_size=shard)
    fs = FeatureStore(store).open(identity)
    append_rows(fs, 0, n, seed, intrinsic)
    return store


def append_rows(fs, start: int, n: int, seed: int, intrinsic: int = 0, shard: int = 100_000) -> None:
    """Rows ``start .. start + n`` of the generated collection written as shards after the store's, then published
    (a new state of the store, as an extraction that added them publishes)."""
    rng = np.random.default_rng(seed)
    dim = fs.manifest["dim"]
    centres = rng.normal(size=(1000, dim)).astype(np.float32) * 3
    basis = rng.normal(size=(intrinsic, dim)).astype(np.float32) / np.sqrt(intrinsic) if intrinsic else None
    rng = np.random.default_rng([seed, start])
    first = fs.next_shard() if start else 0
    for j, s in enumerate(range(start, start + n, shard)):
        rows = min(shard, start + n - s)
        w = fs.shard_writer(first + j)
        X = centres[rng.integers(0, 1000, rows)]
        if basis is None:
            X += rng.normal(size=(rows, dim)).astype(np.float32)
        else:  # the same noise energy, in R directions, and a little everywhere
            X += rng.normal(size=(rows, intrinsic)).astype(np.float32) @ basis
            X += 0.1 * rng.normal(size=(rows, dim)).astype(np.float32)
        w.n_inputs = rows
        w.write([f"g{i:08d}" for i in range(s, s + rows)], [str(PHOTOS[i % len(PHOTOS)]) for i in range(s, s + rows)],
                X)
        w.commit()
    fs.refresh_manifest(total_inputs=start + n)


class Server:
    """``imgfeat serve`` as a subprocess on a free loopback port."""

    def __init__(self, store: Path, *extra: str, cache: Path) -> None:
        env = {**os.environ, "IMGFEAT_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "imgfeat", "serve", str(store), "--port", "0", *extra],
                                     stderr=subprocess.PIPE, text=True, env=env)
        line = ""
        while "http://" not in line:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError("imgfeat serve exited")
        self.url = re.search(r"http://[^ ]+/", line).group(0)
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain
        self.startup_s = time.perf_counter() - t0

    def rss_mb(self, field: str = "VmRSS") -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def load(server: Server, requests_: list, clients: int) -> dict:
    """Run ``requests_`` (callables taking a session) on ``clients`` threads; latencies and RSS samples."""
    local = threading.local()
    rss, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            rss.append((server.rss_mb("RssAnon"), server.rss_mb("RssFile")))
            time.sleep(0.2)

    def one(fn):
        if not hasattr(local, "s"):
            local.s = requests.Session()
        t = time.perf_counter()
        r = fn(local.s)
        dt = time.perf_counter() - t
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
        return dt

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = sorted(pool.map(one, requests_))
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
    rss = rss or [(0.0, 0.0)]
    return {"n": len(lat), "clients": clients, "qps": len(lat) / wall, "p50": q(0.50), "p99": q(0.99),
            "anon": (rss[0][0], rss[-1][0]), "file": (rss[0][1], rss[-1][1])}


def map_paint(url: str, points: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from test_serve_browser import launch_browser, wait_for

    d = launch_browser()
    try:
        d.get(url + "map")
        wait_for(d, "window.imgfeatMap && (window.imgfeatMap.ready || window.imgfeatMap.error)", timeout=300)
        info = d.execute_script("return {ready: window.imgfeatMap.ready, error: window.imgfeatMap.error || null, "
                                "points: window.imgfeatMap.points, paint: window.imgfeatMap.paintMs, "
                                "since_nav: performance.now()}")
        assert info["ready"] and info["points"] == points, info
        # interactive: frames drawn while the user drags the map for ~2 s
        d.execute_script("window.__frames = 0; (function f(){ window.__frames++; requestAnimationFrame(f); })();")
        canvas = d.find_element(By.ID, "map-canvas")
        t = time.perf_counter()
        chain = ActionChains(d, duration=50).move_to_element(canvas).click_and_hold()
        for i in range(40):
            chain.move_by_offset(5 if i < 20 else -5, 3 if i < 20 else -3)
        chain.release().perform()
        seconds = time.perf_counter() - t
        frames = d.execute_script("return window.__frames")
        return {"paint_ms": info["since_nav"], "fps_drag": frames / seconds}
    finally:
        d.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--index", default="auto")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--queries", type=int, default=4000, help="id searches")
    ap.add_argument("--uploads", type=int, default=200, help="image-upload searches")
    ap.add_argument("--map-sizes", default="100000,1000000")
    ap.add_argument("--intrinsic", type=int, default=0,
                    help="noise in a random subspace of this many dimensions (0: isotropic, the hardest case)")
    ap.add_argument("--workdir", default="/tmp/imgfeat-serve-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    store = make_store(work, args.n, intrinsic=args.intrinsic)
    print(f"store of {args.n} vectors ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first start builds the index
    first = Server(store, "--index", args.index, cache=cache)
    first.stop()
    server = Server(store, "--index", args.index, cache=cache)
    rows = []
    try:
        info = requests.get(server.url + "api/info", timeout=60).json()
        rng = np.random.default_rng(1)
        ids = [f"g{i:08d}" for i in rng.integers(0, args.n, args.queries)]
        by_id = [lambda s, i=i: s.get(f"{server.url}api/neighbours/{i}?k=20", timeout=120) for i in ids]
        load(server, by_id[: min(200, len(by_id))], args.clients)  # warm-up
        rows.append(("id search (k=20), one client: service time", load(server, by_id[:500], 1)))
        for rep in range(2):  # twice: memory must not grow from one run to the next
            rows.append((f"id search (k=20), run {rep + 1}", load(server, by_id, args.clients)))
        photos = [p.read_bytes() for p in PHOTOS]
        up = [lambda s, b=photos[j % len(photos)]: s.post(f"{server.url}api/search/image?k=20", data=b, timeout=300,
                                                          headers={"Content-Type": "image/jpeg"})
              for j in range(args.uploads)]
        if up:
            load(server, up[:8], 8)  # builds the model
            rows.append(("upload search (k=20, JPEG 300-500 kB)", load(server, up, args.clients)))
        peak = server.rss_mb("VmHWM")
        anon_started = server.rss_mb("RssAnon")
        map_s = None
        if args.map_sizes:
            t = time.perf_counter()
            requests.get(server.url + "api/map", timeout=600).raise_for_status()
            map_s = time.perf_counter() - t
    finally:
        server.stop()
    from imgfeat.outputs.store import FeatureStore

    append_rows(FeatureStore(store), args.n, args.n // 100, 0, args.intrinsic)
    grown = Server(store, "--index", args.index, cache=cache)
    grown_info = requests.get(grown.url + "api/info", timeout=60).json()
    grown_anon = grown.rss_mb("RssAnon")
    grown.stop()
    index_files = sorted(p.name for p in cache.glob("serve/*/index/*"))
    maps = []
    sizes = [int(s) for s in args.map_sizes.split(",") if s and int(s) <= args.n]
    for size in sizes:
        extra = ["--index", args.index]
        if size < args.n:  # a map of the first `size` vectors: coordinates from the cached PCA map
            xy = np.load(next(cache.glob("serve/*/*/map-*.npy")))[:size]
            coords = work / f"coords-{size}.tsv"
            coords.write_text("".join(f"g{i:08d}\t{x:.5f}\t{y:.5f}\n" for i, (x, y) in enumerate(xy)))
            extra += ["--map", str(coords)]
        srv = Server(store, *extra, cache=cache)
        try:
            requests.get(srv.url + "api/map", timeout=600).raise_for_status()
            maps.append((size, map_paint(srv.url, size)))
        finally:
            srv.stop()

    recall = info.get("index_recall")
    print(f"\n{info['count']:,} x {info['dim']} vectors ({info['model']} {LAYER}, generated"
          f"{f', noise in {args.intrinsic} dimensions' if args.intrinsic else ', isotropic noise'}), index "
          f"{info['index']}" + (f" (sampled recall@10 {recall})" if recall is not None else "") + "; "
          f"server start: {first.startup_s:.0f} s building the index, {server.startup_s:.1f} s with it cached "
          f"(heap {anon_started:.0f} MB), {grown.startup_s:.1f} s after a generation of +{args.n // 100:,} rows "
          f"({grown_info['count']:,} served, heap {grown_anon:.0f} MB; cached index files after it: {index_files}); "
          f"{args.clients} concurrent clients on loopback; machine: {os.cpu_count()} cores\n")
    print("| queries | clients | count | queries/s | p50 ms | p99 ms | server heap (RssAnon) MB, start -> end "
          "| mapped files (RssFile) MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['clients']} | {r['n']} | {r['qps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
              f"{r['anon'][0]:.0f} -> {r['anon'][1]:.0f} | {r['file'][0]:.0f} -> {r['file'][1]:.0f} |")
    print(f"\nserver peak RSS (VmHWM) over both runs: {peak:.0f} MB"
          + (f"; first /api/map (PCA of {args.n:,} vectors, cached after): {map_s:.1f} s\n" if map_s else "\n"))
    print("| map points | first interactive paint (ms since navigation, headless Chromium, SwiftShader WebGL) "
          "| frames/s while dragging |")
    print("|---|---|---|")
    for size, m in maps:
        print(f"| {size:,} | {m['paint_ms']:.0f} | {m['fps_drag']:.1f} |")
    print(json.dumps({"rows": {n: r for n, r in rows}, "maps": dict(maps), "peak_rss_mb": peak}), file=sys.stderr)


if __name__ == "__main__":
    main()
