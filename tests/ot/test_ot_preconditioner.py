"""The Laplacian solves behind Newton steps and the implicit backward converge in few CG iterations,
for narrow (rank temperature) and wide (absolute temperature) bands alike."""
import pytest
import torch

import glass_pyg.ot._implicit as implicit
import glass_pyg.ot._laplacian as laplacian
from glass_pyg.ot import sinkhorn_banded


# wide bands (absolute temperature) take the path preconditioner, narrow ones (rank) the staircase factor
@pytest.mark.parametrize("temperature,gamma,max_cg", [("absolute", 0.05, 30), ("rank", 1.0, 15)])
def test_backward_solve_converges_quickly(monkeypatch, temperature, gamma, max_cg):
    seen = []

    def spy(op, yr, yc, rtol, max_iter, check_every=5):
        xr, xc, info = laplacian.solve_laplacian(op, yr, yc, rtol, max_iter, check_every)
        # residual of the returned solution, checked independently of CG's own bookkeeping
        qr, qc = op.matvec(xr, xc)
        shift = (yr.sum(-1) + yc.sum(-1)) / (yr.shape[-1] + yc.shape[-1])
        res = torch.sqrt(((qr - yr + shift[:, None]) ** 2).sum(-1) + ((qc - yc + shift[:, None]) ** 2).sum(-1))
        seen.append((info.iterations, float((res / torch.sqrt((yr ** 2).sum(-1) + (yc ** 2).sum(-1))).max())))
        assert (op.factor is not None) == (temperature == "rank")
        return xr, xc, info

    monkeypatch.setattr(implicit, "solve_laplacian", spy)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 400, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 500, generator=g, dtype=torch.float64) + 0.5
    plan = sinkhorn_banded(s, t, gamma=gamma, temperature=temperature)
    D = torch.rand(3, 400, 500, generator=g, dtype=torch.float64)
    (plan.to_dense() * D).sum().backward()
    (iters, rel_res), = seen
    assert iters <= max_cg, iters
    assert rel_res < 1e-8, rel_res


def test_a_slow_staircase_solve_continues_on_the_path(monkeypatch):
    """Targets that are the cube of a uniform (dense near 0) at rank temperature: the staircase factor
    gains little per iteration although the couplings it leaves out hold under 5% of the mass. The
    Newton solve then continues on the path preconditioner from where it stands, and later steps
    take the path at once; the solution still meets its residual, checked independently. (At 65536:
    9 + 12 iterations, against 12 + 20 on the staircase throughout.)"""
    import glass_pyg.ot._iterations as iterations
    seen = []

    def spy(op, path, yr, yc, rtol, max_iter):
        xr, xc, info = laplacian.solve_newton_system(op, path, yr, yc, rtol, max_iter)
        qr, qc = op.matvec(xr, xc)
        shift = (yr.sum(-1) + yc.sum(-1)) / (yr.shape[-1] + yc.shape[-1])
        res = torch.sqrt(((qr - yr + shift[:, None]) ** 2).sum(-1) + ((qc - yc + shift[:, None]) ** 2).sum(-1))
        rel = res / torch.sqrt(((yr - shift[:, None]) ** 2).sum(-1) + ((yc - shift[:, None]) ** 2).sum(-1))
        seen.append((op.factor is not None, info.slow, info.iterations, bool((rel <= 1.01 * rtol).all())))
        return xr, xc, info

    monkeypatch.setattr(iterations, "solve_newton_system", spy)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(1, 65536, generator=g, dtype=torch.float64)
    t = torch.rand(1, 65536, generator=g, dtype=torch.float64) ** 3
    plan = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    assert bool(plan.converged.all())
    assert seen[0][:2] == (True, True)  # the staircase, given up
    assert all(not factor for factor, *_ in seen[1:])  # then the path at once
    assert all(met for *_, met in seen)
    switched = sum(its for _, _, its, _ in seen)
    seen.clear()
    monkeypatch.setattr(laplacian, "STAIRCASE_SLOW", float("inf"))  # the staircase throughout
    alone = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    assert all(factor and not slow for factor, slow, *_ in seen)
    assert switched < sum(its for _, _, its, _ in seen)
    torch.testing.assert_close(plan.transport_cost(), alone.transport_cost(), rtol=1e-5, atol=0)
