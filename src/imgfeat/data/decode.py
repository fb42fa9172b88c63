"""Decode stage: a file path becomes a uint8 HxWx3 array at the model's input geometry.

Every failure becomes a short reason string instead of an exception, so one bad file
never takes down its batch or the run (img2dataset ``downloader.py`` habit).
"""

from __future__ import annotations

import functools
import io
import os
import signal
import stat
import struct
import threading
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from typing import Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..models.preprocess import Preprocess

# Pillow registers its format plugins lazily, in the order in which files first need them, and a format
# without a magic number (TGA) then claims files of formats registered after it: with Pillow 13.0.0, once a
# .tga has been opened first, pillow.ico is opened as a 32 x 19140 TGA and fails to load. Registering every
# plugin now gives every process the same order (23 ms); the retry in a fresh process (data.fresh) covers
# whatever other state a decoder keeps.
Image.init()
from .formats import load_plugins  # noqa: E402
from .limits import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS  # noqa: E402,F401 - what decode_record defaults to
from .tables import cell_bytes, cell_image_path, is_cell  # noqa: E402

load_plugins()  # HEIC/HEIF and JPEG XL, in every decoding process, after Pillow's own plugins

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

DecodeResult = Union[np.ndarray, str]


def _classify_error(exc: BaseException) -> str:
    """Map an exception raised while reading an image to a short, stable reason."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"missing: {msg}" if msg.startswith("no member") else "missing: file does not exist"
    if isinstance(exc, zipfile.BadZipFile):
        return f"corrupt zip member: {msg}"
    if isinstance(exc, IsADirectoryError):
        return "unreadable: is a directory"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image: cannot identify image file"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large: {msg}"
    low = msg.lower()
    if "truncated" in low or "broken data stream" in low or "premature end" in low:
        return f"truncated: {msg}"
    return f"unreadable: {type(exc).__name__}: {msg}"


def _scaled_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map a single-channel integer or float array to 0..255 by its nominal range."""
    arr = arr.astype(np.float64, copy=False)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0 and arr.dtype.kind == "f":
        arr = arr * 255.0  # float image in [0, 1]
    elif lo >= 0.0 and hi <= 255.0:
        pass  # already 8-bit range
    elif lo >= 0.0 and hi <= 65535.0:
        arr = arr / 257.0  # 16-bit range
    else:
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Turn an image of any Pillow mode into RGB; transparency is composited onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = _scaled_to_uint8(np.asarray(img))
        return Image.fromarray(grey, "L").convert("RGB")
    if (mode == "P" and "transparency" in img.info) or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def _shorter_side(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: shorter side to ``size``, longer side truncated proportionally."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def resized_size(w: int, h: int, pp: Preprocess) -> tuple[int, int]:
    """(width, height) an image of ``w`` x ``h`` is resized to before the crop, as torchvision / timm do it."""
    if isinstance(pp.resize_size, int) and pp.crop_mode == "center":
        return _shorter_side(w, h, pp.resize_size)
    th, tw = pp.scale_size
    if pp.crop_mode == "squash":
        return tw, th
    # timm ResizeKeepRatio: longest=0 (center) fits the shorter side, longest=1 (border) the longer one
    ratio = max(h / th, w / tw) if pp.crop_mode == "border" else min(h / th, w / tw)
    return round(w / ratio), round(h / ratio)


def center_crop(img: Image.Image, crop: tuple[int, int], fill: tuple[int, ...] = (0, 0, 0)) -> Image.Image:
    """torchvision ``center_crop`` / timm ``center_crop_or_pad`` offsets, padding with ``fill`` when
    the image is smaller than the crop."""
    ch, cw = crop
    w, h = img.size
    if w < cw or h < ch:
        padded = Image.new(img.mode, (max(w, cw), max(h, ch)), fill)
        padded.paste(img, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
        img, (w, h) = padded, padded.size
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def load_image(path: Union[str, io.BytesIO], pp: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True) -> Image.Image:
    """Open ``path`` as an upright RGB PIL image, raising on any problem.

    JPEGs much larger than the model input are decoded at 1/2, 1/4 or 1/8 scale in the DCT
    domain (Pillow ``draft``), which is several times faster and keeps at least the resized
    size, so the final resize still antialiases from more pixels.
    """
    if isinstance(path, str):
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise _NotAFile()
        if st.st_size == 0:
            raise _EmptyFile()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise _TooLarge(f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}")
    if draft and img.format == "JPEG":
        rw, rh = resized_size(w, h, pp)
        ratio = max(rw / w, rh / h)
        if ratio <= 0.5:
            img.draft(img.mode, (max(1, int(np.ceil(w * ratio))), max(1, int(np.ceil(h * ratio)))))
    img.load()  # first frame of animated files; raises on truncation
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a corrupt EXIF block must not cost the image its pixels
        pass
    return to_rgb(img)


class _EmptyFile(Exception):
    pass


class _NotAFile(Exception):
    pass


class _TooLarge(Exception):
    pass


def preprocess(img: Image.Image, pp: Preprocess) -> np.ndarray:
    """Resize and centre-crop (or pad) as ``pp`` says, returning a contiguous uint8 (H, W, 3) array."""
    size = resized_size(*img.size, pp)
    if size != img.size:
        img = img.resize(size, _RESAMPLE[pp.interpolation])
    fill = tuple(round(255 * m) for m in pp.mean) if pp.crop_mode == "border" else (0, 0, 0)
    return np.array(center_crop(img, pp.crop_size, fill), dtype=np.uint8)


_ZIP_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header (30 bytes)


def _read_at(fh, offset: int, size: int) -> bytes:
    """``size`` bytes of an archive at ``offset``; an archive that ends before them is 'truncated'."""
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise OSError(f"truncated: archive ends {size - len(data)} bytes into this member")
    return data


def _zip_member_at(fh, offset: int, size: int) -> bytes:
    """The bytes of the zip member whose local header is at ``offset`` and whose compressed size is ``size``
    (both from the central directory): stored members as they are, deflated ones inflated here."""
    fh.seek(offset)
    header = fh.read(_ZIP_LOCAL.size)
    if len(header) != _ZIP_LOCAL.size or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("no local file header where the archive's directory says the member is")
    _, _, _, method, _, _, _, _, _, name_len, extra_len = _ZIP_LOCAL.unpack(header)
    data = _read_at(fh, offset + _ZIP_LOCAL.size + name_len + extra_len, size)
    if method == zipfile.ZIP_STORED:
        return data
    if method != zipfile.ZIP_DEFLATED:
        raise zipfile.BadZipFile(f"compression method {method} (only stored and deflated members are read)")
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data) + inflater.flush()
    except zlib.error as exc:
        raise zipfile.BadZipFile(f"corrupt deflated data: {exc}") from None
    if not inflater.eof:
        raise zipfile.BadZipFile("corrupt deflated data: the stream ends early")
    return out


@functools.lru_cache(maxsize=4)
def _zip_directory(archive: str) -> zipfile.ZipFile:
    """Open archives of a worker (a TSV's ``archive.zip::member`` paths carry no offset): the central directory
    is read once per archive, not once per member."""
    return zipfile.ZipFile(archive)


def read_member(path: str, offset: Optional[int] = None, size: Optional[int] = None) -> bytes:
    """The bytes of an archive member ``archive::member``: a tar or zip member at ``offset`` / ``size`` as the
    sources record them, or, without an offset (a path written in a TSV), found through the archive's index."""
    if is_cell(path):  # an image held in a table's column (Parquet, Arrow): read by the worker itself
        return cell_bytes(path)
    archive, member = path.rsplit("::", 1)
    is_zip = archive.lower().endswith(".zip")
    if offset is not None:
        with open(archive, "rb") as fh:
            return _zip_member_at(fh, offset, size) if is_zip else _read_at(fh, offset, size)
    if is_zip:
        try:
            return _zip_directory(archive).read(member)
        except KeyError:
            raise FileNotFoundError(f"no member {member!r} in {archive}") from None
        except zlib.error as exc:
            raise zipfile.BadZipFile(f"corrupt deflated data: {exc}") from None
    import tarfile

    with tarfile.open(archive) as tf:
        try:
            fh = tf.extractfile(member)
        except KeyError:
            raise FileNotFoundError(f"no member {member!r} in {archive}") from None
        return fh.read() if fh is not None else b""


def is_member(path: str) -> bool:
    """``archive.tar::member``, ``archive.zip::member`` or a table cell ``table.parquet::#g:i:column`` (not a URL
    with ``::`` in it)."""
    return is_cell(path) or ("::" in path and path.rsplit("::", 1)[0].lower().endswith((".tar", ".zip")))


def _read_bytes(path: str, offset: Optional[int], size: Optional[int]) -> io.BytesIO:
    """Bytes of an archive member (``archive::member``) or of a URL (through fsspec)."""
    if offset is not None or is_member(path):
        data = read_member(path, offset, size)
    else:
        try:
            import fsspec
        except ImportError:
            raise _NeedsFsspec() from None
        with fsspec.open(path, "rb") as fh:
            data = fh.read()
    if not data:
        raise _EmptyFile()
    return io.BytesIO(data)


class _NeedsFsspec(Exception):
    pass


class _Timeout(Exception):
    pass


@contextmanager
def _deadline(seconds: Optional[float]) -> Iterator[None]:
    """Raise ``_Timeout`` in this thread if the block runs longer than ``seconds``.

    A real-time interval timer (SIGALRM): it interrupts blocking reads (a stalled network
    file system, an HTTP server that stops sending, a FIFO) as well as Python code. Signals
    reach only a process's main thread, which is where decode workers (and ``--workers 0``)
    decode; elsewhere the block runs without a deadline.
    """
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:  # the alarm may fire right here; the caller's handler is put back all the same
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)


