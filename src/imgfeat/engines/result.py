"""What a run did (:class:`ExtractResult`): every engine returns one, and the command line prints its summary.
Importable without torch, as the API that returns it is."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..data.formats import describe_skipped


@dataclass
class ExtractResult:
    """What a run did. ``ids``/``features`` are filled only when no ``out`` file was given."""

    n_done: int
    n_failed: int
    seconds: float
    dim: int
    model: str
    backend: str = "torch"
    out: Optional[str] = None
    errors_path: Optional[str] = None
    ids: Optional[list[str]] = None
    paths: Optional[list[str]] = None
    features: Optional[np.ndarray] = None
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    n_retried: int = 0  # failed in a decode worker and tried again alone in a fresh process
    n_recovered: int = 0  # ... and decoded there (they have vectors)
    backend_report: dict = field(default_factory=dict)
    shards_written: Optional[int] = None
    shards_skipped: Optional[int] = None
    skipped: dict = field(default_factory=dict)  # files of the input that are not images, by extension
    n_repeated: int = 0  # a file output: records whose id came earlier in the input, skipped (the first is kept)
    update: Optional[dict] = None  # a store's run: added, changed, removed, unchanged (+ duplicates, kept)
    generation: Optional[int] = None  # the store's published generation after the run
    published: bool = True  # False: a --shard part whose update waits for the other parts
    actors_lost: int = 0  # Ray: actors that died (a node removed, the OOM killer), replaced while there was room
    shards_retried: int = 0  # Ray: shards given to another actor after theirs died
    failed_shards: list = field(default_factory=list)  # Ray: (shard, reason) not done: the rerun retries them
    by_worker: dict = field(default_factory=dict)  # Ray: shards done per actor process

    @classmethod
    def of_loop(cls, n_done: int, target, seconds: float, dim: int, model: str, report: dict, out,
                retries: dict) -> "ExtractResult":
        """What one pass of ``engines.loop.drive`` into ``target`` did (the full and the quick path alike)."""
        return cls(n_done=n_done, n_failed=target.n_failed, seconds=seconds, dim=dim, model=model,
                   backend=report["backend"], backend_report=report, out=str(out) if out is not None else None,
                   errors_path=target.errors_path, n_retried=retries.get("retried", 0),
                   n_recovered=retries.get("recovered", 0))

    @property
    def images_per_s(self) -> float:
        return self.n_done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        dest = self.out if self.out else "memory"
        failed = f"{self.n_failed} failed"
        if self.n_failed and self.errors_path:
            failed += f" (reasons in {self.errors_path})"
        if self.n_retried:
            failed += f" ({self.n_retried} retried alone in a fresh process, {self.n_recovered} recovered)"
        if self.skipped:
            failed += ", " + describe_skipped(Counter(self.skipped))
        if self.n_repeated:
            failed += f", {self.n_repeated:,} record(s) skipped: their id came earlier in the input (the first is kept)"
        if self.shards_written is not None:
            failed += f", {self.shards_written} shards written, {self.shards_skipped} already done"
        if self.actors_lost or self.failed_shards:
            failed += (f", {self.actors_lost} actor(s) lost, {self.shards_retried} shard(s) retried"
                       + (f", {len(self.failed_shards)} shard(s) NOT done ({self.failed_shards[0][1]}; shards "
                          f"{', '.join(str(s) for s, _ in self.failed_shards[:10])})" if self.failed_shards else ""))
        store = ""
        if self.update is not None:
            u = self.update
            store = (f"; {u['added']:,} added, {u['changed']:,} changed, {u['removed']:,} removed, "
                     f"{u['unchanged']:,} unchanged" + (f", {u['kept']:,} kept (--append)" if u.get("kept") else "")
                     + (f", {u['duplicates']:,} duplicate ids skipped" if u.get("duplicates") else "")
                     + (f"; converted {u['converted']} shard(s) of a store written before updates" if u.get("converted")
                        else "")
                     + (f"; repaired {u['shards_repaired']} damaged shard(s): {u.get('repaired', 0):,} input(s) "
                        "re-extracted from their images" + (f", {u['dropped']:,} dropped (their images are gone)"
                                                            if u.get("dropped") else "")
                        if u.get("shards_repaired") else "")
                     + (f"; generation {self.generation}" if self.published else
                        "; published when every --shard part is done"))
        if self.model is None:  # nothing to extract: no model was built
            skipped = f"; {describe_skipped(Counter(self.skipped))}" if self.skipped else ""
            return f"imgfeat: nothing to extract{skipped}{store} -> {dest}"
        return (f"imgfeat: {self.n_done} done, {failed}, {self.images_per_s:.1f} images/s, "
                f"{self.seconds:.1f} s, {self.dim}-d {self.model} ({self.backend}){store} -> {dest}")
