"""Compiled sorting and searching kernels against torch: the scores' sort, the merge search, the band's
extents."""
import math

import pytest
import torch
from conftest import staircase_band

from glass_pyg.ot import native

pytestmark = pytest.mark.skipif(not native.usable(torch.zeros(1)), reason=native.status())


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
@pytest.mark.parametrize("right", [False, True])
def test_sorted_search_is_searchsorted(dtype, right):
    g = torch.Generator().manual_seed(4)
    seq = torch.sort(torch.randint(0, 50, (3, 200), generator=g), -1).values.to(dtype)  # ties
    values = torch.sort(torch.randint(-5, 56, (3, 333), generator=g), -1).values.to(dtype)
    got = native.sorted_search(seq, values, right)
    assert torch.equal(got, torch.searchsorted(seq, values, right=right))
    assert native.sorted_search(seq.float(), values.float(), right) is None  # not a kernel dtype


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(3, 2000), (1, 70000), (2, 1), (1, 0)])
def test_sort_rows_is_the_stable_sort(dtype, shape):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    if x.shape[1] > 30:  # ties, both zeros, infinities, subnormals, equal high digits
        x[:, ::7] = x[:, 3:4]
        x[:, ::11], x[:, ::13] = 0.0, -0.0
        x[:, 1::17], x[:, 2::19] = math.inf, -math.inf
        x[:, 5::23] = torch.finfo(dtype).tiny / 4
        x[:, 6::29] = 1.0 + torch.finfo(dtype).eps * torch.arange(x[:, 6::29].shape[1], 0, -1).to(dtype)
    values, perm = native.sort_rows(x)
    want = torch.sort(x, dim=-1, stable=True)
    assert torch.equal(perm, want.indices)
    assert torch.equal(values, want.values) and torch.equal(values.signbit(), want.values.signbit())
    assert native.sort_rows(x.to(torch.float16)) is None  # not a kernel dtype
    with torch.enable_grad():
        assert native.sort_rows(x.clone().requires_grad_()) is None


def test_sort_rows_split_between_threads():
    x = torch.randn(5, 1 << 15, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x[:, ::3] = x[:, :1]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        values, perm = native.sort_rows(x)
    finally:
        torch.set_num_threads(before)
    want = torch.sort(x, dim=-1, stable=True)
    assert torch.equal(perm, want.indices) and torch.equal(values, want.values)


def test_band_extent_is_the_bisection():
    from glass_pyg.ot._band import search_extent
    s, t, gam, band, stair, f0, g0 = staircase_band(400, 350, 2e-3, 0, seed=6)
    phi, psi = 3.0 * s, -2.0 * t  # smooth potentials keep each row unimodal
    ca, cb = torch.full((2, 400), -6.0, dtype=torch.float64), torch.full((2, 350), -5.8, dtype=torch.float64)
    # rows whose ends jump by many columns from one row to the next (the search starts from the
    # previous row's end, and must walk back as well as on)
    jumpy = ca + 12.0 * torch.rand(2, 400, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for terms, thr in (((None, None, None, None), -30.0), ((phi, psi, ca, cb), -14.0), ((phi, psi, jumpy, cb), -14.0)):
        lo, hi = native.band_extent(s, t, f0, g0, gam, *terms, thr, stair.lo, stair.hi)
        p, q, a, b = (torch.zeros_like(x) if v is None else v for v, x in zip(terms, (s, t, s, t)))

        def pred(j):
            d = s - torch.gather(t, 1, j)
            theta = -((d * d - f0) - torch.gather(g0, 1, j)) / gam.unsqueeze(-1)
            return (p + torch.gather(q, 1, j)) + theta - a - torch.gather(b, 1, j) >= thr

        assert torch.equal(lo, search_extent(pred, stair.lo, 0, 350))
        assert torch.equal(hi, search_extent(pred, stair.hi, 349, 350))
        assert (hi - lo).float().mean() > 3  # a real band, not the staircase alone