def _guarded(work, timeout: Optional[float]) -> Union[object, str]:
    """``work()``, or the reason string of its failure (the one classification every decode shares)."""
    try:
        with _deadline(timeout):
            return work()
    except _Timeout:
        return f"timeout: reading and decoding took longer than {timeout:g} s"
    except _NeedsFsspec:
        return "unreadable: URL inputs need fsspec: pip install 'imgfeat[remote]'"
    except _EmptyFile:
        return "empty: file has 0 bytes"
    except _NotAFile:
        return "unreadable: not a regular file (a FIFO, socket or device)"
    except _TooLarge as exc:
        return f"too large: {exc}"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is data, not a crash
        return _classify_error(exc)


def decode(path: str, pp: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True,
           offset: Optional[int] = None, size: Optional[int] = None,
           timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT) -> DecodeResult:
    """Decode one image: the uint8 (H, W, 3) array, or a reason string if it cannot be used.

    ``path`` is a local file, a URL (``scheme://``, needs fsspec), or a tar or zip member
    ``archive.tar::member`` / ``archive.zip::member`` read at ``offset`` / ``size`` (found through the
    archive's index when no offset is given). Reading and decoding together may
    take at most ``timeout`` seconds (None: no limit)."""
    def work():
        if offset is not None or is_member(path) or ("://" in path and not path.startswith("file://")):
            source: Union[str, io.BytesIO] = _read_bytes(path, offset, size)
        else:
            source = path.removeprefix("file://")
        return preprocess(load_image(source, pp, max_pixels, draft), pp)

    result = _guarded(work, timeout)
    if isinstance(result, str) and is_cell(path):  # name the image a table's cell held, where the table says
        name = cell_image_path(path)
        if name:
            result += f" (the cell's image: {name})"
    return result


