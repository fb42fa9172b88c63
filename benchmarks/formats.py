"""What a phone library's formats cost to decode (issue 21): one camera-size photo (4032 x 3024, an iPhone's
12 MP) saved as JPEG, HEIC, AVIF and JPEG XL, decoded by imgfeat's decoder for the default model's input
(224 px: JPEG uses Pillow's DCT-domain draft mode, the others have no reduced-size decode), best of ``--runs``,
one core.

    python benchmarks/formats.py --runs 5

Prints a Markdown table: file size, ms per image, images/s per core, ratio to JPEG.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgfeat.data import formats  # noqa: F401 - the plugins
from imgfeat.data.decode import decode
from imgfeat.models.registry import get_model_spec

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "images" / "chelsea.jpg"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default="efficientnet_lite0")
    args = ap.parse_args()
    pp = get_model_spec(args.model).preprocess
    big = Image.open(PHOTO).convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(0)  # camera noise, so the encoders see real detail
    big = Image.fromarray(np.clip(np.asarray(big, np.int16) + rng.integers(-2, 3, (3024, 4032, 3)), 0, 255)
                          .astype(np.uint8))
    kinds = [("JPEG", ".jpg", {"quality": 90}), ("HEIC", ".heic", {"quality": 80}),
             ("AVIF", ".avif", {"quality": 80})]
    if formats.PLUGINS.get("jxl"):
        kinds.append(("JPEG XL", ".jxl", {"quality": 90}))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, ext, kw in kinds:
            path = Path(tmp) / f"photo{ext}"
            big.save(path, **kw)
            times = []
            for _ in range(args.runs + 1):
                t0 = time.perf_counter()
                out = decode(str(path), pp, timeout=None)
                times.append(time.perf_counter() - t0)
                assert not isinstance(out, str), out
            rows.append((name, path.stat().st_size, min(times[1:])))
    jpeg = rows[0][2]
    print("| format | file | ms per image | images/s per core | vs JPEG |\n|---|---|---|---|---|")
    for name, size, sec in rows:
        print(f"| {name} | {size / 1e6:.1f} MB | {sec * 1e3:.0f} | {1 / sec:.1f} | {sec / jpeg:.1f}x |")


if __name__ == "__main__":
    main()
