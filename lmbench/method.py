"""The base class of method plugins and the pieces they share."""

from __future__ import annotations

import torch
from torch import nn

from lmbench.config import RunConfig


class LandmarkMethod(nn.Module):
    """A landmark-discovery method: its networks and its training losses.

    Subclasses implement :meth:`losses` (a dict of named scalar terms, summed by the
    trainer) and :meth:`detect` (normalised landmark coordinates used by the evaluator).
    :meth:`networks` names the sub-networks that are clipped separately and that the
    evaluator may freeze.
    """

    #: The dataset split the trainer draws batches from, and whether the method receives
    #: that split's annotated points (normalised to [-1, 1]) as ``losses(..., points=...)``.
    train_split: str = "train"
    uses_labels: bool = False
    #: Whether :meth:`detect` returns the dataset's own annotated points (K = their number;
    #: the supervised references): the evaluator then scores them without a regressor.
    predicts_annotations: bool = False
    #: A second split (e.g. "train" for unlabelled images) whose batch the trainer passes as
    #: ``losses(..., extra_images=...)`` at every step; None: no second batch.
    extra_split: str | None = None
    #: Multi-process training (see lmbench.distributed). A method that sets this to True
    #: draws its per-sample randomness for :meth:`random_batch` samples (the global batch)
    #: and keeps :meth:`local_rows` of it, so each process gets exactly the draws of its
    #: samples in a single-process run. Otherwise each process gets its own generator.
    slices_randomness: bool = False
    #: Set by the trainer: this process's rows of the global batch and the global batch
    #: size; ``None`` in a single process.
    sample_slice: slice | None = None
    global_batch: int | None = None

    def random_batch(self, images: torch.Tensor) -> int:
        """How many samples to draw per-sample randomness for: the global batch."""
        return images.shape[0] if self.sample_slice is None else self.global_batch

    def local_rows(self, drawn):
        """This process's rows of randomness drawn for :meth:`random_batch` samples
        (tensors, warps, or tuples/lists/dicts of them); unchanged in a single process."""
        if self.sample_slice is None:
            return drawn
        from lmbench.distributed import select_rows

        return select_rows(drawn, self.sample_slice)

    def __init__(self, config: RunConfig):
        super().__init__()
        self.config = config
        self.K = config.K

    def networks(self) -> dict[str, nn.Module]:
        return {name: module for name, module in self.named_children() if any(True for _ in module.parameters())}

    def losses(
        self, images: torch.Tensor, generator: torch.Generator, points: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Training loss terms for a batch of images [B,3,H,W] in [0, 1].

        ``generator`` (a CPU generator determined by seed and step) drives every random
        choice, so that runs are reproducible and resumable. ``points`` [B,P,2] is given
        only to methods with ``uses_labels``.
        """
        raise NotImplementedError

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        """Discovered landmarks [B,K,2], (x, y) normalised to [-1, 1]."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups; override for per-network learning rates."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]
