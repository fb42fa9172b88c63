"""``ServeConfig``: how ``imgfeat serve`` runs (address, limits, the model's weights and backend, the audit under
review), made once from the command line and read by every part of the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..data.decode import DEFAULT_MAX_PIXELS


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: Optional[str] = None
    allow_hosts: tuple[str, ...] = ()
    cors: tuple[str, ...] = ()
    max_upload: int = 20 * 1024 * 1024
    max_json: int = 1024 * 1024
    max_k: int = 1000
    decode_timeout: float = 10.0
    decode_workers: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS  # extract's limit, for uploads and thumbnails
    thumb_size: int = 256
    weights: Optional[str] = None
    backend: str = "torch"
    audit: Optional[str] = None  # an imgfeat audit report folder: the review page
