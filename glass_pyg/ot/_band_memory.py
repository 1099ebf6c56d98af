r"""Whether a band's plan fits in the memory of its device, and a clear error naming why not.

The padded plan holds :math:`L \times n \times W` entries, :math:`W` the widest row of any slice.
Where the scores are dense the entropic plan spans about :math:`\sqrt{\gamma}` over the local
spacing of the targets: at rank temperature :math:`\gamma` follows the mean spacing (the range over
:math:`n - 1`), so one outlier or a heavy tail makes the band wide in the bulk, and a batch takes
the width of its widest slice.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from ._band import Band


def device_bytes(device: torch.device) -> int | None:
    r"""The memory of ``device``: ``MemTotal`` on Linux, the total memory of a CUDA device; None where
    it is not known. The check compares with the total, not with what is free now: memory that a
    process keeps for reuse (the command line's allocator settings, PyTorch's CUDA cache) is not
    free, yet a plan may take it."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    return _cpu_bytes() if device.type == "cpu" else None


@functools.lru_cache(maxsize=1)
def _cpu_bytes() -> int | None:
    # read once: every solve asks, and the machine's memory does not change under it
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _spread(x: Tensor) -> Tensor:
    r"""Mean spacing (range over :math:`n - 1`) over the median spacing of sorted rows ``(L, n)``."""
    d = x.diff(dim=-1)
    if d.shape[-1] == 0:
        return torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    median = d.median(-1).values
    mean = (x[:, -1] - x[:, 0]) / d.shape[-1]
    return torch.where(median > 0, mean / median.clamp_min(torch.finfo(x.dtype).tiny),
                       torch.full_like(mean, float("inf")))


def check_band_fits(band: Band, dtype: torch.dtype, ss: Tensor, ts: Tensor, gamma: Tensor, rank: bool,
                    memory: int | None = None) -> None:
    r"""Raise a :class:`MemoryError` that names the widest slice and the likely cause when the padded
    plan of ``band`` (entries of ``dtype``) exceeds the memory of its device (``memory`` bytes;
    :func:`device_bytes` when None): no solve could hold it. ``ss``, ``ts`` are the sorted scores
    ``(L, n)``, ``(L, m)``, ``gamma`` ``(L,)`` in squared score units."""
    L, n, _ = band.shape
    need = L * n * band.width * dtype.itemsize
    memory = device_bytes(ss.device) if memory is None else memory
    if memory is None or need <= memory:
        return
    widths = (band.row_hi - band.row_lo + 1).amax(-1)
    k = int(widths.argmax())
    spread = max(float(_spread(ss[k:k + 1].detach())[0]), float(_spread(ts[k:k + 1].detach())[0]))
    if rank and spread > 10:
        cause = (f"at temperature='rank' gamma follows the mean spacing of the scores (their range over n - 1), "
                 f"which outliers or heavy tails make {spread:.0f}x the median spacing here, so the plan is wide "
                 "where the scores are dense: standardise or clip the scores, or lower gamma")
    elif rank:
        cause = "lower gamma"
    else:
        cause = "at temperature='absolute' the plan spans a fixed share of the ranks: lower gamma or use " \
                "temperature='rank'"
    rest = int(widths.sort().values[-2]) if L > 1 else 0
    apart = f"; the other slices need at most {rest} columns: solve slice {k} apart" if L > 1 and 4 * rest < int(
        widths[k]) else ""
    raise MemoryError(f"sinkhorn_banded: the band needs {need / 2**30:.1f} GiB ({L} slice(s) x {n} rows x "
                      f"{band.width} columns of {dtype}), more than the {memory / 2**30:.1f} GiB of "
                      f"{ss.device.type} memory. Slice {k} is the widest ({int(widths[k])} columns, gamma "
                      f"{float(gamma[k]):.3g} in squared score units): {cause}{apart}.")
