"""The compiled passes around the solver's iterations against torch: the conjugate gradient's vector
work and the implicit gradient's two passes."""
import pytest
import torch
from conftest import staircase_band

from glass_pyg.ot import native, sinkhorn_banded
from glass_pyg.ot._row_blocks import window_inside


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_implicit_backward_same_with_and_without_kernels(dtype):
    # the compiled pass of the implicit gradient (the sums of P G, then the scores' and gamma's
    # gradients with the logits formed again in the kernel) against the torch row blocks
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 2000, generator=g, dtype=torch.float64).to(dtype)
    t = torch.randn(2, 1700, generator=g, dtype=torch.float64).exp().to(dtype)
    a = torch.rand(2, 2000, generator=g, dtype=torch.float64).to(dtype) + 0.5
    b = (torch.rand(2, 1700, generator=g, dtype=torch.float64).to(dtype) + 0.5)
    b = b * (a.sum(-1, keepdim=True) / b.sum(-1, keepdim=True))
    weights = torch.randn(2, 2000, 3, generator=g, dtype=torch.float64).to(dtype)

    def grads():
        x, y, wa, wb = (v.clone().requires_grad_(True) for v in (s, t, a, b))
        plan = sinkhorn_banded(x, y, wa, wb, gamma=1.0, temperature="rank", tol=1e-4 if dtype == torch.float32
                               else 1e-9)
        # an upstream gradient that differs on every entry: the plan's values against a pattern
        pattern = torch.sin(torch.arange(plan.values.numel(), dtype=dtype)).view_as(plan.values)
        loss = (plan.values * pattern).sum() + plan.transport_cost().sum() + (weights[..., 0] * x).sum()
        loss.backward()
        return x.grad, y.grad, wa.grad, wb.grad

    got = grads()
    with native.disabled():
        ref = grads()
    tol = 1e-7 if dtype == torch.float64 else 2e-3
    for x, r in zip(got, ref):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, r, rtol=tol, atol=tol * float(r.abs().max()))


