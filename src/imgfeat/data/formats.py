"""Which files are images: every format a registered Pillow decoder opens, after the plugins that phones' formats
need are loaded (HEIC/HEIF through pillow-heif, a default dependency; JPEG XL through pillow-jxl-plugin, the
``jxl`` extra; AVIF is Pillow's own). A new plugin is picked up without editing a list.

Every decoding process loads the plugins (``data.decode`` calls :func:`load_plugins` as it is imported), so
extract's workers, the second attempt in a fresh process and serve's uploads and thumbnails decode the same formats.
Pillow itself is imported on first use: the command line declares its inputs without it.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections import Counter
from functools import lru_cache

log = logging.getLogger(__name__)

# Formats Pillow registers with an opener that are not pictures a user means: video containers (Pillow reads an
# MPEG's header only) and stubs that need a handler nobody installed (HDF5: imgfeat's own .h5 output!).
NOT_PICTURES = frozenset({"MPEG"})


def _load_plugins() -> dict[str, bool]:
    loaded = {}
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()  # HEIC/HEIF (and AVIF when Pillow lacks it); orientation applied
        # one thread per decode: imgfeat runs one decode worker per core already (libheif's default of 4
        # threads per image would oversubscribe them)
        pillow_heif.options.DECODE_THREADS = 1
        loaded["heif"] = True
    except ImportError:  # pragma: no cover - a default dependency
        loaded["heif"] = False
    try:
        importlib.import_module("pillow_jxl")  # registers JPEG XL on import
        loaded["jxl"] = True
    except ImportError:
        loaded["jxl"] = False
    # more Pillow plugins, named by module in IMGFEAT_PILLOW_PLUGINS (comma list), imported in every decoding
    # process, Ray actors and fresh-process retries included (a format of one's own; the tests' killer plugin)
    for name in filter(None, (m.strip() for m in os.environ.get("IMGFEAT_PILLOW_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
            loaded[name] = True
        except ImportError as exc:
            log.warning("IMGFEAT_PILLOW_PLUGINS: cannot import %s (%s)", name, exc)
            loaded[name] = False
    return loaded


@lru_cache(maxsize=1)
def load_plugins() -> dict[str, bool]:
    """The Pillow plugins of phones' formats (and ``IMGFEAT_PILLOW_PLUGINS``) registered, once a process: which
    loaded."""
    return _load_plugins()


@lru_cache(maxsize=1)
def image_extensions() -> frozenset:
    """Lower-case extensions (with the dot) of every format a registered decoder opens."""
    from PIL import Image, ImageFile

    load_plugins()
    Image.init()
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        if fmt not in Image.OPEN or fmt in NOT_PICTURES:
            continue
        factory = Image.OPEN[fmt][0]
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        out.add(ext.lower())
    return frozenset(out)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in image_extensions()


def extension_of(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    return ext if ext else "(no extension)"


# Camera RAW: counted as skipped, never read (demosaicing 20-50 MP of sensor data takes about a second a photo, and
# its development settings change the vectors: photographers make that choice in their own tools)
RAW_EXTENSIONS = frozenset((".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".orf", ".rw2",
                            ".raf", ".pef", ".srw", ".3fr", ".erf", ".kdc", ".mrw", ".x3f", ".iiq", ".rwl"))
FOLDER_LINK = "folder links walked already"  # skipped() yields such a link's path with a trailing separator


def skip_kind(path: str) -> str:
    """What a skipped entry is counted as: its extension, or a folder link not followed a second time."""
    return FOLDER_LINK if path.endswith(os.sep) else extension_of(path)


def skip_reason(path: str) -> str:
    """Why an input's entry was skipped, as ``--skipped-log`` says it."""
    kind = skip_kind(path)
    if kind == FOLDER_LINK:
        return ("a link to a folder that was walked already (a loop, or a second way to the same images): "
                "followed once")
    if kind in RAW_EXTENSIONS:
        return ("camera RAW, not read: it needs demosaicing and development settings that change the vectors; "
                "export JPEG or HEIC first")
    return "not an image extension"


def describe_skipped(counts: Counter, top: int = 5) -> str:
    """``312 skipped (not images: .mov 300, .txt 12)``, with folder links not followed twice said apart."""
    if not counts:
        return ""
    counts = Counter(counts)
    links = counts.pop(FOLDER_LINK, 0)
    total = sum(counts.values())
    parts = ", ".join(f"{ext} {n:,}" for ext, n in counts.most_common(top))
    more = len(counts) - top
    text = f"{total:,} skipped (not images: {parts}{f', {more} more kinds' if more > 0 else ''})" if total else ""
    if links:
        text += ("; " if text else "") + (f"{links:,} folder link(s) not followed: they lead to a folder walked "
                                          "already (a loop, or a second way to the same images)")
    return text
