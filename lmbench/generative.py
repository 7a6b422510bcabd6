"""The shared parts of the generative methods (Sanchez baseline and Li et al.'s family).

One detector H, the softargmax/Gaussian bottleneck, one generator G and the
perceptual + pixel reconstruction loss. Methods differ only in how they route images
through these parts, which they express in :meth:`GenerativeMethod.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmbench.adapt import initialise_detector
from lmbench.config import RunConfig
from lmbench.method import LandmarkMethod
from lmbench.nn.bottleneck import LandmarkBottleneck
from lmbench.nn.generator import HeatmapGenerator
from lmbench.nn.hourglass import HourglassDetector
from lmbench.nn.perceptual import build_perceptual
from lmbench.warps import random_similarity, random_tps

#: Each generative method's default steps (``MethodSpec.config_defaults``): what fits 10
#: minutes of wall clock, evaluation included, on the slower of the two 2-core reference CPUs
#: measured (README and reports/findings.md, "How many steps"). The costlier a method is per step, the
#: fewer steps it gets, so the defaults compare the methods at equal time; pass one
#: ``--steps`` to all four for the papers' equal-schedule comparison.
GENERATIVE_STEPS = {"baseline": 500, "inter_subject": 420, "cycle": 275, "inter_intra": 235}

#: The generative methods' initial head scale (``detector.head_init_gain``): the untrained
#: detector's maps start flatter, so the softargmax passes gradient to most pixels instead of
#: to the few that a random network happens to favour (reports/findings.md, "Flatter initial maps").
GENERATIVE_HEAD_INIT_GAIN = 0.5

#: The generative methods' Adam betas (``optim.betas``). The originals use (0, 0.9): no
#: momentum. A first moment of 0.5 (about two steps) discovers landmarks in fewer steps on
#: lmbench's CPU budget (reports/findings.md, "Adam with some momentum").
GENERATIVE_BETAS = (0.5, 0.9)

#: The generative methods' weight average (``optim.ema_decay``, lmbench.averaging): the
#: evaluated detector is an exponential moving average of the trained weights, not the last
#: iterate, whose NME jumps by up to 20 points between steps 50 apart on this budget
#: (reports/findings.md, "Weight averaging: measured"). Training itself is unchanged.
GENERATIVE_EMA_DECAY = 0.99


def generative_defaults(method: str) -> dict:
    """The ``config_defaults`` of one of the four generative methods."""
    return {
        "steps": GENERATIVE_STEPS[method],
        "detector.head_init_gain": GENERATIVE_HEAD_INIT_GAIN,
        "optim.betas": list(GENERATIVE_BETAS),
        "optim.ema_decay": GENERATIVE_EMA_DECAY,
    }


class GenerativeMethod(LandmarkMethod):
    def __init__(self, config: RunConfig, *, perceptual=None, detector=None, generator=None):
        super().__init__(config)
        det, gen, per = config.detector, config.generator, config.perceptual
        self.detector = detector or initialise_detector(
            HourglassDetector.from_config(config.K, det), det
        )
        self.bottleneck = LandmarkBottleneck(config.bottleneck.temperature, config.bottleneck.sigma)
        self.generator = generator or HeatmapGenerator(config.K, gen.conv_dim, gen.res_blocks, gen.input_norm)
        if perceptual is None and per.backbone != "none":
            perceptual = build_perceptual(
                per.backbone, per.weights, layers=per.layers, imagenet_normalize=per.imagenet_normalize
            )
        # Frozen and not a sub-network to clip or checkpoint: kept out of the state dict.
        object.__setattr__(self, "perceptual", perceptual)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if self.perceptual is not None:
            self.perceptual._apply(fn, *args, **kwargs)
        return self

    # -- the shared building blocks ------------------------------------------------------
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Landmarks [B,K,2] and their rendered heatmaps [B,K,h,w] for a batch of images."""
        return self.bottleneck(self.detector(images))

    def make_pair(self, images: torch.Tensor, generator: torch.Generator):
        """(x, x', warp): x' is x under a random similarity, then (``warp.tps_sigma`` > 0) a
        random thin-plate-spline jitter, both drawn from ``generator``."""
        warp = self.random_warp(images, generator)
        return images, warp.apply_to_images(images), warp

    def random_warp(self, images: torch.Tensor, generator: torch.Generator, strength: float = 1.0):
        """One draw of ``config.warp`` for each image (this process's rows under DDP), every
        magnitude times ``strength``: the rotation range, the translation, the scale range's
        distance from 1 and the TPS sigma."""
        w, batch = self.config.warp, self.random_batch(images)
        low, high = w.scale
        warp = random_similarity(
            batch,
            rotation_deg=w.rotation_deg * strength,
            scale=(low, high) if strength == 1 else (1 - (1 - low) * strength, 1 + (high - 1) * strength),
            translation=w.translation * strength,
            generator=generator,
            device=images.device,
        )
        if w.tps_sigma > 0:
            warp = warp.then(
                random_tps(batch, grid=w.tps_grid, sigma=w.tps_sigma * strength, generator=generator, device=images.device)
            )
        return self.local_rows(warp)  # under DDP: this process's rows of the global draw

    def padding_mask(self, warp, images: torch.Tensor) -> torch.Tensor | None:
        """[B, 1, H, W]: 1 where ``warp(images)`` shows image content, 0 where it shows padding
        (bilinear in between); None when ``warp.mask_padding`` is off."""
        if not self.config.warp.mask_padding:
            return None
        ones = images.new_ones(images.shape[0], 1, *images.shape[-2:])
        return warp.apply_to_images(ones, padding_mode="zeros")

    @staticmethod
    def outside_mask_as_target(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``output`` where ``mask`` is 1, ``target`` where it is 0: the padding then adds nothing
        to either loss term and no gradient flows from it. In ``output``'s dtype (bf16 under
        CUDA autocast), as the loss would have seen the output alone."""
        if mask is None:
            return output
        return torch.lerp(target.to(output.dtype), output, mask.to(output.dtype))

    def target_features(self, target: torch.Tensor) -> list[torch.Tensor] | None:
        """Perceptual features of a target image, computed once per step and reused."""
        if self.perceptual is None:
            return None
        with torch.no_grad():
            return self.perceptual.features(target)

    def reconstruction_terms(
        self, output: torch.Tensor, target: torch.Tensor, features: list[torch.Tensor] | None, tag: str = ""
    ) -> dict[str, torch.Tensor]:
        """Perceptual and pixel MSE terms of ``output`` against ``target`` (all weight 1 by default)."""
        p = self.config.perceptual
        terms = {f"pixel{tag}": p.pixel_weight * F.mse_loss(output.float(), target.float())}
        if self.perceptual is not None:
            terms[f"perceptual{tag}"] = p.weight * self.perceptual.loss_from_features(output, features)
        return terms

    def reconstruction_terms_split(
        self, outputs: torch.Tensor, targets: torch.Tensor, features: list[torch.Tensor] | None, tags: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """:meth:`reconstruction_terms` for ``len(tags)`` equal chunks stacked along the batch.

        ``features`` are the stacked targets' features. The outputs' perceptual features
        come from ONE trunk call over the stack; each chunk's terms equal those of
        ``reconstruction_terms`` on that chunk alone (the trunk has no batch statistics).
        ``targets`` (and ``features``) may also be ONE chunk that every output chunk is
        compared with: its features are then computed once, not once per term.
        """
        p, n = self.config.perceptual, len(tags)
        shared = targets.shape[0] * n == outputs.shape[0] and n > 1

        def chunks(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (t,) * n if shared else t.chunk(n)

        terms = {}
        for tag, out, tgt in zip(tags, outputs.chunk(n), chunks(targets)):
            terms[f"pixel{tag}"] = p.pixel_weight * F.mse_loss(out.float(), tgt.float())
        if self.perceptual is not None:
            predicted = [f.chunk(n) for f in self.perceptual.features(outputs)]
            wanted = [chunks(f) for f in features]
            for i, tag in enumerate(tags):
                terms[f"perceptual{tag}"] = p.weight * sum(
                    F.mse_loss(pf[i].float(), tf[i].float()) for pf, tf in zip(predicted, wanted)
                )
        return terms

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.detector(images))[0]
