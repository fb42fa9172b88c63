"""The limits of one image, which the command line declares as defaults: standard library only (``--help`` answers
without importing Pillow or NumPy)."""

from __future__ import annotations

# Pillow's own bomb threshold (it raises above 2 x MAX_IMAGE_PIXELS); imgfeat checks its own limit first.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
# Seconds one image may take to read and decode (a stalled network mount or URL, a FIFO).
DEFAULT_DECODE_TIMEOUT = 60.0
