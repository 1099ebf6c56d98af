"""The plan object, the exact limit, the dense reference and argument errors."""
import pytest
import torch
from conftest import dense_cost

from glass_pyg.ot import TransportPlan, sinkhorn_banded, sinkhorn_dense, staircase_plan


@pytest.fixture
def plan_and_dense(gen):
    s = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    t = torch.randn(3, 30, generator=gen, dtype=torch.float64) + 0.5
    plan = sinkhorn_banded(s, t, gamma=0.05, tol=1e-10)
    return plan, plan.to_dense(), s, t


def test_plan_accessors_agree_with_dense(plan_and_dense):
    plan, D, s, t = plan_and_dense
    assert isinstance(plan, TransportPlan)
    assert torch.allclose(plan.to_sparse().to_dense(), D)
    assert torch.equal(plan.row_argmax(), D.argmax(-1))
    vals, cols = plan.topk(3)
    ref_vals, ref_cols = torch.topk(D, 3, dim=-1)
    # columns agree wherever the entry is positive (zeros outside the band tie)
    assert torch.allclose(vals, ref_vals) and torch.equal(cols[ref_vals > 0], ref_cols[ref_vals > 0])
    Dm = torch.randn(40, 30, dtype=torch.float64)
    e = plan.expectation(lambda i, j: Dm[i, j])
    assert torch.allclose(e, (D * Dm).sum((-2, -1)))
    ent = -(D[D > 0] * D[D > 0].log())
    assert torch.allclose(plan.entropy().sum(), ent.sum())
    assert torch.allclose(plan.transport_cost(), (D * dense_cost(s, t)).sum((-2, -1)))
    assert plan.nnz == plan.values.numel() and plan.nnz < 3 * 40 * 30
    assert plan.f.shape == (3, 40) and plan.g.shape == (3, 30)
    assert plan.band_halfwidth.shape == (3,) and plan.band_radius.shape == (3,)


