"""Shared fixtures: the repository's real photos, generated images, and an isolated offline cache.
Plain helper functions live in ``helpers.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import write_image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples" / "images"


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory) -> Path:
    """ONNX exports are shared by the whole session (they are keyed by the weights' hash)."""
    return tmp_path_factory.mktemp("imgfeat-cache")


@pytest.fixture(autouse=True)
def offline_caches(tmp_path_factory, monkeypatch, export_cache):
    """Every test gets empty torch-hub and Hugging Face caches, and the hub is offline."""
    monkeypatch.setenv("IMGFEAT_CACHE", str(export_cache))
    home = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the export cache is shared by the session, so a second small run of the same options would take the quick
    # path (engines.quick); tests/test_quick.py turns it on where it is the subject
    monkeypatch.setenv("IMGFEAT_QUICK", "0")
    import torch.hub

    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # re-read TORCH_HOME
    return home


@pytest.fixture(scope="session")
def photos() -> Path:
    return PHOTOS


@pytest.fixture
def photo_dir(tmp_path, photos) -> Path:
    """A writable copy of the example photos."""
    dst = tmp_path / "photos"
    shutil.copytree(photos, dst)
    return dst


@pytest.fixture
def folder(tmp_path, photos) -> Path:
    """A writable folder of five of the example photos (what the store-update and Lance tests change)."""
    dst = tmp_path / "photos"
    dst.mkdir()
    for p in sorted(photos.glob("*.jpg"))[:5]:
        shutil.copy(p, dst / p.name)
    return dst


@pytest.fixture
def image_tsv(tmp_path) -> Path:
    """23 small generated images and 2 bad entries, listed in a TSV."""
    lines = []
    for i in range(25):
        if i == 7:
            lines.append(f"img{i:02d}\tmissing.png")
            continue
        if i == 18:
            (tmp_path / "bad.png").write_text("not an image")
            lines.append(f"img{i:02d}\tbad.png")
            continue
        write_image(tmp_path / f"{i:02d}.png", size=(40 + i, 30), seed=i)
        lines.append(f"img{i:02d}\t{i:02d}.png")
    tsv = tmp_path / "list.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    return tsv
