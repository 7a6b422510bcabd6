"""Supervised references: the shared hourglass trained on the annotated points themselves.

Two losses on the detector's score maps (Robinson et al., "Laplace Landmark Localization",
ICCV 2019, compare them):

- ``supervised_sam``: softargmax coordinates regressed to the ground truth (L1 by default,
  or squared L2, in normalised [-1, 1] coordinates);
- ``supervised_laplacekl``: the LaplaceKL loss (lmbench.nn.laplace), which also penalises
  the spread of each map.

Both train on the annotated ``reg_train`` split (the trainer passes its points) and predict
the dataset's own landmarks directly, so the evaluator scores them without a regressor
(``predicts_annotations``). They build one map per annotated point, so ``--K`` must equal
the dataset's number of points (5 for the MAFL-style sets): a mismatch stops the first
training step with an error that names the right value.

Each labelled batch is augmented by a random similarity (``config.warp``) applied to the
images and their points alike, drawn from the step generator.

Semi-supervised option (``method_options.adversarial_weight = lambda > 0``): a patch
discriminator (lmbench.nn.discriminator) on [image, heatmaps] tells maps rendered from the
ground truth (Gaussians of ``real_sigma`` heatmap pixels) from the maps the detector predicts
on unlabelled images of the ``train`` split (``extra_split``: the trainer passes that batch
as ``extra_images``). Both players are updated in the same optimizer step:
``min_H max_D  L_sup + lambda * L_adv``. Unlabelled images get the same random similarity as
labelled ones, so that the warp's border is no cue for the discriminator. Maps shown to the
discriminator are divided by their maximum (rendered and predicted alike).

Every option is written back into ``config.method_options`` when the method is built, so
config.json records the values a run used.
"""

from __future__ import annotations

import torch

from lmbench.config import RunConfig
from lmbench.hookspecs import hookimpl
from lmbench.method import LandmarkMethod
from lmbench.adapt import initialise_detector
from lmbench.nn.bottleneck import render_gaussians, softargmax, spatial_softmax
from lmbench.nn.discriminator import (
    PatchDiscriminator,
    call_frozen,
    discriminator_loss,
    generator_loss,
    peak_normalized,
)
from lmbench.nn.hourglass import HourglassDetector
from lmbench.nn.laplace import DIRECTIONS, laplace_kl_loss
from lmbench.nn.laplace import heatmap_spread as spread_of_maps
from lmbench.registry import MethodSpec
from lmbench.warps import random_similarity

SHARED_OPTIONS = {
    "beta": 10.0,  # softmax(beta * logits): softargmax temperature 1 / beta
    "augment": True,  # random similarity (config.warp) on images and points
    "adversarial_weight": 0.0,  # lambda; > 0 enables the semi-supervised discriminator
    "real_sigma": 1.0,  # Gaussian std (heatmap pixels) of the maps rendered from labels
    "disc_channels": 32,
}


