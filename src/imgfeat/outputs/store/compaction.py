"""Compaction: shards rewritten without their dead rows, published as the next generation, unreferenced files
removed."""

from __future__ import annotations


import numpy as np

from ...errors import ImgfeatError

from ..parquet import read_table
from .layout import segment_of


class Compaction:
    """``compact`` and ``remove_unreferenced`` of a ``FeatureStore`` (mixed into it)."""

    def compact(self) -> dict:
        """Rewrite every shard that has dead rows without them (as new shards, in the same place of the order),
        publish that as the next generation, then delete the files no published state refers to. The caller
        holds the writer lock."""
        if (self.update_dir / "plan.json").is_file():
            raise ImgfeatError(f"{self.path} has an update in progress (update/plan.json): finish it (rerun the same "
                               "extract) before compacting")
        segments, rewritten, dropped = [], 0, 0
        for seg in self.segments():
            dead = self.dead_inputs(seg)
            if not len(dead):
                segments.append(seg)
                continue
            inv = self.inputs_table(seg["shard"])
            live = np.setdiff1d(np.arange(inv.num_rows), dead)
            keep = self.live_rows(seg)
            keep = np.arange(seg["rows"]) if keep is None else keep
            t = read_table(self._shard_file(seg["shard"], "ids.parquet"))
            vectors = np.load(self._shard_file(seg["shard"], "npy"), mmap_mode="r")
            live_ids = set(inv.column("id").take(live).to_pylist())
            errors = [line.split("\t") for line in
                      self._shard_file(seg["shard"], "errors.tsv").read_text(encoding="utf-8").splitlines() if line]
            writer = self.shard_writer(self.next_shard())
            writer.inputs = list(zip(inv.column("id").take(live).to_pylist(), inv.column("fp").take(live).to_pylist()))
            ids, paths = t.column("id").to_pylist(), t.column("path").to_pylist()
            for s in range(0, len(keep), 8192):
                part = keep[s:s + 8192]
                writer.write([ids[i] for i in part], [paths[i] for i in part], vectors[part])
            writer.errors([tuple(e) for e in errors if e[0] in live_ids])
            writer.n_inputs = len(live)
            marker = writer.commit()
            segments.append(segment_of(marker))
            rewritten += 1
            dropped += seg.get("dead_rows", 0)
        if rewritten:
            self.publish(segments, {"compacted": rewritten, "dropped_rows": dropped})
        freed = self.remove_unreferenced()
        return {"rewritten": rewritten, "dropped_rows": dropped, "files_removed": freed[0], "bytes_freed": freed[1]}

    def remove_unreferenced(self) -> tuple[int, int]:
        """Delete shard files no published state refers to: superseded shards and old dead-inputs files."""
        keep_shards = {seg["shard"] for seg in self.segments()}
        keep_dead = {seg["dead"] for seg in self.segments() if seg.get("dead")}
        n = size = 0
        for p in list(self.shard_dir.iterdir()) if self.shard_dir.is_dir() else []:
            if not p.name[:6].isdigit():
                continue
            shard = int(p.name[:6])
            if shard in keep_shards and (".dead.g" not in p.name or p.name in keep_dead):
                continue
            size += p.stat().st_size
            p.unlink()
            n += 1
        return n, size

    # ------------------------------------------------------------------ reading
