"""Pretrained-weight resolution: a weights name or file -> a torchvision-format state dict.

Weights are given as plain strings (so configs can name them):

* ``None``: random initialisation;
* a torchvision weights name such as ``"IMAGENET1K_V1"`` or ``"DEFAULT"``: fetched through
  torchvision's enum (its URL, file name and the torch hub cache ``$TORCH_HOME/hub/checkpoints``);
* a path to a local ``.pth`` file holding a torchvision-format state dict (e.g. the file behind that
  URL, downloaded elsewhere) -- the way to use pretrained weights on a machine with no network.

Failures (no network, unknown name, missing file, wrong layout) raise one one-line sentence saying
what to do, never a download stack trace.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models
from torchvision.models import WeightsEnum

from detector.errors import UserError

__all__ = ["WeightsUnavailableError", "load_matching", "load_torchvision_state",
           "vgg16_classifier_state"]


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights could not be downloaded (typically: no network)."""


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def _download(weights: WeightsEnum, arch: str) -> dict[str, Tensor]:
    """Fetch ``weights`` through torchvision's URL and the torch hub cache
    (``torch.hub.get_dir()/checkpoints``).

    Raises:
        WeightsUnavailableError: the download or the cached file failed in any way (no network,
            a proxy's error page failing the hash check, a cut connection, a corrupt cached file):
            one line saying what failed, that it needs the network or a local file, and where
            torch caches it.
    """
    file_name = os.path.basename(weights.url)
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(cache_dir, file_name)
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=True, check_hash=True
        )
    except Exception as error:  # noqa: BLE001 - URLError, timeouts, http.client's, bad hash, ...
        if os.path.isfile(cached):
            what = (f"could not read the cached {arch} weights {cached} ({_one_line(error)[:200]})"
                    f"; delete it to download it again from {weights.url}")
        else:
            what = (f"could not download {arch} weights {weights.name} from {weights.url} "
                    f"({_one_line(error)[:200]})")
        raise WeightsUnavailableError(
            f"{what}; {weights.name} needs the network or a local "
            f"file: download {file_name} elsewhere and pass its path "
            f"(model.backbone.weights=/path/to/{file_name}), or put it into torch's cache "
            f"{cache_dir} (torch.hub.get_dir(): $TORCH_HOME/hub)"
        ) from None


def _read_local(path: Path, arch: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{arch} weights file {path} does not exist; pass weights=None, a torchvision "
            f"weights name, or the path of a torchvision-format {arch} state dict (.pth)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or non-torch file: unpickling/zip errors of many kinds
        raise ValueError(
            f"could not read {arch} weights file {path} as a torch state dict "
            f"({_one_line(error)[:200]})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{arch} weights file {path} does not hold a state dict")
    return state


def load_torchvision_state(
    weights: str | WeightsEnum, *, enum: type[WeightsEnum], arch: str
) -> dict[str, Tensor]:
    """Resolve a weights spec to a torchvision-format state dict on the CPU.

    Args:
        weights (str | WeightsEnum): a member of ``enum`` or its name (``"IMAGENET1K_V1"``), or a
            path to a local ``.pth`` state dict (anything ending in ``.pth``/``.pt`` or holding a
            path separator is treated as a path).
        enum (type[WeightsEnum]): the torchvision weights enum, e.g. ``VGG16_BN_Weights``.
        arch (str): human-readable architecture name for error messages.

    Returns:
        dict[str, Tensor]: the state dict, keys as in the torchvision model.
    """
    if isinstance(weights, WeightsEnum):
        return _download(weights, arch)
    if weights in enum.__members__:
        return _download(enum[weights], arch)
    path = Path(weights).expanduser()
    if path.suffix in (".pth", ".pt") or "/" in weights or os.sep in weights or path.exists():
        return _read_local(path, arch)
    names = ", ".join(enum.__members__)
    raise ValueError(
        f"unknown {arch} weights {weights!r}; expected None, one of {names}, "
        f"or a path to a local .pth state dict"
    )


def load_matching(module: nn.Module, state: dict[str, Tensor], arch: str) -> None:
    """Copy into ``module`` the entries of ``state`` named like its own (extra keys are ignored)."""
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ValueError(
            f"the weights are not a torchvision {arch} state dict: {len(missing)} "
            f"expected entries are missing ({shown})"
        )
    try:
        module.load_state_dict({key: state[key] for key in own})
    except RuntimeError as error:
        raise ValueError(
            f"the weights do not match torchvision's {arch} layout ({_one_line(error)[:300]})"
        ) from None


def vgg16_classifier_state(weights: str | WeightsEnum) -> dict[str, Tensor]:
    """VGG16-BN's first two classifier layers, renamed for a box head's ``fc6``/``fc7``.

    Args:
        weights (str | WeightsEnum): as for :class:`VGG16BNBackbone` (name or local path).

    Returns:
        dict[str, Tensor]: ``fc6.weight (Tensor[4096, 512*7*7])``, ``fc6.bias (Tensor[4096])``,
        ``fc7.weight (Tensor[4096, 4096])``, ``fc7.bias (Tensor[4096])``.
    """
    state = load_torchvision_state(weights, enum=models.VGG16_BN_Weights, arch="VGG16-BN")
    renames = {"fc6": "classifier.0", "fc7": "classifier.3"}
    out = {}
    for new, old in renames.items():
        for kind in ("weight", "bias"):
            if f"{old}.{kind}" not in state:
                raise ValueError(
                    f"the weights are not a torchvision VGG16-BN state dict: {old}.{kind} "
                    f"(needed for the box head's {new}) is missing"
                )
            out[f"{new}.{kind}"] = state[f"{old}.{kind}"]
    return out
