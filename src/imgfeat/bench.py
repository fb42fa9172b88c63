"""``imgfeat bench``: one run that measures, on this machine, the forward ceiling of every
backend, the physical limit, the decode rate per worker count, imgfeat end-to-end with default
flags (and at each ``--precision``, with its ratio to fp32 and its fidelity figures), and the naive
one-image-at-a-time baseline, and prints them as one table."""

from __future__ import annotations

import contextlib
import multiprocessing
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import ImgfeatError
from .options import available_cores

# NumPy, Pillow, torch and the model stack are imported by the functions that measure: the command line's parser
# reads SETS, and `imgfeat --help` imports nothing but the standard library

PHOTOS = Path(__file__).parent / "_data" / "photos"
SETS = {"imagenet": (500, 375), "camera": (4000, 3000)}  # ImageNet-like and camera-size JPEGs


@dataclass
class Row:
    section: str
    what: str
    backend: str = ""
    batch: str = ""
    rate: Optional[float] = None
    note: str = ""


def _make_one(args: tuple[int, str, tuple[int, int], str]) -> None:
    import numpy as np
    from PIL import Image

    i, out, size, photo = args
    rng = np.random.default_rng(i)
    img = Image.open(photo).convert("RGB")
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.BICUBIC)
    if i % 2:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img.save(out, quality=90)


def make_image_set(root: Path, kind: str, n: int) -> Path:
    """``n`` JPEGs (quality 90) of the ``kind`` size, cropped, resized and re-encoded from real photos."""
    size = SETS[kind]
    folder = root / f"{kind}_{size[0]}x{size[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted(str(p) for p in PHOTOS.glob("*.jpg"))
    todo = [(i, str(folder / f"{i:05d}.jpg"), size, photos[i % len(photos)]) for i in range(n)
            if not (folder / f"{i:05d}.jpg").exists()]
    if todo:
        with multiprocessing.get_context("fork").Pool(available_cores()) as pool:
            pool.map(_make_one, todo, chunksize=4)
    return folder


def _first(folder: Path, n: int) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.jpg"))[:n]


def _rate(fn: Callable[[], int], seconds: float, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n == 0:
        n += fn()
    return n / elapsed


def matmul_gflops(seconds: float = 1.0) -> float:
    """Best fp32 matrix-product rate over a few sizes, all threads."""
    import torch

    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = max(best, _rate(lambda: (a @ b, 1)[1], seconds) * 2 * n ** 3 / 1e9)
    return best


def model_gflops(model, input_size: tuple[int, int]) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    h, w = input_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros((1, 3, h, w), dtype=torch.uint8))
    return counter.get_total_flops() / 1e9


def _forward_rows(fm, batch_sizes, threads: int, seconds: float, rows: list[Row]) -> float:
    """Forward rate of every backend x batch size on pre-made tensors (rows appended); returns the best."""
    import torch

    from .models.backends import ExecConfig, available_backends, make_executor

    ceiling = 0.0
    for backend in available_backends():
        for bs in batch_sizes:
            ex, _ = make_executor(fm, ExecConfig(backend=backend, batch_size=bs, threads=threads))
            x = torch.randint(0, 256, (bs, 3, *fm.input_size), dtype=torch.uint8)
            rate = _rate(lambda: (ex(x), bs)[1], seconds)
            ceiling = max(ceiling, rate)
            rows.append(Row("forward", "backbone on pre-made tensors", backend, str(bs), rate))
    return ceiling


def _precision_rows(kind: str, files: list[str], model: str, random_weights: bool, precisions: tuple[str, ...],
                    fp32_rate: float, rows: list[Row]) -> None:
    """End-to-end rate of each lower precision (its fidelity check included in the result, not in the rate),
    with its ratio to fp32 and the figures of its fidelity check against fp32 on the set's first images."""
    from .api import extract

    for precision in precisions:
        if precision == "fp32":
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                res = extract(files, Path(tmp) / "features.npy", model=model,
                              random_weights=random_weights, precision=precision, min_fidelity=0)
            except ImgfeatError as exc:  # e.g. fp16 on a CPU: the row says why
                rows.append(Row(kind, f"end-to-end --precision {precision}", note=f"not run: {exc}"))
                continue
        f = res.backend_report.get("fidelity") or {}
        head = f" (first {f['fp32_head']:.0%} of layers fp32)" if f.get("fp32_head") else ""
        rows.append(Row(kind, f"imgfeat extract end-to-end --precision {precision}", res.backend + head, "32",
                        res.images_per_s, f"{res.images_per_s / fp32_rate:.2f}x fp32; cosine min "
                        f"{f.get('cosine_min', float('nan')):.4f} p1 {f.get('cosine_p1', float('nan')):.4f} "
                        f"median {f.get('cosine_median', float('nan')):.4f}, kNN@10 "
                        + (f"{f['knn10_overlap']:.3f}" if f.get("knn10_overlap") is not None else "n/a (<= 11 images)")))


