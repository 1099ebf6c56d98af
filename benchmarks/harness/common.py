r"""Shared pieces of the matching benchmarks: budgeted runs, summaries, tables.

Each method runs in a fresh worker process with a wall-clock
budget; one that exceeds it is killed and reported as ``dnf`` (did not
finish), one that raises as ``error`` with its message. The worker measures
wall and CPU seconds of the call and its peak resident memory above the
worker's own baseline (the interpreter and imports). Workers are forked
from a ``forkserver`` that has imported the worker's module once, so a run
starts in milliseconds rather than re-importing torch.
"""
from __future__ import annotations

import csv
import io
import math
import multiprocessing as mp
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from glass_pyg._optional import pyplot
from glass_pyg.experiments.bench_sinkhorn import rss_mib
from glass_pyg.experiments.plots import save_figure
from glass_pyg.experiments.run_dir import atomic_write_text


@dataclass
class Outcome:
    """What one budgeted call returned and cost."""

    status: str  #: ``ok``, ``dnf`` (over budget) or ``error``
    value: Any = None  #: the function's return value when ``ok``
    wall_s: float = math.nan
    cpu_s: float = math.nan
    peak_mib: float = math.nan  #: peak RSS above the worker's baseline
    message: str = ""


def _worker(conn, fn: Callable, kwargs: dict, threads: int | None) -> None:
    try:
        if threads:
            import torch
            torch.set_num_threads(threads)
        base = rss_mib()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        value = fn(**kwargs)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        peak = r1.ru_maxrss / 1024 - base  # ru_maxrss is KiB on Linux
        conn.send(Outcome("ok", value, wall, cpu, max(peak, 0.0)))
    except BaseException as exc:  # reported, never raised across the process boundary
        conn.send(Outcome("error", message=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
    finally:
        conn.close()


def _context(module: str):
    """The forkserver context; its server (started on first use) preloads torch and ``module``."""
    ctx = mp.get_context("forkserver")
    if module != "__main__":
        ctx.set_forkserver_preload(["torch", module])  # no effect once the server runs
    return ctx


def run_budgeted(fn: Callable, kwargs: dict, budget_s: float, threads: int | None = None) -> Outcome:
    """Run ``fn(**kwargs)`` in a fresh worker process; kill it after ``budget_s`` seconds.

    ``fn`` must be a module-level function and ``kwargs`` picklable. The
    budget covers the call itself plus the worker's start, which is excluded
    from the reported times.
    """
    if budget_s <= 0:
        raise ValueError(f"budget_s must be positive, got {budget_s}")
    ctx = _context(fn.__module__)
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(send, fn, kwargs, threads), daemon=True)
    proc.start()
    send.close()
    try:
        if recv.poll(budget_s):
            try:
                return recv.recv()
            except EOFError:
                return Outcome("error", message=f"worker died (exit code {proc.exitcode})")
        return Outcome("dnf", message=f"over the budget of {budget_s:g} s")
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        recv.close()


def _exit_on_sigterm() -> None:
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def check_methods(methods: Sequence[str], known: Sequence[str]) -> None:
    """Raise, naming them, on methods a benchmark does not have."""
    unknown = sorted(set(methods) - set(known))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(known)}")


def run_grid(table: Table, cases: Iterable[tuple[dict[str, Any], dict[str, Any]]], methods: Sequence[str],
             worker: Callable, settings: Any, budget_s: float, threads: int | None = None,
             progress: Callable[[str], None] | None = None,
             on_row: Callable[[Table], None] | None = None) -> Table:
    """Run ``worker(method=, inst=, settings=)`` budgeted for every case and method; one row each.

    ``cases`` yields ``(keys, instance)``: the keys (size, noise, seed, ...)
    go into the row, the instance to the worker. ``on_row(table)`` runs after
    every row (e.g. to save the partial table).
    """
    _exit_on_sigterm()  # so a killed benchmark still kills its running worker (the finally below)
    for keys, inst in cases:
        for method in methods:
            o = run_budgeted(worker, {"method": method, "inst": inst, "settings": settings}, budget_s, threads)
            row = {**keys, "method": method, "status": o.status,
                   "message": o.message.splitlines()[0] if o.message else ""}
            if o.status == "ok":
                row.update(o.value)
                row["peak_mib"] = o.peak_mib
            table.add(row)
            if on_row:
                on_row(table)
            if progress:
                acc = row.get("acc_refined", row.get("acc_hungarian", math.nan))
                progress(" ".join(f"{k}={v}" for k, v in keys.items()) + f" {method}: {o.status}"
                         + (f" acc={acc:.3f} {row['wall_s']:.1f}s" if o.status == "ok" else ""))
    return table