def decode_record(path: str, offset: Optional[int], size: Optional[int], pp: Preprocess,
                  max_pixels: int = DEFAULT_MAX_PIXELS, timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT,
                  ) -> DecodeResult:
    """``decode`` of a record's location (what ``data.fresh`` sends to its helper)."""
    return decode(path, pp, max_pixels, offset=offset, size=size, timeout=timeout)


# Failures that another process cannot change: the file is absent, empty or refused by its header, or the
# source itself stalled (a timeout has already waited the whole deadline once).
_FINAL = ("missing:", "empty:", "too large:", "timeout:", "unreadable: is a directory", "unreadable: permission",
          "unreadable: not a regular file", "unreadable: URL inputs need fsspec")


def retriable(reason: str) -> bool:
    """Whether a failed decode is worth one more attempt in a fresh process (see ``data.fresh``)."""
    return not reason.startswith(_FINAL)


def both_attempts(first: str, second: str) -> str:
    """The error row of a file that failed in its decode worker and again alone in a fresh process."""
    if first == second:
        return f"{second} (failed twice: in a decode worker, then alone in a fresh process)"
    return f"{second} (alone in a fresh process; in the decode worker: {first})"


def decode_bytes(data: bytes, pp: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS,
                 timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT) -> DecodeResult:
    """``decode`` for an image held in memory (an upload): same limits, deadline and reasons."""
    def work():
        if not data:
            raise _EmptyFile()
        return preprocess(load_image(io.BytesIO(data), pp, max_pixels), pp)

    return _guarded(work, timeout)


def thumbnail(path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
              timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT, quality: int = 85) -> Union[bytes, str]:
    """A JPEG of ``path`` (upright, RGB) fitting in ``size`` x ``size``, or a reason string. Decoded with
    ``extract``'s limits (pixel count, deadline, every mode), JPEGs at reduced DCT scale when large."""
    def work():
        source: Union[str, io.BytesIO] = path
        if is_member(path) or ("://" in path and not path.startswith("file://")):
            source = _read_bytes(path, None, None)  # an archive member as sources record it: archive::member
        img = load_image(source if not isinstance(source, str) else source.removeprefix("file://"),
                         Preprocess(crop_size=(size, size), resize_size=size), max_pixels)
        img.thumbnail((size, size), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        return buf.getvalue()

    return _guarded(work, timeout)
