"""What Ray costs and what a lost node costs (issue 23), on this machine's 2 cores.

    python benchmarks/ray_faults.py --images 240 --pending 1000000

1. The same extraction (``--images`` 500x375 JPEGs, default model, shards of 20) with the local engine, and with
   ``--engine ray`` on a cluster of two one-CPU nodes (``ray.cluster_utils.Cluster``): images/s and the ratio.
2. The Ray run again with the second node removed after half of the shards are reported: wall time against the
   run without the fault, actors lost, shards retried; the store equals the clean one.
3. The driver's memory with ``--pending`` inputs: listing, diff, plan and the shard descriptors it hands out,
   without actors (a TSV of that many paths), peak RSS sampled.

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int) -> Path:
    from imgfeat.bench import make_image_set

    files = sorted(make_image_set(folder, "imagenet", n).glob("*.jpg"))[:n]
    tsv = folder / "list.tsv"
    tsv.write_text("".join(f"{p.stem}\t{p}\n" for p in files))
    return tsv


def ray_run(tsv: Path, out: Path, remove_after: int = 0) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    import imgfeat
    import imgfeat.engines.ray as engine

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    node = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        while int(ray.cluster_resources().get("CPU", 0)) < 2:
            time.sleep(0.1)
        seen = []

        def after(report):
            seen.append(report)
            if remove_after and len(seen) == remove_after:
                cluster.remove_node(node)

        engine._ON_REPORT = after
        t0 = time.perf_counter()
        res = imgfeat.extract(str(tsv), str(out), engine="ray", shard_size=20, quiet=True)
        wall = time.perf_counter() - t0
    finally:
        engine._ON_REPORT = None
        ray.shutdown()
        cluster.shutdown()
    return {"wall": wall, "rate": res.images_per_s, "lost": res.actors_lost, "retried": res.shards_retried,
            "done": res.n_done}


DRIVER = textwrap.dedent("""
    import os, sys, threading, time
    from imgfeat.data.shards import ShardPlan
    from imgfeat.data.sources import PlanSource, open_source
    from imgfeat.engines import update
    from imgfeat.engines.ray import _pending
    from imgfeat.options import ExtractOptions
    from imgfeat.outputs.store import FeatureStore
    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    base, peak, on = rss(), [0], [True]
    def sample():
        while on[0]:
            peak[0] = max(peak[0], rss()); time.sleep(0.01)
    threading.Thread(target=sample, daemon=True).start()
    opts = ExtractOptions(data=sys.argv[1], out=sys.argv[2], shard_size=10_000)
    source = open_source(opts.data)
    store = FeatureStore(opts.out)
    t0 = time.perf_counter()
    upd = update.prepare(opts.update_part, source, store)
    plan = ShardPlan(size=opts.shard_size, offset=upd.base)
    jobs = sum(1 for _ in _pending(PlanSource(upd.plan).records(), plan, upd.plan, upd.base))
    on[0] = False
    print(jobs, upd.pending, time.perf_counter() - t0, (max(peak[0], rss()) - base) / 2**20, base / 2**20)
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--pending", type=int, default=1_000_000)
    args = ap.parse_args()
    import imgfeat

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tsv = make_images(tmp, args.images)
        imgfeat.extract(str(tsv), str(tmp / "warm.npy"), quiet=True)  # export and backend choice cached
        t0 = time.perf_counter()
        local = imgfeat.extract(str(tsv), str(tmp / "local"), shard_size=20, quiet=True)
        local_wall = time.perf_counter() - t0
        ray_run(tsv, tmp / "ray-warm")  # workers' imports and the actors' first model builds, discarded
        clean = ray_run(tsv, tmp / "ray")
        shards = -(-args.images // 20)
        fault = ray_run(tsv, tmp / "ray-fault", remove_after=shards // 2)
        ids_a, a = imgfeat.load(tmp / "ray")
        ids_b, b = imgfeat.load(tmp / "ray-fault")
        same = ids_a == ids_b and np.allclose(np.asarray(a), np.asarray(b), atol=1e-5)
        print("| run | wall | images/s | note |\n|---|---|---|---|")
        print(f"| local engine | {local_wall:.1f} s | {local.images_per_s:.1f} | baseline, same run |")
        print(f"| ray, 2 one-CPU nodes | {clean['wall']:.1f} s | {clean['rate']:.1f} | "
              f"{clean['rate'] / local.images_per_s:.2f}x the local engine (rates: the extraction loop, after "
              "the actors' model build; walls: the whole call) |")
        print(f"| ray, second node removed after {shards // 2} of {shards} shards | {fault['wall']:.1f} s | "
              f"{fault['rate']:.1f} | {fault['wall'] - clean['wall']:+.1f} s against no fault; {fault['lost']} "
              f"actor(s) lost, {fault['retried']} shard(s) retried; store equal to the clean run: {same} |")

        big = tmp / "pending.tsv"
        with open(big, "w") as fh:
            for i in range(args.pending):
                fh.write(f"id{i:08d}\t/nonexistent/{i:08d}.jpg\n")
        out = subprocess.run([sys.executable, "-c", DRIVER, str(big), str(tmp / "driver-store")],
                             capture_output=True, text=True, check=True).stdout.split()
        jobs, pending, seconds, peak, base = int(out[0]), int(out[1]), float(out[2]), float(out[3]), float(out[4])
        print(f"\n| pending inputs | shards handed out | driver time (listing, diff, plan, descriptors) | "
              f"driver's own peak memory |\n|---|---|---|---|\n| {pending:,} | {jobs:,} | {seconds:.1f} s | "
              f"{peak:,.0f} MB (after imports: {base:,.0f} MB) |")


if __name__ == "__main__":
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    main()
