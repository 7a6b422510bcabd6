"""Initialising a method's detector from a pretrained one: incremental | finetune | scratch.

Sanchez & Tzimiropoulos (2019) start their detector from a human-pose network and adapt
it "incrementally": every 3x3 convolution weight ``old`` [out, in, 3, 3] is frozen and
replaced by ``W . old`` (``einsum('oi,ichw->ochw', W, old)``) with a learnt ``W``
[out, out] initialised to the identity, so the network is unchanged at the start; the
stem's 7x7, the 1x1 convolutions, normalisation layers and the K-way head stay trainable.
``finetune`` loads every weight and trains all of them; ``scratch`` ignores the checkpoint.
A head with a different number of maps (16 joints -> K landmarks) is left at its fresh
initialisation in both adapting modes.

A checkpoint is either one written by ``lmbench pretrain`` (keys ``detector`` and
``architecture``) or any lmbench run's ``checkpoint.pt`` (``model`` + ``config``; an
incrementally adapted detector is folded back into plain weights).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

ADAPT_MODES = ("incremental", "finetune", "scratch")
ARCHITECTURE_KEYS = ("channels", "depth", "stem_channels")
HEAD_KEYS = ("head.weight", "head.bias")
_PARAMETRIZED = ".parametrizations.weight.original"


class IncrementalWeight(nn.Module):
    """The parametrisation ``weight = W . old`` with ``W`` [out, out] starting at the identity."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.mix = nn.Parameter(torch.eye(out_channels))

    def forward(self, old: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oi,ichw->ochw", self.mix.to(old.dtype), old)


def make_incremental(detector: nn.Module) -> int:
    """Re-parametrise every 3x3 convolution of ``detector`` in place; returns how many."""
    count = 0
    for module in detector.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and not parametrize.is_parametrized(module):
            parametrize.register_parametrization(module, "weight", IncrementalWeight(module.out_channels))
            module.parametrizations.weight.original.requires_grad_(False)
            count += 1
    return count


def fold_incremental(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of an incrementally adapted detector -> plain ``weight`` tensors."""
    folded = {}
    for key, value in state.items():
        if key.endswith(_PARAMETRIZED):
            prefix = key[: -len(_PARAMETRIZED)]
            mix = state[f"{prefix}.parametrizations.weight.0.mix"]
            folded[f"{prefix}.weight"] = torch.einsum("oi,ichw->ochw", mix.to(value.dtype), value)
        elif ".parametrizations.weight.0." not in key:
            folded[key] = value
    return folded


def load_detector_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(detector state dict, architecture settings) from a pretrain or run checkpoint."""
    from lmbench.averaging import evaluation_state
    from lmbench.train import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--detector-init {path}: no such checkpoint file")
    state = load_checkpoint(path)
    if "detector" in state and "architecture" in state:
        return fold_incremental(state["detector"]), dict(state["architecture"])
    if "model" in state and "config" in state:
        detector = {k[len("detector."):]: v for k, v in evaluation_state(state).items() if k.startswith("detector.")}
        if not detector:
            raise ValueError(f"--detector-init {path}: the run's model has no detector weights")
        return fold_incremental(detector), dict(state["config"]["detector"])
    raise ValueError(f"--detector-init {path}: not an lmbench pretrain or run checkpoint "
                     f"(keys: {', '.join(sorted(state)) or 'none'})")


def check_architecture(architecture: dict, detector_config, path) -> None:
    """Error naming every architecture setting where checkpoint and run differ."""
    mismatched = [
        f"detector.{key}: checkpoint {architecture.get(key)!r}, this run {getattr(detector_config, key)!r}"
        for key in ARCHITECTURE_KEYS
        if architecture.get(key) != getattr(detector_config, key)
    ]
    if mismatched:
        raise ValueError(f"--detector-init {path}: the detector architecture differs ({'; '.join(mismatched)}); "
                         "set the run's detector to match, e.g. --set detector.channels=N")


def load_pretrained(detector: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Load ``state`` into ``detector``; a head of another size is skipped. True if the head was loaded."""
    head = detector.head.weight
    head_matches = "head.weight" in state and state["head.weight"].shape == head.shape
    if not head_matches:
        state = {k: v for k, v in state.items() if k not in HEAD_KEYS}
    missing, unexpected = detector.load_state_dict(state, strict=False)
    missing = [k for k in missing if head_matches or k not in HEAD_KEYS]
    if missing or unexpected:
        raise ValueError(f"pretrained detector does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return head_matches


def initialise_detector(detector: nn.Module, detector_config) -> nn.Module:
    """Apply ``detector_config.adapt`` with ``detector_config.init`` to a fresh detector (in place)."""
    mode, init = getattr(detector_config, "adapt", "scratch"), getattr(detector_config, "init", None)
    if mode not in ADAPT_MODES:
        raise ValueError(f"detector.adapt={mode!r}: expected one of {', '.join(ADAPT_MODES)}")
    if mode == "scratch":
        if init:
            warnings.warn(f"detector.adapt='scratch': ignoring detector.init={init}", UserWarning, stacklevel=2)
        return detector
    if not init:
        raise ValueError(f"detector.adapt={mode!r} needs a pretrained detector: pass --detector-init PATH")
    state, architecture = load_detector_checkpoint(init)
    check_architecture(architecture, detector_config, init)
    load_pretrained(detector, state)
    if mode == "incremental":
        make_incremental(detector)
    return detector
