"""Wiring of Li et al.'s methods, checked with small spy networks that record their inputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmbench.config import RunConfig
from lmbench.methods.baseline import Baseline
from lmbench.methods.inter_intra import Cycle, InterIntra, InterSubject, derangement
from lmbench.nn.perceptual import PerceptualLoss
from lmbench.weights import expected_shapes

B, K, S = 4, 3, 16


class SpyDetector(nn.Module):
    """1x1 conv + 4x4 average pool (maps at 1/4 size, no BatchNorm); records its inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, K, 1)
        self.calls = []

    def forward(self, images):
        self.calls.append(images.detach().clone())
        return F.avg_pool2d(self.conv(images), 4) * 10


class SpyGenerator(nn.Module):
    """Output depends on both the appearance and the heatmaps; records (appearance, heatmaps)."""

    def __init__(self):
        super().__init__()
        self.image = nn.Conv2d(3, 3, 1)
        self.maps = nn.Conv2d(K, 3, 1)
        self.calls = []

    def forward(self, appearance, heatmaps):
        if heatmaps.requires_grad:  # not under no_grad (the reconstructions figure)
            heatmaps.retain_grad()
        out = torch.sigmoid(self.image(appearance) + F.interpolate(self.maps(heatmaps), scale_factor=4))
        self.calls.append({"appearance": appearance, "heatmaps": heatmaps, "output": out})
        return out


def build(cls, method_options=None, mask_padding=False, detector=SpyDetector, perceptual=None):
    """``cls`` with spy networks (``detector``: the detector's class), seeded; no perceptual
    loss unless a trunk is given."""
    config = RunConfig(K=K, image_size=S, batch_size=B, method_options=dict(method_options or {}))
    config.perceptual.backbone = "none"
    config.warp.mask_padding = mask_padding
    torch.manual_seed(0)
    return cls(config, perceptual=perceptual, detector=detector(), generator=SpyGenerator())


def run_losses(method, seed=3):
    """The method's terms, plus the (x, x', perm) it must have drawn from the same generator."""
    images = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))
    terms = method.losses(images, torch.Generator().manual_seed(seed))
    replay = torch.Generator().manual_seed(seed)
    if isinstance(method, (InterSubject, InterIntra)) and method.options["pairs"] == "views":  # two deformed views
        x, x_prime = (method.random_warp(images, replay, strength)(images) for strength in (1.0, 0.5))
    else:
        x, x_prime, _ = method.make_pair(images, replay)
    both_ways = isinstance(method, Cycle) and method.options["backward"] == "direct"
    perm = None if both_ways else derangement(B, replay)
    _, heatmaps = method.bottleneck(F.avg_pool2d(method.detector.conv(torch.cat([x, x_prime])), 4) * 10)
    h_x, h_prime = heatmaps.chunk(2)
    return terms, x, x_prime, perm, h_x, h_prime


def close(a, b):
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-6)


def check_single_detector_call(method, x, x_prime):
    assert len(method.detector.calls) == 1, "H(x) and H(x') must come from one detector call"
    assert close(method.detector.calls[0], torch.cat([x, x_prime]))


def test_inter_subject_routes_x_through_the_auxiliary_structure_to_x_prime():
    method = build(InterSubject)
    terms, x, x_prime, perm, h_x, h_prime = run_losses(method)
    check_single_detector_call(method, x, x_prime)
    first, second = method.generator.calls
    assert close(first["appearance"], x) and close(first["heatmaps"], h_x[perm])  # I_a = G(x, H(x^a))
    assert close(second["appearance"], first["output"]) and close(second["heatmaps"], h_prime)  # G(I_a, H(x'))
    assert set(terms) == {"pixel"}
    assert math.isclose(terms["pixel"].item(), F.mse_loss(second["output"], x_prime).item(), rel_tol=1e-6)


