"""Batched geometric warps shared by all methods (similarity, thin-plate spline, compositions).

Point-mapping convention
------------------------
A :class:`Warp` holds ``B`` transforms ``g_b`` acting on *normalised* coordinates ``(x, y)``
in ``[-1, 1]`` (PyTorch's ``align_corners=False`` frame, see :mod:`lmbench.data`; ``y`` points
down). ``g`` maps a point of the *source* image ``x`` to where it lands in the *warped* image
``W(x)``:

- ``map_points(p) = g(p)``: the content at ``p`` in ``x`` appears at ``g(p)`` in ``W(x)``;
- ``inverse_map_points(q) = g^{-1}(q)``;
- ``apply_to_images(x) = W(x)``, computed by ``grid_sample(x, g^{-1}(q))`` at every output
  pixel centre ``q``, so that ``W(x)(g(p)) = x(p)`` (up to bilinear interpolation).

Rotations: an angle ``theta`` is the matrix ``[[cos, -sin], [sin, cos]]`` applied about the
image centre, so ``theta = +90 deg`` maps ``(1, 0) -> (0, 1)``: with ``y`` pointing down a
*positive angle turns the content clockwise on screen*.

Normalised coordinates are isotropic only for square images (all lmbench images are square);
on a non-square image a "rotation" here is a rotation of the ``[-1, 1]^2`` frame.

Randomness: every sampler draws on the CPU from the supplied ``torch.Generator`` (float64),
in a fixed order, and solves the TPS systems on the CPU in float64 before moving to
``device``/``dtype``; the same seed therefore gives the same warp on every device.

Thin-plate splines and kornia
-----------------------------
A :class:`TPSWarp` is parametrised by its *sampling map* ``s = g^{-1}`` (output -> source,
as in Zhang et al.'s code), so the image warp is a direct evaluation of the spline and
``inverse_map_points`` is exact. ``map_points`` inverts ``s`` by damped Newton iterations
(analytic Jacobian) started from the spline fitted in the other direction, with restarts
from a lookup table where that fails; ``|s(map_points(p)) - p|`` ends at float round-off
(float32: ~1e-6, float64: ~1e-14) wherever ``s`` is locally invertible, so image and points
agree to interpolation precision. Where a strong TPS folds over, a point has several
preimages (its content appears several times) and one of them is returned.

kornia's ``warp_points_tps`` evaluates ``a_0 + A v + sum_k w_k U(|v - c_k|)`` with
``U(r) = r^2 log r``; :func:`tps_eval` computes the same sum with one batched matmul (the
tests check the two agree). kornia 0.9's ``get_tps_transform(src, dst)`` is *not* used: it
builds the kernel matrix from the cross distances ``|src_i - dst_j|`` with the kernels
centred on ``dst``, which interpolates the control points but is not the thin-plate spline:
for 5x5 control points perturbed by N(0, 0.1^2) it differs from the TPS by over 1
normalised unit between control points in a typical draw. :func:`solve_tps` solves the
standard system instead.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

PADDING_MODES = ("border", "zeros", "reflection")


# ----------------------------------------------------------------------------- helpers


def pixel_grid(size: tuple[int, int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised (x, y) of the pixel centres of an ``(H, W)`` image, row-major: [H*W, 2]."""
    h, w = size
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)


def control_lattice(grid: int, *, dtype=torch.float64) -> torch.Tensor:
    """``grid x grid`` control points at the cell centres of ``[-1, 1]^2``: [grid^2, 2].

    Coordinates are ``-1 + (2 i + 1) / grid`` (Zhang et al.'s layout), row-major in y.
    """
    return pixel_grid((grid, grid), dtype=dtype)


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("warps draw their random numbers on the CPU: pass a CPU torch.Generator")


def _uniform(generator, shape, low: float, high: float) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return low + (high - low) * u


def _normal(generator, shape, std: float) -> torch.Tensor:
    return std * torch.randn(shape, generator=generator, dtype=torch.float64)


def _as_range(value: float | Sequence[float]) -> tuple[float, float]:
    """``a`` -> ``(-a, a)``; ``(lo, hi)`` unchanged."""
    if isinstance(value, (int, float)):
        return -float(value), float(value)
    low, high = value
    return float(low), float(high)