@pytest.mark.parametrize("merge", ["dense buffer", "sort"])
def test_averaged_plan_keeps_every_window_pair(gen, merge, monkeypatch):
    # the lifted decoding searches the averaged plan's stored pairs: the band windows, zeros included;
    # both ways of merging the slices give the same pattern, values and gradient
    import glass_pyg.ot.plan as plan_module
    n, m = (300, 280) if merge == "dense buffer" else (3000, 2900)  # the second: windows narrow against m
    if merge == "sort":
        monkeypatch.setattr(plan_module, "_DENSE_MERGE", 0)
    s = torch.randn(2, n, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, m, generator=gen, dtype=torch.float64) + 1.0
    plan = sinkhorn_banded(s, t, gamma=1.0 if merge == "dense buffer" else 0.02, temperature="rank")
    if merge == "sort":
        assert n * m > 8 * plan.values.numel()
    rows, cols = plan.index_pairs()
    pairs = torch.unique(rows.flatten() * m + cols.flatten())
    avg = plan.averaged()
    assert avg.is_coalesced() and avg._nnz() == pairs.numel() and bool((plan.values == 0).any())
    torch.testing.assert_close(avg.indices(), torch.stack([pairs // m, pairs % m]))
    dense = plan.to_dense().mean(0)
    torch.testing.assert_close(avg.to_dense(), dense)
    w = torch.randn(n, m, generator=gen, dtype=torch.float64)
    got, = torch.autograd.grad((avg.to_dense() * w).sum(), s, retain_graph=True)
    want, = torch.autograd.grad((dense * w).sum(), s)
    torch.testing.assert_close(got, want)


def test_unbatched_shapes_and_original_order(gen):
    s = torch.randn(25, generator=gen, dtype=torch.float64)
    t = torch.randn(20, generator=gen, dtype=torch.float64)
    plan = sinkhorn_banded(s, t, gamma=0.1, tol=1e-10)
    perm = torch.randperm(25, generator=gen)
    plan_p = sinkhorn_banded(s[perm], t, gamma=0.1, tol=1e-10)
    assert plan.to_dense().shape == (25, 20) and plan.transport_cost().dim() == 0
    assert torch.allclose(plan_p.to_dense(), plan.to_dense()[perm], atol=1e-12)
    assert plan.to_sparse().shape == (25, 20) and plan.row_argmax().shape == (25,)


def test_staircase_matches_pot_emd_1d(gen):
    ot = pytest.importorskip("ot")
    s = torch.randn(30, generator=gen, dtype=torch.float64)
    t = torch.randn(22, generator=gen, dtype=torch.float64)
    a = torch.rand(30, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(22, generator=gen, dtype=torch.float64) + 0.1
    a, b = a / a.sum(), b / b.sum()
    rows, cols, mass = staircase_plan(s, t, a, b)
    P = torch.zeros(30, 22, dtype=torch.float64).index_put_((rows, cols), mass, accumulate=True)
    ref = torch.from_numpy(ot.emd_1d(s.numpy(), t.numpy(), a.numpy(), b.numpy()))
    assert torch.allclose(P, ref, atol=1e-12)
    assert len(mass) <= 30 + 22 - 1


def test_dense_matches_pot(gen):
    C = torch.rand(3, 15, 12, generator=gen, dtype=torch.float64)
    plan = sinkhorn_dense(C, gamma=0.05, tol=1e-11, max_iter=10000)
    for l in range(3):
        ot = pytest.importorskip("ot")
        ref = ot.sinkhorn(torch.full((15,), 1 / 15).double().numpy(), torch.full((12,), 1 / 12).double().numpy(),
                          C[l].numpy(), 0.05, method="sinkhorn_log", stopThr=1e-12, numItermax=20000)
        assert torch.allclose(plan.to_dense()[l], torch.from_numpy(ref), atol=1e-9)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(s=torch.tensor([0.0, float("nan")])), "s contains non-finite"),
    (dict(t=torch.tensor([0.0, float("inf"), 1.0])), "t contains non-finite"),
    (dict(gamma=0.0), "gamma"),
    (dict(gamma=-1.0), "gamma"),
    (dict(gamma=float("nan")), "gamma"),
    (dict(a=torch.tensor([0.5, 0.7, -0.2])), "a must be positive"),
    (dict(b=torch.tensor([0.2, 0.2, 0.2])), "same total mass"),
    (dict(a=torch.tensor([0.5, 0.5])), "a must have shape"),
    (dict(s=torch.zeros(2, 3), t=torch.zeros(3, 3)), "same number of slices"),
    (dict(s=torch.zeros(2, 3, 4)), "s must have shape"),
    (dict(s=torch.tensor([1, 2, 3])), "floating"),
    (dict(band_eps=0.0), "band_eps"),
    (dict(tol=-1.0), "tol"),
    (dict(max_iter=-3), "max_iter"),
    (dict(temperature="relative"), "temperature"),
    (dict(grad="autodiff"), "grad"),
])
def test_bad_arguments_raise_clear_errors(kwargs, needle):
    args = dict(s=torch.tensor([0.0, 1.0, 2.0]), t=torch.tensor([0.5, 1.5, 3.0]))
    args.update(kwargs)
    s, t = args.pop("s"), args.pop("t")
    with pytest.raises(ValueError, match=needle):
        sinkhorn_banded(s, t, **args)


def test_dense_bad_arguments():
    with pytest.raises(ValueError, match="C must"):
        sinkhorn_dense(torch.zeros(3))
    with pytest.raises(ValueError, match="gamma"):
        sinkhorn_dense(torch.zeros(3, 3), gamma=0)
    with pytest.raises(ValueError, match="same total mass"):
        sinkhorn_dense(torch.zeros(3, 2), torch.ones(3) / 3, torch.ones(2))


def test_topk_bounds(gen):
    plan = sinkhorn_banded(torch.randn(10, generator=gen), torch.randn(10, generator=gen), gamma=1e-3)
    with pytest.raises(ValueError, match="k must be"):
        plan.topk(plan.width + 1)


def test_entropy_gradient_is_finite_and_matches_finite_differences(gen):
    # the band's padding zeros must not turn xlogy's infinite slope into NaN
    s = torch.randn(40, generator=gen, dtype=torch.float64)
    t = torch.randn(40, generator=gen, dtype=torch.float64) + 0.3

    def entropy(x):
        return sinkhorn_banded(x, t, gamma=0.2, tol=1e-13).entropy()

    x = s.clone().requires_grad_(True)
    plan = sinkhorn_banded(x, t, gamma=0.2, tol=1e-13)
    assert bool((plan.values == 0).any())  # there is padding
    (grad,) = torch.autograd.grad(plan.entropy(), x)
    assert bool(torch.isfinite(grad).all())
    h = 1e-6
    for i in (0, 7, 23):
        e = torch.zeros_like(s)
        e[i] = h
        fd = (entropy(s + e) - entropy(s - e)) / (2 * h)
        assert float(grad[i]) == pytest.approx(float(fd), rel=1e-4, abs=1e-7)


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), decades=st.sampled_from([3.0, 8.0, 12.0]),
       dtype=st.sampled_from([torch.float32, torch.float64]), temperature=st.sampled_from(["absolute", "rank"]))
