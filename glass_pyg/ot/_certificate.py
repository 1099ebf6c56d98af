r"""The band's certificate: how far a band must reach, and a bound on the mass it leaves out.

Logits are measured against the exact 1-D dual of the sorted scores
(:class:`Reference`); a row's extent is where the reduced density stays above
a threshold; after convergence :func:`certify` bounds the omitted mass, and
:func:`widen` grows the band where the bound fails.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import native
from ._band import Band, Staircase, make_band, search_extent
from ._iterations import SolverState


@dataclass(frozen=True)
class Reference:
    r"""Sorted scores in float64 with the exact dual they are measured against."""

    s: Tensor
    t: Tensor
    gamma: Tensor
    f0: Tensor
    g0: Tensor

    def log_kernel(self, phi: Tensor, psi: Tensor, j: Tensor) -> Tensor:
        r""":math:`\phi_i + \psi_j + \theta_{ij}` at column ``j[l, i]`` of every row (float64);
        with zero corrections it is minus the reduced cost over :math:`\gamma`."""
        tj = torch.gather(self.t, 1, j)
        theta = -((self.s - tj) ** 2 - self.f0 - torch.gather(self.g0, 1, j)) / self.gamma.unsqueeze(-1)
        return phi.double() + torch.gather(psi, 1, j).double() + theta

    def log_density(self, st: SolverState, j: Tensor) -> Tensor:
        r""":math:`\log(P_{ij}/(a_i b_j))` at column ``j[l, i]`` of every row (float64)."""
        return (self.log_kernel(st.phi, st.psi, j)
                - st.log_a.double() - torch.gather(st.log_b, 1, j).double())


def extent(ref: Reference, stair: Staircase, m: int, thr: float, phi: Tensor | None = None,
            psi: Tensor | None = None, log_a: Tensor | None = None,
            log_b: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Columns around the staircase where :math:`\phi_i + \psi_j + \theta_{ij} - \log a_i
    - \log b_j \ge thr` (terms given as None are zero), per row."""
    def d(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.detach().double()

    phi, psi, log_a, log_b = d(phi), d(psi), d(log_a), d(log_b)
    found = native.band_extent(ref.s, ref.t, ref.f0, ref.g0, ref.gamma, phi, psi, log_a, log_b, thr,
                               stair.lo, stair.hi)
    if found is not None:
        return found
    zr, zc = torch.zeros_like(ref.s), torch.zeros_like(ref.t)

    def pred(j: Tensor) -> Tensor:
        v = ref.log_kernel(zr if phi is None else phi, zc if psi is None else psi, j)
        v = v - (0.0 if log_a is None else log_a)
        return (v - (0.0 if log_b is None else torch.gather(log_b, 1, j))) >= thr

    return search_extent(pred, stair.lo, 0, m), search_extent(pred, stair.hi, m - 1, m)


def certify(st: SolverState, ref: Reference, b: Tensor) -> tuple[Tensor, Tensor]:
    r"""Bound on the mass outside the band, per slice, and whether it holds.

    After a column update each row of :math:`\log(P_{ij}/(a_i b_j))` is a
    concave function of :math:`t_j`; past a window edge where it does not
    increase, every omitted entry is at most the first omitted density times
    :math:`a_i b_j`. So row ``i`` omits at most
    :math:`\rho_{i,e+1}\, a_i \sum_{j>e} b_j` on the right (and likewise on the
    left). Where the edge is not decreasing the bound is void and the band
    must widen.
    """
    band = st.band
    found = native.certify_band(ref.s, ref.t, ref.f0, ref.g0, ref.gamma, st.phi, st.psi, st.log_a, st.log_b, b,
                                band.row_lo, band.row_hi)
    if found is not None:
        return found
    t = ref.t
    m = t.shape[1]
    b = b.double()
    a = st.log_a.double().exp()
    start = band.row_lo
    end = band.row_hi
    idx = torch.arange(m, device=t.device).expand_as(t)
    new_group = torch.ones_like(t, dtype=torch.bool)
    new_group[:, 1:] = t[:, 1:] != t[:, :-1]
    group_first = torch.cummax(torch.where(new_group, idx, torch.zeros_like(idx)), -1).values
    last = torch.ones_like(new_group)
    last[:, :-1] = new_group[:, 1:]
    ends = torch.where(last, idx, torch.full_like(idx, m - 1))
    group_last = torch.flip(torch.cummin(torch.flip(ends, [-1]), -1).values, [-1])
    cum_b = torch.cumsum(b, -1)
    tail_right = cum_b[:, -1:] - torch.gather(cum_b, 1, end)
    tail_left = torch.gather(cum_b, 1, start) - torch.gather(b, 1, start)
    ok = torch.ones_like(a, dtype=torch.bool)
    bound = torch.zeros_like(a)
    # outside: first omitted column; inner: nearest kept column with a strictly
    # smaller (right edge) or larger (left edge) score, so ties cannot fool the test
    right_out = (end + 1).clamp(max=m - 1)
    right_in = torch.gather(group_first, 1, right_out) - 1
    left_out = (start - 1).clamp(min=0)
    left_in = torch.gather(group_last, 1, left_out) + 1
    for has, outside, inner, inside_ok, tail in (
            (end < m - 1, right_out, right_in.clamp(min=0), right_in >= start, tail_right),
            (start > 0, left_out, left_in.clamp(max=m - 1), left_in <= end, tail_left)):
        d_out = ref.log_density(st, outside)
        d_in = ref.log_density(st, inner)
        ok = ok & (~has | ((d_out <= d_in) & inside_ok))
        bound = bound + torch.where(has, d_out.exp() * a * tail, torch.zeros_like(a))
    return bound.sum(-1), ok.all(-1)


def is_full(band: Band, m: int) -> bool:
    """Whether every row of ``band`` spans all ``m`` columns (nothing is left out)."""
    return bool(((band.row_lo == 0) & (band.row_hi == m - 1)).all())


def widen(band: Band, lo: Tensor, hi: Tensor, m: int) -> Band:
    """``band`` grown to cover columns ``lo..hi`` of each row; by half its width where that adds nothing."""
    cur_lo = band.row_lo
    cur_hi = band.row_hi
    new_lo, new_hi = torch.minimum(lo, cur_lo), torch.maximum(hi, cur_hi)
    if bool((new_lo == cur_lo).all()) and bool((new_hi == cur_hi).all()):
        grow = max(1, band.width // 2)
        new_lo, new_hi = (cur_lo - grow).clamp(min=0), (cur_hi + grow).clamp(max=m - 1)
    return make_band(new_lo, new_hi, m)
