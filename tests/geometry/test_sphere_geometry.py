import math

import mpmath
import pytest
import torch

from glass_pyg.geometry import (
    exp_map,
    geodesic_distance,
    log_map,
    normalize,
    pairwise_geodesic_distance,
    project_tangent,
    random_rotation,
    rotation_angle,
    rotation_error_deg,
    so3_exp,
)
from glass_pyg.geometry.geomstats_backend import float64_default, gs_dist, gs_exp, gs_log, hypersphere

ANGLES = [1e-3, 1e-2, 0.3, 1.0, math.pi / 2, 2.5, 3.0, math.pi - 1e-2, math.pi - 1e-3]


def points_at(angle, count, gen):
    base = normalize(torch.randn(count, 3, generator=gen, dtype=torch.float64))
    d = normalize(project_tangent(torch.randn(count, 3, generator=gen, dtype=torch.float64), base))
    return exp_map(angle * d, base), base, angle * d


def mp_log(x, b):
    mpmath.mp.dps = 40
    X, B = [mpmath.mpf(float(v)) for v in x], [mpmath.mpf(float(v)) for v in b]
    c = sum(p * q for p, q in zip(X, B))
    V = [p - c * q for p, q in zip(X, B)]
    s = mpmath.sqrt(sum(v * v for v in V))
    th = mpmath.atan2(s, c)
    return torch.tensor([float(th / s * v) for v in V], dtype=torch.float64), float(th)


@pytest.mark.parametrize("angle", ANGLES)
def test_maps_against_high_precision(angle, gen):
    x, b, _ = points_at(angle, 8, gen)
    for i in range(8):
        ref_log, ref_dist = mp_log(x[i], b[i])
        torch.testing.assert_close(log_map(x[i], b[i]), ref_log, atol=1e-12, rtol=0)
        assert abs(float(geodesic_distance(x[i], b[i])) - ref_dist) < 1e-13


@pytest.mark.parametrize("angle", ANGLES)
def test_agrees_with_geomstats(angle, gen):
    space = hypersphere()
    x, b, v = points_at(angle, 20, gen)
    torch.testing.assert_close(geodesic_distance(x, b), gs_dist(x, b, space), atol=1e-10, rtol=0)
    torch.testing.assert_close(exp_map(v, b), gs_exp(v, b, space), atol=1e-10, rtol=0)
    # geomstats' log takes sin(theta) from cos(theta): its own error grows like eps / sin^2(theta)
    tol = 1e-10 if angle < math.pi - 5e-3 else 1e-8
    torch.testing.assert_close(log_map(x, b), gs_log(x, b, space), atol=tol, rtol=0)


def test_geomstats_wrapper_handles_batch_axes(gen):
    x = normalize(torch.randn(4, 5, 3, generator=gen, dtype=torch.float64))
    b = normalize(torch.randn(3, generator=gen, dtype=torch.float64))
    torch.testing.assert_close(gs_log(x, b), log_map(x, b), atol=1e-10, rtol=0)
    assert gs_dist(x.float(), b.float()).dtype == torch.float32


