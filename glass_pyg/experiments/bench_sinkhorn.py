r"""Micro-benchmark of the 1-D entropic OT solvers.

Compares, on standard normal source scores and target scores shifted by one
standard deviation (dense and POT run in full at absolute gamma only; at rank
temperature gamma is tiny against the score spread, where they need many
thousands of iterations, so dense is timed per iteration and scaled): the
banded solver at absolute and at rank temperature, the dense log-domain
solver, POT ``sinkhorn_log``, ``torchsort.soft_sort`` (if installed) and
``torch.sort`` (the floor). Reports median wall time,
iterations, stored entries, band width, the size of the stored plan, the
banded solve's peak memory (resident set above its live level before the solve,
sampled every 2 ms) and the L1 plan error against the dense plan where the
dense solver ran.
"""
from __future__ import annotations

import csv
import ctypes
import gc
import math
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..ot import sinkhorn_banded, sinkhorn_dense


def rss_mib() -> float:
    """Resident memory of this process in MiB (0 where ``/proc`` is not available)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # not Linux
        return 0.0



@dataclass
class BenchRow:
    """One timed size: banded and dense solver times, iterations and memory."""
    n: int
    method: str
    temperature: str
    gamma: float
    median_s: float
    iterations: int | str = "-"
    nnz: int | str = "-"
    band_width: int | str = "-"
    plan_mb: float | str = "-"
    peak_mb: float | str = "-"
    err_vs_dense: float | str = "-"
    note: str = ""


@dataclass
class BenchConfig:
    """What ``glass-pyg bench-sinkhorn`` times: sizes, gamma, repeats, the dense limit."""
    sizes: list[int] = field(default_factory=lambda: [1024, 4096, 16384])
    gamma: float = 0.05
    rank_gamma: float = 1.0
    band_eps: float = 1e-6
    max_iter: int = 200
    tol: float = 1e-6
    repeats: int = 3
    dense_max_n: int = 2048
    pot_max_n: int = 2048
    dense_rank_max_n: int = 128  # dense to convergence at rank temperature (~10^5 iterations)
    dense_rank_max_iter: int = 1_000_000
    dense_extrapolate_iters: int = 1
    dense_extrapolate_max_n: int = 65536
    absolute_max_n: int = 16384  # the absolute-gamma plan is a fixed fraction of n wide: O(n^2)
    seed: int = 0


def _release_freed_memory() -> None:
    """Hand memory that is free but still resident back to the system (glibc keeps freed blocks
    of up to its adaptive threshold, 32 MiB, in its heap), so that resident memory measures what
    is live: without it an earlier solve's freed blocks are reused unseen and a peak reads as 0."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _peak_memory(fn):
    """``fn()`` and its peak resident memory above the live level before it, in MiB (sampled)."""
    _release_freed_memory()
    base = rss_mib()
    peak = [base]
    done = threading.Event()

    def watch():
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss_mib())

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        out = fn()
    finally:
        done.set()
        th.join()
    peak[0] = max(peak[0], rss_mib())
    return out, peak[0] - base