def final_accuracy(row: dict[str, Any]) -> float | None:
    """The accuracy of a method's full decoder: refined where it has one, else Hungarian."""
    return row.get("acc_refined", row.get("acc_hungarian"))


def settings_line(glass: Any, budget_s: float, threads: int | None) -> str:
    """One line with glass's settings (a dataclass), the budget and the worker threads."""
    from dataclasses import asdict
    return ("glass: " + ", ".join(f"{k}={v}" for k, v in asdict(glass).items())
            + f"; budget {budget_s:g} s per method and instance; torch threads per worker: "
            + (str(threads) if threads else "default"))


def render(table: Table, out: str, name: str, header: str, headline: Callable[[Table], str],
           plot: Callable[[Table, str], None] | None = None) -> str:
    """Write ``name.csv``, ``name.md`` (header, headline tables, every metric) and, with ``plot``, ``name.png``."""
    text = headline(table)
    table.write(out, name, header + "\n\n" + text + "\n## Every metric\n")
    if plot is not None:
        plot(table, os.path.join(out, f"{name}.png"))
    return text


def rerender(csv_path: str, out: str, name: str, keys: list[str], metrics: list[str],
             headline: Callable[[Table], str], plot: Callable[[Table, str], None]) -> str:
    """Re-render a benchmark's Markdown and plot from its CSV, keeping the header of ``out/name.md``."""
    table = Table.from_csv(csv_path, keys, metrics)
    md_path = os.path.join(out, f"{name}.md")
    header = f"# {name}"
    if os.path.exists(md_path):
        with open(md_path) as fh:
            header = fh.read().split("\n\n###", 1)[0].split("\n\n|", 1)[0]
    return render(table, out, name, header, headline, plot)