def test_inter_subject_direct_path_adds_the_baseline_term():
    method = build(InterSubject, method_options={"direct_path": True})  # pairs: the default views
    terms, x, x_prime, perm, h_x, h_prime = run_losses(method)
    check_single_detector_call(method, x, x_prime)
    first, second = method.generator.calls
    assert close(first["appearance"], torch.cat([x, x_prime]))  # G(x, H(x^a)) and the baseline's G(x', H(x))
    assert close(first["heatmaps"], torch.cat([h_x[perm], h_x]))
    i_a, direct = first["output"].chunk(2)
    assert close(second["appearance"], i_a) and close(second["heatmaps"], h_prime)
    assert math.isclose(terms["pixel_x"].item(), F.mse_loss(direct, x).item(), rel_tol=1e-6)
    assert math.isclose(terms["pixel_xp"].item(), F.mse_loss(second["output"], x_prime).item(), rel_tol=1e-6)
    assert method.config.method_options == {"direct_path": True, "path": "forward", "pairs": "views", "routing": "batched"}


def draw_views(method, seed=3):
    """What ``pairs = "views"`` must draw: x = W(s), x' = W'(s) at half W's magnitudes, from the
    step generator in that order; also their padding masks."""
    images = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))
    replay = torch.Generator().manual_seed(seed)
    x_warp = method.random_warp(images, replay)
    x_prime_warp = method.random_warp(images, replay, strength=0.5)
    perm = derangement(B, replay)
    masks = [method.padding_mask(w, images) for w in (x_warp, x_prime_warp)]
    return x_warp(images), x_prime_warp(images), perm, *masks


def test_random_warp_at_half_strength_halves_every_magnitude():
    method = build(InterSubject)
    method.config.warp.tps_sigma = 0.0  # a similarity alone: its angle, scale and shift can be read off
    images = torch.rand(64, 3, S, S)
    full = method.random_warp(images, torch.Generator().manual_seed(0)).matrix
    half = method.random_warp(images, torch.Generator().manual_seed(0), strength=0.5).matrix
    w = method.config.warp
    def spans(m):
        scale = torch.linalg.det(m[:, :, :2]).sqrt()
        angle = torch.rad2deg(torch.atan2(m[:, 1, 0], m[:, 0, 0])).abs()
        return angle.max(), (scale - 1).abs().max(), m[:, :, 2].abs().max()
    (a_full, s_full, t_full), (a_half, s_half, t_half) = spans(full), spans(half)
    assert a_full <= w.rotation_deg and a_half <= w.rotation_deg / 2 + 1e-4 and a_half > 0
    assert torch.isclose(a_half, a_full / 2, rtol=1e-3)  # the same draws, scaled
    assert s_half <= (w.scale[1] - 1) / 2 + 1e-6 and t_half <= w.translation / 2 + 1e-6


def test_inter_subject_views_deform_both_images_and_mask_each_target():
    method = build(InterSubject, method_options={"pairs": "views"}, mask_padding=True)
    images = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))
    terms = method.losses(images, torch.Generator().manual_seed(3))
    x, x_prime, perm, mask_x, mask_prime = draw_views(method)
    assert (mask_prime < 1).any() and (mask_x < 1).any()  # both views show padding in this draw
    assert len(method.detector.calls) == 1 and close(method.detector.calls[0], torch.cat([x, x_prime]))
    first, second = method.generator.calls
    h_x = method.bottleneck(F.avg_pool2d(method.detector.conv(x), 4) * 10)[1]
    assert close(first["appearance"], x) and close(first["heatmaps"], h_x[perm])
    out = second["output"]
    expected = F.mse_loss(x_prime + mask_prime * (out - x_prime), x_prime)
    assert math.isclose(terms["pixel"].item(), expected.item(), rel_tol=1e-5)
    # with the baseline's term, its target x is masked by x's own padding
    direct_method = build(InterSubject, method_options={"pairs": "views", "direct_path": True}, mask_padding=True)
    terms = direct_method.losses(images, torch.Generator().manual_seed(3))
    direct = direct_method.generator.calls[0]["output"].chunk(2)[1]
    expected = F.mse_loss(x + mask_x * (direct - x), x)
    assert math.isclose(terms["pixel_x"].item(), expected.item(), rel_tol=1e-5)


def test_inter_subject_views_backward_path_masks_its_target_x():
    method = build(InterSubject, method_options={"pairs": "views", "path": "backward"}, mask_padding=True)
    images = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))
    terms = method.losses(images, torch.Generator().manual_seed(3))
    x, x_prime, perm, mask_x, _ = draw_views(method)
    assert close(method.detector.calls[0], x) and close(method.generator.calls[0]["appearance"], x_prime)
    out = method.generator.calls[1]["output"]
    assert math.isclose(terms["pixel"].item(), F.mse_loss(x + mask_x * (out - x), x).item(), rel_tol=1e-5)


