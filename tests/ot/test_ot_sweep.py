"""A sweep with one exp per band entry: the kept column exps, their row sums and the plan made
from them, against dense references and the sweep of exact log-sum-exps."""
import math

import pytest
import torch
from conftest import staircase_band

from glass_pyg.ot import native, sinkhorn_banded
from glass_pyg.ot._band import band_logits, logit_floor
from glass_pyg.ot._iterations import SolverState, col_update, row_update, sweep

pytestmark = pytest.mark.skipif(not native.usable(torch.zeros(1)), reason=native.status())


def _band(L, n, m, W, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    start = torch.sort(torch.randint(0, m - W + 1, (L, n), generator=g), -1).values
    lo = start + torch.randint(0, max(1, W // 3), (L, n), generator=g)
    hi = (lo + torch.randint(0, W, (L, n), generator=g)).clamp(max=start + W - 1)
    theta = (-torch.rand(L, n, W, generator=g, dtype=torch.float64) * 40).to(dtype)
    phi = torch.randn(L, n, generator=g, dtype=torch.float64).to(dtype)
    return start, lo, hi, theta, phi


def _dense(start, lo, hi, values, m):
    """(L, n, m) with the window values on the extents and 0 elsewhere."""
    L, n, W = values.shape
    j = start.unsqueeze(-1) + torch.arange(W)
    inside = (j >= lo.unsqueeze(-1)) & (j <= hi.unsqueeze(-1))
    return torch.zeros(L, n, m, dtype=values.dtype).scatter_(2, j, torch.where(inside, values, 0)), inside


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kept_exps_their_row_sums_and_plan(dtype):
    L, n, m, W = 2, 300, 700, 25
    start, lo, hi, theta, phi = _band(L, n, m, W, dtype)
    e_dense, inside = _dense(start, lo, hi, torch.exp(phi.double().unsqueeze(-1) + theta.double()), m)
    cols = e_dense.sum(1)
    covered = cols > 0
    shift = torch.where(covered, cols.log() - 0.4, torch.zeros_like(cols)).to(dtype)
    ref_s = (e_dense * torch.exp(-shift.double()).unsqueeze(1)).sum(1)
    offsets = native.compact_offsets(lo, hi)
    keep = torch.full((int(offsets[-1]),), float("nan"), dtype=dtype)
    s = native.col_sums_kept(phi, start, W, theta, m, lo, hi, shift, keep, offsets)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(s.double(), ref_s, rtol=rtol, atol=0)
    # the kept terms, in extent order row after row
    terms = (e_dense * torch.exp(-shift.double()).unsqueeze(1))
    j = start.unsqueeze(-1) + torch.arange(W)
    ref_keep = torch.gather(terms, 2, j)[inside]
    torch.testing.assert_close(keep.double(), ref_keep, rtol=rtol, atol=0)
    c = torch.where(covered, 1 / s.double(), 0).to(dtype) * torch.rand(L, m, generator=torch.Generator().manual_seed(1),
                                                                      dtype=torch.float64).to(dtype)
    torch.testing.assert_close(native.row_dot(c, start, W, lo, hi, keep, offsets).double(),
                               (terms * c.double().unsqueeze(1)).sum(-1), rtol=rtol, atol=1e-30)
    # the plan: padded in the compute dtype, and compact in float32 with float64 row sums
    scale = torch.tensor([0.5, 3.0], dtype=dtype)
    plan_dense = terms * c.double().unsqueeze(1) * scale.double().view(L, 1, 1)
    # about half the entries fall below tiny, none within rounding of it
    v = plan_dense[plan_dense > 0].sort().values
    gap = torch.nonzero(v[1:] > v[:-1] * (1 + 1e-4)).flatten()
    i = int(gap[torch.searchsorted(gap, v.numel() // 2)])
    tiny = float((v[i] * v[i + 1]).sqrt())
    ref = torch.gather(plan_dense, 2, j) * inside
    ref = torch.where(ref > tiny, ref, 0)
    col_sum = torch.full((L, m), math.nan, dtype=dtype)
    got = native.kept_plan(c, start, W, lo, hi, keep, offsets, scale, torch.full((L, n, W), math.nan, dtype=dtype),
                           tiny, col_sum=col_sum)
    torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=0)
    ref_cols = torch.zeros(L, m, dtype=torch.float64).scatter_add_(1, j.reshape(L, -1), ref.reshape(L, -1))
    torch.testing.assert_close(col_sum.double(), ref_cols, rtol=rtol, atol=0)
    if dtype == torch.float64:
        out, row_sum = torch.empty(int(offsets[-1]), dtype=torch.float32), torch.empty(L, n, dtype=dtype)
        native.kept_plan(c, start, W, lo, hi, keep, offsets, scale, out, tiny, offsets, row_sum, col_sum)
        torch.testing.assert_close(out, ref[inside].float(), rtol=0, atol=0)
        torch.testing.assert_close(row_sum, ref.sum(-1), rtol=1e-13, atol=0)
        torch.testing.assert_close(col_sum, ref_cols, rtol=1e-13, atol=0)
        with pytest.raises(ValueError, match="col_sum must be a contiguous"):
            native.kept_plan(c, start, W, lo, hi, keep, offsets, scale, out, tiny, offsets, row_sum, col_sum[:, 1:])


def test_kept_layouts_are_checked():
    start, lo, hi, theta, phi = _band(1, 20, 60, 6, torch.float64)
    offsets = native.compact_offsets(lo, hi)
    shift = torch.zeros(1, 60, dtype=torch.float64)
    with pytest.raises(ValueError, match="keep must be a flat contiguous tensor"):
        native.col_sums_kept(phi, start, 6, theta, 60, lo, hi, shift,
                             torch.empty(int(offsets[-1]) - 1, dtype=torch.float64), offsets)
    with pytest.raises(ValueError, match="keep dtype torch.float64"):
        native.col_sums_kept(phi, start, 6, theta, 60, lo, hi, shift,
                             torch.empty(int(offsets[-1]), dtype=torch.float32), offsets)


def _state(dtype):
    s, t, gam, band, stair, f0, g0 = staircase_band(400, 500, 0.05, 12, seed=2)
    a = torch.full((2, 400), 1.0 / 400, dtype=torch.float64)
    b = torch.full((2, 500), 1.0 / 500, dtype=torch.float64)
    theta = band_logits(s, t, gam, band, f0, g0, dtype)
    return SolverState(band, theta, lambda: band_logits(s, t, gam, band, f0, g0, dtype, "col"),
                       a.log().to(dtype), b.log().to(dtype), torch.zeros(2, 400, dtype=dtype),
                       torch.zeros(2, 500, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sweep_is_the_sweep_of_exact_logsumexps(dtype):
    st = _state(dtype)
    g = torch.Generator().manual_seed(0)
    phi = (0.3 * torch.randn(2, 400, generator=g, dtype=torch.float64)).to(dtype)
    ref_psi = col_update(st, phi)  # no guess: exact log-sum-exps
    ref_next = row_update(st, ref_psi)
    a = st.log_a.exp().double()
    ref_err = (a - a * torch.exp(ref_next.double() - phi.double()).reciprocal()).abs().sum(-1) / a.sum(-1)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    # a close guess takes the kept route; one far outside the exponent range is redone exactly
    for guess, kept in ((ref_psi + 0.5, True), (ref_psi - 5000.0, False)):
        psi, phi_next, err = sweep(st, phi, guess)
        assert (st.kept_for(phi) is not None) == kept
        torch.testing.assert_close(psi, ref_psi, rtol=rtol, atol=rtol)
        torch.testing.assert_close(phi_next, ref_next, rtol=rtol, atol=rtol)
        torch.testing.assert_close(err.double(), ref_err, rtol=1e-3 if dtype == torch.float32 else 1e-9, atol=0)
    assert st.kept_for(phi.clone()) is None  # the exps belong to that very tensor
    with native.disabled():
        assert st.kept_for(phi) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_column_pass_forms_the_logits_bitwise(dtype):
    # the pass that forms each logit from the float64 reference gives bitwise the sums and the kept
    # exps of the pass that reads the formed logits
    s, t, gam, band, stair, f0, g0 = staircase_band(400, 500, 0.05, 12, seed=5)
    theta = band_logits(s, t, gam, band, f0, g0, dtype)
    ref = native.LogitReference(s, t, f0, g0, gam, logit_floor(dtype))
    g = torch.Generator().manual_seed(2)
    phi = (0.3 * torch.randn(2, 400, generator=g, dtype=torch.float64)).to(dtype)
    shift = (torch.randn(2, 500, generator=g, dtype=torch.float64) - 2.0).to(dtype)
    offsets = native.compact_offsets(band.row_lo, band.row_hi)
    got, want = (torch.full((int(offsets[-1]),), math.nan, dtype=dtype) for _ in range(2))
    args = (band.row_start, band.width)
    rest = (500, band.row_lo, band.row_hi, shift)
    s_got = native.col_sums_kept(phi, *args, ref, *rest, got, offsets)
    s_want = native.col_sums_kept(phi, *args, theta, *rest, want, offsets)
    assert torch.equal(s_got, s_want) and torch.equal(got, want)
    assert bool((s_got > 0).all()) and int((got > 0).sum()) > got.numel() // 2
    with pytest.raises(ValueError, match="a logit reference needs"):
        native.col_sums_kept(phi, *args, ref._replace(t=t[:, :-1]), *rest, got, offsets)


def test_solve_forms_no_row_logits(monkeypatch):
    # the column passes form the logits on the fly and the plans come from the kept exps: the row
    # layout is never formed, and the plan is bitwise that of a solve that forms and reads it
    import glass_pyg.ot._sinkhorn_banded as banded

    formed = []
    band_logits_ = banded.band_logits

    def spy(*args, **kwargs):
        formed.append(args[-1] if len(args) > 7 else "row")
        return band_logits_(*args, **kwargs)
    monkeypatch.setattr(banded, "band_logits", spy)
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(2, 3000, generator=g, dtype=torch.float64), torch.randn(2, 2500, generator=g).double() + 1
    plan = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    assert plan.converged.all() and plan.newton_steps >= 1 and formed == []
    monkeypatch.setattr(banded._Problem, "source", lambda self: None)
    ref = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    assert formed == ["row"]
    assert torch.equal(plan.values, ref.values) and torch.equal(plan.f, ref.f) and torch.equal(plan.g, ref.g)


def test_solver_plan_comes_from_the_kept_exps(monkeypatch):
    # the final plan and Newton's operator reuse the last sweep's exps: no exp pass of their own, and
    # no pass for the operator's row and column sums
    calls = {"exp_rows": 0, "kept_plan": 0, "band_matvec": 0}
    def counted(name):
        f = getattr(native, name)

        def spy(*args, **kwargs):
            calls[name] += 1
            return f(*args, **kwargs)
        return spy
    for name in calls:
        monkeypatch.setattr(native, name, counted(name))
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(1, 4000, generator=g, dtype=torch.float64), torch.randn(1, 3000, generator=g).double() + 1
    plan = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    assert plan.converged.all() and plan.newton_steps >= 1
    assert calls["exp_rows"] == 0 and calls["band_matvec"] == 0 and calls["kept_plan"] == plan.newton_steps + 1
    with native.disabled():
        ref = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    torch.testing.assert_close(plan.cost, ref.cost, rtol=1e-6, atol=0)
    assert float((plan.values - ref.values).abs().sum()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sweep_vector_updates_against_torch(dtype):
    g = torch.Generator().manual_seed(7)
    L, n, m = 2, 500, 400
    log_b = (torch.rand(L, m, generator=g, dtype=torch.float64) + 0.5).log().to(dtype)
    psi = torch.randn(L, m, generator=g, dtype=torch.float64).to(dtype)
    psi[0, :3] = torch.tensor([math.inf, -math.inf, math.nan])
    shift = native.sweep_shift(log_b, psi)
    ref = log_b - psi
    assert torch.equal(shift, torch.where(torch.isfinite(ref), ref, 0))
    rtol = 1e-6 if dtype == torch.float32 else 1e-14
    safe = (1e-20, 1e20)
    s = (torch.rand(L, m, generator=g, dtype=torch.float64) * 10 + 0.1).to(dtype)
    psi_new, c, ok = native.sweep_cols(s, shift, log_b, safe)
    assert ok
    torch.testing.assert_close(psi_new, log_b - (shift + s.log()), rtol=rtol, atol=rtol)
    torch.testing.assert_close(c, log_b.exp() / s, rtol=rtol, atol=0)
    for bad in (0.0, 1e30, math.inf):
        s2 = s.clone()
        s2[1, 7] = bad
        assert not native.sweep_cols(s2, shift, log_b, safe)[2]
    log_a = torch.full((L, n), -math.log(n), dtype=torch.float64).to(dtype)
    phi = torch.randn(L, n, generator=g, dtype=torch.float64).to(dtype)
    r = (log_a.exp().double() * (1 + 0.01 * torch.randn(L, n, generator=g, dtype=torch.float64))).to(dtype)
    phi_next, err, ok = native.sweep_rows(r, phi, log_a, safe)
    assert ok and err.shape == (L,) and err.dtype == dtype
    torch.testing.assert_close(phi_next, phi + (log_a - r.log()), rtol=rtol, atol=rtol)
    a = log_a.double().exp()
    torch.testing.assert_close(err.double(), (a - r.double()).abs().sum(-1) / a.sum(-1), rtol=rtol, atol=0)
    r[0, 3] = 0.0
    assert not native.sweep_rows(r, phi, log_a, safe)[2]


def test_plan_buffer_is_reserved_where_the_logits_are_formed_on_the_fly():
    # the compiled route forms no row logits: the plan's buffer is reserved up front; elsewhere (the
    # torch route, accelerators) the plan takes the logits' storage and nothing is reserved
    s, t, gam, band, stair, f0, g0 = staircase_band(400, 500, 0.05, 12, seed=2)
    ref = native.LogitReference(s, t, f0, g0, gam, logit_floor(torch.float64))
    st = _state(torch.float64)
    st.source = ref
    st.reserve_plan()
    assert st.workspace["plan"].shape == (2, 400, band.width)
    with native.disabled():
        st = _state(torch.float64)
        st.source = ref
        st.reserve_plan()
        assert "plan" not in st.workspace
