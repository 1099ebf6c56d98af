r"""Gated projections of points on :math:`S^2` to 1-D scores."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from ..geometry.sphere import _safe_norm, normalize, project_tangent
from ..ot import native
from ..ot._row_blocks import row_blocks

_GATE_MODES = ("fixed", "tie", "learn")
_GEOMETRIES = ("torch", "geomstats")


def _anchor_angles(x: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Angles :math:`\theta` between points ``(N, 3)`` and anchors ``(L, K, 3)``, with their sines and
    cosines, ``(N, L K)`` each: :math:`\theta = \operatorname{atan2}(\lVert x \times a\rVert, x \cdot a)`,
    stable at every angle."""
    a = anchors.reshape(-1, 3)
    cos = x @ a.T
    sin = _safe_norm(torch.linalg.cross(x.unsqueeze(1), a.unsqueeze(0), dim=-1))
    return torch.atan2(sin, cos), sin, cos


class SphereProjection(torch.nn.Module):
    r"""Per slice, a gated mixture of linear forms on the charts of :math:`K` anchors.

    .. math::
        f_l(x) = \sum_{k=1}^{K} g_{lk}(x)\,\big\langle \rho_R(\mathrm{Log}_{a_{lk}} x),\ u_{lk}\big\rangle,
        \qquad
        g_{lk}(x) = \operatorname{softmax}_k\!\Big(-\frac{d(x, a_{lk})^2}{2 c_{lk}^2}\Big),

    with anchors :math:`a_{lk}\in S^2`, tangent directions
    :math:`u_{lk}\in T_{a_{lk}}S^2`, gate width
    :math:`c = \texttt{gate\_c\_per\_sqrtk\_deg}/\sqrt K` degrees and the chart
    map :math:`\rho_R(v) = R\tanh(\lVert v\rVert/R)\,v/\lVert v\rVert` that
    keeps each log map inside a chart of radius ``chart_radius_deg`` while
    staying injective (no ties far from an anchor). Anchors are stored as free
    vectors and normalised, directions projected to the tangent plane, so
    after any optimiser step they are on the sphere and tangent.

    Args:
        K (int): anchors per slice.
        slices (int): number of slices :math:`L`.
        chart_radius_deg (float): chart radius :math:`R` in degrees.
        gate_mode (str): ``"fixed"`` (constant width), ``"tie"`` (one learned
            width shared by all anchors) or ``"learn"`` (one per anchor).
        gate_c_per_sqrtk_deg (float): gate width times :math:`\sqrt K`, degrees.
        init_u_scale (float): initial norm of the directions.
        space: optional geomstats ``Hypersphere(dim=2)``; ``geometry="geomstats"``
            routes the log maps through its metric (slower; float64 inside).
        generator (torch.Generator, optional): source of the initial anchors
            and directions (torch's default generator when ``None``, as for
            ``torch.nn`` layers).

    Shapes:
        - **input:** points :math:`(N, 3)` on :math:`S^2` (unit norm within 1e-3; other rows, NaN or
          inf are refused with an error naming the row)
        - **output:** scores :math:`(N, L)`

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import normalize
        >>> from glass_pyg.nn import SphereProjection
        >>> proj = SphereProjection(K=8, slices=2, gate_mode="tie")
        >>> x = normalize(torch.randn(100, 3, dtype=torch.float64))
        >>> proj.double()(x).shape
        torch.Size([100, 2])
    """

    def __init__(self, K: int = 8, slices: int = 2, chart_radius_deg: float = 20.0,
                 gate_mode: str = "tie", gate_c_per_sqrtk_deg: float = 45.0, init_u_scale: float = 0.2,
                 *, space: Any | None = None, geometry: str = "torch",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(K, int) or K < 1 or not isinstance(slices, int) or slices < 1:
            raise ValueError(f"K and slices must be positive integers, got K={K!r}, slices={slices!r}")
        if gate_mode not in _GATE_MODES:
            raise ValueError(f"gate_mode must be one of {_GATE_MODES}, got {gate_mode!r}")
        if geometry not in _GEOMETRIES:
            raise ValueError(f"geometry must be one of {_GEOMETRIES}, got {geometry!r}")
        for name, v in (("chart_radius_deg", chart_radius_deg), ("gate_c_per_sqrtk_deg", gate_c_per_sqrtk_deg),
                        ("init_u_scale", init_u_scale)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if chart_radius_deg > 180:
            raise ValueError(f"chart_radius_deg must be <= 180, got {chart_radius_deg}")
        if space is not None and getattr(space, "dim", None) != 2:
            raise ValueError(f"space must be a 2-sphere (geomstats Hypersphere(dim=2)), got {space!r}")
        self.K, self.slices, self.gate_mode, self.geometry = K, slices, gate_mode, geometry
        self.chart_radius_deg, self.gate_c_per_sqrtk_deg = float(chart_radius_deg), float(gate_c_per_sqrtk_deg)
        self.init_u_scale, self.space = float(init_u_scale), space
        self.anchor_raw = torch.nn.Parameter(torch.empty(slices, K, 3))
        self.u_raw = torch.nn.Parameter(torch.empty(slices, K, 3))
        width_shape = {"fixed": (), "tie": (), "learn": (slices, K)}[gate_mode]
        log_c = torch.full(width_shape, math.log(math.radians(gate_c_per_sqrtk_deg / math.sqrt(K))))
        if gate_mode == "fixed":
            self.register_buffer("log_width", log_c)
        else:
            self.log_width = torch.nn.Parameter(log_c)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw the anchors, frames and directions again (from ``generator`` when given)."""
        with torch.no_grad():
            dtype = self.anchor_raw.dtype
            a = normalize(torch.randn(self.slices, self.K, 3, generator=generator, dtype=torch.float64))
            u = project_tangent(torch.randn(self.slices, self.K, 3, generator=generator,
                                            dtype=torch.float64), a)
            u = self.init_u_scale * normalize(u)
            self.anchor_raw.copy_(a.to(dtype))
            self.u_raw.copy_(u.to(dtype))
            self.log_width.fill_(math.log(math.radians(self.gate_c_per_sqrtk_deg / math.sqrt(self.K))))

    @property
    def anchors(self) -> Tensor:
        """``(L, K, 3)`` anchors on the sphere."""
        return normalize(self.anchor_raw)

    @property
    def directions(self) -> Tensor:
        """``(L, K, 3)`` tangent directions at the anchors."""
        return project_tangent(self.u_raw, self.anchors)

    @property
    def gate_width_deg(self) -> Tensor:
        """Gate width(s) :math:`c` in degrees."""
        return torch.rad2deg(self.log_width.detach().exp())

    def gates(self, x: Tensor) -> Tensor:
        """``(N, L, K)`` gate weights (rows sum to one over anchors)."""
        theta, _, _ = _anchor_angles(x, self.anchors.to(x.dtype))
        return self._gates(theta.view(-1, self.slices, self.K))

    def _gates(self, theta: Tensor) -> Tensor:
        c = self.log_width.to(theta.dtype).exp()
        return torch.softmax(-0.5 * (theta / c) ** 2, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Gated chart scores ``(N, L)`` of unit vectors ``x`` ``(N, 3)``."""
        if x.dim() != 2 or x.size(1) != 3:
            raise ValueError(f"x must be points of shape (N, 3), got {tuple(x.shape)}")
        if not torch.compiler.is_compiling() and x.numel():
            # the log map is defined on the unit sphere: points off it (or NaN, inf) are refused, not projected
            with torch.no_grad():
                off = ~torch.isfinite(x).all(1) | ((x.norm(dim=1) - 1).abs() > 1e-3)
            if bool(off.any()):
                i = int(off.nonzero()[0])
                raise ValueError(f"x must hold unit vectors (points on S^2): row {i} is {x[i].tolist()} "
                                 f"with norm {float(x[i].norm()):.6g}; normalise the points first")
        a, u = self.anchors.to(x.dtype), self.directions.to(x.dtype)
        R = math.radians(self.chart_radius_deg)
        if self.geometry == "geomstats":
            from ..geometry.geomstats_backend import gs_log
            v = gs_log(x.view(-1, 1, 1, 3), a, self.space)  # (N, L, K, 3)
            norm = v.norm(dim=-1, keepdim=True)
            squash = torch.where(norm > 1e-12, R * torch.tanh(norm / R) / norm.clamp_min(1e-12),
                                 torch.ones_like(norm))
            return (self.gates(x) * (squash * v * u).sum(-1)).sum(-1)
        logw = self.log_width.to(x.dtype).expand(self.slices, self.K)
        if native.usable(x.detach(), a.detach(), u.detach(), logw.detach()) and self.K <= 32:
            # one compiled pass forward, and one for the gradient of every input (no graph is recorded)
            return _ChartScores.apply(x, a, u, logw, R)
        # in row blocks of about 2^17 (point, anchor) pairs, each recomputed in the backward, so the
        # temporaries stay in cache instead of being kept at full size for autograd
        blocks = row_blocks(1, x.size(0), self.slices * self.K, x.device)
        if len(blocks) == 1:
            return self._chart_scores(x, a, u, R)
        track = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        return torch.cat([checkpoint(self._chart_scores, x[sl], a, u, R, use_reentrant=False) if track
                          else self._chart_scores(x[sl], a, u, R) for sl in blocks])

    def _chart_scores(self, x: Tensor, a: Tensor, u: Tensor, R: float) -> Tensor:
        r""":math:`\sum_k g_k \langle \rho_R(\mathrm{Log}_{a_k} x), u_k\rangle` from inner products:
        :math:`R \tanh(\theta / R) \langle x - \cos\theta\, a, u\rangle / \sin\theta`."""
        theta, sin, cos = _anchor_angles(x, a)
        along = x @ u.reshape(-1, 3).T - cos * (a * u).sum(-1).reshape(1, -1)  # (N, L K)
        tiny = sin <= 1e-12
        # as sin -> 0: the factor -> 1 at the anchor, and the log map is 0 at its antipode
        factor = torch.where(tiny, (cos > 0).to(x.dtype),
                             R * torch.tanh(theta / R) / torch.where(tiny, torch.ones_like(sin), sin))
        proj = (factor * along).view(-1, self.slices, self.K)
        return (self._gates(theta.view(-1, self.slices, self.K)) * proj).sum(-1)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(K={self.K}, slices={self.slices}, "
                f"chart_radius_deg={self.chart_radius_deg:g}, gate_mode={self.gate_mode!r}, "
                f"gate_c_per_sqrtk_deg={self.gate_c_per_sqrtk_deg:g}, geometry={self.geometry!r})")


class _ChartScores(torch.autograd.Function):
    r""":meth:`SphereProjection._chart_scores` by the compiled kernels, with their analytic gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, u: Tensor, logw: Tensor, radius: float) -> Tensor:
        ctx.save_for_backward(x, a, u, logw)
        ctx.radius = radius
        return native.chart_scores(x.detach(), a.detach(), u.detach(), logw.detach(), radius)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, a, u, logw = ctx.saved_tensors
        gx, ga, gu, gw = native.chart_scores_backward(x, a, u, logw, ctx.radius, grad, ctx.needs_input_grad[0])
        return gx, ga, gu, gw, None


class LearnedRotation(torch.nn.Module):
    r"""A rotation :math:`R = \exp([\omega]_\times)` of :math:`\mathbb R^3`, learned from :math:`\omega = 0`.

    Shapes:
        - **input:** :math:`(N, 3)`
        - **output:** :math:`(N, 3)`, the rows rotated by :math:`R`

    Example:
        >>> import torch
        >>> from glass_pyg.nn import LearnedRotation
        >>> rot = LearnedRotation()
        >>> torch.equal(rot.matrix(), torch.eye(3, dtype=rot.matrix().dtype))     # starts at the identity
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self.omega = torch.nn.Parameter(torch.zeros(3))

    def reset_parameters(self) -> None:
        """The identity rotation."""
        with torch.no_grad():
            self.omega.zero_()

    def matrix(self) -> Tensor:
        r"""The rotation matrix ``(3, 3)``, :math:`\exp([\omega]_\times)`."""
        from ..geometry.rotation import so3_exp
        return so3_exp(self.omega)

    def set_matrix(self, R: Tensor) -> None:
        """Set the rotation to ``R`` ``(3, 3)`` (e.g. the result of :func:`~glass_pyg.align_sphere`)."""
        from ..geometry.rotation import so3_log
        if R.shape != (3, 3):
            raise ValueError(f"R must be a (3, 3) rotation, got shape {tuple(R.shape)}")
        with torch.no_grad():
            self.omega.copy_(so3_log(R.detach().to(self.omega.dtype)))

    def forward(self, x: Tensor) -> Tensor:
        """Rotate points ``x`` ``(N, 3)``: ``x R^T``."""
        return x @ self.matrix().to(x.dtype).t()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"
