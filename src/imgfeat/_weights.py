"""Where a model's pretrained weights come from: a pip package, a URL cached in the torch hub
directory, the Hugging Face hub (timm), or a local file. Each source can say whether it is
usable offline and, when it is not, fails with a message naming the file and the fix."""

from __future__ import annotations

import importlib
import os
import urllib.error
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch

from ._errors import MissingDependencyError, WeightsUnavailableError

StateDict = Mapping[str, torch.Tensor]


def load_state_dict_file(path: str) -> dict:
    """Load a local weights file (torch ``.pth``/``.pt`` or ``.safetensors``), unwrapping common containers."""
    if not os.path.isfile(path):
        raise WeightsUnavailableError(f"--weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsUnavailableError(f"--weights file {path!r} does not hold a state dict (got {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


class WeightsSource:
    """Interface: ``describe()``, ``available()`` and ``load()`` -> state dict."""

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def available(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class PackageWeights(WeightsSource):
    """Weights shipped inside a PyPI package; ``locate(module)`` returns the file path."""

    package: str  # module name
    pip_name: str
    locate: Callable[[object], str]
    convert: Optional[Callable[[str], dict]] = None

    def _path(self) -> str:
        try:
            module = importlib.import_module(self.package)
        except ImportError as exc:
            raise MissingDependencyError(
                f"the weights come from the package '{self.pip_name}': pip install {self.pip_name} "
                f"(or pip install 'imgfeat[weights]')"
            ) from exc
        return self.locate(module)

    def describe(self) -> str:
        return f"package {self.pip_name}"

    def available(self) -> bool:
        try:
            return os.path.isfile(self._path())
        except MissingDependencyError:
            return False

    def load(self) -> dict:
        path = self._path()
        return self.convert(path) if self.convert else load_state_dict_file(path)


def hub_checkpoint_dir() -> str:
    """The directory torchvision downloads to (``$TORCH_HOME/hub/checkpoints``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


@dataclass(frozen=True)
class UrlWeights(WeightsSource):
    """A state dict at a URL, cached under the torch hub directory exactly as torchvision caches it."""

    url: str

    @property
    def filename(self) -> str:
        return os.path.basename(self.url.split("?")[0])

    @property
    def cache_path(self) -> str:
        return os.path.join(hub_checkpoint_dir(), self.filename)

    def describe(self) -> str:
        return f"download {self.url}"

    def available(self) -> bool:
        return os.path.isfile(self.cache_path)

    def load(self) -> dict:
        if not self.available():
            try:
                # Verifies the hash prefix in torchvision file names (resnet50-11ad3fa6.pth).
                return torch.hub.load_state_dict_from_url(
                    self.url, model_dir=hub_checkpoint_dir(), map_location="cpu", check_hash=True,
                    progress=True, weights_only=True)
            except (urllib.error.URLError, OSError, RuntimeError) as exc:
                raise WeightsUnavailableError(
                    f"pretrained weights are not cached at {self.cache_path} and could not be downloaded "
                    f"from {self.url} ({exc}). Download that file where you are online and copy it to "
                    f"{self.cache_path}, or pass --weights FILE (a state dict), or --random-weights to "
                    f"run the untrained network."
                ) from exc
        return load_state_dict_file(self.cache_path)


@dataclass(frozen=True)
class TimmHubWeights(WeightsSource):
    """Weights timm resolves from its pretrained config (usually the Hugging Face hub)."""

    model_name: str

    def describe(self) -> str:
        return f"timm pretrained ({self.model_name})"

    def available(self) -> bool:
        import timm

        cfg = timm.models.get_pretrained_cfg(self.model_name)
        if cfg is None or not cfg.hf_hub_id:
            return False
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id.split("@")[0], fname)
            if isinstance(hit, str):
                return True
        return False

    def load(self) -> dict:  # timm loads its own weights in create_model(pretrained=True)
        raise NotImplementedError
