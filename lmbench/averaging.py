"""An exponential moving average of the trained networks' weights, for evaluation.

``--set optim.ema_decay=D`` (0.99 for the generative methods, otherwise 0: off) keeps, beside the weights that train, an
average of them (and of BatchNorm's running statistics) updated after every optimizer step:
``average = d * average + (1 - d) * weights`` with ``d = min(D, (1 + t) / (10 + t))`` at
update t (the warm-up of timm's ModelEma, so the early average is not pinned to the random
initialisation). Training never reads the average; the probes of ``--eval-every``, the final
evaluation, ``landmarks.png`` / ``reconstructions.png``, ``lmbench eval`` and
``--detector-init`` use it.

Why: with a constant learning rate the last iterate moves a lot from one step to the next
(a run's test NME can jump by 10 points between probes 50 steps apart), so a run's number is
partly the luck of where its last step landed. Averaging the iterates (Polyak averaging; in
GAN training, e.g. Yazıcı et al., ICLR 2019) takes most of that noise out.

The checkpoint keeps the training weights under ``model`` (so ``--resume`` continues training
exactly) and the average under ``average`` (keys of ``model``, floating-point entries of the
trained networks only) with its update count under ``average_updates``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

WARMUP = 10  # d_t = min(D, (1 + t) / (WARMUP + t))


def check_decay(decay: float) -> None:
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"optim.ema_decay must be in [0, 1) (0: no average), got {decay}")


def averaged_entries(method) -> dict[str, torch.Tensor]:
    """The method's state_dict entries that are averaged: floating-point parameters and buffers
    of the trained networks (``method.networks()``), keyed as in ``method.state_dict()``."""
    entries = {}
    for name, network in method.networks().items():
        for key, value in network.state_dict(keep_vars=True).items():
            if value.is_floating_point():
                entries[f"{name}.{key}"] = value
    return entries


class WeightAverage:
    """The moving average of ``method``'s trained networks (see the module docstring)."""

    def __init__(self, method, decay: float):
        check_decay(decay)
        self.method, self.decay, self.updates = method, decay, 0
        self.average = {key: value.detach().clone() for key, value in averaged_entries(method).items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (WARMUP + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the weights after an optimizer step into the average."""
        self.updates += 1
        weight = 1.0 - self.current_decay()
        for key, value in averaged_entries(self.method).items():
            self.average[key].lerp_(value.detach(), weight)

    def state_dict(self) -> dict:
        return {"average": {k: v.detach().clone() for k, v in self.average.items()}, "average_updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.average) - set(state["average"]))
        if missing:
            raise ValueError(f"the checkpoint's weight average lacks {', '.join(missing[:3])}"
                             + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
        for key, value in self.average.items():
            value.copy_(state["average"][key])
        self.updates = int(state["average_updates"])

    @torch.no_grad()
    def copy_to_method(self) -> None:
        """Replace the method's trained weights by the average (at the end of training)."""
        for key, value in averaged_entries(self.method).items():
            value.data.copy_(self.average[key])

    @contextmanager
    def swapped_in(self):
        """The average in the method for the duration of the block (a probe), then the training weights back."""
        entries = averaged_entries(self.method)
        kept = {key: value.detach().clone() for key, value in entries.items()}
        try:
            self.copy_to_method()
            yield
        finally:
            with torch.no_grad():
                for key, value in entries.items():
                    value.data.copy_(kept[key])


def evaluation_state(checkpoint: dict) -> dict:
    """The weights a checkpoint is evaluated with: ``model``, with the average's entries in
    place of the training weights when the run kept one."""
    model = dict(checkpoint["model"])
    model.update(checkpoint.get("average") or {})
    return model