def test_default_dtype_is_left_alone():
    import subprocess
    import sys
    code = ("import torch; torch.set_default_dtype(torch.float32); import glass_pyg;"
            "from glass_pyg.geometry.geomstats_backend import hypersphere; hypersphere();"
            "from glass_pyg.nn import SphereProjection; SphereProjection(geometry='geomstats');"
            "print(torch.get_default_dtype())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch.float32"
    with float64_default():
        assert torch.get_default_dtype() == torch.float64
    assert torch.get_default_dtype() == torch.float32


def test_numpy_backend_already_loaded_is_a_clear_error():
    import subprocess
    import sys
    code = ("import os; os.environ['GEOMSTATS_BACKEND']='numpy'; import geomstats.backend;"
            "from glass_pyg.geometry.geomstats_backend import hypersphere; hypersphere()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "pytorch backend" in out.stderr


def test_finite_gradients_at_singular_points(gen):
    b = normalize(torch.randn(3, generator=gen, dtype=torch.float64))
    cases = [(b, b), (-b, b), (b * (1 - 1e-17), b)]
    for x0, base in cases:
        for f in (lambda x: log_map(x, base).sum(), lambda x: log_map(base, x).sum(),
                  lambda x: geodesic_distance(x, base), lambda x: geodesic_distance(x, base) ** 2,
                  lambda x: exp_map(project_tangent(x, base) * 0, base).sum()):
            x = x0.clone().requires_grad_()
            val = f(x)
            (g,) = torch.autograd.grad(val, x)
            assert torch.isfinite(val) and torch.isfinite(g).all() and g.abs().max() < 1e3
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([0.0, 0.0, 1.0], dtype=dtype)
        assert float(geodesic_distance(x, -x)) == pytest.approx(math.pi, abs=1e-6)
        assert torch.equal(log_map(-x, x), torch.zeros(3, dtype=dtype))


def test_gradcheck(gen):
    x = normalize(torch.randn(5, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    b = normalize(torch.randn(5, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    v = project_tangent(torch.randn(5, 3, generator=gen, dtype=torch.float64), b.detach()).requires_grad_()
    assert torch.autograd.gradcheck(log_map, (x, b))
    assert torch.autograd.gradcheck(exp_map, (v, b))
    assert torch.autograd.gradcheck(geodesic_distance, (x, b))


def test_exp_log_roundtrip_and_pairwise(gen):
    x, b, v = points_at(1.2, 30, gen)
    torch.testing.assert_close(exp_map(log_map(x, b), b), x)
    P = pairwise_geodesic_distance(x[:4], b[:6])
    assert P.shape == (4, 6)
    torch.testing.assert_close(P[2, 5], geodesic_distance(x[2], b[5]))
    with pytest.raises(ValueError, match="size 3"):
        geodesic_distance(torch.zeros(4, 2), torch.zeros(4, 2))


def test_float32_precision_near_pi():
    x = torch.tensor([0.0, 0.0, 1.0])
    y = torch.tensor([math.sin(1e-3), 0.0, -math.cos(1e-3)])
    assert abs(float(geodesic_distance(x, y)) - (math.pi - 1e-3)) < 1e-6


def test_haar_rotations():
    gen = torch.Generator().manual_seed(0)
    R = random_rotation(20000, generator=gen)
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(20000, dtype=torch.float64))
    tr = torch.diagonal(R, dim1=1, dim2=2).sum(1)
    assert abs(float(tr.mean())) < 4 * 1.0 / math.sqrt(20000)  # Haar: E tr R = 0, Var tr R = 1
    assert abs(float(tr.var()) - 1.0) < 0.05
    # angle law: CDF (theta - sin theta) / pi; Kolmogorov-Smirnov distance
    theta = torch.sort(rotation_angle(R)).values
    cdf = (theta - torch.sin(theta)) / math.pi
    emp = torch.arange(1, 20001, dtype=torch.float64) / 20000
    assert float((cdf - emp).abs().max()) < 1.63 / math.sqrt(20000) * 1.2
    bounded = random_rotation(500, generator=gen, max_angle_deg=30)
    assert float(torch.rad2deg(rotation_angle(bounded)).max()) <= 30 + 1e-9


def test_so3_exp_and_rotation_error():
    omega = torch.tensor([0.0, 0.0, math.radians(30)], dtype=torch.float64)
    R = so3_exp(omega)
    torch.testing.assert_close(R @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               torch.tensor([math.cos(math.radians(30)), math.sin(math.radians(30)), 0],
                                            dtype=torch.float64))
    assert float(rotation_error_deg(R, torch.eye(3, dtype=torch.float64))) == pytest.approx(30)


@pytest.mark.parametrize("bound_deg", [120.0, 30.0, 1.0, 1e-5, 1e-9])
def test_bounded_rotation_follows_the_conditional_angle_law(bound_deg):
    # Haar conditioned on theta <= b: CDF (theta - sin theta) / (b - sin b); drawn directly, so tiny bounds
    # cost what large ones do (rejection sampling needed ~1/b^3 draws)
    from glass_pyg.geometry.rotation import _theta_minus_sin
    gen = torch.Generator().manual_seed(3)
    R = random_rotation(4000, generator=gen, max_angle_deg=bound_deg)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(R))
    theta = torch.sort(rotation_angle(R)).values
    b = torch.tensor(math.radians(bound_deg), dtype=torch.float64)
    assert float(theta.max()) <= float(b) * (1 + 1e-9)
    cdf = _theta_minus_sin(theta) / _theta_minus_sin(b)
    emp = torch.arange(1, 4001, dtype=torch.float64) / 4000
    assert float((cdf - emp).abs().max()) < 1.63 / math.sqrt(4000)  # KS at the 1% level
    # the series branch agrees with the direct formula where both are exact
    t = torch.tensor([0.05, 0.099, 0.1, 0.2], dtype=torch.float64)
    torch.testing.assert_close(_theta_minus_sin(t), t - torch.sin(t), rtol=1e-12, atol=0)