def test_inter_intra_views_deform_both_images_and_mask_each_target():
    method = build(InterIntra, method_options={"pairs": "views"}, mask_padding=True)
    images = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))
    terms = method.losses(images, torch.Generator().manual_seed(3))
    x, x_prime, perm, mask_x, mask_prime = draw_views(method)
    assert close(method.detector.calls[0], torch.cat([x, x_prime]))
    first, second = method.generator.calls
    assert close(first["appearance"], torch.cat([x, x_prime]))
    to_prime, to_x = second["output"].chunk(2)
    assert math.isclose(terms["pixel_xp"].item(), F.mse_loss(x_prime + mask_prime * (to_prime - x_prime), x_prime).item(), rel_tol=1e-5)
    assert math.isclose(terms["pixel_x"].item(), F.mse_loss(x + mask_x * (to_x - x), x).item(), rel_tol=1e-5)


def test_inter_subject_pairs_must_be_warp_or_views():
    with pytest.raises(ValueError, match="method_options.pairs must be one of warp, views, got 'both'"):
        build(InterSubject, {"pairs": "both"})


def test_inter_subject_backward_path_routes_x_prime_through_the_auxiliary_structure_to_x():
    method = build(InterSubject, method_options={"path": "backward", "pairs": "warp"}, mask_padding=True)
    terms, x, x_prime, perm, h_x, _ = run_losses(method)
    assert len(method.detector.calls) == 1 and close(method.detector.calls[0], x)  # H(x) alone
    first, second = method.generator.calls
    assert close(first["appearance"], x_prime) and close(first["heatmaps"], h_x[perm])  # I_a' = G(x', H(x^a))
    assert close(second["appearance"], first["output"]) and close(second["heatmaps"], h_x)  # G(I_a', H(x))
    assert set(terms) == {"pixel"}  # compared with the unwarped x: no padding to mask
    assert math.isclose(terms["pixel"].item(), F.mse_loss(second["output"], x).item(), rel_tol=1e-6)


def test_inter_subject_backward_path_is_cycles_backward_term():
    """The same draw gives the same number as cycle's second term (same warp, pairing, networks)."""
    alone = run_losses(build(InterSubject, method_options={"path": "backward", "pairs": "warp"}))[0]
    cycle = run_losses(build(Cycle))[0]
    assert math.isclose(alone["pixel"].item(), cycle["pixel_back"].item(), rel_tol=1e-6)


def test_inter_subject_path_must_be_forward_or_backward_and_backward_has_no_direct_path():
    with pytest.raises(ValueError, match="method_options.path must be one of forward, backward, got 'both'"):
        build(InterSubject, {"path": "both"})
    with pytest.raises(ValueError, match="with path=backward that is the method 'cycle'"):
        build(InterSubject, {"path": "backward", "direct_path": True})


def test_inter_subject_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown method_options direct"):
        build(InterSubject, method_options={"direct": True})


def test_cycle_adds_the_backward_path_through_the_auxiliary_image_to_the_baseline():
    method = build(Cycle)
    terms, x, x_prime, perm, h_x, _ = run_losses(method)
    assert len(method.detector.calls) == 1 and close(method.detector.calls[0], x)  # H(x) alone
    first, second = method.generator.calls
    # First call: the baseline's G(x', H(x)) and the backward path's first stage G(x', H(x^a)).
    assert close(first["appearance"], torch.cat([x_prime, x_prime]))
    assert close(first["heatmaps"], torch.cat([h_x, h_x[perm]]))
    direct, i_a_prime = first["output"].chunk(2)
    # Second: G(I_a', H(x)), back in x's structure; both outputs are compared with x.
    assert close(second["appearance"], i_a_prime) and close(second["heatmaps"], h_x)
    assert set(terms) == {"pixel_x", "pixel_back"}
    assert math.isclose(terms["pixel_x"].item(), F.mse_loss(direct, x).item(), rel_tol=1e-6)
    assert math.isclose(terms["pixel_back"].item(), F.mse_loss(second["output"], x).item(), rel_tol=1e-6)
    assert method.config.method_options == {"backward": "auxiliary", "routing": "batched"}