def _median_time(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _scores(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, generator=g, dtype=torch.float64)
    t = torch.randn(n, generator=g, dtype=torch.float64) + 1.0
    return s, t


def run(cfg: BenchConfig, progress=None) -> list[BenchRow]:
    """Time the solvers at every size of ``cfg``; ``progress(row)`` after each."""
    rows: list[BenchRow] = []
    try:
        import ot as pot
    except ImportError:  # pragma: no cover - optional
        pot = None
    try:
        import torchsort
    except ImportError:  # pragma: no cover - optional
        torchsort = None
    dense_iters: dict[str, tuple[int, int]] = {}
    for n in sorted(cfg.sizes):
        s, t = _scores(n, cfg.seed)
        dense_plan = None
        sort_t, _ = _median_time(lambda: torch.sort(s), max(cfg.repeats, 5))
        rows.append(BenchRow(n, "torch.sort", "-", float("nan"), sort_t))
        if torchsort is not None:
            x = s.float().unsqueeze(0)
            ts_t, _ = _median_time(lambda: torchsort.soft_sort(x, regularization_strength=cfg.gamma),
                                   cfg.repeats)
            rows.append(BenchRow(n, "torchsort.soft_sort", "-", cfg.gamma, ts_t))
        for temperature, gamma in (("absolute", cfg.gamma), ("rank", cfg.rank_gamma)):
            if temperature == "absolute" and n > cfg.absolute_max_n:
                continue
            def solve():
                return sinkhorn_banded(s, t, gamma=gamma, max_iter=cfg.max_iter, tol=cfg.tol,
                                       band_eps=cfg.band_eps, temperature=temperature, warn=False)
            med, plan = _median_time(solve, cfg.repeats)
            eff_gamma = float(plan.gamma)
            err = "-"
            full_max = cfg.dense_max_n if temperature == "absolute" else cfg.dense_rank_max_n
            if n <= full_max:
                C = (s[:, None] - t[None, :]) ** 2
                cap = 5 * cfg.max_iter if temperature == "absolute" else cfg.dense_rank_max_iter
                d_t, dense = _median_time(lambda: sinkhorn_dense(C, gamma=eff_gamma, max_iter=cap,
                                                                 tol=cfg.tol, warn=False), 1)
                err = float((plan.to_dense() - dense.to_dense()).abs().sum())
                rows.append(BenchRow(n, "dense", temperature, eff_gamma, d_t, dense.iterations, n * n, n,
                                     note="" if bool(dense.converged) else "not converged"))
                if bool(dense.converged):
                    dense_iters[temperature] = (n, dense.iterations)
                dense_plan = dense
            elif n <= cfg.dense_extrapolate_max_n:
                # time dense iterations on cache-sized blocks (n x n costs are never stored
                # at once) and scale: once by the iterations dense Sinkhorn needed at the
                # largest n it ran in full (its count grows with n, so a lower bound), once
                # by the banded solver's own count (dense cannot converge in that many)
                k = cfg.dense_extrapolate_iters
                per_iter = _dense_iteration_time(s, t, eff_gamma, k)
                if temperature in dense_iters:
                    n_full, iters = dense_iters[temperature]
                    rows.append(BenchRow(n, "dense (extrapolated)", temperature, eff_gamma, per_iter * iters,
                                         iters, n * n, n, note=f"{k} timed iterations x the {iters} "
                                                               f"dense needed at n={n_full}"))
                rows.append(BenchRow(n, "dense (equal iterations)", temperature, eff_gamma,
                                     per_iter * max(plan.iterations, 1), plan.iterations, n * n, n,
                                     note=f"{k} timed iterations x banded iteration count"))
            # stored plan size; the solver's working set is a small multiple of it
            plan_mb = plan.nnz * plan.values.element_size() / 2**20
            del plan
            plan, peak_mb = _peak_memory(solve)
            rows.append(BenchRow(n, "banded", temperature, eff_gamma, med, plan.iterations, plan.nnz,
                                 plan.width, plan_mb, peak_mb, err,
                                 note="" if bool(plan.converged) else "not converged"))
            if pot is not None and n <= cfg.pot_max_n and temperature == "absolute":
                a = torch.full((n,), 1.0 / n, dtype=torch.float64).numpy()
                C = ((s[:, None] - t[None, :]) ** 2).numpy()
                p_t, P = _median_time(lambda: pot.sinkhorn(a, a, C, eff_gamma, method="sinkhorn_log",
                                                           numItermax=5 * cfg.max_iter, stopThr=cfg.tol,
                                                           warn=False), 1)
                perr = float((plan.to_dense() - torch.from_numpy(P)).abs().sum())
                rows.append(BenchRow(n, "POT sinkhorn_log", temperature, eff_gamma, p_t, "-", n * n, n,
                                     err_vs_dense=perr, note="err column: vs banded"))
            if progress is not None:
                progress(rows[-1])
        del dense_plan
    return rows


def _lse_rows(x):
    """Row-wise log-sum-exp, arguments below the row maximum clamped at -700 (exp past its
    underflow point is an order of magnitude slower on CPUs and adds nothing)."""
    mx = x.amax(1, keepdim=True)
    return (x - mx).clamp_(min=-700.0).exp_().sum(1).log_() + mx.squeeze(1)


def _dense_iteration_time(s, t, gamma: float, iters: int, block_entries: int = 1 << 18) -> float:
    """Seconds per dense log-domain Sinkhorn iteration (both half-steps over all n x m
    costs), on cache-sized blocks of rows, then of columns, so reductions run along
    contiguous memory; n x m costs are never stored at once."""
    n, m = s.shape[0], t.shape[0]
    f = torch.zeros(n, dtype=s.dtype)
    g = torch.zeros(m, dtype=s.dtype)
    rb, cb = max(1, block_entries // m), max(1, block_entries // n)
    t0 = time.perf_counter()
    for _ in range(iters):
        for i in range(0, n, rb):
            f[i:i + rb] = -gamma * _lse_rows((g[None, :] - (s[i:i + rb, None] - t[None, :]) ** 2) / gamma)
        for j in range(0, m, cb):
            g[j:j + cb] = -gamma * _lse_rows((f[None, :] - (t[j:j + cb, None] - s[None, :]) ** 2) / gamma)
    return (time.perf_counter() - t0) / iters


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}"
    return str(v)


def to_markdown(rows: list[BenchRow]) -> str:
    """The timing rows as a Markdown table."""
    cols = list(asdict(rows[0]).keys())
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(v) for v in asdict(r).values()) + " |")
    return "\n".join(out)


