"""Tests of lmbench.warps: conventions, image/point agreement, inverses, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmbench.data import to_pixels
from lmbench.warps import (
    AffineWarp,
    TPSWarp,
    compose,
    control_lattice,
    identity_warp,
    make_pair,
    make_rotation_pair,
    pixel_grid,
    random_similarity,
    random_tps,
    random_zhang_warp,
    similarity_warp,
    solve_tps,
    tps_eval,
    tps_jacobian,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sim(angle_deg=0.0, scale=1.0, tx=0.0, ty=0.0, dtype=torch.float32) -> AffineWarp:
    return similarity_warp(
        torch.tensor([math.radians(angle_deg)], dtype=dtype),
        torch.tensor([scale], dtype=dtype),
        torch.tensor([[tx, ty]], dtype=dtype),
    )


def blobs(points_px: torch.Tensor, size: int, sigma: float = 1.0) -> torch.Tensor:
    """One Gaussian blob per image at pixel coordinates [B, 2] -> [B, 1, size, size]."""
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    dx = centres.view(1, 1, size) - points_px[:, 0, None, None]
    dy = centres.view(1, size, 1) - points_px[:, 1, None, None]
    return torch.exp(-(dx.square() + dy.square()) / (2 * sigma**2))[:, None].float()


def centroids(images: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Intensity centroid in pixel coordinates of [B, 1, H, W] -> [B, 2]."""
    _, _, h, w = images.shape
    mass = images[:, 0].double() * (1.0 if weights is None else weights)
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    total = mass.sum((1, 2))
    centre = torch.stack([(mass.sum(1) * xs).sum(-1), (mass.sum(2) * ys).sum(-1)], -1)
    return centre / total[:, None]


def source_area(warp, size: int) -> torch.Tensor:
    """|det| of the Jacobian of g^{-1} at each output pixel (finite differences): [B, H, W]."""
    grid = warp.sampling_grid((size, size)).double()
    dxx, dxy = torch.gradient(grid[..., 0], dim=(2, 1))
    dyx, dyy = torch.gradient(grid[..., 1], dim=(2, 1))
    return (dxx * dyy - dxy * dyx).abs()


def warped_blob_position(warp, points: torch.Tensor, size: int) -> torch.Tensor:
    """Where the warped image shows a blob drawn at ``points`` [B, 2] (normalised), in pixels.

    The plain centroid of a warped blob is E[g(p)] weighted by the output area each source
    pixel covers, which is biased by O(sigma^2 g'') for a non-linear g (about 1 px for a
    sigma = 1 px blob under a strong Zhang warp, at any resolution). So: weight each output
    pixel by the source area it samples (giving E_blob[g(p)]), and extrapolate the
    remaining sigma^2 term to sigma = 0 from two blob sizes (Richardson).
    """
    area = source_area(warp, size)
    found = []
    for sigma in (0.8, 1.2):
        img = blobs(to_pixels(points, (size, size)), size, sigma=sigma)
        found.append(centroids(warp.apply_to_images(img, "zeros"), area))
    return (1.2**2 * found[0] - 0.8**2 * found[1]) / (1.2**2 - 0.8**2)


def ramp_images(batch: int, size: int) -> torch.Tensor:
    """Images whose two channels hold the normalised (x, y) of each pixel centre."""
    grid = pixel_grid((size, size)).reshape(size, size, 2).permute(2, 0, 1)
    return grid.expand(batch, 2, size, size).contiguous()


