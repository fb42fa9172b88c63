"""``imgfeat bench``: the image sets, the FLOP count behind the physical limit, and a tiny real run."""

from __future__ import annotations

import pytest
from PIL import Image

from imgfeat.bench import format_table, make_image_set, model_gflops, run_bench
from imgfeat.models.backbone import build_feature_model
from imgfeat.models.registry import get_model_spec


def test_image_sets_are_real_jpegs_of_both_sizes(tmp_path):
    for kind, size in (("imagenet", (500, 375)), ("camera", (4000, 3000))):
        folder = make_image_set(tmp_path, kind, 3)
        files = sorted(folder.glob("*.jpg"))
        assert len(files) == 3
        with Image.open(files[0]) as img:
            assert img.format == "JPEG" and img.size == size
        assert len({f.read_bytes() for f in files}) == 3  # distinct images, not copies


def test_resnet50_flops_match_the_published_figure():
    spec = get_model_spec("resnet50")
    gflops = model_gflops(build_feature_model(spec, random_weights=True), spec.preprocess.crop_size)
    assert gflops == pytest.approx(8.2, rel=0.03)  # 4.1 GMACs


@pytest.mark.slow
def test_bench_prints_every_section(tmp_path):
    lines = []
    rows, facts = run_bench(model="squeezenet1_1", sets=("imagenet",), images=6, workdir=tmp_path,
                            batch_sizes=(1, 4), seconds=0.2, naive_images=2, log=lines.append)
    table = format_table(rows)
    for needle in ("backbone on pre-made tensors", "physical limit", "decode + preprocess only",
                   "imgfeat extract end-to-end", "naive", "end-to-end / forward ceiling", "end-to-end / naive"):
        assert needle in table
    assert facts["ceiling"] > 0 and facts["imagenet_e2e"] > 0 and facts["imagenet_naive"] > 0
    assert format_table(rows, markdown=True).startswith("| set | measurement |")