def test_cycle_backward_direct_runs_the_baseline_both_ways_in_one_generator_call():
    method = build(Cycle, {"backward": "direct"})
    terms, x, x_prime, _, h_x, h_prime = run_losses(method)
    check_single_detector_call(method, x, x_prime)
    (call,) = method.generator.calls
    assert close(call["appearance"], torch.cat([x_prime, x]))  # G(x', H(x)) and G(x, H(x'))
    assert close(call["heatmaps"], torch.cat([h_x, h_prime]))
    to_x, to_prime = call["output"].chunk(2)
    assert math.isclose(terms["pixel_x"].item(), F.mse_loss(to_x, x).item(), rel_tol=1e-6)
    assert math.isclose(terms["pixel_xp"].item(), F.mse_loss(to_prime, x_prime).item(), rel_tol=1e-6)


def test_inter_intra_runs_both_paths_in_two_generator_calls():
    method = build(InterIntra)
    terms, x, x_prime, perm, h_x, h_prime = run_losses(method)
    check_single_detector_call(method, x, x_prime)
    first, second = method.generator.calls
    # First stage: x and x' both redrawn in the structure of x^a = x[perm].
    assert close(first["appearance"], torch.cat([x, x_prime]))
    assert close(first["heatmaps"], torch.cat([h_x[perm], h_x[perm]]))
    # Second stage: G(I_a, H(x')) -> compared with x';  G(I'_a, H(x)) -> compared with x.
    assert close(second["appearance"], first["output"])
    assert close(second["heatmaps"], torch.cat([h_prime, h_x]))
    to_prime, to_x = second["output"].chunk(2)
    assert set(terms) == {"pixel_x", "pixel_xp"}
    assert math.isclose(terms["pixel_x"].item(), F.mse_loss(to_x, x).item(), rel_tol=1e-6)
    assert math.isclose(terms["pixel_xp"].item(), F.mse_loss(to_prime, x_prime).item(), rel_tol=1e-6)