def read_at(images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear read of [B, C, H, W] at normalised points [B, N, 2] -> [B, N, C]."""
    out = F.grid_sample(images, points[:, :, None], align_corners=False, padding_mode="border")
    return out[..., 0].transpose(1, 2)


WARP_FACTORIES = {
    "similarity": lambda b, g, **kw: random_similarity(
        b, rotation_deg=30.0, scale=(0.8, 1.2), translation=0.15, generator=g, **kw
    ),
    "tps": lambda b, g, **kw: random_tps(b, grid=5, sigma=0.1, generator=g, **kw),
    "zhang": lambda b, g, **kw: random_zhang_warp(b, g, **kw),
}
# 5 x 5 at sigma 0.1 folds over somewhere in about half the samples; the blob test needs a
# warp that is a diffeomorphism around the blob, hence sigma 0.05 there.
BLOB_FACTORIES = {
    "similarity": WARP_FACTORIES["similarity"],
    "tps": lambda b, g: random_tps(b, grid=5, sigma=0.05, generator=g),
    "zhang": WARP_FACTORIES["zhang"],
}


# --------------------------------------------------------------------- hand-computed cases


def test_rotation_sign_convention():
    # +90 deg maps (1, 0) -> (0, 1): with y down, content turns clockwise on screen.
    w = sim(90.0)
    out = w.map_points(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]]]))
    expected = torch.tensor([[[0.0, 1.0], [-1.0, 0.0], [0.5, 0.5]]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_rotation_90_image_is_clockwise_rot90():
    x = torch.rand(1, 3, 8, 8, generator=gen())
    out = sim(90.0).apply_to_images(x)
    torch.testing.assert_close(out, torch.rot90(x, k=-1, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_scale_two_about_centre():
    w = sim(scale=2.0)
    p = torch.tensor([[[0.25, -0.5], [0.0, 0.0], [-0.1, 0.3]]])
    torch.testing.assert_close(w.map_points(p), 2 * p)
    torch.testing.assert_close(w.inverse_map_points(2 * p), p)


def test_translation_is_a_pixel_shift():
    size, shift_px = 32, 3
    w = sim(tx=2 * shift_px / size, ty=-2 * 2 / size)  # 3 px right, 2 px up
    x = torch.rand(1, 1, size, size, generator=gen())
    out = w.apply_to_images(x, "zeros")
    torch.testing.assert_close(out[..., : size - 2, shift_px:], x[..., 2:, : size - shift_px])
    assert out[..., :, :shift_px].abs().max() == 0
    p = torch.tensor([[[0.0, 0.0]]])
    torch.testing.assert_close(w.map_points(p), torch.tensor([[[6 / 32, -4 / 32]]]))


# --------------------------------------------------------------------- image vs points


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("kind", sorted(BLOB_FACTORIES))
def test_blob_lands_where_map_points_says(kind, size):
    batch = 12
    warp = BLOB_FACTORIES[kind](batch, gen(1))
    points = torch.rand(batch, 1, 2, generator=gen(2)) * 0.8 - 0.4  # normalised, central
    mapped = warp.map_points(points)
    inside = mapped.abs().amax(dim=(1, 2)) < 0.75  # blob fully inside the output
    assert inside.sum() >= 8
    found = warped_blob_position(warp, points[:, 0], size)
    expected = to_pixels(mapped[:, 0], (size, size)).double()
    error_px = (found - expected).norm(dim=-1)[inside]
    assert error_px.max() < 0.5, error_px


def test_scaled_blob_plain_centroid():
    # For a similarity the plain centroid is exact: a blob at pixel (40, 24) of a 64 px
    # image, scaled by 2 about the centre, lands at 32 + 2 * (p - 32) = (48, 16).
    img = blobs(torch.tensor([[40.0, 24.0]]), 64)
    c = centroids(sim(scale=2.0).apply_to_images(img, "zeros"))
    expected = torch.tensor([[48.0, 16.0]], dtype=torch.float64)
    torch.testing.assert_close(c, expected, atol=0.05, rtol=0)


@pytest.mark.parametrize("kind", sorted(WARP_FACTORIES))
def test_warped_coordinate_image_reads_back_source_point(kind):
    # The warped image at g(p) holds the content of p: with a coordinate-ramp image the
    # content *is* p. (a) At output pixel centres q the pixel holds p = g^{-1}(q) exactly,
    # and map_points(p) is q, or, where a TPS folds over, another point showing p.
    # (b) At arbitrary points, the bilinear read of the warped image differs from p only by
    # interpolation error (< 0.1 px at 64 px).
    batch, size = 4, 64
    warp = WARP_FACTORIES[kind](batch, gen(3))
    warped = warp.apply_to_images(ramp_images(batch, size))
    q = pixel_grid((size, size))[None].expand(batch, -1, -1)[:, ::7]  # 1 pixel in 7
    p = warp.inverse_map_points(q)
    inside = p.abs().amax(-1) < 0.95
    pixels = warped.flatten(2).transpose(1, 2)[:, ::7]
    torch.testing.assert_close(pixels[inside], p[inside], atol=1e-5, rtol=0)
    forward = warp.map_points(p)
    back = warp.inverse_map_points(forward)
    torch.testing.assert_close(back[inside], p[inside], atol=1e-4, rtol=0)
    same = ((forward - q).abs().amax(-1) < 1e-4)[inside]
    assert same.float().mean() > 0.98

    points = torch.rand(batch, 16, 2, generator=gen(4)) * 1.2 - 0.6
    mapped = warp.map_points(points)
    ok = mapped.abs().amax(-1) < 0.9
    error_px = (read_at(warped, mapped) - points).norm(dim=-1)[ok] * size / 2
    assert error_px.max() < 0.1, error_px.max()


def test_composition_matches_sequential_application():
    a = random_similarity(3, rotation_deg=20.0, scale=(0.9, 1.1), translation=0.1, generator=gen(5))
    b = random_tps(3, grid=5, sigma=0.05, generator=gen(6))
    both = compose(a, b)
    p = torch.rand(3, 7, 2, generator=gen(7)) - 0.5
    torch.testing.assert_close(both.map_points(p), b.map_points(a.map_points(p)))
    back = a.inverse_map_points(b.inverse_map_points(p))
    torch.testing.assert_close(both.inverse_map_points(p), back)
    x = ramp_images(3, 32)
    once = both.apply_to_images(x)
    twice = b.apply_to_images(a.apply_to_images(x))
    centre = slice(8, 24)  # away from the padded border
    torch.testing.assert_close(
        once[..., centre, centre], twice[..., centre, centre], atol=2e-3, rtol=0
    )


# --------------------------------------------------------------------- inverses


def test_similarity_round_trip_exact():
    w = random_similarity(8, rotation_deg=40.0, scale=(0.5, 2.0), translation=0.3, generator=gen(8))
    p = torch.rand(8, 20, 2, generator=gen(9)) * 2 - 1
    torch.testing.assert_close(w.inverse_map_points(w.map_points(p)), p, atol=1e-5, rtol=0)
    torch.testing.assert_close(w.map_points(w.inverse_map_points(p)), p, atol=1e-5, rtol=0)
    torch.testing.assert_close(w.inverse().map_points(p), w.inverse_map_points(p))


@pytest.mark.parametrize("kind", ["tps", "zhang"])
def test_tps_round_trip(kind):
    # map_points inverts the sampling map by Newton: float32 round-off (~1e-6), stated 1e-4.
    w = WARP_FACTORIES[kind](16, gen(10))
    p = torch.rand(16, 32, 2, generator=gen(11)) * 1.6 - 0.8
    q = w.map_points(p)
    assert (w.inverse_map_points(q) - p).abs().max() < 1e-4
    # And in float64 to ~1e-12.
    w64 = WARP_FACTORIES[kind](16, gen(10), dtype=torch.float64)
    p64 = p.double()
    assert (w64.inverse_map_points(w64.map_points(p64)) - p64).abs().max() < 1e-10


def test_tps_interpolates_control_points():
    target = control_lattice(4).float().expand(2, -1, -1).clone()
    source = target + 0.05 * torch.randn(2, 16, 2, generator=gen(12))
    w = TPSWarp.from_control_points(source, target)
    torch.testing.assert_close(w.map_points(source), target, atol=1e-5, rtol=0)
    torch.testing.assert_close(w.inverse_map_points(target), source, atol=1e-5, rtol=0)


def test_tps_map_points_gradient_is_inverse_jacobian():
    w = random_tps(1, grid=5, sigma=0.1, generator=gen(13), dtype=torch.float64)
    p = (torch.rand(1, 2, 2, generator=gen(14), dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(w.map_points, (p,))


# --------------------------------------------------------------------- TPS against kornia


def test_tps_eval_matches_kornia_and_reproduces_affine():
    from kornia.geometry.transform import warp_points_tps

    centres = control_lattice(5).expand(3, -1, -1)
    targets = centres + 0.1 * torch.randn(3, 25, 2, generator=gen(15), dtype=torch.float64)
    kernel, affine = solve_tps(centres, targets)
    p = torch.rand(3, 50, 2, generator=gen(16), dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(
        tps_eval(p, centres, kernel, affine), warp_points_tps(p, centres, kernel, affine)
    )
    torch.testing.assert_close(tps_eval(centres, centres, kernel, affine), targets)
    # Affine targets give zero kernel weights (the TPS reproduces affine maps).
    matrix = torch.tensor([[1.1, 0.2], [-0.1, 0.9]], dtype=torch.float64)
    kernel, affine = solve_tps(centres, centres @ matrix.T + 0.3)
    assert kernel.abs().max() < 1e-10


def test_tps_jacobian_matches_autograd():
    w = random_tps(1, grid=5, sigma=0.1, generator=gen(17), dtype=torch.float64)
    p = torch.rand(1, 4, 2, generator=gen(18), dtype=torch.float64) - 0.5
    jac = tps_jacobian(p, w.centres, w.kernel_weights, w.affine_weights)

    def f(v):
        return tps_eval(v.view(1, 1, 2), w.centres, w.kernel_weights, w.affine_weights).view(2)

    for n in range(4):
        torch.testing.assert_close(jac[0, n], torch.autograd.functional.jacobian(f, p[0, n]))


# --------------------------------------------------------------------- identity


def test_identity_parameters_give_identity():
    x = torch.rand(2, 3, 32, 32, generator=gen(19))
    p = torch.rand(2, 5, 2, generator=gen(20)) * 2 - 1
    warps = [
        identity_warp(2),
        random_similarity(2, generator=gen(21)),  # all ranges zero
        random_tps(2, grid=5, sigma=0.0, generator=gen(22)),
        random_zhang_warp(
            2, gen(23), tps_sigma=0.0, rotation_std_deg=0.0, scale_log_std=0.0, translation=0.0
        ),
    ]
    for w in warps:
        torch.testing.assert_close(w.apply_to_images(x), x, atol=1e-5, rtol=0)
        torch.testing.assert_close(w.map_points(p), p, atol=1e-6, rtol=0)
        torch.testing.assert_close(w.inverse_map_points(p), p, atol=1e-6, rtol=0)


# --------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("kind", sorted(WARP_FACTORIES))
def test_same_seed_same_warp(kind):
    p = torch.rand(4, 5, 2, generator=gen(24)) - 0.5
    a, b, c = (WARP_FACTORIES[kind](4, gen(s)) for s in (30, 30, 31))
    torch.testing.assert_close(a.map_points(p), b.map_points(p), atol=0, rtol=0)
    assert not torch.allclose(a.map_points(p), c.map_points(p))


def test_rotation_distributions():
    normal = random_similarity(4000, rotation_deg=30.0, rotation_dist="normal", generator=gen(25))
    angles = torch.rad2deg(torch.atan2(normal.matrix[:, 1, 0], normal.matrix[:, 0, 0]))
    assert angles.abs().max() <= 40.0 + 1e-4
    assert 20.0 < angles.std() < 30.0  # clipped at 40: std below 30
    uniform = random_similarity(4000, rotation_deg=(-10.0, 5.0), generator=gen(26))
    angles = torch.rad2deg(torch.atan2(uniform.matrix[:, 1, 0], uniform.matrix[:, 0, 0]))
    assert -10.0 - 1e-4 <= angles.min() < -9.0 and 4.0 < angles.max() <= 5.0 + 1e-4


def test_zhang_scale_is_log_normal_around_one():
    w = random_zhang_warp(2000, gen(27), grid=2, tps_sigma=0.0)
    matrix = w.warps[1].matrix  # the similarity (forward map)
    log_scale = torch.linalg.det(matrix[:, :, :2]).log() / 2
    assert abs(log_scale.mean()) < 0.02
    assert abs(log_scale.std() - math.log(1.25)) < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(dtype):
    w = random_zhang_warp(2, gen(28), dtype=dtype)
    x = torch.rand(2, 3, 16, 16, dtype=dtype)
    p = torch.rand(2, 3, 2, dtype=dtype)
    assert w.apply_to_images(x).dtype == dtype
    assert w.map_points(p).dtype == dtype and w.inverse_map_points(p).dtype == dtype
    # Extra batch dims are kept; a batch of 1 broadcasts.
    assert w.map_points(torch.zeros(2, 4, 3, 2, dtype=dtype)).shape == (2, 4, 3, 2)
    assert w.map_points(torch.zeros(1, 5, 2, dtype=dtype)).shape == (2, 5, 2)


def test_to_keeps_the_warp():
    w = random_zhang_warp(3, gen(34))
    w64 = w.to(dtype=torch.float64)
    assert w64.dtype == torch.float64 and w64.inverse().dtype == torch.float64
    p = torch.rand(3, 5, 2, dtype=torch.float64) - 0.5
    expected = w.map_points(p.float()).double()
    torch.testing.assert_close(w64.map_points(p), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(w64.inverse().map_points(p), w64.inverse_map_points(p))


def test_non_cpu_generator_rejected():
    class CudaGenerator:  # stands in for torch.Generator(device="cuda") on CPU-only machines
        device = torch.device("cuda")

    with pytest.raises(ValueError, match="CPU"):
        random_similarity(2, rotation_deg=10.0, generator=CudaGenerator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_warp_on_cuda():
    p = torch.rand(4, 5, 2) - 0.5
    x = torch.rand(4, 3, 32, 32)
    for kind, factory in WARP_FACTORIES.items():
        cpu, gpu = factory(4, gen(29)), factory(4, gen(29), device="cuda")
        assert gpu.device.type == "cuda"
        mapped = gpu.map_points(p.cuda())
        assert mapped.device.type == "cuda"
        torch.testing.assert_close(mapped.cpu(), cpu.map_points(p), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            gpu.apply_to_images(x.cuda()).cpu(), cpu.apply_to_images(x), atol=1e-4, rtol=0
        )


# --------------------------------------------------------------------- pairs


def test_make_pair():
    x = torch.rand(3, 3, 32, 32, generator=gen(31))
    x0, x1, warp = make_pair(x, generator=gen(32))
    assert x0 is x and x1.shape == x.shape
    torch.testing.assert_close(x1, warp.apply_to_images(x))
    given = sim(10.0)
    _, x1, warp = make_pair(x[:1], given)
    assert warp is given


def test_tps_eval_shares_the_kernel_of_a_common_grid_without_changing_values_or_gradients():
    warp = random_tps(4, grid=5, sigma=0.1, generator=gen(50))
    weights = warp.kernel_weights.clone().requires_grad_(True)
    grid = pixel_grid((8, 8))[None]

    def per_row(points):
        return torch.cat([
            tps_eval(points[i : i + 1], warp.centres[i : i + 1], weights[i : i + 1], warp.affine_weights[i : i + 1])
            for i in range(4)
        ])

    broadcast = grid.expand(4, -1, -1)  # stride 0: the shared path
    copies = grid.repeat(4, 1, 1).requires_grad_(True)  # equal rows that need their own gradients
    torch.testing.assert_close(tps_eval(broadcast, warp.centres, weights, warp.affine_weights), per_row(broadcast))
    shared_grad = torch.autograd.grad(tps_eval(broadcast, warp.centres, weights, warp.affine_weights).square().sum(), weights)
    reference_grad = torch.autograd.grad(per_row(broadcast).square().sum(), weights)
    torch.testing.assert_close(shared_grad, reference_grad)
    out = tps_eval(copies, warp.centres, weights, warp.affine_weights)
    (point_grad,) = torch.autograd.grad(out[1].sum(), copies)
    assert point_grad[1].abs().sum() > 0 and point_grad[0].abs().sum() == 0 and point_grad[2:].abs().sum() == 0


def test_warps_keep_their_precision_under_bf16_autocast():
    warp = random_similarity(4, rotation_deg=15.0, scale=(0.9, 1.1), translation=0.1, generator=gen(60)).then(
        random_tps(4, sigma=0.05, generator=gen(61))
    )
    points = torch.rand(4, 7, 2, generator=gen(62)) * 1.6 - 0.8
    grid, mapped = warp.sampling_grid((16, 16)), warp.map_points(points)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_grid, autocast_mapped = warp.sampling_grid((16, 16)), warp.map_points(points)
    assert autocast_grid.dtype == autocast_mapped.dtype == torch.float32
    torch.testing.assert_close(autocast_grid, grid)
    torch.testing.assert_close(autocast_mapped, mapped)


def test_generative_pairs_add_tps_jitter_after_the_same_similarity():
    from lmbench.config import RunConfig
    from lmbench.methods.baseline import Baseline

    def pair_method(tps_sigma):
        config = RunConfig(image_size=32)
        config.perceptual.backbone = "none"
        config.warp.tps_sigma = tps_sigma
        return Baseline(config)

    batch, size = 12, 64
    points = torch.rand(batch, 2, generator=gen(40)) * 0.6 - 0.3
    images = blobs(to_pixels(points, (size, size)), size)
    _, plain_image, plain = pair_method(0.0).make_pair(images, gen(41))
    x, jittered_image, warp = pair_method(0.05).make_pair(images, gen(41))
    assert isinstance(plain, AffineWarp)  # tps_sigma 0: the papers' similarity pairs
    assert isinstance(warp.warps[0], AffineWarp) and isinstance(warp.warps[1], TPSWarp)
    torch.testing.assert_close(warp.warps[0].matrix, plain.matrix)  # same draws, TPS after
    torch.testing.assert_close(jittered_image, warp.apply_to_images(x))
    # The jitter moves points by a few hundredths of the half-side (sigma 0.05)...
    shift = (warp.map_points(points[:, None]) - plain.map_points(points[:, None])).norm(dim=-1)
    assert 0.01 < shift.mean() < 0.15, shift
    # ...and x' shows each blob where the pair's warp maps its centre.
    found = warped_blob_position(warp, points, size)
    expected = to_pixels(warp.map_points(points[:, None])[:, 0], (size, size)).double()
    assert (found - expected).norm(dim=-1).max() < 0.5


def test_make_rotation_pair_relative_warp():
    x = ramp_images(4, 32)
    x1, x2, warp = make_rotation_pair(x, generator=gen(33))
    # x2 is warp(x1) where x1 has real content: read x1 at g^{-1} of x2's centre pixels.
    q = pixel_grid((32, 32))[None].expand(4, -1, -1)
    source = warp.inverse_map_points(q)
    # Inside the real content of x1 and of x2 (both are rotations of x about the centre).
    keep = (source.norm(dim=-1) < 0.95) & (q.norm(dim=-1) < 0.95)
    x2_values = x2.flatten(2).transpose(1, 2)
    error = (read_at(x1, source) - x2_values).norm(dim=-1)[keep]
    assert keep.sum() > 500 and error.max() < 1e-2
