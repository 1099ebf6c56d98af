"""Argument checks shared by the solvers: clear errors instead of NaN plans."""
from __future__ import annotations

import torch
from torch import Tensor

from .._choices import GRADS, METHODS, TEMPERATURES

_CHOICES = {"temperature": TEMPERATURES, "grad": GRADS, "method": METHODS}


class ConvergenceWarning(UserWarning):
    """A solver stopped at ``max_iter`` before its marginal error reached ``tol``.

    Example:
        >>> import warnings, torch
        >>> from glass_pyg.ot import ConvergenceWarning, sinkhorn_banded
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     plan = sinkhorn_banded(torch.randn(200), torch.randn(200), gamma=1e-3, max_iter=1, method="sinkhorn")
        >>> any(issubclass(w.category, ConvergenceWarning) for w in caught), bool(plan.converged.all())
        (True, False)
    """


def first_order_only() -> None:
    """Refuse a double backward (``create_graph=True``) through an implicit gradient."""
    if torch.is_grad_enabled():
        raise RuntimeError("the solver's implicit gradient is first-order only: a double backward "
                           "(create_graph=True, e.g. a gradient penalty or Hessian-vector products) through "
                           "the plan is not supported; use grad='unrolled' for higher derivatives")


def as_slices(x: Tensor, name: str) -> Tensor:
    """Return ``x`` as ``(L, n)``; accepts ``(n,)`` or ``(L, n)`` floating tensors."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape and dtype only, no values): the solver needs "
                         "the scores' values")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if x.dim() not in (1, 2) or x.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (n,) or (L, n) with n >= 1, got {tuple(x.shape)}")
    if x.dim() == 2 and x.shape[0] == 0:
        raise ValueError(f"{name} has no slices: shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x if x.dim() == 2 else x.unsqueeze(0)


def weights(w: Tensor | None, like: Tensor, name: str) -> Tensor:
    """Weights of shape ``like`` (L, n); uniform ``1/n`` when ``None``."""
    L, n = like.shape
    if w is None:
        return like.new_full((L, n), 1.0 / n).detach()
    if not isinstance(w, Tensor):
        w = torch.as_tensor(w, dtype=like.dtype, device=like.device)
    if w.dim() == 1:
        w = w.unsqueeze(0).expand(L, -1)
    if w.dim() != 2 or w.shape[-1] != n or w.shape[0] not in (1, L):
        raise ValueError(f"{name} must have shape ({n},) or ({L}, {n}) to match the scores, "
                         f"got {tuple(w.shape)}")
    w = w.expand(L, n).to(like.dtype)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} contains non-finite values")
    if bool((w <= 0).any()):
        raise ValueError(f"{name} must be positive; got min {float(w.min()):.3g} "
                         "(drop points of zero weight before solving)")
    return w


def same_mass(a: Tensor, b: Tensor, rtol: float) -> None:
    """Raise unless the weights ``a`` and ``b`` of every slice have the same mass within ``rtol``."""
    ma, mb = a.sum(-1), b.sum(-1)
    bad = (ma - mb).abs() > rtol * torch.maximum(ma, mb)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f"a and b must have the same total mass per slice; slice {k}: "
                         f"sum(a) = {float(ma[k]):.8g}, sum(b) = {float(mb[k]):.8g}")


def matched_weights(a: Tensor | None, b: Tensor | None, s: Tensor, t: Tensor,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The marginals ``(L, n)``, ``(L, m)`` in the compute ``dtype``, with exactly equal masses.

    Uniform weights are formed in ``dtype`` itself. Given weights must agree in
    mass to the precision of the coarsest given dtype (float32 sums of weights
    spread over many decades differ by ~1e-8); ``b`` is then rescaled to
    ``a``'s mass, since a balanced solve whose masses differ in the last bits
    drifts its potentials apart instead of converging.
    """
    a2 = weights(a, s.to(dtype), "a").to(dtype)
    b2 = weights(b, t.to(dtype), "b").to(dtype)
    given = [w.dtype for w in (a, b) if isinstance(w, Tensor)]
    coarse = any(d != torch.float64 for d in given)
    same_mass(a2, b2, 1e-5 if coarse else 1e-9)
    return a2, b2 * (a2.sum(-1, keepdim=True) / b2.sum(-1, keepdim=True))


def positive_scalar(x, name: str) -> None:
    """Raise unless ``x`` is a finite number > 0 (naming it ``name``)."""
    if isinstance(x, Tensor):
        ok = bool(torch.isfinite(x).all()) and bool((x > 0).all())
    else:
        try:
            ok = float(x) > 0 and float(x) < float("inf")
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a positive number, got {x!r}") from None
    if not ok:
        raise ValueError(f"{name} must be positive and finite, got {x!r}")


def gamma_per_slice(gamma, L: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``gamma`` (a positive scalar or one value per slice) as an ``(L,)`` tensor."""
    positive_scalar(gamma, "gamma")
    g = torch.as_tensor(gamma, dtype=dtype, device=device)
    if g.dim() > 1 or g.numel() not in (1, L):
        raise ValueError(f"gamma must be a scalar or have shape ({L},), got {tuple(g.shape)}")
    return g.reshape(-1).expand(L) if g.numel() == 1 else g.reshape(L)


def check_options(max_iter, tol, band_eps=None) -> None:
    """Raise on a solver option out of range: ``max_iter``, ``tol``, ``band_eps``."""
    if not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}")
    positive_scalar(tol, "tol")
    if band_eps is not None:
        positive_scalar(band_eps, "band_eps")
        if band_eps >= 1:
            raise ValueError(f"band_eps must be < 1, got {band_eps!r}")


def check_choices(**chosen: str) -> None:
    """Raise unless each named option (``temperature``, ``grad``, ``method``) is one of its allowed values."""
    for name, value in chosen.items():
        if value not in _CHOICES[name]:
            raise ValueError(f"{name} must be one of {_CHOICES[name]}, got {value!r}")