@pytest.mark.parametrize("plan_dtype", [torch.float64, torch.float32])
def test_implicit_gradient_kernels_against_torch_blocks(plan_dtype):
    # a float32 plan (and upstream gradient) with float64 vectors: the passes run in float64 on the
    # rounded entries, as torch does on their float64 copies
    from glass_pyg.ot._band import logit_floor
    from glass_pyg.ot._certificate import Reference
    from glass_pyg.ot._implicit import _product_sums, _score_grads
    _, _, _, band, stair, _, _ = staircase_band(900, 1100, 1e-3, 6, seed=9)
    L, n, m = band.shape
    g = torch.Generator().manual_seed(9)
    cols = band.row_start.unsqueeze(-1) + torch.arange(band.width)
    inside = (cols >= band.row_lo.unsqueeze(-1)) & (cols <= band.row_hi.unsqueeze(-1))
    p = torch.rand(L, n, band.width, generator=g, dtype=torch.float64) * inside
    grad = torch.randn(L, n, band.width, generator=g, dtype=torch.float64)
    p_in, grad_in = p.to(plan_dtype), grad.to(plan_dtype)
    p, grad = p_in.double(), grad_in.double()
    qr, qc = native.product_sums(p_in, grad_in, band.row_start, band.width, m, band.row_lo, band.row_hi,
                                 torch.float64)
    assert qr.dtype == qc.dtype == torch.float64
    ref_r, ref_c = _product_sums(p, grad, band)
    torch.testing.assert_close(qr, ref_r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(qc, ref_c, rtol=1e-12, atol=1e-12)
    s = torch.sort(torch.randn(L, n, generator=g, dtype=torch.float64)).values
    t = torch.sort(torch.randn(L, m, generator=g, dtype=torch.float64)).values
    gamma = torch.tensor([0.3, 2.0][:L], dtype=torch.float64)
    u, v = torch.randn(L, n, generator=g, dtype=torch.float64), torch.randn(L, m, generator=g, dtype=torch.float64)
    f0, g0 = torch.randn(L, n, generator=g, dtype=torch.float64), torch.randn(L, m, generator=g, dtype=torch.float64)
    ref = Reference(s, t, gamma, f0, g0)
    got = native.implicit_grad(p_in, grad_in, band.row_start, band.width, band.row_lo, band.row_hi, u, v, s, t,
                               gamma, s, t, f0, g0, gamma, logit_floor(torch.float64))
    want = _score_grads(p, grad, u, v, s, t, gamma, band, ref)
    for x, r in zip(got, want):
        torch.testing.assert_close(x, r, rtol=1e-10, atol=1e-10 * float(r.abs().max()))
    with pytest.raises(ValueError, match="must match the plan"):
        native.product_sums(p, grad[:, :-1], band.row_start, band.width, m, band.row_lo, band.row_hi)
    with pytest.raises(ValueError, match="cannot be used with"):
        native.product_sums(p, grad, band.row_start, band.width, m, band.row_lo, band.row_hi, torch.float32)


@pytest.mark.parametrize("plan, vectors", [(torch.float64, torch.float64), (torch.float32, torch.float64),
                                           (torch.float32, torch.float32)])
def test_band_laplacian_against_the_dense_laplacian(plan, vectors):
    """The difference-form product and quadratic form against the dense Laplacian, on random
    vectors and on a smooth large one (where diag(r) x - P x cancels to a small fraction of x)."""
    g = torch.Generator().manual_seed(3)
    L, n, m, W = 2, 300, 250, 20
    start = ((torch.arange(n) * m) // n - 5).clamp(0, m - W).expand(L, n).contiguous()
    lo, hi = start + 2, start + W - 3
    p = torch.rand(L, n, W, generator=g, dtype=torch.float64).to(plan)
    inside = window_inside(start, W, lo, hi)
    dense = torch.zeros(L, n, m, dtype=torch.float64)
    dense.scatter_add_(2, start.unsqueeze(-1) + torch.arange(W), torch.where(inside, p.double(), 0.0))
    smooth_r = 100 + torch.arange(n, dtype=torch.float64) / n
    smooth_c = 100 + (torch.arange(m, dtype=torch.float64) + 0.5) / m
    for xr, xc in ((torch.randn(L, n, generator=g, dtype=torch.float64), torch.randn(L, m, generator=g,
                                                                                     dtype=torch.float64)),
                   (smooth_r.expand(L, n), smooth_c.expand(L, m))):
        xr, xc = xr.to(vectors).contiguous(), xc.to(vectors).contiguous()
        diff = xr.double().unsqueeze(-1) - xc.double().unsqueeze(-2)  # (L, n, m): x_i - x_j
        want = torch.cat([(dense * diff).sum(-1), -(dense * diff).sum(-2)], -1)
        form = (dense * diff * diff).sum((-2, -1))
        qr, qc, got_form = native.band_laplacian(p, start, W, xr, xc, lo, hi)
        scale = float(want.abs().max())
        tol = 1e-12 if vectors == torch.float64 else 1e-5
        torch.testing.assert_close(torch.cat([qr, qc], -1).double(), want, rtol=0, atol=tol * scale)
        torch.testing.assert_close(got_form.double(), form, rtol=tol, atol=0)
        assert bool((got_form >= 0).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conjugate_gradient_vector_kernels_against_torch(dtype):
    # each fused update against the torch expressions it replaces, inner products included
    g = torch.Generator().manual_seed(7)
    L, n, m = 3, 1000, 1300

    def vec(k: int) -> torch.Tensor:
        return torch.randn(L, k, generator=g, dtype=torch.float64).to(dtype)

    pr, pc, qr, qc = vec(n), vec(m), vec(n), vec(m)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    xr, xc, rr, rc = vec(n), vec(m), vec(n), vec(m)
    alpha = torch.tensor([0.5, -2.0, 0.0], dtype=dtype)
    want = (xr + alpha[:, None] * pr, xc + alpha[:, None] * pc, rr - alpha[:, None] * qr, rc - alpha[:, None] * qc)
    rr2 = native.cg_step(alpha, xr, xc, rr, rc, pr, pc, qr, qc)
    for got, ref in zip((xr, xc, rr, rc), want):
        torch.testing.assert_close(got, ref, **tol)
    norm2 = (want[2].double() ** 2).sum(-1).to(dtype) + (want[3].double() ** 2).sum(-1).to(dtype)
    torch.testing.assert_close(rr2, norm2, **tol)
    beta = torch.tensor([1.5, 0.0, -1.0], dtype=dtype)
    zr, zc = vec(n), vec(m)
    want = (beta[:, None] * pr + zr, beta[:, None] * pc + zc)
    native.cg_direction(beta, pr, pc, zr, zc)
    torch.testing.assert_close(pr, want[0], **tol)
    torch.testing.assert_close(pc, want[1], **tol)
    with pytest.raises(ValueError, match="contiguous"):  # raw pointers: a wrong vector is refused
        native.cg_direction(beta, pr, pc[:, :-1], zr, zc)
    with pytest.raises(ValueError, match="shape"):
        native.cg_step(alpha[:2], xr, xc, rr, rc, pr, pc, qr, qc)


def test_conjugate_gradient_solve_compiled_as_torch(monkeypatch):
    # the same Laplacian solve with the fused compiled updates and with torch's (the same
    # preconditioner: the path)
    import glass_pyg.ot._laplacian as laplacian
    from glass_pyg.ot._laplacian import band_operator, solve_laplacian
    monkeypatch.setattr(laplacian, "STAIRCASE_FAR_SHARE", -1.0)
    _, _, _, band, stair, _, _ = staircase_band(900, 1100, 1e-3, 6, seed=4)
    L, n, m = band.shape
    g = torch.Generator().manual_seed(8)
    cols = band.row_start.unsqueeze(-1) + torch.arange(band.width)
    p_row = torch.rand(L, n, band.width, generator=g, dtype=torch.float64) + 0.1
    p_row = p_row * ((cols >= band.row_lo.unsqueeze(-1)) & (cols <= band.row_hi.unsqueeze(-1)))
    dense = torch.zeros(L, n, m, dtype=torch.float64).scatter_(2, cols, p_row)
    rows = band.col_start.unsqueeze(-1) + torch.arange(band.col_width)
    inside = (rows >= band.col_lo.unsqueeze(-1)) & (rows <= band.col_hi.unsqueeze(-1))
    p_col = torch.gather(dense.transpose(1, 2), 2, rows) * inside
    yr = torch.randn(L, n, generator=g, dtype=torch.float64)
    yc = torch.randn(L, m, generator=g, dtype=torch.float64)
    xr, xc, info = solve_laplacian(band_operator(band, stair, p_row, p_col), yr, yc, 1e-10, 300)
    with native.disabled():
        ref_r, ref_c, ref_info = solve_laplacian(band_operator(band, stair, p_row, lambda: p_col), yr, yc, 1e-10, 300)
    assert bool((info.residual <= 1e-10).all()) and abs(info.iterations - ref_info.iterations) <= 2
    scale = float(ref_r.abs().max())
    torch.testing.assert_close(xr, ref_r, rtol=0, atol=1e-7 * scale)
    torch.testing.assert_close(xc, ref_c, rtol=0, atol=1e-7 * scale)
    # and the solution solves the system (the right-hand side less its mean)
    shift = (yr.sum(-1) + yc.sum(-1)) / (n + m)
    lr = dense.sum(-1) * xr - (dense @ xc.unsqueeze(-1)).squeeze(-1)
    lc = dense.sum(1) * xc - (dense.transpose(1, 2) @ xr.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lr, yr - shift[:, None], rtol=0, atol=1e-7)
    torch.testing.assert_close(lc, yc - shift[:, None], rtol=0, atol=1e-7)


@pytest.mark.parametrize("compute", [torch.float64, torch.float32])
def test_band_certificate_compiled_as_torch(compute):
    # the certificate of the mass outside the band in one compiled pass against the torch route, on
    # the solver's converged states (tied target scores) and on bands cut too narrow (the check fails)
    import math

    import glass_pyg.ot._sinkhorn_banded as banded
    from glass_pyg.ot._band import make_band
    from glass_pyg.ot._certificate import certify, extent
    from glass_pyg.ot._iterations import SolverState, sweeps

    g = torch.Generator().manual_seed(9)
    s = torch.randn(2, 900, generator=g, dtype=torch.float64)
    t = torch.randn(2, 900, generator=g, dtype=torch.float64).round(decimals=1) + 0.3  # many ties
    b = torch.rand(2, 900, generator=g, dtype=torch.float64) + 0.2
    b = b / b.sum(-1, keepdim=True) if compute == torch.float64 else None  # float32: uniform (same mass)
    p = banded._prepare(s, t, None, b, 0.5, "rank", compute)
    held = []
    for depth in (40.0, 2.0, 0.5):
        band = make_band(*extent(p.ref, p.stair, p.m, -depth), p.m)
        st = SolverState(band, *p.logits(band), p.a_s.log(), p.b_s.log(), torch.zeros_like(p.a_s),
                         torch.zeros_like(p.b_s))
        sweeps(st, 30, 1e-12, 10)
        got = certify(st, p.ref, p.b_s)
        with native.disabled():
            want = certify(st, p.ref, p.b_s)
        assert torch.equal(got[1], want[1])
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=0.0)
        assert bool((got[0] > 0).all()) and math.isfinite(float(got[0].max()))
        held.append((bool(got[1].all()), float(got[0].max())))
    # the wide band holds with a negligible bound; the narrow ones leave out real mass
    assert held[0][0] and held[0][1] < 1e-6 and held[-1][1] > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compact_rows_are_the_extents(dtype):
    # the backward's operator reads the plan's extents compact: the copy against torch's mask, with
    # entries below tiny as zeros
    s, t, gam, band, stair, f0, g0 = staircase_band(300, 400, 0.05, 9, seed=4)
    g = torch.Generator().manual_seed(5)
    p = (torch.rand(2, 300, band.width, generator=g, dtype=torch.float64) ** 4).to(dtype)
    offsets = native.compact_offsets(band.row_lo, band.row_hi)
    inside = window_inside(band.row_start, band.width, band.row_lo, band.row_hi)
    got = native.compact_rows(p, band.row_start, band.width, band.row_lo, band.row_hi, offsets, 0.01)
    assert got.dtype == dtype and got.numel() == int(offsets[-1])
    want = p[inside]
    assert torch.equal(got, torch.where(want >= 0.01, want, 0)) and bool((want < 0.01).any())
    with pytest.raises(ValueError, match="offsets must have shape"):
        native.compact_rows(p, band.row_start, band.width, band.row_lo, band.row_hi, offsets[1:])


@pytest.mark.parametrize("plan_dtype", [torch.float64, torch.float32])
def test_transport_cost_gradient_pass_against_autograd(plan_dtype):
    # the cost's backward in one pass against autograd of the torch expression on the windows
    s, t, gam, band, stair, f0, g0 = staircase_band(300, 400, 0.05, 9, seed=6)
    L, n, W = 2, 300, band.width
    g = torch.Generator().manual_seed(6)
    inside = window_inside(band.row_start, W, band.row_lo, band.row_hi)
    p = (torch.rand(L, n, W, generator=g, dtype=torch.float64) * inside).to(plan_dtype)
    weight = torch.tensor([0.7, -1.3], dtype=torch.float64)
    gp, gs, gt = native.row_cost_grad(p, band.row_start, W, s, t, band.row_lo, band.row_hi, weight)
    pv, sv, tv = p.double().requires_grad_(), s.clone().requires_grad_(), t.clone().requires_grad_()
    cols = band.row_start.unsqueeze(-1) + torch.arange(W)
    d = sv.unsqueeze(-1) - torch.gather(tv, 1, cols.reshape(L, -1)).view(L, n, W)
    ((pv * d * d).sum((-2, -1)) * weight).sum().backward()
    assert gp.dtype == plan_dtype and gs.dtype == gt.dtype == torch.float64
    torch.testing.assert_close(gp, pv.grad.to(plan_dtype), rtol=1e-6 if plan_dtype == torch.float32 else 1e-12,
                               atol=0)
    torch.testing.assert_close(gs, sv.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gt, tv.grad, rtol=1e-12, atol=1e-12)
