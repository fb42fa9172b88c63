"""Helpers shared by the tests (plain functions; the fixtures are in ``conftest.py``)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size=(64, 48), seed: int = 0, mode: str = "RGB", fmt: str | None = None, **kw) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def expected_ids() -> list[str]:
    """The ids of ``image_tsv`` that hold readable images."""
    return [f"img{i:02d}" for i in range(25) if i not in (7, 18)]


# How long a test waits for something that happens when the code is right (a server starts, a result is
# computed, a process exits). It bounds a loop so a broken build fails instead of hanging; it is never the
# thing a test checks, so it is far above what the slowest machine needs (IMGFEAT_TEST_PATIENCE overrides).
PATIENCE = float(os.environ.get("IMGFEAT_TEST_PATIENCE", "600"))


def wait_until(condition, what: str, patience: float = PATIENCE, interval: float = 0.05):
    """Poll ``condition()`` until it returns something truthy (returned), failing after ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {patience:.0f} s")
        time.sleep(interval)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the raising line runs, no except clause of the product catches it."""


def die_before_publishing():
    """A context manager: a store's run writes its shards and dies before publishing them (as if killed)."""
    import contextlib

    import pytest

    import imgfeat.engines.update as update_mod

    @contextlib.contextmanager
    def patched():
        real = update_mod.publish

        def killed(*args, **kwargs):
            raise Killed

        update_mod.publish = killed
        try:
            with pytest.raises(Killed):
                yield
        finally:
            update_mod.publish = real

    return patched()


@contextmanager
def ray_cluster(nodes: int = 1):
    """A Ray cluster of ``nodes`` one-CPU nodes on this machine (``ray.cluster_utils.Cluster``, as Ray's own tests
    do), this process connected to it for the block."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(nodes - 1):
        c.add_node(num_cpus=1)
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
