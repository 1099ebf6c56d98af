"""The staircase preconditioner of the compiled kernels: the exact inverse of the Laplacian of the
plan's couplings between nodes at most STAIRCASE_WIDTH apart on the staircase, symmetric and
positive on the range where weak couplings are grounded."""
import pytest
import torch
from conftest import staircase_band

from glass_pyg.ot import _laplacian, native
from glass_pyg.ot._laplacian import band_operator


def _plan(n, m, seed, extra=4, decay=0.0):
    # random couplings on a band ``extra`` columns either side of the staircase, falling off as
    # exp(-decay * distance) with the distance between the pair's staircase positions
    _, _, _, band, stair, _, _ = staircase_band(n, m, 1e-3, extra, seed=seed)
    L = band.shape[0]
    g = torch.Generator().manual_seed(seed)
    cols = band.row_start.unsqueeze(-1) + torch.arange(band.width)
    inside = (cols >= band.row_lo.unsqueeze(-1)) & (cols <= band.row_hi.unsqueeze(-1))
    dist = (stair.row_pos.unsqueeze(-1) - torch.gather(stair.col_pos, 1, cols.flatten(1).clamp(max=m - 1))
            .view_as(cols)).abs()
    p_row = (torch.rand(L, n, band.width, generator=g, dtype=torch.float64) + 0.1) * inside / n
    return band, stair, p_row * torch.exp(-decay * dist), cols, inside


def _near_laplacian(band, stair, p_row, cols, inside):
    # the reference: a dense Laplacian over the staircase positions of the pairs 1..K apart
    L, n, m = band.shape
    N, K = n + m, native.STAIRCASE_WIDTH
    M = torch.zeros(L, N, N, dtype=torch.float64)
    for l in range(L):
        pr = stair.row_pos[l].unsqueeze(-1).expand_as(cols[l])[inside[l]]
        pc = stair.col_pos[l][cols[l][inside[l]]]
        w = p_row[l][inside[l]]
        near = (pr - pc).abs() <= K
        M[l].index_put_((pr[near], pc[near]), -w[near], accumulate=True)
        M[l].index_put_((pc[near], pr[near]), -w[near], accumulate=True)
        M[l] -= torch.diag(M[l].sum(-1))
    return M


def _apply(op, stair, y):
    # y in staircase order (L, N) -> the preconditioner's x in staircase order
    yr = torch.gather(y, 1, stair.row_pos).contiguous()
    yc = torch.gather(y, 1, stair.col_pos).contiguous()
    xr, xc, dot = op.precondition(yr, yc)
    x = torch.empty_like(y)
    x.scatter_(1, stair.row_pos, xr)
    x.scatter_(1, stair.col_pos, xc)
    return x, dot


@pytest.mark.parametrize("decay", [0.25, 0.0])
def test_staircase_preconditioner_inverts_the_near_laplacian(decay, monkeypatch):
    # couplings at every distance up to the bandwidth and beyond it (the far ones left out); without
    # decay the couplings K - 1 and K apart weigh as much as the nearest, and the far ones too
    monkeypatch.setattr(_laplacian, "STAIRCASE_FAR_SHARE", 1.0)  # the staircase even for this wide band
    band, stair, p_row, cols, inside = _plan(300, 350, seed=3, extra=20, decay=decay)
    op = band_operator(band, stair, p_row, None)
    assert op.factor is not None
    assert int((op.factor[2][:, :-1] == 0).sum()) == 0  # every coupling trusted: nothing grounded
    M = _near_laplacian(band, stair, p_row, cols, inside)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, M.shape[1], generator=g, dtype=torch.float64)
    y -= y.mean(-1, keepdim=True)
    x, dot = _apply(op, stair, y)
    ref = (torch.linalg.pinv(M) @ y.unsqueeze(-1)).squeeze(-1)
    # the factor is stored in float32
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    # and the solve is exactly the stored factor's: (L D L^T)^+ y with the unit lower L of the stored
    # ratios and the first ones, the inverse pivots D, centred
    ratio, first, inv_pivot = (t.double() for t in op.factor)
    N, K = M.shape[1], native.STAIRCASE_WIDTH
    for l in range(2):
        lower = torch.eye(N, dtype=torch.float64)
        for p in range(N - 1):
            k = min(K, N - 1 - p)
            lower[p + 1:p + 1 + k, p] = -torch.cat([first[l, p:p + 1], ratio[l, p, 1:k]])
        z = torch.linalg.solve_triangular(lower, y[l].unsqueeze(-1), upper=False).squeeze(-1) * inv_pivot[l]
        z = torch.linalg.solve_triangular(lower.T, z.unsqueeze(-1), upper=True).squeeze(-1)
        torch.testing.assert_close(x[l], z - z.mean(), rtol=0, atol=1e-11 * float(z.abs().max()))
    torch.testing.assert_close(dot, (x * y).sum(-1), rtol=1e-12, atol=0)
    # the residual it leaves on the near Laplacian, relative
    res = (M @ x.unsqueeze(-1)).squeeze(-1) - y
    assert float((res.norm(dim=-1) / y.norm(dim=-1)).max()) < 1e-4
    # each node's residual moves on whole: the ratios the solve reads sum to 1 to float64 rounding
    # (the float32 ratios' own sum is 1 only to float32 rounding, and a weak pivot divides the loss)
    ratio, first = op.factor[0], op.factor[1]
    total = first[:, :-1] + ratio[:, :-1, 1:].double().sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=4e-16)
    assert float((ratio[:, :-1].double().sum(-1) - 1).abs().max()) > 1e-12  # which float32 alone misses
    # three slices: the solve takes slices two at a time, interleaved, and an odd one alone
    pick = torch.tensor([1, 0, 1])
    yr = torch.gather(y, 1, stair.row_pos)[pick].contiguous()
    yc = torch.gather(y, 1, stair.col_pos)[pick].contiguous()
    xr3, xc3, dot3 = native.staircase_precondition(
        *(t[pick].contiguous() for t in (*op.factor, op.row_pos, op.col_pos)), yr, yc,
        op.inv_row_sum[pick].contiguous(), op.inv_col_sum[pick].contiguous())
    torch.testing.assert_close(xr3, torch.gather(x, 1, stair.row_pos)[pick], rtol=0, atol=0)
    torch.testing.assert_close(xc3, torch.gather(x, 1, stair.col_pos)[pick], rtol=0, atol=0)
    torch.testing.assert_close(dot3, dot[pick], rtol=0, atol=0)


