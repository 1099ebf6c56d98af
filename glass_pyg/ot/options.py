r"""The options of the 1-D solvers, defined once: for :func:`sinkhorn_banded`, the ``GLASS`` head and the configs.

:class:`SolverOptions` holds the choices a user makes about a solve (in the
spirit of OTT's solver objects); calling it solves. The ``GLASS`` head takes
one (``GLASS(projection, options=SolverOptions(gamma=1.0, temperature="rank"))``),
the YAML ``ot:`` section builds one (``OTConfig.solver_options()``), and the
config validator reads its allowed values from here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor

from .._choices import GRADS, METHODS, SOLVERS, TEMPERATURES
from ._validation import check_choices, check_options, positive_scalar

__all__ = ["SolverOptions", "GRADS", "METHODS", "SOLVERS", "TEMPERATURES"]



@dataclass(frozen=True)
class SolverOptions:
    r"""How to solve a 1-D entropic transport problem (validated on construction).

    Args:
        gamma (float): entropic regularisation :math:`\gamma > 0` (see ``temperature``). Default ``0.1``.
        temperature (str): ``"absolute"`` (``gamma`` in squared score units) or ``"rank"`` (``gamma``
            times the product of the mean spacings of the sorted scores). Default ``"absolute"``.
        max_iter (int): most Sinkhorn sweeps (``>= 0``). Default ``200``.
        tol (float): relative L1 marginal error to stop at (``> 0``). Default ``1e-6``.
        band_eps (float): certified bound on the omitted mass, in ``(0, 1)``. Default ``1e-6``.
        grad (str): ``"implicit"`` (adjoint solve at the fixed point) or ``"unrolled"``. Default ``"implicit"``.
        method (str): ``"newton"`` or ``"sinkhorn"`` (banded solver). Default ``"newton"``.

    Raises:
        ValueError: naming the option and the value.

    Example:
        >>> from glass_pyg.ot import SolverOptions
        >>> import torch
        >>> opts = SolverOptions(gamma=1.0, temperature="rank")
        >>> plan = opts(torch.randn(100), torch.randn(120))   # sinkhorn_banded with these options
        >>> bool(plan.converged.all())
        True
    """

    gamma: float = 0.1
    temperature: str = "absolute"
    max_iter: int = 200
    tol: float = 1e-6
    band_eps: float = 1e-6
    grad: str = "implicit"
    method: str = "newton"

    def __post_init__(self) -> None:
        check_choices(temperature=self.temperature, grad=self.grad, method=self.method)
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)):
            raise ValueError(f"gamma must be a number (a per-slice tensor goes to sinkhorn_banded), got {self.gamma!r}")
        positive_scalar(self.gamma, "gamma")
        check_options(self.max_iter, self.tol, self.band_eps)

    def as_dict(self) -> dict:
        """The options as keyword arguments of :func:`~glass_pyg.ot.sinkhorn_banded`."""
        return asdict(self)

    def __call__(self, s: Tensor, t: Tensor, a: Tensor | None = None, b: Tensor | None = None, **kwargs):
        """:func:`~glass_pyg.ot.sinkhorn_banded` with these options (``kwargs``: its other arguments, e.g. ``init``)."""
        from ._sinkhorn_banded import sinkhorn_banded
        return sinkhorn_banded(s, t, a, b, **self.as_dict(), **kwargs)
