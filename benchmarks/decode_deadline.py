"""Cost of the per-image decode deadline: `_decode.decode` with and without `timeout`.

    .venv/bin/python benchmarks/decode_deadline.py

Writes 200 ImageNet-like JPEGs (500x375, quality 90) from the bundled photos, decodes them
in this process (efficientnet_lite0 preprocessing) and prints the median images/s of five
passes each way, and their ratio.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgfeat.data.decode import decode
from imgfeat.models.registry import get_model_spec


def main() -> None:
    pp = get_model_spec("efficientnet_lite0").preprocess
    photos = sorted((Path(__file__).resolve().parents[1] / "src/imgfeat/_data/photos").glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(200):
            path = Path(tmp) / f"{i}.jpg"
            Image.open(photos[i % len(photos)]).convert("RGB").resize((500, 375)).save(path, quality=90)
            paths.append(str(path))

        def rate(timeout):
            start = time.perf_counter()
            for p in paths:
                decode(p, pp, timeout=timeout)
            return len(paths) / (time.perf_counter() - start)

        for _ in range(2):  # warm-up: page cache, Pillow
            rate(None), rate(60.0)
        off = float(np.median([rate(None) for _ in range(5)]))
        on = float(np.median([rate(60.0) for _ in range(5)]))
    print("| decode | images/s |\n|---|---|")
    print(f"| no deadline | {off:.1f} |\n| deadline 60 s | {on:.1f} |\n| ratio | {on / off:.3f} |")


if __name__ == "__main__":
    main()