def test_weak_couplings_are_grounded_and_the_preconditioner_stays_positive_on_the_range():
    band, stair, p_row, cols, inside = _plan(40, 50, seed=4, extra=2)
    p_row[:, 15:18] *= 1e-15  # three rows that barely couple: below the floor of trusted pivots
    op = band_operator(band, stair, p_row, None)
    assert op.factor is not None
    assert int((op.factor[2][:, :-1] == 0).sum()) >= 1  # some nodes tied rigidly to the next
    N = 90
    eye = torch.eye(N, dtype=torch.float64)
    P = torch.stack([_apply(op, stair, e.unsqueeze(0).expand(2, N).contiguous())[0] for e in eye], -1)
    Q, _ = torch.linalg.qr(torch.cat([torch.ones(N, 1, dtype=torch.float64), eye[:, :N - 1]], 1))
    B = Q[:, 1:]  # an orthonormal basis of the range (sums zero)
    for l in range(2):  # P[l]: column k = M^+ e_k
        Pl = P[l]
        torch.testing.assert_close(Pl, Pl.T, rtol=0, atol=1e-9 * float(Pl.abs().max()))
        ev = torch.linalg.eigvalsh(B.T @ ((Pl + Pl.T) / 2) @ B)
        assert float(ev.min()) > 0, float(ev.min())


def test_staircase_and_path_solve_the_same_system():
    # the adjoint solve of a narrow band with either preconditioner: the same solution where the
    # system determines it (the fluxes P_ij (x_i - x_j) that the gradients read)
    import glass_pyg.ot._laplacian as laplacian
    from glass_pyg.ot._laplacian import solve_laplacian
    from glass_pyg.ot._row_blocks import window_gather
    band, stair, p_row, cols, inside = _plan(2000, 2300, seed=5)
    g = torch.Generator().manual_seed(1)
    yr = torch.randn(2, 2000, generator=g, dtype=torch.float64)
    yc = torch.randn(2, 2300, generator=g, dtype=torch.float64)
    stair_op = band_operator(band, stair, p_row, None)
    saved = laplacian.STAIRCASE_FAR_SHARE
    try:
        laplacian.STAIRCASE_FAR_SHARE = -1.0
        path_op = band_operator(band, stair, p_row, None)
    finally:
        laplacian.STAIRCASE_FAR_SHARE = saved
    assert stair_op.factor is not None and path_op.factor is None
    xs = solve_laplacian(stair_op, yr, yc, 1e-12, 300)
    xp = solve_laplacian(path_op, yr, yc, 1e-12, 300)
    assert xs[2].iterations < xp[2].iterations / 2, (xs[2].iterations, xp[2].iterations)

    def flux(xr, xc):
        return p_row * (xr.unsqueeze(-1) - window_gather(xc, band.row_start, band.width))
    fs, fp = flux(xs[0], xs[1]), flux(xp[0], xp[1])
    torch.testing.assert_close(fs, fp, rtol=0, atol=1e-9 * float(fp.abs().max()))


