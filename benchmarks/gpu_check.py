"""A short prepared check of the device path: the banded solver and the GLASS head on a GPU.

    python benchmarks/gpu_check.py                               # CUDA: correctness, then 2^20 and 2^24
    python benchmarks/gpu_check.py --device cpu --sizes 12 --check-log2 10   # the same logic on the CPU

1. Correctness: ``sinkhorn_banded`` on the device against the CPU on the same
   scores (n = 2^check-log2, float64 and float32, absolute and rank
   temperature): the transport cost, the potentials' spread and the gradient of
   the cost with respect to the scores; then a ``GLASS`` head on an S^2 pair
   (loss and gradient of the projection).
2. Times: forward (solve + transport cost) and implicit backward at each
   ``--sizes`` (log2 n), float32, rank gamma = 1, synchronised, best of
   ``--repeats``, with one ``torch.sort`` for scale and the device's peak memory.

Prints a table and exits 1 when a correctness check fails; ``--out`` writes
``gpu_check.md``. Meant to fit in a few minutes of a lent GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from glass_pyg.experiments.run_dir import atomic_write_text
from glass_pyg.ot import sinkhorn_banded


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _scores(n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, n, generator=g, dtype=torch.float64).to(dtype),
            (torch.randn(2, n, generator=g, dtype=torch.float64) + 1.0).to(dtype))


def _solve(s: torch.Tensor, t: torch.Tensor, temperature: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = s.clone().requires_grad_(True)
    plan = sinkhorn_banded(x, t, gamma=1.0 if temperature == "rank" else 0.05, temperature=temperature)
    cost = plan.transport_cost().sum()
    (grad,) = torch.autograd.grad(cost, x)
    return cost.detach(), plan.f.detach() - plan.f.detach().mean(-1, keepdim=True), grad


def check_solver(device: torch.device, n: int) -> list[tuple[str, float, float, bool]]:
    """``(case, relative difference, tolerance, ok)`` of the device's solve against the CPU's."""
    rows = []
    for dtype, tol in ((torch.float64, 1e-8), (torch.float32, 2e-3)):
        for temperature in ("absolute", "rank"):
            s, t = _scores(n, dtype)
            ref = _solve(s, t, temperature)
            got = _solve(s.to(device), t.to(device), temperature)
            for name, a, b in zip(("cost", "potentials", "gradient"), got, ref):
                a, b = a.cpu().double(), b.double()
                diff = float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
                rows.append((f"{name}, {str(dtype)[6:]}, {temperature}", diff, tol, diff <= tol))
    return rows


def check_head(device: torch.device) -> list[tuple[str, float, float, bool]]:
    """A ``GLASS`` head with a ``SphereProjection`` on an S^2 pair: loss and projection gradient, device vs CPU."""
    from glass_pyg.datasets import SpherePairDataset
    from glass_pyg.nn import GLASS, SphereProjection

    pair = SpherePairDataset(n=256, noise_deg=2.0, seed=0)[0]
    out = []
    for dev in (torch.device("cpu"), device):
        proj = SphereProjection(8, 4, generator=torch.Generator().manual_seed(0)).double().to(dev)
        head = GLASS(proj, "sq_geodesic", gamma=0.05)
        res = head(pair.pos_s.double().to(dev), pair.pos_t.double().to(dev))
        grads = torch.autograd.grad(res.loss, [p for p in proj.parameters() if p.requires_grad])
        out.append((res.loss.detach().cpu(), torch.cat([g.flatten() for g in grads]).cpu()))
    rows = []
    for name, a, b in (("head loss", out[1][0], out[0][0]), ("head gradient", out[1][1], out[0][1])):
        diff = float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
        rows.append((name, diff, 1e-8, diff <= 1e-8))
    return rows


def time_size(device: torch.device, log2n: int, repeats: int) -> dict[str, float]:
    n = 1 << log2n
    s, t = _scores(n, torch.float32)
    s, t = s[:1].to(device), t[:1].to(device)
    best = {"sort_s": float("inf"), "forward_s": float("inf"), "backward_s": float("inf")}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.sort(s, dim=-1)
        _sync(device)
        best["sort_s"] = min(best["sort_s"], time.perf_counter() - t0)
        x = s.clone().requires_grad_(True)
        _sync(device)
        t0 = time.perf_counter()
        cost = sinkhorn_banded(x, t, gamma=1.0, temperature="rank").transport_cost().sum()
        _sync(device)
        t1 = time.perf_counter()
        cost.backward()
        _sync(device)
        t2 = time.perf_counter()
        best["forward_s"] = min(best["forward_s"], t1 - t0)
        best["backward_s"] = min(best["backward_s"], t2 - t1)
    best["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", type=int, nargs="+", default=[20, 24], help="log2 of n for the timings")
    p.add_argument("--check-log2", type=int, default=16, help="log2 of n for the correctness check")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="folder for gpu_check.md")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: pass --device cpu to run the check's logic on the CPU", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines = [f"# Device check: {name}, torch {torch.__version__}", "",
             "| check | relative difference | tolerance | ok |", "|---|---|---|---|"]
    checks = check_solver(device, 1 << a.check_log2) + check_head(device)
    lines += [f"| {c} | {d:.2e} | {tol:g} | {'yes' if ok else 'NO'} |" for c, d, tol, ok in checks]
    lines += ["", "| n | torch.sort | forward | backward | forward / sort | peak MiB |", "|---|---|---|---|---|---|"]
    for log2n in a.sizes:
        r = time_size(device, log2n, a.repeats)
        lines.append(f"| 2^{log2n} | {r['sort_s'] * 1e3:.3g} ms | {r['forward_s']:.3g} s | {r['backward_s']:.3g} s | "
                     f"{r['forward_s'] / r['sort_s']:.0f}x | {r['peak_mib']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        atomic_write_text(os.path.join(a.out, "gpu_check.md"), text)
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    from glass_pyg.experiments.memory import retain_freed_memory
    retain_freed_memory()  # as the glass-pyg command does: freed band-sized buffers are reused
    sys.exit(main())