@pytest.mark.parametrize("mask_padding", [False, True])
@pytest.mark.parametrize(
    "cls,options,generator_batches",
    [
        (InterSubject, {}, [B, B]),
        (InterSubject, {"direct_path": True}, [B, B, B]),
        (InterSubject, {"path": "backward"}, [B, B]),
        (Cycle, {}, [B, B, B]),
        (Cycle, {"backward": "direct"}, [B, B]),
        (InterIntra, {}, [B, B, B, B]),
    ],
)
def test_separate_routing_is_the_same_function_one_batch_per_pass(cls, options, generator_batches, mask_padding):
    """The original's passes (H(x), H(x'), H(x[perm]); one G call each) give the batched
    routing's terms and gradients when the networks have no batch statistics."""
    batched = build(cls, options, mask_padding=mask_padding)
    separate = build(cls, {**options, "routing": "separate"}, mask_padding=mask_padding)
    terms, x, x_prime, perm, *_ = run_losses(batched)
    separate_terms, *_ = run_losses(separate)
    assert separate_terms.keys() == terms.keys()
    for name in terms:
        assert torch.allclose(separate_terms[name], terms[name], rtol=1e-5, atol=1e-7), name
    if (cls is Cycle and perm is not None) or options.get("path") == "backward":  # targets x alone: H(x), H(x[perm])
        expected_inputs = [x, x[perm]]
    else:
        expected_inputs = [x, x_prime] + ([] if perm is None else [x[perm]])
    assert len(separate.detector.calls) == len(expected_inputs)
    assert all(close(call, image) for call, image in zip(separate.detector.calls, expected_inputs))
    assert [call["appearance"].shape[0] for call in separate.generator.calls] == generator_batches
    sum(terms.values()).backward()
    sum(separate_terms.values()).backward()
    for (name, a), b in zip(batched.named_parameters(), separate.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name


def test_separate_routing_keeps_each_pass_own_batch_statistics():
    """With BatchNorm in the detector the two routings differ, as the docstring says:
    separately, each pass normalises over its own B images."""

    class BatchNormDetector(SpyDetector):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm2d(3)

        def forward(self, images):
            return super().forward(self.norm(images))

    terms = {}
    for routing in ("batched", "separate"):
        method = build(InterIntra, {"routing": routing}, detector=BatchNormDetector)
        terms[routing] = run_losses(method)[0]
        assert [call.shape[0] for call in method.detector.calls] == ([2 * B] if routing == "batched" else [B] * 3)
    assert not torch.allclose(terms["batched"]["pixel_x"], terms["separate"]["pixel_x"])


def test_routing_must_be_batched_or_separate():
    with pytest.raises(ValueError, match="method_options.routing must be one of batched, separate, got 'split'"):
        build(Cycle, {"routing": "split"})


def test_cycle_backward_must_be_auxiliary_or_direct():
    with pytest.raises(ValueError, match="method_options.backward must be one of auxiliary, direct, got 'swap'"):
        build(Cycle, {"backward": "swap"})


def test_padding_mask_marks_what_a_translation_brings_in():
    from lmbench.warps import similarity_warp

    images = torch.rand(B, 3, S, S)
    # Content moves right by 0.25 normalised units = 2 pixels at S = 16: columns 0-1 are padding.
    warp = similarity_warp(torch.zeros(B), torch.ones(B), torch.tensor([[0.25, 0.0]] * B))
    mask = build(Cycle, mask_padding=True).padding_mask(warp, images)
    assert mask.shape == (B, 1, S, S)
    assert (mask[..., :2] == 0).all() and (mask[..., 2:] == 1).all()
    assert build(Cycle, mask_padding=False).padding_mask(warp, images) is None


def test_outside_mask_as_target_takes_no_loss_and_no_gradient_from_the_padding():
    output, target = torch.rand(B, 3, S, S, requires_grad=True), torch.rand(B, 3, S, S)
    mask = torch.ones(B, 1, S, S)
    mask[..., :5] = 0
    composite = InterIntra.outside_mask_as_target(output, target, mask)
    assert torch.equal(composite[..., :5], target[..., :5]) and torch.equal(composite[..., 5:], output[..., 5:])
    F.mse_loss(composite, target).backward()
    assert (output.grad[..., :5] == 0).all() and (output.grad[..., 5:] != 0).all()
    assert InterIntra.outside_mask_as_target(output, target, None) is output
    half = InterIntra.outside_mask_as_target(output.detach().bfloat16(), target, mask)  # CUDA autocast's output
    assert half.dtype == torch.bfloat16 and torch.equal(half[..., :5], target[..., :5].bfloat16())


@pytest.mark.parametrize(
    "cls,options", [(InterSubject, {"pairs": "warp"}), (Cycle, {"backward": "direct"}), (InterIntra, {})]
)
def test_mask_padding_applies_to_the_terms_whose_target_is_x_prime(cls, options):
    """Outputs compared with x' count only where x' shows image content; those compared
    with the unwarped x are unchanged."""
    plain, masked = build(cls, options, mask_padding=False), build(cls, options, mask_padding=True)
    terms, x, x_prime, *_ = run_losses(plain)
    masked_terms, *_ = run_losses(masked)
    images = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))
    _, _, warp = masked.make_pair(images, torch.Generator().manual_seed(3))
    mask = masked.padding_mask(warp, images)
    assert (mask < 1).any() and (mask == 1).any()  # this draw has padding and content
    to_prime = masked.generator.calls[-1]["output"].chunk(1 if cls is InterSubject else 2)[0 if cls is not Cycle else 1]
    key = "pixel" if cls is InterSubject else "pixel_xp"
    expected = F.mse_loss(x_prime + mask * (to_prime - x_prime), x_prime)
    assert math.isclose(masked_terms[key].item(), expected.item(), rel_tol=1e-5)
    assert masked_terms[key].item() < terms[key].item()
    if "pixel_x" in terms:
        assert math.isclose(masked_terms["pixel_x"].item(), terms["pixel_x"].item(), rel_tol=1e-6)


@pytest.mark.parametrize("cls", [Baseline, Cycle])
def test_methods_comparing_only_with_x_are_unaffected_by_mask_padding(cls):
    images = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))
    terms = [build(cls, mask_padding=flag).losses(images, torch.Generator().manual_seed(3)) for flag in (False, True)]
    assert terms[0].keys() == terms[1].keys()
    assert all(terms[0][name].item() == terms[1][name].item() for name in terms[0])


