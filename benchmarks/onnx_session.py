"""What keeping ONNX Runtime's optimised graph saves when a session starts (issue 48): for every recorded export
under an imgfeat cache, the median of ``--runs`` session creations that optimise the graph at start (before) and
that load the kept optimised graph with no optimisation (``models.runtimes.onnx_session``, now), in one process, the
files in the page cache.

    python benchmarks/onnx_session.py --cache ~/.cache/imgfeat --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def created(path: Path, level, threads: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    t0 = time.perf_counter()
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return time.perf_counter() - t0


def main() -> None:
    import onnxruntime as ort

    from imgfeat.options import available_cores

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, help="an IMGFEAT_CACHE folder whose export/ holds model.onnx files")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    threads = available_cores()
    print(f"| export | MB | optimised at start (before) | optimised graph kept (now) | now / before |")
    print("|---|---|---|---|---|")
    for export in sorted(Path(args.cache).glob("export/*/model.onnx")):
        with tempfile.TemporaryDirectory() as tmp:
            kept = Path(tmp) / "optimised.onnx"
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.optimized_model_filepath = str(kept)
            so.log_severity_level = 3
            ort.InferenceSession(str(export), so, providers=["CPUExecutionProvider"])  # also warms the page cache
            before = statistics.median(created(export, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, threads)
                                       for _ in range(args.runs))
            now = statistics.median(created(kept, ort.GraphOptimizationLevel.ORT_DISABLE_ALL, threads)
                                    for _ in range(args.runs))
        print(f"| {export.parent.name} | {export.stat().st_size / 1e6:.0f} | {before:.3f} s | {now:.3f} s | "
              f"{now / before:.2f} |", flush=True)


if __name__ == "__main__":
    main()