def run_bench(model: str = "efficientnet_lite0", random_weights: bool = False, sets=("imagenet", "camera"),
              images: int = 300, workdir: Optional[Path] = None, batch_sizes=(1, 8, 32), seconds: float = 3.0,
              naive_images: int = 40, log: Callable[[str], None] = print,
              precisions: tuple[str, ...] = ("fp32",)) -> tuple[list[Row], dict]:
    import torch

    from .api import extract
    from .data.loader import make_loader
    from .data.sources import ListSource
    from .files import cache_dir
    from .models.backbone import build_feature_model
    from .models.registry import get_model_spec

    workdir = Path(workdir or cache_dir() / "bench")
    spec = get_model_spec(model)
    size = spec.preprocess.crop_size
    threads = available_cores()
    fm = build_feature_model(spec, random_weights=random_weights)
    rows: list[Row] = []
    facts = {"cpu": _cpu_name(), "cores": threads, "torch": torch.__version__, "model": model,
             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}

    log("measuring the forward ceiling ...")
    ceiling = _forward_rows(fm, batch_sizes, threads, seconds, rows)
    gflops_rate, flops = matmul_gflops(), model_gflops(fm, size)
    rows.append(Row("forward", "physical limit", "", "", gflops_rate / flops,
                    f"{gflops_rate:.0f} GFLOP/s matmul / {flops:.2f} GFLOP per image"))
    facts.update(ceiling=ceiling, matmul_gflops=gflops_rate, model_gflops=flops)

    for kind in sets:
        log(f"preparing {images} {kind} JPEGs in {workdir} ...")
        folder = make_image_set(workdir, kind, images)
        files = _first(folder, images)  # the set may hold more from an earlier, larger run: use what was asked
        decode_one_core = 0.0
        for workers in range(0, threads + 1):
            loader_args = (ListSource(tuple(files)), spec.preprocess, 32, workers)

            def decode_all() -> int:
                return sum(b["n"] for b in make_loader(*loader_args, max_pixels=10 ** 9))

            rate = _rate(decode_all, 0.1, warm_up=False)
            decode_one_core = rate if workers == 0 else decode_one_core
            rows.append(Row(kind, "decode + preprocess only", "", f"workers={workers}", rate))
        # a perfect pipeline: the best forward and the in-process (one core) decode share the cores with no loss;
        # per image it costs threads / ceiling + 1 / decode core-seconds
        bound = threads / (threads / ceiling + 1 / decode_one_core) if decode_one_core else ceiling
        rows.append(Row(kind, "pipeline bound: best forward sharing the cores with decode", "", "", bound,
                        f"{threads} cores: {threads}/{ceiling:.1f} + 1/{decode_one_core:.1f} core-s per image"))
        log(f"{kind}: imgfeat extract end-to-end, default flags ...")
        with tempfile.TemporaryDirectory() as tmp:
            res = extract(files, Path(tmp) / "features.npy", model=model, random_weights=random_weights)
        e2e = res.images_per_s
        rows.append(Row(kind, "imgfeat extract end-to-end (default flags)", res.backend, "32", e2e,
                        f"{res.n_done} images -> .npy"))
        if set(precisions) - {"fp32"}:
            log(f"{kind}: end-to-end at {', '.join(p for p in precisions if p != 'fp32')} ...")
            _precision_rows(kind, files, model, random_weights, precisions, e2e, rows)
        log(f"{kind}: naive baseline ...")
        naive = naive_rate(spec, build_feature_model(spec, random_weights=random_weights),
                           _first(folder, naive_images))
        rows.append(Row(kind, "naive: PIL + torchvision transforms + model(x[None])", "torch", "1", naive,
                        f"{min(naive_images, images)} images"))
        rows.append(Row(kind, "end-to-end / forward ceiling", rate=None, note=f"{e2e / ceiling:.2f}"))
        rows.append(Row(kind, "end-to-end / pipeline bound", rate=None, note=f"{e2e / bound:.2f}"))
        rows.append(Row(kind, "end-to-end / naive", rate=None, note=f"{e2e / naive:.1f}x"))
        facts[f"{kind}_e2e"], facts[f"{kind}_naive"] = e2e, naive
    return rows, facts


def naive_rate(spec, fm, files: list[str]) -> float:
    """The blog-post way: one image at a time, full PIL decode, torchvision transforms, torch eager."""
    from PIL import Image

    import torch
    from torchvision import transforms as T

    pp = spec.preprocess
    tf = T.Compose([T.Resize(pp.resize_size, interpolation=T.InterpolationMode(pp.interpolation)),
                    T.CenterCrop(pp.crop_size), T.PILToTensor()])
    start = time.perf_counter()
    with torch.no_grad():
        for path in files:
            fm(tf(Image.open(path).convert("RGB"))[None])
    return len(files) / (time.perf_counter() - start)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def format_table(rows: list[Row], markdown: bool = False) -> str:
    header = ("set", "measurement", "backend", "batch", "images/s", "note")
    body = [(r.section, r.what, r.backend, r.batch, "" if r.rate is None else f"{r.rate:.1f}", r.note) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body])