def nonzero_rows(grad):
    return [bool(row.abs().sum() > 0) for row in grad.flatten(1)] if grad is not None else None


def backprop_one_term(cls, term):
    """The generator calls after backpropagating one term alone; the detector must get gradient."""
    method = build(cls)
    terms, *_ = run_losses(method)
    method.zero_grad()
    terms[term].backward()
    assert method.detector.conv.weight.grad.abs().sum() > 0
    return method.generator.calls


@pytest.mark.parametrize("term", ["pixel_x", "pixel_xp"])
def test_inter_intra_gradients_follow_each_path(term):
    """Backprop one path's term: exactly that path's heatmap inputs (and no others) receive gradient."""
    first, second = backprop_one_term(InterIntra, term)
    to_x = term == "pixel_x"
    # Stage 1 rows: [x | x'] appearances; the path to x starts from x', the path to x' from x.
    assert nonzero_rows(first["heatmaps"].grad) == [not to_x] * B + [to_x] * B
    # Stage 2 rows: [to x' | to x].
    assert nonzero_rows(second["heatmaps"].grad) == [not to_x] * B + [to_x] * B


@pytest.mark.parametrize("term", ["pixel_x", "pixel_back"])
def test_cycle_gradients_follow_each_path(term):
    """The baseline's term reaches only the first call's H(x) rows; the backward path's reaches
    its first stage's H(x^a) rows and its second stage's H(x)."""
    first, second = backprop_one_term(Cycle, term)
    back = term == "pixel_back"
    assert nonzero_rows(first["heatmaps"].grad) == [not back] * B + [back] * B
    assert nonzero_rows(second["heatmaps"].grad) in (([True] * B,) if back else (None, [False] * B))


def test_cycle_computes_the_shared_target_features_once():
    """Both of cycle's terms compare with x: one trunk call for x's features, one for the two outputs,
    and the terms equal the separate routing's (two calls per term)."""
    torch.manual_seed(0)
    weights = {k: torch.randn(shape) * 0.1 for k, shape in expected_shapes("vgg16").items()}
    perceptual = PerceptualLoss("vgg16", layers=["relu1_2", "relu2_1"], weights=weights)
    batches = []
    features = perceptual.features
    perceptual.features = lambda images: batches.append(images.shape[0]) or features(images)
    terms = {}
    for routing in ("batched", "separate"):
        batches.clear()
        terms[routing] = run_losses(build(Cycle, {"routing": routing}, perceptual=perceptual))[0]
        assert batches == ([B, 2 * B] if routing == "batched" else [B, B, B, B]), routing
    assert set(terms["batched"]) == {"pixel_x", "pixel_back", "perceptual_x", "perceptual_back"}
    for name, value in terms["batched"].items():
        assert torch.allclose(terms["separate"][name], value, rtol=1e-5), name


@pytest.mark.parametrize(
    "cls,options,terms_expected",
    [
        (InterSubject, {}, ["pixel"]),
        (InterSubject, {"path": "backward"}, ["pixel"]),
        (Cycle, {}, ["pixel_back", "pixel_x"]),
        (Cycle, {"backward": "direct"}, ["pixel_x", "pixel_xp"]),
    ],
)
def test_detector_gets_gradient_from_every_term(cls, options, terms_expected):
    method = build(cls, options)
    terms, *_ = run_losses(method)
    assert sorted(terms) == terms_expected
    for name in terms_expected:
        method.zero_grad()
        terms[name].backward(retain_graph=True)
        assert method.detector.conv.weight.grad.abs().sum() > 0, name
        assert method.generator.maps.weight.grad.abs().sum() > 0, name


@pytest.mark.parametrize("n", [2, 3, 5, 16, 48])
def test_derangement_is_a_fixed_point_free_single_cycle(n):
    perm = derangement(n, torch.Generator().manual_seed(n))
    assert sorted(perm.tolist()) == list(range(n))
    assert all(perm[i] != i for i in range(n))
    seen, i = set(), 0
    while i not in seen:  # Sattolo: one cycle through every index
        seen.add(i)
        i = int(perm[i])
    assert len(seen) == n


