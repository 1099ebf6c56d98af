"""Compiled band kernels against the torch implementation, and the fallback."""
import math
import os
import sys

import pytest
import torch
from conftest import staircase_band

from glass_pyg.ot import native, sinkhorn_banded
from glass_pyg.ot._iterations import _lse_windows

pytestmark = pytest.mark.skipif(not native.usable(torch.zeros(1)), reason=native.status())


def _band(L, n, m, W, dtype, seed=0):
    r"""Random windows with monotone extents inside them, potentials and logits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(L, m, generator=g, dtype=torch.float64).to(dtype)
    start = torch.sort(torch.randint(0, m - W + 1, (L, n), generator=g), -1).values
    lo = start + torch.randint(0, max(1, W // 3), (L, n), generator=g)
    hi = (lo + torch.randint(0, W, (L, n), generator=g)).clamp(max=start + W - 1)
    theta = (-torch.rand(L, n, W, generator=g, dtype=torch.float64) * 40).to(dtype)
    return x, start, lo, hi, theta


def _dense_logits(start, lo, hi, theta, m):
    r"""(L, n, m) logits with -inf off the extents."""
    L, n, W = theta.shape
    dense = torch.full((L, n, m), -math.inf, dtype=theta.dtype)
    j = start.unsqueeze(-1) + torch.arange(W)
    inside = (j >= lo.unsqueeze(-1)) & (j <= hi.unsqueeze(-1))
    dense.scatter_(2, j, torch.where(inside, theta, torch.full_like(theta, -math.inf)))
    return dense


def _close(a, b, dtype):
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    finite = torch.isfinite(b)
    assert torch.equal(finite, torch.isfinite(a)) and torch.equal(a[~finite], b[~finite])
    torch.testing.assert_close(a[finite], b[finite], rtol=rtol, atol=rtol * float(b[finite].abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("W", [1, 7, 64, 1100])  # 1100 spans three chunks of the running maximum
def test_row_and_column_logsumexp(dtype, W):
    L, n, m = 2, 300, 1500
    x, start, lo, hi, theta = _band(L, n, m, W, dtype)
    dense = _dense_logits(start, lo, hi, theta, m)
    phi = torch.randn(L, n, dtype=torch.float64).to(dtype)
    ref_rows = torch.logsumexp(dense + x.unsqueeze(1), -1)
    ref_cols = torch.logsumexp(dense + phi.unsqueeze(-1), 1)
    # without a guess, with a close one, and with one far outside the exponent range
    for shift in (None, ref_rows + 0.3, ref_rows - 5000.0):
        _close(native.lse_rows(x, start, W, theta, lo, hi, shift), ref_rows, dtype)
    covered = torch.isfinite(ref_cols)
    for shift in (None, torch.where(covered, ref_cols - 0.7, torch.zeros_like(ref_cols)),
                  torch.where(covered, ref_cols + 3000.0, torch.zeros_like(ref_cols))):
        _close(native.lse_cols(phi, start, W, theta, m, lo, hi, shift), ref_cols, dtype)
    # the whole window when no extent is given
    _close(native.lse_rows(x, start, W, theta), torch.logsumexp(
        torch.gather(x, 1, (start.unsqueeze(-1) + torch.arange(W)).flatten(1)).view(L, n, W) + theta, -1), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plan_entries_on_the_extent(dtype):
    L, n, m, W = 2, 200, 900, 30
    y, start, lo, hi, theta = _band(L, n, m, W, dtype, seed=1)
    x = torch.randn(L, n, dtype=torch.float64).to(dtype)
    got = native.exp_rows(x, y, start, W, theta, lo, hi)
    j = start.unsqueeze(-1) + torch.arange(W)
    inside = (j >= lo.unsqueeze(-1)) & (j <= hi.unsqueeze(-1))
    ref = torch.exp(x.unsqueeze(-1) + torch.gather(y, 1, j.flatten(1)).view(L, n, W) + theta) * inside
    _close(got, ref, dtype)
    assert (got[~inside] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plan_entries_below_the_floor_are_exact_zeros(dtype):
    # arguments from far below exp's underflow point up to 0: the kernel clamps them to the floor
    # before exp (in a loop of its own), and entries at or below the floor are exactly zero
    L, n, m, W = 2, 300, 900, 40
    y, start, lo, hi, _ = _band(L, n, m, W, dtype, seed=4)
    g = torch.Generator().manual_seed(5)
    theta = (-torch.rand(L, n, W, generator=g, dtype=torch.float64) * 1500).to(dtype)
    x = torch.zeros(L, n, dtype=dtype)
    floor = -60.0
    got = native.exp_rows(x, y, start, W, theta, lo, hi, floor=floor)
    j = start.unsqueeze(-1) + torch.arange(W)
    inside = (j >= lo.unsqueeze(-1)) & (j <= hi.unsqueeze(-1))
    v = torch.gather(y, 1, j.flatten(1)).view(L, n, W) + theta
    kept = inside & (v > floor)
    assert kept.any() and (inside & ~kept).any()
    assert (got[~kept] == 0).all()
    rtol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(got[kept], torch.exp(v[kept]), rtol=rtol, atol=0.0)


def test_underflow_and_minus_infinity():
    # a row far below exp's underflow point, a row of -inf (zero weights), a partly -inf row
    L, n, m, W = 1, 4, 10, 5
    x = torch.zeros(L, m, dtype=torch.float64)
    x[0, 5:] = -math.inf
    start = torch.tensor([[0, 5, 3, 1]])
    theta = torch.zeros(L, n, W, dtype=torch.float64)
    theta[0, 0] = torch.tensor([-800.0, -750.0, -2000.0, -900.0, -710.0])
    got = native.lse_rows(x, start, W, theta)
    ref = torch.logsumexp(torch.stack([x[0, s:s + W] for s in start[0].tolist()]).unsqueeze(0) + theta, -1)
    _close(got, ref, torch.float64)
    e = native.exp_rows(torch.zeros(L, n, dtype=torch.float64), x, start, W, theta)
    assert torch.isfinite(e).all() and (e[0, 0] == 0).all() and (e[0, 1] == 0).all()


def test_rows_split_between_threads_agree(monkeypatch):
    x, start, lo, hi, theta = _band(1, 4096, 5000, 40, torch.float64, seed=3)
    phi = torch.randn(1, 4096, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (native.lse_rows(x, start, 40, theta, lo, hi), native.lse_cols(phi, start, 40, theta, 5000, lo, hi))
        torch.set_num_threads(3)
        monkeypatch.setattr(native, "_PARALLEL_MIN_ENTRIES", 1)
        three = (native.lse_rows(x, start, 40, theta, lo, hi), native.lse_cols(phi, start, 40, theta, 5000, lo, hi))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], three[0])
    _close(three[1], one[1], torch.float64)  # column sums add the threads' parts in another order


def test_window_past_the_end_is_an_error():
    x, start, lo, hi, theta = _band(1, 10, 20, 5, torch.float64)
    start[0, -1] = 16
    with pytest.raises(ValueError, match="width 5"):
        native.lse_rows(x, start, 5, theta)


def test_window_check_is_redone_after_an_in_place_change():
    x, start, lo, hi, theta = _band(1, 10, 20, 5, torch.float64)
    native.lse_rows(x, start, 5, theta)  # checked and remembered
    start[0, -1] = 16
    with pytest.raises(ValueError, match="width 5"):
        native.lse_rows(x, start, 5, theta)
    start[0, -1] = 15
    with pytest.raises(ValueError, match="width 6"):  # a wider window: checked again
        native.lse_rows(x, start, 6, torch.zeros(1, 10, 6, dtype=torch.float64))


def test_out_must_fit():
    x, start, lo, hi, theta = _band(1, 10, 20, 5, torch.float64)
    with pytest.raises(ValueError, match="plan must be"):
        native.exp_rows(x[:, :10], x, start, 5, theta, out=torch.empty(1, 10, 4, dtype=torch.float64))
    off = native.compact_offsets(lo, hi)
    with pytest.raises(ValueError, match="extents"):
        native.exp_rows(x[:, :10], x, start, 5, theta, out=torch.empty(50, dtype=torch.float64), offsets=off)
    with pytest.raises(ValueError, match="compact plan"):
        native.exp_rows(x[:, :10], x, start, 5, theta, lo, hi, out=torch.empty(int(off[-1]) - 1,
                                                                                dtype=torch.float64), offsets=off)
    with pytest.raises(ValueError, match="float64 plan cannot be used with torch.float32 vectors"):
        native.exp_rows(x[:, :10].float(), x.float(), start, 5, theta.float(),
                        out=torch.empty(1, 10, 5, dtype=torch.float64))


@pytest.mark.parametrize("preconditioner", ["path", "staircase"])
@pytest.mark.parametrize("temperature,gamma", [("rank", 1.0), ("absolute", 0.05)])
def test_solver_same_with_and_without_kernels(monkeypatch, temperature, gamma, preconditioner):
    import glass_pyg.ot._laplacian as laplacian
    if preconditioner == "path":  # the torch route's preconditioner: the same iterates, to rounding
        monkeypatch.setattr(laplacian, "STAIRCASE_FAR_SHARE", -1.0)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3000, generator=g, dtype=torch.float64)
    t = torch.randn(2, 2500, generator=g, dtype=torch.float64).exp()
    got = sinkhorn_banded(s, t, gamma=gamma, temperature=temperature)
    with native.disabled():
        ref = sinkhorn_banded(s, t, gamma=gamma, temperature=temperature)
    assert got.converged.all() and ref.converged.all()
    if preconditioner == "path":
        torch.testing.assert_close(got.cost, ref.cost, rtol=1e-9, atol=0)
        torch.testing.assert_close(got.values, ref.values, rtol=0, atol=1e-9 / 3000)
    else:  # Newton's inexact steps differ: both plans meet the marginals to tol = 1e-6
        torch.testing.assert_close(got.cost, ref.cost, rtol=1e-6, atol=0)
        assert float((got.values - ref.values).abs().sum((1, 2)).max()) < 1e-5


def test_autograd_takes_the_torch_path():
    x, start, lo, hi, theta = _band(1, 50, 80, 6, torch.float64)
    theta.requires_grad_(True)
    assert not native.usable(x, theta)
    _lse_windows(x, start, 6, theta).sum().backward()
    torch.testing.assert_close(theta.grad.sum(-1), torch.ones(1, 50, dtype=torch.float64))


def test_build_into_a_fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLASS_PYG_CACHE", str(tmp_path))
    lib = native.build._compile()
    assert list(tmp_path.glob("band_kernels-*.so"))
    assert all(hasattr(lib, f"{k}_f64") and hasattr(lib, f"{k}_f32") for k in native.build._SIGNATURES)


def test_without_a_compiler_the_solver_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("GLASS_PYG_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setattr(native.build, "_state", {"lib": None, "reason": None, "tried": False, "disabled": False,
                                           "pool": None, "pool_size": 0})
    assert native.status().startswith("torch (not built")
    plan = sinkhorn_banded(torch.randn(200, dtype=torch.float64), torch.randn(200, dtype=torch.float64),
                           gamma=1.0, temperature="rank")
    assert plan.converged.all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_bitwise_as_torch_in_both_layouts(dtype):
    from glass_pyg.ot._band import band_logits
    s, t, gam, band, _, f0, g0 = staircase_band(700, 500, 1e-5, 9)
    rows, cols = band_logits(s, t, gam, band, f0, g0, dtype), band_logits(s, t, gam, band, f0, g0, dtype, "col")
    with native.disabled():
        rows_ref = band_logits(s, t, gam, band, f0, g0, dtype)
        cols_ref = band_logits(s, t, gam, band, f0, g0, dtype, "col")
    assert torch.equal(rows, rows_ref) and torch.equal(cols, cols_ref)
    # the same entry (i, j) in the row and the column layout: bitwise equal, or the
    # iterations see two different kernels when gamma is tiny against the scores
    i = torch.arange(700)
    floor = 0.85 * math.log(torch.finfo(dtype).tiny)
    for k in range(band.width):
        j = band.row_start[0] + k
        inside = (j >= band.row_lo[0]) & (j <= band.row_hi[0])
        also = (i >= band.col_lo[0, j]) & (i <= band.col_hi[0, j])
        assert torch.equal(inside, also)  # the two layouts hold the same entries
        kc = i - band.col_start[0, j]
        assert torch.equal(rows[0, i[inside], k], cols[0, j[inside], kc[inside]])
        assert (rows[0, i[~inside], k] == floor).all()


def test_operator_as_torch(monkeypatch):
    import glass_pyg.ot._laplacian as laplacian
    from glass_pyg.ot._laplacian import band_operator
    monkeypatch.setattr(laplacian, "STAIRCASE_FAR_SHARE", -1.0)  # the path's cuts, as torch forms them
    _, _, _, band, stair, _, _ = staircase_band(900, 1100, 1e-3, 6, seed=2)
    L, n, m = band.shape
    g = torch.Generator().manual_seed(5)
    p_row = torch.rand(L, n, band.width, generator=g, dtype=torch.float64) ** 8
    p_row[p_row < 1e-3] = 1e-200  # the subnormal range is dropped
    cols = band.row_start.unsqueeze(-1) + torch.arange(band.width)
    # plans: 0 off the extents
    p_row = p_row * ((cols >= band.row_lo.unsqueeze(-1)) & (cols <= band.row_hi.unsqueeze(-1)))
    dense = torch.zeros(L, n, m, dtype=torch.float64)
    dense.scatter_(2, cols, p_row)
    rows = band.col_start.unsqueeze(-1) + torch.arange(band.col_width)
    inside = (rows >= band.col_lo.unsqueeze(-1)) & (rows <= band.col_hi.unsqueeze(-1))
    p_col = torch.gather(dense.transpose(1, 2), 2, rows) * inside
    got = band_operator(band, stair, p_row, p_col)
    with native.disabled():
        ref = band_operator(band, stair, p_row, lambda: p_col)
    assert (p_row == 1e-200).any()  # not in place
    for name in ("row_sum", "col_sum", "cut"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-12, atol=0)
    xr = torch.randn(L, n, generator=g, dtype=torch.float64)
    xc = torch.randn(L, m, generator=g, dtype=torch.float64)
    for a, b in zip(got.matvec(xr, xc) + got.precondition(xr, xc), ref.matvec(xr, xc) + ref.precondition(xr, xc)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * float(b.abs().max()))
    # the products against the dense plan
    dense = torch.where(dense < 1e-154, torch.zeros_like(dense), dense)
    yr, yc = got.matvec(xr, xc)
    torch.testing.assert_close(yr, dense.sum(-1) * xr - (dense @ xc.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(yc, dense.sum(1) * xc - (dense.transpose(1, 2) @ xr.unsqueeze(-1)).squeeze(-1))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # one column accumulator per thread
        monkeypatch.setattr(native, "_PARALLEL_MIN_ENTRIES", 1)
        yr3, yc3 = got.matvec(xr, xc)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(yr3, yr)
    torch.testing.assert_close(yc3, yc, rtol=1e-12, atol=1e-15)


def test_compact_float32_plan_and_its_operator(monkeypatch):
    # Newton's operator: the plan's extents only, stored in float32, products in float64
    import glass_pyg.ot._laplacian as laplacian
    from glass_pyg.ot._laplacian import band_operator
    monkeypatch.setattr(laplacian, "STAIRCASE_FAR_SHARE", -1.0)  # the path's cuts, as torch forms them
    _, _, _, band, stair, _, _ = staircase_band(900, 1100, 1e-3, 6, seed=3)
    L, n, m = band.shape
    g = torch.Generator().manual_seed(6)
    x = torch.randn(L, n, generator=g, dtype=torch.float64) - 3.0
    y = torch.randn(L, m, generator=g, dtype=torch.float64)
    theta = -torch.rand(L, n, band.width, generator=g, dtype=torch.float64) * 120
    lo, hi = band.row_lo, band.row_hi
    padded = native.exp_rows(x, y, band.row_start, band.width, theta, lo, hi)
    off = native.compact_offsets(lo, hi)
    compact, row_sum = torch.empty(int(off[-1])), torch.empty(L, n, dtype=torch.float64)
    floor = math.log(torch.finfo(torch.float32).tiny)
    native.exp_rows(x, y, band.row_start, band.width, theta, lo, hi, compact, row_sum, off, floor)
    cols = band.row_start.unsqueeze(-1) + torch.arange(band.width)
    inside = (cols >= lo.unsqueeze(-1)) & (cols <= hi.unsqueeze(-1))
    assert int(off[-1]) == int(inside.sum())
    kept = torch.where(padded > torch.finfo(torch.float32).tiny, padded, torch.zeros_like(padded))
    assert torch.equal(compact, kept[inside].float())  # row-major: the extents in order
    torch.testing.assert_close(row_sum, kept.sum(-1), rtol=1e-13, atol=0)  # summed before rounding
    # the operator of the compact float32 plan is the float64 operator of the rounded weights
    rounded = torch.zeros_like(padded)
    rounded[inside] = compact.double()
    got = band_operator(band, stair, compact, None, dtype=torch.float64, offsets=off)
    with native.disabled():
        cols_t = band.col_start.unsqueeze(-1) + torch.arange(band.col_width)
        dense = torch.zeros(L, n, m, dtype=torch.float64).scatter_(2, cols, rounded)
        p_col = torch.gather(dense.transpose(1, 2), 2, cols_t) * (
            (cols_t >= band.col_lo.unsqueeze(-1)) & (cols_t <= band.col_hi.unsqueeze(-1)))
        ref = band_operator(band, stair, rounded, p_col)
    for name in ("row_sum", "col_sum", "cut"):  # the cut is a running sum: rounding of its largest entry
        b = getattr(ref, name)
        torch.testing.assert_close(getattr(got, name), b, rtol=1e-12, atol=1e-13 * float(b.max()))
    xr = torch.randn(L, n, generator=g, dtype=torch.float64)
    xc = torch.randn(L, m, generator=g, dtype=torch.float64)
    for a, b in zip(got.matvec(xr, xc), ref.matvec(xr, xc)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13 * float(b.abs().max()))
    # transport cost per row, compact and padded
    sq = (xr.unsqueeze(-1) - torch.gather(xc, 1, cols.flatten(1)).view_as(cols)) ** 2
    torch.testing.assert_close(native.row_cost(compact, band.row_start, band.width, xr, xc, lo, hi, off),
                               (rounded * sq).sum(-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(native.row_cost(padded, band.row_start, band.width, xr, xc, lo, hi),
                               (padded * sq).sum(-1), rtol=1e-12, atol=0)


def _fresh(monkeypatch, cache):
    monkeypatch.setenv("GLASS_PYG_CACHE", str(cache))
    monkeypatch.setattr(native.build, "_state", {"lib": None, "reason": None, "tried": False, "disabled": False,
                                                 "pool": None, "pool_size": 0})


def _built(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _fresh(monkeypatch, cache)
    assert native.status().startswith("compiled")
    (lib,) = cache.glob("band_kernels-*.so")
    return cache, lib


def test_cache_refuses_files_and_folders_others_can_write(tmp_path, monkeypatch):
    cache, lib = _built(tmp_path, monkeypatch)
    os.chmod(lib, 0o666)  # a library anyone could have replaced
    _fresh(monkeypatch, cache)
    assert "writable by others" in native.status() and native.status().startswith("torch")
    os.chmod(lib, 0o600)
    os.chmod(cache, 0o777)  # a shared folder
    _fresh(monkeypatch, cache)
    assert "cache folder" in native.status() and "writable by others" in native.status()
    os.chmod(cache, 0o700)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root can make the file another user's
        os.chown(lib, 12345, -1)
        _fresh(monkeypatch, cache)
        assert "belongs to uid 12345" in native.status()


def test_truncated_cached_library_is_rebuilt(tmp_path, monkeypatch):
    cache, lib = _built(tmp_path, monkeypatch)
    good = lib.read_bytes()
    # a torn copy put in its place (a new file: this process still maps the old one); loading it is SIGBUS
    torn = tmp_path / "torn.so"
    torn.write_bytes(good[:4096])
    os.chmod(torn, 0o600)
    os.replace(torn, lib)
    _fresh(monkeypatch, cache)
    assert native.status().startswith("compiled")
    assert lib.stat().st_size == len(good)


def test_library_missing_a_kernel_falls_back_with_the_reason(tmp_path, monkeypatch):
    import hashlib
    import shutil
    import subprocess
    cache, lib = _built(tmp_path, monkeypatch)
    src = tmp_path / "empty.c"
    src.write_text("int nothing(void) { return 0; }\n")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    other = tmp_path / "other.so"
    subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(other)], check=True)
    os.chmod(other, 0o600)
    os.replace(other, lib)  # a new file: this process still maps the real one
    lib.with_suffix(".sha256").write_text(hashlib.sha256(lib.read_bytes()).hexdigest() + "\n")
    # a fresh process (this one's dlopen would hand back the library it already holds under that name)
    code = ("import torch; from glass_pyg.ot import native, sinkhorn_banded; print(native.status()); "
            "p = sinkhorn_banded(torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)); "
            "print(bool(p.converged.all()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "GLASS_PYG_CACHE": str(cache)})
    status, converged = out.stdout.strip().splitlines()[-2:]
    assert status.startswith("torch") and "lacks a kernel" in status and converged == "True", out.stderr
