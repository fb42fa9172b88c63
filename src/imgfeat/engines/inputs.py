"""What an input holds before any model is built: nothing to extract is refused, and the files that are not
images are counted (torch-free: the quick path and the store's nothing-to-do run use it too)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Optional

from ..data.formats import skip_kind, skip_reason
from ..data.sources import Source
from ..errors import ImgfeatError
from ..options import InputPart

log = logging.getLogger("imgfeat.engines.pipeline")


def count_skipped(source: Source, skipped_log: Optional[str]) -> dict:
    """The input's entries that are not taken, counted by kind (extension, or a folder link followed once) and
    listed with their reason in ``--skipped-log``: a collection is never silently smaller than the folder it came
    from. The run's summary says it (once)."""
    counts: Counter = Counter()
    log_file = open(skipped_log, "w", encoding="utf-8") if skipped_log else None
    try:
        for path in source.skipped():
            counts[skip_kind(path)] += 1
            if log_file is not None:
                log_file.write(f"{path}\tskipped: {skip_reason(path)}\n")
    finally:
        if log_file is not None:
            log_file.close()
    return dict(counts)


def require_input(source: Source, start: int = 0) -> None:
    """Refuse an input that holds nothing to extract (before any output or store is made)."""
    if source.is_empty():
        raise ImgfeatError(f"the input holds no images to extract: {source.describe()}"
                           + (f" (--start {start} is at or past its end)" if start else ""))


def finish_file_run(result, source: Source, target, inp: InputPart, out: Optional[str]):
    """A file (or in-memory) run's result completed: the input's skipped files, the error rows and, without an
    output file, the vectors themselves. The same for the full path and the quick path."""
    result.skipped = count_skipped(source, inp.skipped_log)
    result.errors = target.error_log.rows
    result.n_repeated = target.n_repeated
    if target.n_repeated:
        log.warning("%d record(s) repeat an id seen earlier in the input and are skipped (the first is kept)",
                    target.n_repeated)
    if out is None:
        sink = target.sink
        result.ids, result.paths, result.features = sink.ids, sink.paths, sink.features
    return result