def test_derangement_is_deterministic_per_generator_and_varies_across_seeds():
    a = derangement(16, torch.Generator().manual_seed(7))
    assert torch.equal(a, derangement(16, torch.Generator().manual_seed(7)))
    assert len({tuple(derangement(16, torch.Generator().manual_seed(s)).tolist()) for s in range(10)}) == 10


def test_derangement_covers_all_cyclic_permutations():
    g = torch.Generator().manual_seed(0)
    counts = {}
    for _ in range(600):
        key = tuple(derangement(4, g).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 6 and min(counts.values()) > 60  # (4-1)! cycles, ~100 each


def test_derangement_needs_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, torch.Generator())


def test_split_terms_equal_per_chunk_terms_with_a_perceptual_trunk():
    torch.manual_seed(0)
    weights = {k: torch.randn(shape) * 0.1 for k, shape in expected_shapes("vgg16").items()}
    perceptual = PerceptualLoss("vgg16", layers=["relu1_2", "relu2_1"], weights=weights)
    config = RunConfig(K=K)
    method = InterIntra(config, perceptual=perceptual, detector=SpyDetector(), generator=SpyGenerator())
    outputs, targets = torch.rand(2 * B, 3, S, S), torch.rand(2 * B, 3, S, S)
    split = method.reconstruction_terms_split(outputs, targets, method.target_features(targets), ("_a", "_b"))
    for tag, out, tgt in zip(("_a", "_b"), outputs.chunk(2), targets.chunk(2)):
        single = method.reconstruction_terms(out, tgt, method.target_features(tgt), tag)
        for name, value in single.items():
            assert torch.allclose(split[name], value, rtol=1e-5), name


def test_separate_routing_matches_with_a_perceptual_trunk():
    """Perceptual terms pair by pair (separate) equal those from the stacked calls (batched)."""
    torch.manual_seed(0)
    weights = {k: torch.randn(shape) * 0.1 for k, shape in expected_shapes("vgg16").items()}
    perceptual = PerceptualLoss("vgg16", layers=["relu1_2", "relu2_1"], weights=weights)
    terms = [run_losses(build(InterIntra, {"routing": r}, perceptual=perceptual))[0] for r in ("batched", "separate")]
    assert set(terms[0]) == {"pixel_x", "pixel_xp", "perceptual_x", "perceptual_xp"}
    for name, value in terms[0].items():
        assert torch.allclose(terms[1][name], value, rtol=1e-5), name


