r"""``compile-runs``: one row per run folder, the varying config parameters and the final metrics."""
from __future__ import annotations

import csv
import io
import os
from typing import Any

from . import run_dir as R

SUMMARY = ["accuracy", "accuracy_at_step0", "seconds"]
FINAL = SUMMARY + ["finished", "steps_done", "loss", "edges_preserved", "perm_acc", "perm_acc_hungarian",
                   "perm_acc_refined", "hits_at_5", "rotation_err_deg", "plan_entropy", "gamma", "nnz", "sinkhorn_iter",
                   "band_halfwidth", "runtime_sec_median", "runtime_sec_total"]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _last(rows: list[dict[str, str]], key: str) -> str:
    for r in reversed(rows):
        if r.get(key):
            return r[key]
    return ""


def _run_row(folder: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(flattened config, final metrics)`` of one run folder; None when it is not a run or has no rows."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return None
    rows = R.read_metrics(folder)
    if not rows:
        return None
    cfg = _flatten(R.read_config(folder))
    times = sorted(float(r["runtime_sec"]) for r in rows if r.get("runtime_sec"))
    final = {k: _last(rows, k) for k in FINAL if k not in ("steps_done", "finished", "runtime_sec_median",
                                                             "runtime_sec_total", *SUMMARY)}
    done = R.read_summary(folder)  # absent while a run is unfinished
    final.update({k: "" if (done or {}).get(k) is None else done[k] for k in SUMMARY})
    if done and done.get("rotation_err_deg") is not None:
        final["rotation_err_deg"] = done["rotation_err_deg"]
    final["finished"] = "yes" if done is not None else "no"
    final["steps_done"] = rows[-1]["step"]
    final["runtime_sec_median"] = f"{times[len(times) // 2]:.4g}" if times else ""
    final["runtime_sec_total"] = f"{sum(times):.4g}" if times else ""
    return cfg, final


def collect(logdir: str) -> tuple[list[str], list[dict[str, Any]], list[tuple[str, str]]]:
    """Columns, rows (run name, the config keys that differ between runs, final metrics) and the run
    folders that could not be read, with the reason; ``finished`` says whether a run wrote its summary."""
    runs, skipped = [], []
    for name in sorted(os.listdir(logdir)):
        try:
            got = _run_row(os.path.join(logdir, name))
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error) as exc:
            skipped.append((name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
            continue
        if got is not None:
            runs.append((name, *got))
    keys = sorted({k for _, c, _ in runs for k in c})
    varying = [k for k in keys if len({repr(c.get(k)) for _, c, _ in runs}) > 1 and k != "exp_name"]
    columns = ["run"] + varying + FINAL
    table = [{"run": name, **{k: c.get(k, "") for k in varying}, **f} for name, c, f in runs]
    return columns, table, skipped


def to_markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` in the given column order."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return "" if v is None else str(v).lower()
        try:
            x = float(v)
            return f"{x:.4g}" if not float(x).is_integer() or abs(x) >= 1e6 else str(int(x))
        except (TypeError, ValueError):
            return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def compile_runs(logdir: str, out_prefix: str | None = None) -> tuple[str, str, str]:
    """Write ``<prefix>.csv`` and ``<prefix>.md`` (default ``logdir/summary``); return paths and the table."""
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"no run folder {logdir!r}")
    columns, rows, skipped = collect(logdir)
    if not rows:
        why = "".join(f"; skipped {name} ({reason})" for name, reason in skipped)
        raise FileNotFoundError(f"{logdir!r} holds no readable run folders with metrics{why}")
    prefix = out_prefix or os.path.join(logdir, "summary")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    md = to_markdown(columns, rows)
    if skipped:
        md += "\nSkipped run folders (unreadable):\n\n" + "".join(f"- `{n}`: {r}\n" for n, r in skipped)
    R.atomic_write_text(prefix + ".csv", buf.getvalue())
    R.atomic_write_text(prefix + ".md", md)
    return prefix + ".csv", prefix + ".md", md
