"""Li, Liao, Miao, Lu, Luo 2020 (arXiv 2004.07936): inter- and intra-subject consistency.

Three methods built on the baseline's detector H, bottleneck, generator G and
reconstruction loss (perceptual + pixel MSE). ``G(a, h)`` redraws the *appearance*
image ``a`` in the landmark *structure* given by the heatmaps ``h``. ``x`` is a batch
image, ``x'`` its random similarity warp, ``x^a = x[perm]`` another image of the batch
(``inter_subject``: by default both x and x' are random deformations of the batch image).

- ``inter_subject``: ``I_a = G(x, H(x^a))``, ``I = G(I_a, H(x'))``, loss(I, x'). With
  ``method_options.direct_path = true`` the baseline's ``G(x', H(x))`` vs ``x`` is added
  (one reading of Li et al.'s Table I row "+ inter-subject", which builds on the baseline);
  its generator call shares the batch of the first auxiliary stage. ``method_options.path =
  "backward"`` runs the path the other way, ``G(G(x', H(x^a)), H(x))`` vs ``x``: the
  baseline's source and target with the auxiliary stage between them.
- ``cycle``: the baseline's ``G(x', H(x))`` vs ``x`` plus Li et al.'s backward (cycle) path
  ``x' -> x^a -> x``: ``G(G(x', H(x^a)), H(x))`` vs ``x``. Both terms compare with the
  unwarped x, so the detector only looks at x (``H(x^a) = H(x)[perm]``, which here equals the
  separate pass exactly: the batch statistics of x and x[perm] are the same).
  ``method_options.backward = "direct"`` gives lmbench's earlier reading instead, the baseline
  run both ways: ``G(x', H(x))`` vs ``x`` plus ``G(x, H(x'))`` vs ``x'`` (no auxiliary image).
- ``inter_intra`` (the paper's full model): ``x -> x^a -> x'`` and ``x' -> x^a -> x``,
  ``I_x' = G(G(x, H(x^a)), H(x'))``, ``I_x = G(G(x', H(x^a)), H(x))``,
  loss = (perceptual + MSE)(I_x, x) + (perceptual + MSE)(I_x', x').

Every output compared with x' is first replaced by x' where x' shows the warp's padding
(``warp.mask_padding``, :meth:`GenerativeMethod.padding_mask`): otherwise the generator
could only draw that padding if the landmarks tracked the image's frame.

Pairing (``derangement``): ``perm`` is a uniformly random *cyclic* permutation of the
batch drawn with Sattolo's algorithm from the step generator. It has no fixed point
(nobody is its own auxiliary), every image is the auxiliary of exactly one other, it
needs no rejection loop (a fixed number of draws per step, so runs stay exactly
resumable), and for B > 2 no two images are each other's auxiliary. The original uses
one fixed derangement of the batch indices; since batches are reshuffled every epoch, a
fresh pairing per step only changes which images meet, not the objective.

Batching, and what is identical to the paper
--------------------------------------------
One detector call on ``[x; x']`` gives ``H(x)`` and ``H(x')``; ``H(x^a)`` is
``H(x)[perm]`` instead of a third pass (cycle needs H(x) alone: one call on x). Generator
calls whose inputs are known together share one call on a concatenated batch (inter_intra:
both first-stage calls, then both second-stage calls; cycle: the baseline's call and the
backward path's first stage). Perceptual features of the targets are computed once per step
under ``no_grad`` (cycle's two terms share the target x, so once for both) and the outputs'
features in one VGG call.

Everything is the same function as in the paper *except* BatchNorm in training mode:
its batch statistics are computed over the concatenated batch (``[x; x']``, or the
stacked generator inputs) rather than over each pass separately, and ``H(x^a) =
H(x)[perm]`` equals the paper's separate pass ``H(x[perm])`` only up to those batch
statistics (a permuted batch has the same statistics, but the joint ``[x; x']`` batch
does not equal the batch ``x`` alone). Convolutions, the bottleneck, VGG (no BN) and the
losses are per-sample and therefore unchanged. In eval mode (``detect``) nothing differs.
``method_options.routing = "separate"`` runs every pass on its own batch instead (H(x),
H(x'), H(x[perm]); one generator call per G; the perceptual features of each term's output
and target apart): the original's passes, BatchNorm statistics included, at the original's cost.
"""