@pytest.mark.parametrize("name", ["inter_subject", "cycle", "inter_intra"])
def test_each_method_trains_through_the_runner(test_plugin, tmp_path, name):
    from lmbench.runner import run

    config = RunConfig(method=name, dataset="blobs", K=3, steps=2, batch_size=4, image_size=32, log_every=1,
                       checkpoint_every=2, seed=1, device="cpu")
    config.detector.channels, config.detector.depth, config.detector.stem_channels = 16, 1, 8
    config.generator.conv_dim, config.generator.res_blocks = 4, 1
    config.perceptual.backbone = "none"
    metrics = run(config, tmp_path / name)
    assert metrics["steps"] == 2 and math.isfinite(metrics["final_loss"])
    assert (tmp_path / name / "checkpoint.pt").exists()
    assert (tmp_path / name / "reconstructions.png").exists()
    if name == "inter_subject":  # reports/scripts/appearance_code.py reads such a run
        import importlib.util
        from pathlib import Path

        script = Path(__file__).parents[1] / "reports" / "scripts" / "appearance_code.py"
        spec = importlib.util.spec_from_file_location("appearance_code", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        figures = module.measure(tmp_path / name, faces=8, batch=4)
        assert set(figures) == {"output_vs_x_prime", "i_a_vs_x", "swapped_vs_x_prime", "swapped_vs_other_x"}
        assert all(-1 <= value <= 1 for value in figures.values())


def test_each_generative_method_defaults_to_the_steps_of_its_time_budget():
    from click.testing import CliRunner

    from lmbench import registry
    from lmbench.cli import cli
    from lmbench.generative import GENERATIVE_BETAS, GENERATIVE_EMA_DECAY, GENERATIVE_HEAD_INIT_GAIN, GENERATIVE_STEPS

    # Equal time, not equal steps: the more generator passes a step makes, the fewer steps.
    order = ("baseline", "inter_subject", "cycle", "inter_intra")
    assert [GENERATIVE_STEPS[name] for name in order] == sorted(GENERATIVE_STEPS.values(), reverse=True)
    for name in order:
        assert registry.get_method(name).config_defaults == {
            "steps": GENERATIVE_STEPS[name], "detector.head_init_gain": GENERATIVE_HEAD_INIT_GAIN,
            "optim.betas": list(GENERATIVE_BETAS), "optim.ema_decay": GENERATIVE_EMA_DECAY,
        }, name
    # ... and `lmbench run --help` says so.
    shown = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    for name in order:
        assert f"{name}: {GENERATIVE_STEPS[name]}" in shown, name


PASSES = {
    InterSubject: ["x", "x^a", "x'", "I_a = G(x, H(x^a))", "G(I_a, H(x')) vs x'"],
    Cycle: ["x", "x^a", "x'", "G(x', H(x)) vs x", "I_a' = G(x', H(x^a))", "G(I_a', H(x)) vs x"],
    InterIntra: ["x", "x^a", "x'", "I_a = G(x, H(x^a))", "G(I_a, H(x')) vs x'",
                 "I_a' = G(x', H(x^a))", "G(I_a', H(x)) vs x"],
}


@pytest.mark.parametrize("cls", list(PASSES))
def test_reconstruction_rows_show_each_pass_of_the_loss(cls):
    """The figure's rows are the images the loss routes, drawn with the same warp and pairing as a
    training step from the same generator; nothing is recorded outside the figure's pass."""
    method = build(cls)
    method.train()
    images = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))
    rows = dict(method.reconstruction_rows(images, seed=3))
    assert list(rows) == PASSES[cls]
    assert method.training and not method.showing  # the training mode and the recorder are restored
    _, x, x_prime, perm, _, _ = run_losses(build(cls))
    assert close(rows["x"], x) and close(rows["x'"], x_prime)
    if perm is not None:
        assert close(rows["x^a"], x[perm])
    outputs = torch.cat([call["output"] for call in method.generator.calls])  # the figure's generator calls
    for label, batch in rows.items():
        if label.startswith(("I_a", "G(")):  # every generated row is one of those outputs' chunks
            assert any(close(batch, chunk) for chunk in outputs.split(B)), label


def test_inter_subject_backward_path_shows_its_own_passes():
    method = build(InterSubject, {"path": "backward"})
    rows = dict(method.reconstruction_rows(torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1)), seed=3))
    assert list(rows) == PASSES[Cycle][:3] + PASSES[Cycle][4:]  # cycle's rows without the baseline's output


def test_baseline_shows_its_single_pass_and_show_is_a_no_op_outside_recording():
    method = build(Baseline)
    method.show(("x", torch.zeros(1, 3, S, S)))  # not recording: nothing kept
    images = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))
    rows = method.reconstruction_rows(images, seed=3)
    assert [label for label, _ in rows] == ["x", "x'", "G(x', H(x)) vs x"]
    assert all(batch.shape == (B, 3, S, S) and batch.min() >= 0 and batch.max() <= 1 for _, batch in rows)


def test_reconstruction_rows_leave_batchnorm_statistics_and_mode_as_they_were():
    """The figure's pass normalises with batch statistics (training mode), yet the checkpoint's
    running statistics and the method's mode are what they were before."""
    config = RunConfig(K=K, image_size=32, batch_size=B)
    config.detector.channels, config.detector.depth, config.detector.stem_channels = 8, 1, 8
    config.generator.conv_dim, config.generator.res_blocks = 4, 1
    config.perceptual.backbone = "none"
    torch.manual_seed(0)
    method = Baseline(config).eval()
    before = {name: value.clone() for name, value in method.state_dict().items()}
    assert any("running_mean" in name for name in before)
    rows = method.reconstruction_rows(torch.rand(B, 3, 32, 32), seed=0)
    assert len(rows) == 3 and not method.training
    assert all(torch.equal(value, before[name]) for name, value in method.state_dict().items())