@pytest.mark.parametrize("flags", [[], ["-mavx2", "-mfma"]], ids=["plain", "avx2"])
def test_generic_build_factors_and_solves_as_the_vector_one(flags, tmp_path, monkeypatch):
    """The factor and solve of a build without the processor's vector extensions (the plain C loops
    other machines compile), and of one with AVX2 only (its substitutions, the plain factor), against
    this machine's build: the same to float rounding."""
    from glass_pyg.ot.native import build
    if flags and not set(flags) <= set(build._cpu_flags()):
        pytest.skip("the processor lacks AVX2")
    monkeypatch.setattr(_laplacian, "STAIRCASE_FAR_SHARE", 1.0)
    band, stair, p_row, _, _ = _plan(300, 350, seed=5, extra=20, decay=0.0)
    g = torch.Generator().manual_seed(1)
    yr = torch.randn(2, 300, generator=g, dtype=torch.float64)
    yc = torch.randn(2, 350, generator=g, dtype=torch.float64)
    shift = (yr.sum(-1) + yc.sum(-1)) / 650
    yr, yc = yr - shift.unsqueeze(-1), yc - shift.unsqueeze(-1)

    def solve():
        op = band_operator(band, stair, p_row, None)
        xr, xc, dot = op.precondition(yr, yc)
        return [t.clone() for t in (*op.factor, xr, xc, dot)]

    here = solve()
    monkeypatch.setenv("GLASS_PYG_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "_cpu_flags", lambda: list(flags))
    monkeypatch.setattr(build, "_state", {"lib": None, "reason": None, "tried": False, "disabled": False,
                                          "pool": None, "pool_size": 0})
    generic = solve()
    assert native.status() == f"compiled ({' '.join(flags)})"  # the build asked for
    ratio, first, inv_pivot, xr, xc, dot = generic
    torch.testing.assert_close(here[0], ratio, rtol=0, atol=5e-7)
    torch.testing.assert_close(here[1], first, rtol=0, atol=5e-7)
    torch.testing.assert_close(here[2], inv_pivot, rtol=1e-6, atol=0)
    scale = float(torch.cat([xr, xc], -1).abs().max())
    torch.testing.assert_close(here[3], xr, rtol=0, atol=1e-7 * scale)
    torch.testing.assert_close(here[4], xc, rtol=0, atol=1e-7 * scale)
    torch.testing.assert_close(here[5], dot, rtol=1e-7, atol=0)


@pytest.mark.parametrize("compact", [False, True])
def test_staircase_weights_are_the_near_couplings(compact):
    # brute force over every band entry: its pair's distance on the staircase decides its slot or
    # the far share; zeros and entries below tiny count nowhere
    band, stair, p_row, cols, inside = _plan(300, 350, seed=5, extra=20)
    L, n, m = band.shape
    K = native.STAIRCASE_WIDTH
    g = torch.Generator().manual_seed(6)
    p_row = p_row * (torch.rand(p_row.shape, generator=g, dtype=torch.float64) > 0.1)
    tiny = float(p_row[inside].quantile(0.05))
    scale = torch.tensor([2.0, 0.5], dtype=torch.float64)
    offsets = native.compact_offsets(band.row_lo, band.row_hi) if compact else None
    p = p_row[inside].float().contiguous() if compact else p_row.float()
    w, far = native.staircase_weights(p, band.row_start, band.width, stair.row_pos, stair.col_pos, scale,
                                      band.row_lo, band.row_hi, torch.float64, offsets, tiny)
    ref_w = torch.zeros(L, n + m, K, dtype=torch.float32)
    ref_far = torch.zeros(L, dtype=torch.float64)
    for l in range(L):
        pr = stair.row_pos[l].unsqueeze(-1).expand_as(cols[l])[inside[l]]
        pc = stair.col_pos[l][cols[l][inside[l]]]
        v = p_row[l][inside[l]].float().double()
        counted = (v != 0) & (v >= tiny)
        d = (pr - pc).abs()
        near = counted & (d <= K)
        ref_w[l][torch.minimum(pr, pc)[near], d[near] - 1] = (v[near] / scale[l]).float()
        ref_far[l] = v[counted & (d > K)].sum() / v[counted].sum()
    assert (ref_far > 0).all() and (ref_w > 0).sum() > 0.5 * n * L
    torch.testing.assert_close(w, ref_w, rtol=0, atol=0)
    torch.testing.assert_close(far, ref_far, rtol=1e-12, atol=0)
