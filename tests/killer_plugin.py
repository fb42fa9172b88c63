"""A Pillow plugin for the tests (loaded through IMGFEAT_PILLOW_PLUGINS): a ``.killer`` file takes the process
that decodes it down with it, as a pathological image can (a native decoder's crash, the OOM killer)."""

from __future__ import annotations

import os

from PIL import Image, ImageFile


class KillerImageFile(ImageFile.ImageFile):
    format = "KILLER"
    format_description = "takes its decoder down"

    def _open(self) -> None:
        os._exit(9)


Image.register_open(KillerImageFile.format, KillerImageFile, lambda prefix: prefix.startswith(b"KILLME"))
Image.register_extension(KillerImageFile.format, ".killer")
