"""Shards: the unit of resume and distribution, cut in this one place.

Shard k holds input records ``[k*S, (k+1)*S)`` of the selected input. Every engine (the local
DataLoader, ``--shard I/N`` parts, Ray's driver) gets its shards from :func:`cut_shards`, which
also skips the done ones and the other parts' ones without materialising their records
(img2dataset ``reader.py`` habit).
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from .sources import Record


@dataclass(frozen=True)
class ShardPlan:
    """How records group into shards: ``size`` records each (None: the whole input is one group),
    minus ``skip`` (already done), restricted to ``part = (I, N)``: shards k with k % N == I."""

    size: Optional[int] = None
    skip: frozenset = frozenset()
    part: Optional[tuple[int, int]] = None
    offset: int = 0  # index of the first shard (a Ray actor handed shard k's records uses k)
    # the record counts of the first shards, where they differ from ``size``: a repair re-extracts each damaged
    # shard's inputs as one shard of its own, ahead of the update's new and changed records
    sizes: tuple = ()

    def wanted(self, shard: int) -> bool:
        return shard not in self.skip and (self.part is None or shard % self.part[1] == self.part[0])

    def shard_key(self):
        """record index -> shard number, for ``itertools.groupby``."""
        if not self.sizes:
            return lambda t: self.offset + t[0] // self.size
        ends = list(itertools.accumulate(self.sizes))
        head = ends[-1]

        def key(t) -> int:
            i = t[0]
            if i < head:
                return self.offset + bisect.bisect_right(ends, i)
            return self.offset + len(ends) + (i - head) // self.size
        return key


def cut_shards(records: Iterable[Record], plan: ShardPlan) -> Iterator[tuple[Optional[int], Iterator[Record]]]:
    """``(shard, its records)`` for every wanted shard, in input order (``shard`` is None when
    ``plan.size`` is None). Each group must be consumed before the next is asked for."""
    if plan.size is None:
        yield None, iter(records)
        return
    for shard, group in itertools.groupby(enumerate(records), key=plan.shard_key()):
        if plan.wanted(shard):  # an unwanted group is read past by groupby itself, never kept
            yield shard, (rec for _, rec in group)
