"""The base class of method plugins and the pieces they share."""

from __future__ import annotations

from contextlib import contextmanager

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
        self._shown: list[tuple[str, torch.Tensor]] | None = None  # see :meth:`recording`

    # -- what a person looks at: the images of each pass (reconstructions.png) -----------
    @property
    def showing(self) -> bool:
        """True inside :meth:`recording`: only then do :meth:`show`'s arguments need computing."""
        return self._shown is not None

    def show(self, *named: tuple[str, torch.Tensor]) -> None:
        """Name image batches of the routing (inputs, first-stage images, outputs) for the run's
        reconstructions figure; a no-op except inside :meth:`recording`."""
        if self._shown is not None:
            self._shown.extend((label, images.detach().float().clamp(0, 1).cpu()) for label, images in named)

    @contextmanager
    def recording(self):
        """Collect what :meth:`show` names during the block: ``with m.recording() as rows: m.losses(...)``."""
        self._shown = []
        try:
            yield self._shown
        finally:
            self._shown = None

    @torch.no_grad()
    def reconstruction_rows(self, images: torch.Tensor, seed: int) -> list[tuple[str, torch.Tensor]]:
        """One pass of :meth:`losses` over ``images`` (its randomness drawn from ``seed``, as a
        single process would): the labelled image batches it showed, in routing order. Runs in
        training mode, so BatchNorm normalises with the batch's statistics as the loss does, and
        puts every buffer (running statistics, counters) back afterwards. Empty for methods that
        train on annotations or on a second split."""
        if self.uses_labels or self.extra_split is not None:
            return []
        buffers = {name: buffer.clone() for name, buffer in self.named_buffers()}
        was_training, sample_slice = self.training, self.sample_slice
        self.train()
        self.sample_slice = None
        try:
            with self.recording() as rows:
                self.losses(images, torch.Generator().manual_seed(seed))
        finally:
            for name, buffer in self.named_buffers():
                buffer.copy_(buffers[name])
            self.train(was_training)
            self.sample_slice = sample_slice
        return rows

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