# ----------------------------------------------------------------------------- base class


class Warp:
    """A batch of ``B`` invertible transforms of normalised coordinates (see module docstring).

    Subclasses implement :meth:`_forward` (``g``) and :meth:`_inverse` (``g^{-1}``) on
    ``[B, N, 2]``; the public methods accept ``[B, ..., 2]`` (or a leading batch of 1, which
    broadcasts) and return the same shape.
    """

    batch_size: int
    device: torch.device
    dtype: torch.dtype

    # -- to implement
    def _forward(self, points: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _inverse(self, points: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- points
    def map_points(self, points: torch.Tensor) -> torch.Tensor:
        """``g(p)``: where a point of the source image lands in the warped image."""
        return self._call(self._forward, points)

    def inverse_map_points(self, points: torch.Tensor) -> torch.Tensor:
        """``g^{-1}(q)``: the source point whose content appears at ``q`` in the warped image."""
        return self._call(self._inverse, points)

    def _call(self, fn, points: torch.Tensor) -> torch.Tensor:
        if points.shape[-1] != 2 or points.dim() < 2:
            raise ValueError(f"points must be [B, ..., 2], got {tuple(points.shape)}")
        shape = points.shape
        flat = points.reshape(shape[0], -1, 2)
        if flat.shape[0] == 1 and self.batch_size != 1:
            flat = flat.expand(self.batch_size, -1, -1)
            shape = (self.batch_size, *shape[1:])
        elif flat.shape[0] != self.batch_size:
            raise ValueError(f"points have batch {shape[0]}, warp has batch {self.batch_size}")
        # Geometry stays in the warp's dtype: under bf16 autocast (CUDA training) the matmuls
        # here would otherwise round coordinates to ~3 significant digits.
        with torch.autocast(flat.device.type, enabled=False):
            out = fn(flat.to(self.dtype))
        return out.to(points.dtype).reshape(shape)

    # -- images
    def sampling_grid(self, size: tuple[int, int]) -> torch.Tensor:
        """``g^{-1}`` at the output pixel centres, as a ``grid_sample`` grid [B, H, W, 2]."""
        h, w = size
        grid = pixel_grid(size, device=self.device, dtype=self.dtype).unsqueeze(0)
        return self.inverse_map_points(grid).reshape(self.batch_size, h, w, 2)

    def apply_to_images(
        self,
        images: torch.Tensor,
        padding_mode: str = "border",
        *,
        size: tuple[int, int] | None = None,
        mode: str = "bilinear",
    ) -> torch.Tensor:
        """``W(x)`` [B, C, H, W]: content at ``p`` of ``images`` moves to ``g(p)``.

        ``size`` (H, W) of the output defaults to the input's; any number of channels works
        (images, heatmaps). One ``grid_sample`` call, whatever the composition depth.
        """
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if images.dim() != 4 or images.shape[0] != self.batch_size:
            raise ValueError(
                f"images must be [B={self.batch_size}, C, H, W], got {tuple(images.shape)}"
            )
        grid = self.sampling_grid(size or tuple(images.shape[-2:]))
        return F.grid_sample(
            images, grid.to(images.dtype), mode=mode, padding_mode=padding_mode, align_corners=False
        )

    __call__ = apply_to_images

    # -- algebra
    def then(self, other: "Warp") -> "ComposedWarp":
        """``other o self``: apply ``self`` first, then ``other``."""
        return ComposedWarp([self, other])

    def inverse(self) -> "Warp":
        """The warp ``g^{-1}`` (for a TPS, its image warp uses the Newton inversion per pixel)."""
        return InverseWarp(self)

    def to(self, device=None, dtype=None) -> "Warp":
        """The same warp with its parameters on ``device`` / in ``dtype``."""
        raise NotImplementedError


def compose(*warps: Warp) -> "ComposedWarp":
    """``compose(a, b, c)`` applies ``a`` first, then ``b``, then ``c``: ``g = c o b o a``."""
    return ComposedWarp(list(warps))


class ComposedWarp(Warp):
    """A chain of warps applied in order (first element first)."""

    def __init__(self, warps: Sequence[Warp]):
        if not warps:
            raise ValueError("compose at least one warp")
        flat: list[Warp] = []
        for warp in warps:
            flat.extend(warp.warps if isinstance(warp, ComposedWarp) else [warp])
        if len({w.batch_size for w in flat}) != 1:
            raise ValueError("composed warps must have the same batch size")
        self.warps = flat
        self.batch_size = flat[0].batch_size
        self.device = flat[0].device
        self.dtype = flat[0].dtype

    def to(self, device=None, dtype=None) -> "ComposedWarp":
        return ComposedWarp([w.to(device=device, dtype=dtype) for w in self.warps])

    def _forward(self, points):
        for warp in self.warps:
            points = warp._forward(points.to(warp.dtype))
        return points.to(self.dtype)

    def _inverse(self, points):
        for warp in reversed(self.warps):
            points = warp._inverse(points.to(warp.dtype))
        return points.to(self.dtype)


class InverseWarp(Warp):
    """``g^{-1}`` of a warp: forward and inverse swapped."""

    def __init__(self, warp: Warp):
        self.warp = warp
        self.batch_size, self.device, self.dtype = warp.batch_size, warp.device, warp.dtype

    def _forward(self, points):
        return self.warp._inverse(points)

    def _inverse(self, points):
        return self.warp._forward(points)

    def inverse(self) -> Warp:
        return self.warp

    def to(self, device=None, dtype=None) -> "InverseWarp":
        return InverseWarp(self.warp.to(device=device, dtype=dtype))


# ----------------------------------------------------------------------------- affine


class AffineWarp(Warp):
    """``g(p) = A p + t`` with ``matrix = [A | t]`` of shape [B, 2, 3]; exact inverse."""

    def __init__(self, matrix: torch.Tensor):
        if matrix.dim() != 3 or matrix.shape[1:] != (2, 3):
            raise ValueError(f"matrix must be [B, 2, 3], got {tuple(matrix.shape)}")
        self.matrix = matrix
        self.batch_size, self.device, self.dtype = matrix.shape[0], matrix.device, matrix.dtype
        self.inverse_matrix = _invert_affine(matrix)

    def _forward(self, points):
        return _apply_affine(self.matrix, points)

    def _inverse(self, points):
        return _apply_affine(self.inverse_matrix, points)

    def inverse(self) -> "AffineWarp":
        return AffineWarp(self.inverse_matrix)

    def to(self, device=None, dtype=None) -> "AffineWarp":
        return AffineWarp(self.matrix.to(device=device, dtype=dtype))


def _apply_affine(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]


def _invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of [A | t]: [A^{-1} | -A^{-1} t]."""
    a, b = matrix[:, 0, 0], matrix[:, 0, 1]
    c, d = matrix[:, 1, 0], matrix[:, 1, 1]
    det = a * d - b * c
    adjugate = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], 1)
    inv_a = adjugate / det[:, None, None]
    inv_t = -(inv_a @ matrix[:, :, 2:])
    return torch.cat([inv_a, inv_t], dim=2)


def similarity_warp(
    angle: torch.Tensor, scale: torch.Tensor, translation: torch.Tensor
) -> AffineWarp:
    """``g(p) = scale * R(angle) p + translation`` about the image centre.

    ``angle`` [B] in radians (positive = clockwise on screen, ``(1, 0) -> (0, 1)`` at +90 deg),
    ``scale`` [B] (> 1 enlarges the content), ``translation`` [B, 2] in normalised units.
    """
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    row_x = torch.stack([cos, -sin, translation[:, 0]], dim=-1)
    row_y = torch.stack([sin, cos, translation[:, 1]], dim=-1)
    return AffineWarp(torch.stack([row_x, row_y], dim=1))


def identity_warp(batch: int, *, device=None, dtype=torch.float32) -> AffineWarp:
    """``g(p) = p`` for a batch of ``batch``."""
    eye = torch.eye(2, 3, device=device, dtype=dtype)
    return AffineWarp(eye.expand(batch, 2, 3).clone())


def sample_rotation(
    generator,
    batch: int,
    rotation_deg: float | Sequence[float],
    rotation_dist: str = "uniform",
    clip_deg: float | None = 40.0,
) -> torch.Tensor:
    """Angles [B] in radians (float64, CPU).

    ``"uniform"``: U(-a, a) for ``rotation_deg = a`` or U(lo, hi) for a pair;
    ``"normal"``: N(0, rotation_deg^2), clipped to ``+-clip_deg`` (None: no clipping).
    """
    if rotation_dist == "uniform":
        degrees = _uniform(generator, (batch,), *_as_range(rotation_deg))
    elif rotation_dist == "normal":
        degrees = _normal(generator, (batch,), float(rotation_deg))
        if clip_deg is not None:
            degrees = degrees.clamp(-clip_deg, clip_deg)
    else:
        raise ValueError(f"rotation_dist must be 'uniform' or 'normal', got {rotation_dist!r}")
    return torch.deg2rad(degrees)


def random_similarity(
    batch: int,
    *,
    rotation_deg: float | Sequence[float] = 0.0,
    scale: float | Sequence[float] = 1.0,
    translation: float = 0.0,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    rotation_dist: str = "uniform",
    rotation_clip_deg: float | None = 40.0,
) -> AffineWarp:
    """Random ``g(p) = s R(theta) p + t`` (see :func:`similarity_warp` for the conventions).

    - rotation: see :func:`sample_rotation` (Sanchez: ``rotation_dist="normal"`` with
      ``rotation_deg`` 15 and 30, clipped at 40);
    - scale: a float is fixed; ``(lo, hi)`` is U(lo, hi);
    - translation: each of ``t_x``, ``t_y`` is U(-translation, translation), normalised units
      (1.0 = half the image side).

    Draw order on ``generator``: rotation [B], scale [B] (if a range), translation [B, 2].
    """
    _check_generator(generator)
    angle = sample_rotation(generator, batch, rotation_deg, rotation_dist, rotation_clip_deg)
    if isinstance(scale, (int, float)):
        scales = torch.full((batch,), float(scale), dtype=torch.float64)
    else:
        scales = _uniform(generator, (batch,), *_as_range(scale))
    shift = _uniform(generator, (batch, 2), -translation, translation)
    return similarity_warp(angle, scales, shift).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- thin-plate spline


def _tps_kernel(sq_dist: torch.Tensor) -> torch.Tensor:
    """``U(r) = r^2 log r = 0.5 r^2 log r^2`` from squared distances (0 at r = 0)."""
    safe = torch.where(sq_dist > 0, sq_dist, torch.ones_like(sq_dist))
    return 0.5 * sq_dist * safe.log()


def _sq_dist(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared distances [B,N,K] as |p|^2 + |c|^2 - 2 p.c (one matmul, no [B,N,K,2] tensor)."""
    cross = points @ centres.transpose(1, 2)
    sq = points.square().sum(-1, keepdim=True) + centres.square().sum(-1)[:, None, :] - 2 * cross
    return sq.clamp_min(0.0)


def solve_tps(centres: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard TPS through ``f(centres_k) = targets_k``: kernel [B,K,2], affine [B,3,2].

    Solves ``[[K, P], [P^T, 0]] [w; a] = [targets; 0]`` with ``K_ij = U(|c_i - c_j|)`` and
    ``P = [1, c]`` (in float64 where the device supports it). The weights use kornia's layout:
    ``f(v) = a[0] + v @ a[1:] + sum_k w_k U(|v - c_k|)``.
    """
    work = torch.float64 if centres.device.type != "mps" else torch.float32
    c, y = centres.to(work), targets.to(work)
    b, k, _ = c.shape
    kernel = _tps_kernel(_sq_dist(c, c))
    poly = torch.cat([torch.ones(b, k, 1, dtype=work, device=c.device), c], dim=-1)
    top = torch.cat([kernel, poly], dim=-1)
    zeros = torch.zeros(b, 3, 3, dtype=work, device=c.device)
    bottom = torch.cat([poly.transpose(1, 2), zeros], dim=-1)
    rhs = torch.cat([y, torch.zeros(b, 3, 2, dtype=work, device=c.device)], dim=1)
    weights = torch.linalg.solve(torch.cat([top, bottom], dim=1), rhs)
    return weights[:, :k].to(centres.dtype), weights[:, k:].to(centres.dtype)


def tps_eval(points, centres, kernel_weights, affine_weights) -> torch.Tensor:
    """Evaluate the TPS at ``points`` [B,N,2] (same result as kornia's ``warp_points_tps``).

    When every row shares the same points and centres (an image's sampling grid under a
    random TPS on a fixed lattice) the [N,K] kernel matrix is computed once, not B times.
    """
    shared_points, shared_centres = _shared_row(points), _shared_row(centres)
    if shared_points is not None and shared_centres is not None:
        kernel = _tps_kernel(_sq_dist(shared_points, shared_centres))  # [1,N,K], broadcast
    else:
        kernel = _tps_kernel(_sq_dist(points, centres))
    return affine_weights[:, None, 0] + points @ affine_weights[:, 1:] + kernel @ kernel_weights


def _shared_row(rows: torch.Tensor) -> torch.Tensor | None:
    """``rows[:1]`` when all rows of ``rows`` [B,...] are one row, else None.

    A broadcast (stride 0) passes gradients to its source through ``rows[:1]`` exactly;
    rows equal only in value are shared just when they need no gradient.
    """
    if rows.shape[0] == 1 or rows.stride(0) == 0:
        return rows[:1]
    if not rows.requires_grad and torch.equal(rows, rows[:1].expand_as(rows)):
        return rows[:1]
    return None


def tps_jacobian(points, centres, kernel_weights, affine_weights) -> torch.Tensor:
    """Jacobian ``J[b, n, i, j] = d f_i / d v_j`` of the TPS at ``points``: [B,N,2,2].

    ``grad_v U(|v - c|) = (2 log r + 1) (v - c)`` (0 at r = 0), so with
    ``rho_k = 2 log r_k + 1``: ``J = A^T + (sum_k rho_k w_k) v^T - sum_k rho_k w_k c_k^T``.
    """
    b, n, _ = points.shape
    sq = _sq_dist(points, centres)
    safe = torch.where(sq > 0, sq, torch.ones_like(sq))
    rho = torch.where(sq > 0, safe.log() + 1.0, torch.zeros_like(sq))  # [B,N,K]
    outer = kernel_weights[..., :, None] * centres[..., None, :]  # [B,K,2,2]: w_k c_k^T
    jac = (rho @ kernel_weights)[..., :, None] * points[..., None, :]
    jac = jac - (rho @ outer.reshape(b, -1, 4)).reshape(b, n, 2, 2)
    return jac + affine_weights[:, None, 1:].transpose(-1, -2)


def _solve_2x2(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``matrix^{-1} rhs`` for [..., 2, 2] and [..., 2] by Cramer's rule."""
    a, b = matrix[..., 0, 0], matrix[..., 0, 1]
    c, d = matrix[..., 1, 0], matrix[..., 1, 1]
    det = a * d - b * c
    x = (d * rhs[..., 0] - b * rhs[..., 1]) / det
    y = (a * rhs[..., 1] - c * rhs[..., 0]) / det
    return torch.stack([x, y], dim=-1)


class TPSWarp(Warp):
    """Thin-plate-spline warp parametrised by its sampling map ``s = g^{-1}``.

    ``s(q) = a[0] + q @ a[1:] + sum_k w_k U(|q - c_k|)`` with kernels centred on ``centres``
    (output-space points) and weights in kornia's layout (see :func:`solve_tps`). Build one
    with :meth:`from_control_points` (``g(source_k) = target_k`` exactly) or
    :func:`random_tps`. Then:

    - ``inverse_map_points`` and ``apply_to_images`` evaluate ``s`` directly (exact);
    - ``map_points`` solves ``s(q) = p`` by ``newton_steps`` damped Newton iterations
      (analytic Jacobian; the residual never increases), started from the TPS fitted the
      other way through the pairs ``s(c_k) -> c_k`` (exact at those points). Rows with a
      point left above ``tolerance`` (folds, strong warps) are solved again from the
      ``LOOKUP_STARTS`` nearest entries of a table of ``s`` on a grid, keeping the best
      start (this costs one host sync per call). The result carries the implicit-function
      gradient ``dq/dp = J^{-1}``. ``last_residual`` holds ``max |s(q) - p|`` of the
      latest call (a lazy tensor): where ``s`` folds over, a point can have several
      preimages (the content appears several times) and any one of them is returned.
    """

    STEP_SCALES = (1.0, 0.5, 0.25, 0.0625, 0.0)
    LOOKUP_SIZE = 32  # table of s on a 32 x 32 grid ...
    LOOKUP_EXTENT = 1.5  # ... over [-1.5, 1.5]^2 (spacing 0.094)
    LOOKUP_STARTS = 4  # retries start from the 4 nearest table entries
    LOOKUP_CHUNK = 1 << 24  # distance-matrix entries per chunk

    def __init__(
        self,
        centres: torch.Tensor,
        kernel_weights: torch.Tensor,
        affine_weights: torch.Tensor,
        newton_steps: int = 8,
    ):
        if centres.dim() != 3 or centres.shape[-1] != 2:
            raise ValueError(f"centres must be [B, K, 2], got {tuple(centres.shape)}")
        self.batch_size, self.device, self.dtype = centres.shape[0], centres.device, centres.dtype
        self.centres = centres
        self.kernel_weights, self.affine_weights = kernel_weights, affine_weights
        self.newton_steps = newton_steps
        # Initial guess for the forward map: a TPS through s(c_k) -> c_k.
        self.guess_centres = self._sampling_map(centres)
        self.guess_weights = solve_tps(self.guess_centres, centres)
        self.last_residual: torch.Tensor | None = None

    @classmethod
    def from_control_points(
        cls, source_points: torch.Tensor, target_points: torch.Tensor, newton_steps: int = 8
    ) -> "TPSWarp":
        """The warp with ``g(source_k) = target_k``: ``s`` is the TPS ``target_k -> source_k``."""
        if source_points.shape != target_points.shape or source_points.dim() != 3:
            raise ValueError("source_points and target_points must both be [B, K, 2]")
        return cls(target_points, *solve_tps(target_points, source_points), newton_steps)

    def to(self, device=None, dtype=None) -> "TPSWarp":
        """Move/cast the parameters without re-solving (values identical across devices)."""
        return self._replace(lambda t: t.to(device=device, dtype=dtype))

    def _rows(self, index: torch.Tensor) -> "TPSWarp":
        """The sub-batch ``index`` (no re-solve)."""
        return self._replace(lambda t: t[index])

    def _replace(self, fn) -> "TPSWarp":
        new = object.__new__(TPSWarp)
        new.__dict__.update(self.__dict__)
        for name in ("centres", "kernel_weights", "affine_weights", "guess_centres"):
            setattr(new, name, fn(getattr(self, name)))
        new.guess_weights = tuple(fn(t) for t in self.guess_weights)
        new.batch_size = new.centres.shape[0]
        new.device, new.dtype = new.centres.device, new.centres.dtype
        return new

    def _sampling_map(self, points):
        return tps_eval(points, self.centres, self.kernel_weights, self.affine_weights)

    def _inverse(self, points):
        return self._sampling_map(points)

    def _forward(self, points):
        with torch.no_grad():
            q = self._solve(points.detach())
            self.last_residual = (self._sampling_map(q) - points).abs().amax()
        if points.requires_grad:
            # Same value; gradient dq/dp = J^{-1} (implicit function theorem).
            jacobian = tps_jacobian(q, self.centres, self.kernel_weights, self.affine_weights)
            q = q + _solve_2x2(jacobian, points - points.detach())
        return q

    @property
    def tolerance(self) -> float:
        """Residual above which a point is retried from the lookup-table starts."""
        return 100 * torch.finfo(self.dtype).eps

    def _residual(self, q, points):
        return (self._sampling_map(q) - points).square().sum(-1)

    def _solve(self, points):
        guess = tps_eval(points, self.guess_centres, *self.guess_weights)
        q = self._newton(guess[:, :, None], points)
        error = self._residual(q, points)
        failed = error > self.tolerance**2
        if failed.any():
            rows = failed.any(dim=-1).nonzero()[:, 0]
            sub = self._rows(rows)
            retry = sub._newton(sub._table_starts(points[rows]), points[rows])
            better = (sub._residual(retry, points[rows]) < error[rows])[..., None]
            q = q.index_put((rows,), torch.where(better, retry, q[rows]))
        return q

    def _newton(self, starts, points):
        """Damped Newton from starts [B,N,C,2]; per point, the start ending with least residual."""
        b, n, c, _ = starts.shape
        q = starts.reshape(b, n * c, 2)
        targets = points.repeat_interleave(c, dim=1)
        for _ in range(self.newton_steps):
            q = self._damped_step(q, targets)
        best = self._residual(q, targets).reshape(b, n, c).argmin(dim=-1)
        q = q.reshape(b, n, c, 2)
        return q.gather(2, best[..., None, None].expand(b, n, 1, 2))[:, :, 0]

    def _table_starts(self, points):
        """The LOOKUP_STARTS grid points whose image under ``s`` is nearest: [B,N,C,2]."""
        size = self.LOOKUP_SIZE
        table_q = pixel_grid((size, size), device=self.device, dtype=self.dtype)
        table_q = table_q * self.LOOKUP_EXTENT
        table_s = self._sampling_map(table_q.expand(self.batch_size, -1, -1))
        chunk = max(1, self.LOOKUP_CHUNK // (self.batch_size * size * size))
        nearest = [
            torch.cdist(part, table_s).topk(self.LOOKUP_STARTS, dim=-1, largest=False).indices
            for part in points.split(chunk, dim=1)
        ]
        return table_q[torch.cat(nearest, dim=1)]

    def _damped_step(self, q, points):
        """Newton step scaled by the factor in STEP_SCALES leaving the smallest residual.

        The factors include 0, so the residual never increases.
        """
        residual = self._sampling_map(q) - points
        jacobian = tps_jacobian(q, self.centres, self.kernel_weights, self.affine_weights)
        step = _solve_2x2(jacobian, residual).nan_to_num(0.0, 0.0, 0.0)
        scales = q.new_tensor(self.STEP_SCALES).view(-1, 1, 1, 1)
        candidates = q.unsqueeze(0) - scales * step.unsqueeze(0)  # [S, B, N, 2]
        s, b, n, _ = candidates.shape
        flat = candidates.transpose(0, 1).reshape(b, s * n, 2)
        error = self._residual(flat, points.repeat(1, s, 1)).reshape(b, s, n).transpose(0, 1)
        best = error.argmin(dim=0)  # [B, N]
        return candidates.gather(0, best[None, ..., None].expand(1, b, n, 2))[0]


def random_tps(
    batch: int,
    *,
    grid: int = 5,
    sigma: float = 0.1,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    kernel_scale: float = 1.0,
) -> TPSWarp:
    """Random TPS on the ``grid x grid`` cell-centre lattice ``L`` (:func:`control_lattice`).

    The sampling map is the TPS ``L -> L + delta``, ``delta ~ N(0, sigma^2)`` in normalised
    units (Zhang et al.'s layout), so ``g`` maps ``L + delta -> L``. ``kernel_scale`` scales
    its non-affine part after solving (1: the interpolating TPS; 0.5: what Zhang et al.'s
    code evaluates, see :func:`random_zhang_warp`). Draws [B, grid^2, 2] normals.
    """
    _check_generator(generator)
    lattice = control_lattice(grid).expand(batch, -1, -1).clone()
    source = lattice + _normal(generator, lattice.shape, sigma)
    kernel, affine = solve_tps(lattice, source)
    return TPSWarp(lattice, kernel_scale * kernel, affine).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- Zhang et al.


def random_zhang_warp(
    batch: int,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    *,
    grid: int = 7,
    tps_sigma: float = 0.1,
    tps_kernel_scale: float = 0.5,
    rotation_std_deg: float = 10.0,
    scale_median: float = 1.0,
    scale_log_std: float = math.log(1.25),
    translation: float = 0.3,
) -> ComposedWarp:
    """Zhang et al.'s equivariance transform: a random TPS followed by a random similarity.

    Parameters as in their code (``lmdis-rep``, ``keypoint_encoder.py``):

    - TPS: ``grid x grid = 7 x 7`` control points, offsets N(0, 0.1^2) (:func:`random_tps`),
      non-affine part scaled by ``tps_kernel_scale = 0.5``. Their ``tps_stn.py`` solves the
      weights with the kernel ``r^2 log(r^2)`` but evaluates ``r^2 log(r)``, which halves the
      non-affine part (the spline then no longer passes through the control points). 0.5
      reproduces the warps they trained with; 1.0 is the interpolating TPS, which at
      sigma 0.1 on 7 x 7 folds over somewhere in the image for almost every sample (~4 % of
      the area has a negative Jacobian, against ~0.02 % at 0.5);
    - rotation N(0, (10 deg)^2), not clipped;
    - scale ``exp(N(0, 1) * log 1.25)``: log-normal with *median 1* and geometric std 1.25
      (the "1.25" of "log-normal scale around 1.25" is the spread, not the centre);
    - translation U(-0.3, 0.3) per axis in normalised units, i.e. U(+-0.15) of the image side
      (their code doubles the [0, 1] range 0.15 into [-1, 1] units).

    As in their code, the similarity parameters describe its *sampling* matrix ``M`` (output
    -> source), so ``g = M^{-1} o g_tps`` and the image is sampled at ``s_tps(M q)``.

    Draw order: TPS offsets, rotation [B], scale [B], translation [B, 2].
    """
    _check_generator(generator)
    tps = random_tps(
        batch, grid=grid, sigma=tps_sigma, kernel_scale=tps_kernel_scale,
        generator=generator, device=device, dtype=dtype,
    )
    angle = torch.deg2rad(_normal(generator, (batch,), rotation_std_deg))
    scale = scale_median * torch.exp(_normal(generator, (batch,), scale_log_std))
    shift = _uniform(generator, (batch, 2), -translation, translation)
    sampling = similarity_warp(angle, scale, shift)  # float64: invert before casting
    return tps.then(sampling.inverse().to(device=device, dtype=dtype))


# ----------------------------------------------------------------------------- pairs


def make_pair(
    images: torch.Tensor,
    warp: Warp | None = None,
    *,
    generator: torch.Generator | None = None,
    padding_mode: str = "border",
    rotation_deg: float | Sequence[float] = 15.0,
    scale: float | Sequence[float] = (0.9, 1.1),
    translation: float = 0.1,
    rotation_dist: str = "uniform",
) -> tuple[torch.Tensor, torch.Tensor, Warp]:
    """``(x, x', warp)`` with ``x = images`` and ``x' = warp(x)``.

    Without ``warp``, draws :func:`random_similarity` with the given parameters (lmbench
    defaults, not from a paper: U(+-15 deg), U(0.9, 1.1), U(+-0.1)). Points of ``x`` map to
    ``x'`` with ``warp.map_points``.
    """
    if warp is None:
        warp = random_similarity(
            images.shape[0],
            rotation_deg=rotation_deg,
            scale=scale,
            translation=translation,
            rotation_dist=rotation_dist,
            generator=generator,
            device=images.device,
            dtype=images.dtype if images.is_floating_point() else torch.float32,
        )
    return images, warp.apply_to_images(images, padding_mode), warp


def make_rotation_pair(
    images: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    std_deg: tuple[float, float] = (15.0, 30.0),
    clip_deg: float = 40.0,
    padding_mode: str = "border",
) -> tuple[torch.Tensor, torch.Tensor, Warp]:
    """Sanchez-style pair: two independent rotations of the same photo.

    ``x1 = R1(images)`` with angle N(0, 15^2), ``x2 = R2(images)`` with N(0, 30^2), both
    clipped to +-40 deg; returns ``(x1, x2, warp)`` where ``warp = R2 o R1^{-1}`` maps points
    of ``x1`` to ``x2`` (``x2`` equals ``warp(x1)`` away from the padded border). The original
    rotates the full photo before its landmark-based crop; on already cropped images the
    corners come from ``padding_mode``.
    """
    batch, device = images.shape[0], images.device
    dtype = images.dtype if images.is_floating_point() else torch.float32
    first, second = (
        random_similarity(
            batch, rotation_deg=std, rotation_dist="normal", rotation_clip_deg=clip_deg,
            generator=generator, device=device, dtype=dtype,
        )
        for std in std_deg
    )
    x1 = first.apply_to_images(images, padding_mode)
    x2 = second.apply_to_images(images, padding_mode)
    return x1, x2, first.inverse().then(second)
