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