from __future__ import annotations

import torch

from lmbench.generative import GenerativeMethod, generative_defaults
from lmbench.hookspecs import hookimpl
from lmbench.methods.supervised import resolve_options
from lmbench.registry import MethodSpec

#: ``method_options.routing``: "batched" (lmbench's, see the module docstring) or "separate",
#: the original's passes one image batch at a time (3 detector and 4 generator passes per step for
#: ``inter_intra``): BatchNorm then sees each pass's own batch, as in the paper, and
#: ``lmbench bench`` can time what the batching saves.
ROUTINGS = ("batched", "separate")
PAIRED_OPTIONS = {"routing": "batched"}
#: ``inter_subject``'s ``method_options.path``: Li et al.'s inter-subject path ``forward``
#: (x -> x^a -> x', compared with x'), or ``backward`` (x' -> x^a -> x, compared with x: the
#: baseline's source and target with the auxiliary stage between them, i.e. cycle's backward
#: path without the baseline's term).
INTER_SUBJECT_PATHS = ("forward", "backward")
#: ``method_options.pairs`` of ``inter_subject`` and ``inter_intra``: ``warp`` (lmbench's pairs, as the other
#: methods': x is the batch image, x' its random warp) or ``views`` (the originals' data
#: pipeline: both are random deformations of the batch image, x at the full strength of
#: ``config.warp`` and x' at half of it, as Li et al.'s loader rotates x = Im by N(0, 30^2)
#: degrees and x' = ImP by N(0, 15^2)).
PAIRINGS = ("warp", "views")
#: x''s share of x's deformation with ``pairs = "views"``.
VIEW_STRENGTH = 0.5
#: ``views`` is inter_subject's default: with lmbench's pairs its path, whose only target is the
#: deformed x', stays near the mean shape on two seeds of three in the default 420 steps; with the
#: originals' pairs it reaches 0.4 x the mean shape (reports/findings.md, "The inter-subject path
#: and its pairs").
INTER_SUBJECT_OPTIONS = {"direct_path": False, "path": "forward", "pairs": "views", **PAIRED_OPTIONS}
INTER_INTRA_OPTIONS = {"pairs": "warp", **PAIRED_OPTIONS}
#: ``cycle``'s ``method_options.backward``: Li et al.'s backward path through the auxiliary
#: image (``x' -> x^a -> x``, the default), or ``direct``: the baseline's pass reversed,
#: ``G(x, H(x'))`` vs ``x'`` (lmbench's reading before 2026-12-03; configs saved before the
#: option load with it).
CYCLE_BACKWARDS = ("auxiliary", "direct")
CYCLE_OPTIONS = {"backward": "auxiliary", **PAIRED_OPTIONS}


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random cyclic permutation of ``range(n)`` (Sattolo's algorithm), n >= 2.

    ``perm[i] != i`` for every i; the result is a pure function of the generator's state
    (n - 1 uniform draws on the CPU).
    """
    if n < 2:
        raise ValueError(f"the auxiliary-image pairing needs a batch of at least 2 images, got {n} (raise --batch-size)")
    perm = list(range(n))
    draws = torch.rand(n - 1, generator=generator, dtype=torch.float64).tolist()
    for i, u in zip(range(n - 1, 0, -1), draws):
        j = min(int(u * i), i - 1)  # uniform in [0, i): never i itself
        perm[i], perm[j] = perm[j], perm[i]
    return torch.tensor(perm, dtype=torch.long)


class _PairedMethod(GenerativeMethod):
    """Shared routing: one detector call on [x; x'], the auxiliary pairing, batched G
    (or, with ``method_options.routing = "separate"``, every pass on its own batch).

    Networks and activations are kept channels-last (NHWC): the same numbers, but
    oneDNN's convolutions on CPU run ~10-15 % faster on that layout (and cuDNN prefers it).
    """

    name = ""  # the registered name, for error messages
    option_defaults = PAIRED_OPTIONS
    option_choices = {"routing": ROUTINGS}  # the values each string option may take

    def __init__(self, config, **networks):
        super().__init__(config, **networks)
        self.to(memory_format=torch.channels_last)
        self.options = resolve_options(config, self.option_defaults, self.name)
        for key, choices in self.option_choices.items():
            if self.options[key] not in choices:
                raise ValueError(
                    f"method {self.name!r}: method_options.{key} must be one of {', '.join(choices)}, "
                    f"got {self.options[key]!r}"
                )
        self.batched = self.options["routing"] == "batched"

    def make_pair(self, images, generator):
        x, x_prime, warp = super().make_pair(images, generator)
        return _nhwc(x), _nhwc(x_prime), warp

    def make_views(self, images, generator, *, masks=("x'",)):
        """(x, x', padding mask of x, padding mask of x') with the masks named in ``masks``; a
        mask is None where it is not asked for, that image is undeformed or
        ``warp.mask_padding`` is off. ``pairs = "warp"``: :meth:`make_pair`; ``"views"``: x = W(s)
        and x' = W'(s), W' drawn after W at :data:`VIEW_STRENGTH` of its magnitudes."""
        if self.options["pairs"] == "warp":
            x, x_prime, warp = self.make_pair(images, generator)
            return x, x_prime, None, self.padding_mask(warp, x) if "x'" in masks else None
        warps = (self.random_warp(images, generator), self.random_warp(images, generator, strength=VIEW_STRENGTH))
        x, x_prime = (_nhwc(w.apply_to_images(images)) for w in warps)
        mask_x, mask_prime = (self.padding_mask(w, images) if name in masks else None for w, name in zip(warps, ("x", "x'")))
        return x, x_prime, mask_x, mask_prime

    def encode_pair(self, x: torch.Tensor, x_prime: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps (H(x), H(x')) from ONE detector call on the concatenated batch (separate: two)."""
        if not self.batched:
            return self.encode(x)[1], self.encode(x_prime)[1]
        _, heatmaps = self.encode(torch.cat([x, x_prime]))
        return heatmaps.chunk(2)

    def auxiliary_heatmaps(self, x: torch.Tensor, h_x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        """H(x^a): ``H(x)[perm]``, or (separate routing) the original's third pass H(x[perm])."""
        return h_x[perm] if self.batched else self.encode(_nhwc(x[perm]))[1]

    def auxiliary(self, batch_size: int, generator: torch.Generator, device) -> torch.Tensor:
        """Indices ``perm`` with x^a = x[perm] (see :func:`derangement`)."""
        return derangement(batch_size, generator).to(device)

    def generate(self, appearance: list[torch.Tensor], heatmaps: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``G(appearance[i], heatmaps[i])`` for every i, in one generator call (separate: one each)."""
        if not self.batched:
            return tuple(self.generator(_nhwc(a), _nhwc(h)) for a, h in zip(appearance, heatmaps))
        out = self.generator(_nhwc(torch.cat(appearance)), _nhwc(torch.cat(heatmaps)))
        return out.chunk(len(appearance))

    def split_terms(self, outputs: list[torch.Tensor], targets: list[torch.Tensor], tags: tuple[str, ...]):
        """Reconstruction terms of each (output, target) pair, one set of terms per tag.

        Batched: the targets' features in ONE perceptual call and the outputs' in another; each
        pair's terms equal ``reconstruction_terms`` on that pair alone (the trunk has no batch
        statistics). A target shared by every pair (the same tensor) is featurised once.
        Separate: that, pair by pair.
        """
        if not self.batched:
            terms = {}
            for out, tgt, tag in zip(outputs, targets, tags):
                terms.update(self.reconstruction_terms(out, tgt, self.target_features(tgt), tag))
            return terms
        shared = all(t is targets[0] for t in targets)
        stacked = targets[0] if shared else torch.cat(targets)
        return self.reconstruction_terms_split(torch.cat(outputs), stacked, self.target_features(stacked), tags)


class InterSubject(_PairedMethod):
    """x -> x^a -> x': I_a = G(x, H(x^a)), I = G(I_a, H(x')); loss(I, x') (+ the baseline's path).

    By default (``pairs = "views"``) x and x' are two random deformations of the batch image,
    x the stronger, as in the originals' loader; see :data:`PAIRINGS`."""

    name = "inter_subject"
    option_defaults = INTER_SUBJECT_OPTIONS
    option_choices = {**_PairedMethod.option_choices, "path": INTER_SUBJECT_PATHS, "pairs": PAIRINGS}

    def __init__(self, config, **networks):
        super().__init__(config, **networks)
        if self.options["path"] == "backward" and self.options["direct_path"]:
            raise ValueError(
                "method 'inter_subject': method_options.direct_path adds the baseline's term to the forward "
                "path; with path=backward that is the method 'cycle'"
            )

    def losses(self, images, generator, points=None):
        if self.options["path"] == "backward":
            return self.backward_losses(images, generator)
        direct_path = self.options["direct_path"]
        x, x_prime, valid_x, valid = self.make_views(images, generator, masks=("x", "x'") if direct_path else ("x'",))
        perm = self.auxiliary(x.shape[0], generator, x.device)
        h_x, h_prime = self.encode_pair(x, x_prime)
        h_aux = self.auxiliary_heatmaps(x, h_x, perm)
        if self.showing:
            self.show(("x", x), ("x^a", x[perm]), ("x'", x_prime))
        if not direct_path:
            (i_a,) = self.generate([x], [h_aux])  # x in the structure of x^a
            (out,) = self.generate([i_a], [h_prime])  # ... then in the structure of x'
            self.show(("I_a = G(x, H(x^a))", i_a), ("G(I_a, H(x')) vs x'", out))
            out = self.outside_mask_as_target(out, x_prime, valid)
            return self.reconstruction_terms(out, x_prime, self.target_features(x_prime))
        i_a, direct = self.generate([x, x_prime], [h_aux, h_x])  # I_a, and the baseline's G(x', H(x))
        (out,) = self.generate([i_a], [h_prime])
        self.show(("G(x', H(x)) vs x", direct), ("I_a = G(x, H(x^a))", i_a), ("G(I_a, H(x')) vs x'", out))
        out = self.outside_mask_as_target(out, x_prime, valid)
        direct = self.outside_mask_as_target(direct, x, valid_x)  # x is deformed only with pairs=views
        return self.split_terms([direct, out], [x, x_prime], ("_x", "_xp"))

    def backward_losses(self, images, generator):
        """``path = "backward"``: I_a' = G(x', H(x^a)), then G(I_a', H(x)) vs x. Only x's
        heatmaps are needed (one detector call on x; ``H(x^a) = H(x)[perm]``); the target x has
        padding to mask only with ``pairs = "views"``."""
        x, x_prime, valid_x, _ = self.make_views(images, generator, masks=("x",))
        perm = self.auxiliary(x.shape[0], generator, x.device)
        _, h_x = self.encode(x)
        h_aux = self.auxiliary_heatmaps(x, h_x, perm)
        (i_a_prime,) = self.generate([x_prime], [h_aux])  # x' in the structure of x^a
        (out,) = self.generate([i_a_prime], [h_x])  # ... then in the structure of x
        if self.showing:
            self.show(("x", x), ("x^a", x[perm]), ("x'", x_prime), ("I_a' = G(x', H(x^a))", i_a_prime),
                      ("G(I_a', H(x)) vs x", out))
        out = self.outside_mask_as_target(out, x, valid_x)
        return self.reconstruction_terms(out, x, self.target_features(x))


class Cycle(_PairedMethod):
    """The baseline plus Li et al.'s backward path: G(x', H(x)) vs x, and
    G(G(x', H(x^a)), H(x)) vs x (``backward = "direct"``: G(x, H(x')) vs x' instead)."""

    name = "cycle"
    option_defaults = CYCLE_OPTIONS
    option_choices = {**_PairedMethod.option_choices, "backward": CYCLE_BACKWARDS}

    def losses(self, images, generator, points=None):
        if self.options["backward"] == "direct":
            return self.losses_both_ways(images, generator)
        x, x_prime, _ = self.make_pair(images, generator)
        perm = self.auxiliary(x.shape[0], generator, x.device)
        _, h_x = self.encode(x)  # both terms' targets are x: H(x') is never needed
        h_aux = self.auxiliary_heatmaps(x, h_x, perm)
        direct, i_a_prime = self.generate([x_prime, x_prime], [h_x, h_aux])  # the baseline's; x' in x^a's structure
        (back,) = self.generate([i_a_prime], [h_x])  # ... then back in x's structure
        if self.showing:
            self.show(("x", x), ("x^a", x[perm]), ("x'", x_prime), ("G(x', H(x)) vs x", direct),
                      ("I_a' = G(x', H(x^a))", i_a_prime), ("G(I_a', H(x)) vs x", back))
        return self.split_terms([direct, back], [x, x], ("_x", "_back"))  # x featurised once

    def losses_both_ways(self, images, generator):
        """``backward = "direct"``: G(x', H(x)) vs x and G(x, H(x')) vs x', one generator call."""
        x, x_prime, warp = self.make_pair(images, generator)
        h_x, h_prime = self.encode_pair(x, x_prime)
        to_x, to_prime = self.generate([x_prime, x], [h_x, h_prime])
        self.show(("x", x), ("x'", x_prime), ("G(x', H(x)) vs x", to_x), ("G(x, H(x')) vs x'", to_prime))
        to_prime = self.outside_mask_as_target(to_prime, x_prime, self.padding_mask(warp, x))
        return self.split_terms([to_x, to_prime], [x, x_prime], ("_x", "_xp"))


class InterIntra(_PairedMethod):
    """The paper's full model: x -> x^a -> x' and x' -> x^a -> x.

    I_x' = G(G(x, H(x^a)), H(x')) vs x';  I_x = G(G(x', H(x^a)), H(x)) vs x.
    """

    name = "inter_intra"
    option_defaults = INTER_INTRA_OPTIONS
    option_choices = {**_PairedMethod.option_choices, "pairs": PAIRINGS}

    def losses(self, images, generator, points=None):
        x, x_prime, valid_x, valid = self.make_views(images, generator, masks=("x", "x'"))
        perm = self.auxiliary(x.shape[0], generator, x.device)
        h_x, h_prime = self.encode_pair(x, x_prime)
        h_aux = self.auxiliary_heatmaps(x, h_x, perm)
        i_a, i_a_prime = self.generate([x, x_prime], [h_aux, h_aux])  # first stage: structure of x^a
        to_prime, to_x = self.generate([i_a, i_a_prime], [h_prime, h_x])  # second stage
        if self.showing:
            self.show(("x", x), ("x^a", x[perm]), ("x'", x_prime), ("I_a = G(x, H(x^a))", i_a),
                      ("G(I_a, H(x')) vs x'", to_prime), ("I_a' = G(x', H(x^a))", i_a_prime), ("G(I_a', H(x)) vs x", to_x))
        to_prime = self.outside_mask_as_target(to_prime, x_prime, valid)
        to_x = self.outside_mask_as_target(to_x, x, valid_x)  # x is deformed only with pairs=views
        return self.split_terms([to_x, to_prime], [x, x_prime], ("_x", "_xp"))


@hookimpl
def register_methods():
    return [
        MethodSpec(
            name=InterSubject.name,
            description="Li et al. 2020 inter-subject path: G(G(x, H(x^a)), H(x')) vs x'",
            builder=InterSubject,
            config_defaults=generative_defaults(InterSubject.name),
        ),
        MethodSpec(
            name=Cycle.name,
            description="Li et al. 2020 ablation: baseline G(x', H(x)) vs x plus the backward path G(G(x', H(x^a)), H(x)) vs x",
            builder=Cycle,
            config_defaults=generative_defaults(Cycle.name),
        ),
        MethodSpec(
            name=InterIntra.name,
            description="Li et al. 2020 full model: x -> x^a -> x' and x' -> x^a -> x (both consistency paths)",
            builder=InterIntra,
            config_defaults=generative_defaults(InterIntra.name),
        ),
    ]
