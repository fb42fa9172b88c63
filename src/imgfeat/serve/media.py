"""Image work for the server: uploads and thumbnails are decoded in a small pool of spawned processes
(``data.pool.DecodePool``), each task under ``extract``'s pixel limit and decode deadline (a signal deadline
works only in a process's main thread, and a pathological file must not take a server thread or Pillow state
with it). Thumbnails are made once per id and kept on disk under the cache directory.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Optional, Union

from ..data.decode import thumbnail
from ..data.pool import DecodePool
from ..errors import best_effort_cache
from ..files import write_atomic

__all__ = ["DecodePool", "Thumbnails", "placeholder_png"]


class Thumbnails:
    """JPEG thumbnails of the collection's images, ``size`` px on the longer side, made on first request
    from the path the features record for that id and kept under ``folder``."""

    def __init__(self, folder: Path, pool: DecodePool, size: int = 256) -> None:
        self.folder, self.pool, self.size = folder / f"thumbs-{size}", pool, size

    def _file(self, rid: str, path: Optional[str] = None) -> Path:
        # keyed by the image's path and modification time too: an image changed under the same id (a store
        # that follows its collection) gets a new thumbnail
        try:
            stamp = os.stat(path.split("::", 1)[0]).st_mtime_ns if path and "://" not in path else ""
        except OSError:
            stamp = ""
        h = hashlib.sha1(f"{rid}\0{path}\0{stamp}".encode("utf-8")).hexdigest()
        return self.folder / h[:2] / f"{h}.jpg"

    def etag(self, rid: str, path: Optional[str]) -> str:
        return '"' + hashlib.sha1(f"{self._file(rid, path).name}\0{self.size}".encode("utf-8")).hexdigest()[:20] + '"'

    def get(self, rid: str, path: Optional[str]) -> Union[bytes, str]:
        """The thumbnail's bytes, or the reason it cannot be made."""
        if not path:
            return "missing: the features record no image path for this id"
        f = self._file(rid, path)
        try:
            held = f.read_bytes()
            if held[:2] == b"\xff\xd8" and held[-2:] == b"\xff\xd9":  # a whole JPEG; a damaged one is made again
                return held
        except OSError:
            pass
        result = self.pool.run(thumbnail, path, self.size)
        if isinstance(result, bytes):
            with best_effort_cache(f"the thumbnail of {rid!r}", f):
                f.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(f, result)
        return result


def placeholder_png(size: int = 64) -> bytes:
    """A plain grey square shown where a thumbnail cannot be made."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (226, 226, 226))
    d = ImageDraw.Draw(img)
    d.line((size * 0.3, size * 0.3, size * 0.7, size * 0.7), fill=(150, 150, 150), width=3)
    d.line((size * 0.7, size * 0.3, size * 0.3, size * 0.7), fill=(150, 150, 150), width=3)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