def test_weights_over_many_decades_give_a_true_plan(seed, decades, dtype, temperature):
    # weights log-uniform over many decades, normalised in float64 and cast: once called converged, the
    # plan's marginals are the weights (a plan of mass 500 with marginal_error 1e-12 was possible)
    import warnings
    g = torch.Generator().manual_seed(seed)
    n = 120
    s = torch.randn(n, generator=g, dtype=torch.float64)
    t = torch.randn(n, generator=g, dtype=torch.float64)
    a = 10 ** (-decades * torch.rand(n, generator=g, dtype=torch.float64))
    b = 10 ** (-decades * torch.rand(n, generator=g, dtype=torch.float64))
    a, b = (a / a.sum()).to(dtype), (b / b.sum()).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = sinkhorn_banded(s.to(dtype), t.to(dtype), a=a, b=b, gamma=0.1, temperature=temperature)
    D = plan.to_dense().double()
    assert bool(torch.isfinite(D).all())
    row = float((D.sum(1) - a.double()).abs().sum())
    slack = 1e-12 if dtype == torch.float64 else 1e-6  # the float32 plan's own rounding
    assert row <= float(plan.marginal_error) * 1.01 + slack  # the reported error is never below the truth
    if bool(plan.converged):
        assert float(D.sum()) == pytest.approx(1.0, abs=10 * 1e-6)
        torch.testing.assert_close(D.sum(0), b.double() * (a.double().sum() / b.double().sum()),
                                   atol=1e-9, rtol=1e-5)


def test_mixed_float32_and_float64_scores_without_weights():
    # uniform weights formed in the compute dtype: no false "same total mass" refusal at any n
    for n in (10, 100, 1000, 3000):
        g = torch.Generator().manual_seed(n)
        plan = sinkhorn_banded(torch.randn(n, generator=g), torch.randn(n, generator=g, dtype=torch.float64))
        assert float(plan.to_dense().sum()) == pytest.approx(1.0, abs=1e-6)


def test_solve_under_inference_mode_is_the_plain_solve(gen):
    """Evaluation under ``torch.inference_mode()``: its tensors have no version counter, which the
    compiled kernels' window check must not ask for."""
    s, t = torch.randn(2, 3000, generator=gen, dtype=torch.float64), torch.randn(2, 2500, generator=gen,
                                                                                dtype=torch.float64)
    want = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    with torch.inference_mode():
        got = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    assert torch.equal(got.values, want.values) and torch.equal(got.transport_cost(), want.transport_cost())