def setting() -> str:
    r"""Threads and kernels the solver ran with."""
    from ..ot import native
    return f"torch threads: {torch.get_num_threads()}; band kernels: {native.status()}"


def summary(rows: list[BenchRow]) -> str:
    """Ratios the issue asks about: slope of banded time, banded vs dense, banded vs sort."""
    lines = [setting()]
    for temp in ("absolute", "rank"):
        pts = [(r.n, r.median_s) for r in rows if r.method == "banded" and r.temperature == temp]
        if len(pts) >= 2:
            big = [p for p in pts if p[0] >= 2**14] or pts
            if len(big) >= 2:
                (n0, t0), (n1, t1) = big[0], big[-1]
                lines.append(f"banded {temp}: log-log slope of time from n={n0} to n={n1}: "
                             f"{math.log(t1 / t0) / math.log(n1 / n0):.3f}")
        for r in rows:
            if r.method == "banded" and r.temperature == temp:
                dense = [d for d in rows if d.n == r.n and d.temperature == temp and d.method.startswith("dense")]
                sort = [d for d in rows if d.n == r.n and d.method == "torch.sort"]
                for d in dense:
                    kind = d.method[len("dense"):].strip(" ()")
                    lines.append(f"n={r.n} {temp}: dense/banded = {d.median_s / r.median_s:.3g}x"
                                 + (f" ({kind}: {d.note})" if kind else ""))
                if sort:
                    lines.append(f"n={r.n} {temp}: banded/torch.sort = {r.median_s / sort[0].median_s:.1f}x")
    return "\n".join(lines)


def write(rows: list[BenchRow], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``sinkhorn.md`` and ``sinkhorn.csv`` atomically (temp file, then rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, cs = out / "sinkhorn.md", out / "sinkhorn.csv"
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(to_markdown(rows) + "\n\n" + summary(rows) + "\n")
    tmp.replace(md)
    tmp = cs.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(asdict(rows[0]).keys()))
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    tmp.replace(cs)
    return md, cs