def resolve_options(config: RunConfig, defaults: dict, method: str) -> dict:
    """Defaults updated by ``config.method_options``; unknown keys and wrong types are errors.

    The resolved dict is written back into ``config.method_options`` (hence config.json).
    """
    given = dict(config.method_options)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"method {method!r}: unknown method_options {', '.join(unknown)} "
            f"(valid: {', '.join(sorted(defaults))}; set with --set method_options.NAME=VALUE)"
        )
    resolved = dict(defaults)
    for key, value in given.items():
        default = defaults[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ValueError(
                f"method {method!r}: method_options.{key} expects {type(default).__name__}, got {value!r}"
            )
        resolved[key] = value
    config.method_options.clear()
    config.method_options.update(resolved)
    return resolved


class SupervisedReference(LandmarkMethod):
    """Shared parts: detector, augmentation, the K check, the optional discriminator."""

    train_split = "reg_train"
    uses_labels = True
    predicts_annotations = True
    name = "supervised"
    OPTIONS: dict = {}

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.options = o = resolve_options(config, {**SHARED_OPTIONS, **self.OPTIONS}, self.name)
        if o["beta"] <= 0:
            raise ValueError(f"method {self.name!r}: method_options.beta must be > 0, got {o['beta']}")
        if o["adversarial_weight"] < 0:
            raise ValueError(f"method {self.name!r}: method_options.adversarial_weight must be >= 0")
        det = config.detector
        self.detector = initialise_detector(HourglassDetector.from_config(config.K, det), det)
        self.extra_split = None
        if o["adversarial_weight"] > 0:
            self.discriminator = PatchDiscriminator(3 + config.K, o["disc_channels"])
            self.extra_split = "train"

    @property
    def temperature(self) -> float:
        return 1.0 / self.options["beta"]

    # -- inference -------------------------------------------------------------------------
    def detect(self, images: torch.Tensor) -> torch.Tensor:
        return softargmax(self.detector(images), self.temperature)

    def heatmap_spread(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image mean scale ``b`` of the predicted maps [B], in heatmap pixels."""
        return spread_of_maps(self.detector(images), self.options["beta"])

    # -- training --------------------------------------------------------------------------
    def augment(self, images: torch.Tensor, points: torch.Tensor | None, generator: torch.Generator):
        if not self.options["augment"]:
            return images, points
        w = self.config.warp
        warp = random_similarity(
            images.shape[0], rotation_deg=w.rotation_deg, scale=tuple(w.scale), translation=w.translation,
            generator=generator, device=images.device,
        )
        return warp.apply_to_images(images), None if points is None else warp.map_points(points)

    def supervised_terms(self, logits: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def losses(
        self,
        images: torch.Tensor,
        generator: torch.Generator,
        points: torch.Tensor | None = None,
        extra_images: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if points is None:
            raise ValueError(f"method {self.name!r} trains on annotated points; the trainer passed none")
        if points.shape[1] != self.K:
            raise ValueError(
                f"method {self.name!r} predicts the annotated points directly: K={self.K} but the "
                f"training split annotates {points.shape[1]} points; run with --K {points.shape[1]}"
            )
        x, p = self.augment(images, points, generator)
        if self.extra_split is None:
            return self.supervised_terms(self.detector(x), p)
        if extra_images is None:
            raise ValueError(
                f"method {self.name!r} with adversarial_weight > 0 needs unlabelled images: the trainer "
                f"passes a batch of split {self.extra_split!r} as extra_images (lmbench.train.train(extra=...))"
            )
        u, _ = self.augment(extra_images, None, generator)
        logits = self.detector(torch.cat([x, u]))
        terms = self.supervised_terms(logits[: x.shape[0]], p)
        terms.update(self.adversarial_terms(x, p, u, logits[x.shape[0]:]))
        return terms

    def adversarial_terms(
        self, x: torch.Tensor, points: torch.Tensor, u: torch.Tensor, logits_u: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """lambda * (D's cross-entropy, gradient to D only; H's -log D(fake), gradient to H only)."""
        size = tuple(logits_u.shape[-2:])
        real = peak_normalized(render_gaussians(points.float(), size, self.options["real_sigma"]))
        fake = peak_normalized(spatial_softmax(logits_u, self.temperature))
        lam = self.options["adversarial_weight"]
        d_loss = discriminator_loss(self.discriminator(x, real), self.discriminator(u, fake.detach()))
        g_loss = generator_loss(call_frozen(self.discriminator, u, fake))
        return {"adv_detector": lam * g_loss, "adv_discriminator": lam * d_loss}


class SupervisedSAM(SupervisedReference):
    """Softargmax coordinates regressed to the ground truth."""

    name = "supervised_sam"
    OPTIONS = {"loss": "l1"}  # l1: mean |dx| + |dy|; l2: mean dx^2 + dy^2 (normalised coordinates)

    def __init__(self, config: RunConfig):
        super().__init__(config)
        if self.options["loss"] not in ("l1", "l2"):
            raise ValueError(f"method {self.name!r}: method_options.loss must be 'l1' or 'l2', got {self.options['loss']!r}")

    def supervised_terms(self, logits, points):
        diff = softargmax(logits, self.temperature) - points.float()
        per_point = diff.abs().sum(-1) if self.options["loss"] == "l1" else diff.square().sum(-1)
        return {f"sam_{self.options['loss']}": per_point.mean()}


class SupervisedLaplaceKL(SupervisedReference):
    """LaplaceKL between the maps' Laplace and a Laplace of ``target_scale`` at the ground truth."""

    name = "supervised_laplacekl"
    OPTIONS = {"target_scale": 1.0, "kl_direction": "target_pred"}  # target_scale in heatmap pixels

    def __init__(self, config: RunConfig):
        super().__init__(config)
        o = self.options
        if o["target_scale"] <= 0:
            raise ValueError(f"method {self.name!r}: method_options.target_scale must be > 0 (heatmap pixels)")
        if o["kl_direction"] not in DIRECTIONS:
            raise ValueError(f"method {self.name!r}: method_options.kl_direction must be one of {DIRECTIONS}")

    def supervised_terms(self, logits, points):
        o = self.options
        kl = laplace_kl_loss(logits, points, beta=o["beta"], target_scale=o["target_scale"], direction=o["kl_direction"])
        return {"laplace_kl": kl}


@hookimpl
def register_methods():
    return [
        MethodSpec(
            name="supervised_sam",
            description="supervised reference: hourglass + softargmax regressed to the annotated points "
            "(needs K = number of points; optional adversarial semi-supervision)",
            builder=SupervisedSAM,
        ),
        MethodSpec(
            name="supervised_laplacekl",
            description="supervised reference: hourglass + LaplaceKL loss (Robinson et al. 2019; needs K = "
            "number of points; optional adversarial semi-supervision)",
            builder=SupervisedLaplaceKL,
        ),
    ]