def hits_from_similarity(sim, truth, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """hits@k of a dense ``(n, m)`` similarity (numpy) for ``truth[i]`` = target of source ``i``."""
    import numpy as np
    sim = np.asarray(sim)
    rows = np.arange(sim.shape[0])
    rank = (sim > sim[rows, truth][:, None]).sum(1)  # entries strictly better than the truth
    return {f"hits_at_{k}": float((rank < k).mean()) for k in ks}


@dataclass
class Table:
    """Rows of one benchmark, with the columns that identify an instance."""

    keys: list[str]
    metrics: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row: dict[str, Any]) -> None:
        """Append one result row."""
        self.rows.append(row)

    def summary(self) -> list[dict[str, Any]]:
        """Median [min, max] of every metric over the rows that share the keys (seeds)."""
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in self.rows:
            groups.setdefault(tuple(r.get(k) for k in self.keys), []).append(r)
        out = []
        for key, rows in groups.items():
            s = dict(zip(self.keys, key))
            ok = [r for r in rows if r.get("status") == "ok"]
            s["runs"] = f"{len(ok)}/{len(rows)}"
            for m in self.metrics:
                vals = [float(r[m]) for r in ok if r.get(m) is not None and not _nan(r[m])]
                s[m] = _spread(vals)
            bad = sorted({r["status"] for r in rows if r.get("status") != "ok"})
            s["note"] = ", ".join(bad)
            out.append(s)
        return out

    @classmethod
    def from_csv(cls, path: str, keys: list[str], metrics: list[str]) -> Table:
        """Read a table written by :meth:`write` (numbers parsed back, empty cells dropped)."""
        table = cls(keys, metrics)
        with open(path, newline="") as fh:
            for raw in csv.DictReader(fh):
                table.add({k: _parse(v) for k, v in raw.items() if v != ""})
        return table

    def to_csv(self) -> str:
        """Every row, every column any row has."""
        cols = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: _fmt(r.get(k)) for k in cols})
        return buf.getvalue()

    def to_markdown(self) -> str:
        """Median [min, max] over seeds per key, with the number of runs and notes."""
        summ = self.summary()
        cols = self.keys + ["runs"] + self.metrics + ["note"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for s in summ:
            lines.append("| " + " | ".join(_fmt(s.get(c)) for c in cols) + " |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str, name: str, header: str = "") -> tuple[str, str]:
        """Write ``name.csv`` (every run) and ``name.md`` (summary), atomically."""
        os.makedirs(out_dir, exist_ok=True)
        csv_path, md_path = os.path.join(out_dir, f"{name}.csv"), os.path.join(out_dir, f"{name}.md")
        atomic_write_text(csv_path, self.to_csv())
        atomic_write_text(md_path, (header + "\n\n" if header else "") + self.to_markdown())
        return csv_path, md_path


def pivot(rows: list[dict[str, Any]], row_key: str, col_key: str, value: Callable[[dict[str, Any]], float | None],
          fmt: Callable[[float], str] = lambda v: f"{v:.3f}") -> str:
    """Markdown table of the median ``value(row)`` over runs, by ``row_key`` (lines) and ``col_key`` (columns).

    Runs that did not finish show as ``dnf`` (or ``error``) when no run of the cell finished.
    """
    lines_keys = list(dict.fromkeys(r[row_key] for r in rows))
    cols = list(dict.fromkeys(r[col_key] for r in rows))
    if all(isinstance(c, (int, float)) for c in cols):
        cols = sorted(cols)
    out = [f"| {row_key} | " + " | ".join(f"{col_key} = {c}" for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for lk in lines_keys:
        cells = []
        for c in cols:
            runs = [r for r in rows if r[row_key] == lk and r[col_key] == c]
            vals = [value(r) for r in runs if r.get("status") == "ok"]
            vals = [v for v in vals if v is not None and not _nan(v)]
            if vals:
                cells.append(fmt(median(vals)))
            elif any(r.get("status") == "ok" for r in runs):
                cells.append("-")  # finished, but the quantity does not apply
            else:
                cells.append(", ".join(sorted({r.get("status", "") for r in runs})) or "-")
        out.append(f"| {lk} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot_panels(rows: list[dict[str, Any]], panel: Callable[[dict[str, Any]], str], x_key: str, series_key: str,
                value: Callable[[dict[str, Any]], float | None], path: str, xlabel: str, ylabel: str,
                categorical_x: bool = False) -> None:
    """One panel per ``panel(row)``: the median ``value`` against ``x_key``, one line per ``series_key``.

    Written atomically as PNG. Cells where no run finished are left out of the line.
    """
    plt = pyplot()
    panels = list(dict.fromkeys(panel(r) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, name in zip(axes[0], panels):
        sub = [r for r in rows if panel(r) == name]
        xs = list(dict.fromkeys(r[x_key] for r in sub)) if categorical_x else sorted({r[x_key] for r in sub})
        for series in dict.fromkeys(r[series_key] for r in sub):
            pts = []
            for i, x in enumerate(xs):
                vals = [value(r) for r in sub if r[series_key] == series and r[x_key] == x and r.get("status") == "ok"]
                vals = [v for v in vals if v is not None and not _nan(v)]
                if vals:
                    pts.append((i if categorical_x else x, median(vals)))
            if pts:
                ax.plot(*zip(*pts), "o-", label=str(series), ms=3)
        if categorical_x:
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path)


def _parse(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _spread(vals: list[float]) -> str:
    if not vals:
        return "-"
    if len(vals) == 1:
        return _num(vals[0])
    return f"{_num(median(vals))} [{_num(min(vals))}, {_num(max(vals))}]"


def _num(v: float) -> str:
    if v == 0 or (1e-3 <= abs(v) < 1e5):
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.4g}"
    return f"{v:.2e}"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else _num(v)
    return str(v).replace("|", "/").replace("\n", " ")


def machine() -> str:
    """One line naming the machine the numbers came from."""
    import platform

    import torch
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}")
