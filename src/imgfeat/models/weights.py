"""Where a model's weights come from: a pip package, a URL cached in the torch hub directory, the
Hugging Face hub (timm), a local file, or (only when asked) a seeded random initialisation.
:func:`resolve_weights` is the one place that decides which (timm ``_resolve_pretrained_source``
habit). Each source can say whether it is usable offline and, when it is not, fails with a message
naming the file and the fix."""

from __future__ import annotations

import importlib
import os
import urllib.error
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Optional

from ..errors import InvalidParameterError, MissingDependencyError, WeightsUnavailableError, require

if TYPE_CHECKING:  # torch is imported when weights are loaded, never to describe or locate them
    import torch
    from torch import nn

StateDict = Mapping[str, "torch.Tensor"]


def load_state_dict_file(path: str) -> dict:
    """Load a local weights file (torch ``.pth``/``.pt`` or ``.safetensors``), unwrapping common containers."""
    if not os.path.isfile(path):
        raise WeightsUnavailableError(f"--weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors: the file is not a checkpoint
        with open(path, "rb") as fh:
            head = fh.read(6)
        kind = "a NumPy array file (.npy)" if head == b"\x93NUMPY" else "not a PyTorch checkpoint"
        raise WeightsUnavailableError(
            f"--weights file {path!r} is {kind}: expected a state dict saved with torch.save (.pth/.pt) or a "
            f".safetensors file ({type(exc).__name__})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsUnavailableError(f"--weights file {path!r} does not hold a state dict (got {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


class WeightsSource:
    """Interface: ``describe()``, ``available()`` and ``instantiate(build, name)`` -> the eval-mode network."""

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def available(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def local_file(self) -> Optional[str]:
        """The one local file whose bytes are these weights (so its size and mtime tell when they change), or None
        (random weights, or weights a library resolves itself)."""
        return None

    def instantiate(self, build: Callable[[], nn.Module], name: str) -> nn.Module:  # pragma: no cover
        raise NotImplementedError


class StateDictWeights(WeightsSource):
    """A source that yields a state dict (``load()``), loaded into the freshly built architecture."""

    def load(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def instantiate(self, build: Callable[[], nn.Module], name: str) -> nn.Module:
        net = build()
        state = self.load()
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)  # a model may map the keys itself
        except RuntimeError:  # tensors of other shapes
            missing = unexpected = True
        if missing or unexpected:
            mismatch = mismatched_tensors(net.state_dict(), state) or \
                f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
            raise WeightsUnavailableError(f"{self.describe()} does not fit {name}: {mismatch}")
        return net.eval()


def mismatched_tensors(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """One line saying how ``given`` differs from the state dict a model expects ('' when it fits)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [(k, tuple(given[k].shape), tuple(v.shape)) for k, v in expected.items()
              if k in given and hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return ""
    parts = []
    if shapes:
        k, got, want = shapes[0]
        parts.append(f"{len(shapes)} of {len(expected)} tensors have other shapes (e.g. {k}: file {got}, "
                     f"model {want})")
    if missing:
        parts.append(f"{len(missing)} tensors are missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} are not the model's (e.g. {', '.join(unexpected[:3])})")
    return "; ".join(parts) + " - the file holds weights of another architecture or variant"


def hub_offline(endpoint: Optional[str] = None) -> Optional[str]:
    """Why the Hugging Face hub cannot be reached right now (None when it can): ``HF_HUB_OFFLINE`` is set, or a
    connection to the endpoint fails within a few seconds. Asked before a download so an offline machine fails
    at once with the fix, instead of after the hub client's retries (about a minute, 46 lines)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc.strerror or type(exc).__name__})"
    return None


def hub_cache_folder(repo: str) -> str:
    """Where the Hugging Face cache keeps ``repo`` (HF_HOME / HF_HUB_CACHE respected)."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - timm and open_clip both need huggingface_hub
        HF_HUB_CACHE = os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub")
                                               if os.environ.get("HF_HOME") else HF_HUB_CACHE)
    return os.path.join(cache, "models--" + repo.replace("/", "--"))


def offline_message(name: str, repo: Optional[str], why: str, checkpoint: str) -> str:
    where = (f"the Hugging Face hub repository {repo} is not in the cache ({hub_cache_folder(repo)})"
             if repo else "its weights are not cached")
    return (f"{name}: {where} and the hub is offline ({why}). Online, they download once into that cache; "
            f"offline, copy the cache folder from a machine that has it, or pass --weights FILE ({checkpoint}), "
            "or --random-weights for speed tests.")


@dataclass(frozen=True)
class FileWeights(StateDictWeights):
    """``--weights FILE``: a local state dict (.pth/.pt/.safetensors)."""

    path: str

    def describe(self) -> str:
        return f"file {self.path}"

    def available(self) -> bool:
        return os.path.isfile(self.path)

    def local_file(self) -> Optional[str]:
        return os.path.abspath(self.path)

    def load(self) -> dict:
        return load_state_dict_file(self.path)


@dataclass(frozen=True)
class RandomWeights(WeightsSource):
    """``--random-weights``: the untrained network, seeded, so every run (and its export cache) gets the same one."""

    seed: int = 0

    def describe(self) -> str:
        return f"random (seed {self.seed})"

    def available(self) -> bool:
        return True

    def instantiate(self, build: Callable[[], nn.Module], name: str) -> nn.Module:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return build().eval()


def resolve_weights(default: WeightsSource, weights_file: Optional[str] = None,
                    random_weights: bool = False) -> WeightsSource:
    """The one place that decides where a model's weights come from: ``--weights FILE``, then
    ``--random-weights`` (never implicitly), then the model's own pretrained source."""
    if weights_file and random_weights:
        raise InvalidParameterError("--weights and --random-weights are mutually exclusive")
    if weights_file:
        return FileWeights(str(weights_file))
    if random_weights:
        return RandomWeights()
    return default


@dataclass(frozen=True)
class PackageWeights(StateDictWeights):
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

    def local_file(self) -> Optional[str]:
        return self._path() if self.available() else None

    def load(self) -> dict:
        path = self._path()
        return self.convert(path) if self.convert else load_state_dict_file(path)


def hub_checkpoint_dir() -> str:
    """The directory torchvision downloads to (``$TORCH_HOME/hub/checkpoints``): torch's own answer once torch is
    imported (it honours ``torch.hub.set_dir``), else the same rule read from the environment."""
    import sys

    if "torch" in sys.modules:
        return os.path.join(sys.modules["torch"].hub.get_dir(), "checkpoints")
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    return os.path.join(os.path.expanduser(home), "hub", "checkpoints")


@dataclass(frozen=True)
class UrlWeights(StateDictWeights):
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

    def local_file(self) -> Optional[str]:
        return self.cache_path if self.available() else None

    def load(self) -> dict:
        if not self.available():
            import torch

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

    def instantiate(self, build: Callable[[], nn.Module], name: str) -> nn.Module:
        """timm's builder fetches and adapts its own checkpoints (per-model filters), so it builds the net here."""
        timm = require("timm", "timm", "timm models")
        if not self.available():
            why = hub_offline()
            if why:
                cfg = timm.models.get_pretrained_cfg(self.model_name)
                raise WeightsUnavailableError(offline_message(
                    f"timm:{self.model_name}", (cfg.hf_hub_id or "").split("@")[0] or None if cfg else None, why,
                    "a state dict for this timm model"))
        try:
            return timm.create_model(self.model_name, pretrained=True).eval()
        except Exception as exc:  # hub errors come in many types
            raise WeightsUnavailableError(
                f"timm could not load pretrained weights for timm:{self.model_name} ({type(exc).__name__}: {exc}). "
                f"When offline, put the weights in the Hugging Face cache (HF_HOME), or pass --weights FILE, "
                f"or --random-weights to run the untrained network."
            ) from exc
