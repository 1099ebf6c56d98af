r"""Run folders: ``config.json``, an append-only ``metrics.csv`` and checkpoints, never half-written."""
from __future__ import annotations

import csv
import json
import os
import re
import time
from typing import Any, Iterable

import torch

from .._atomic import atomic_path

CHECKPOINT = re.compile(r"^state_step(\d+)\.pt$")


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def new_run_dir(out_dir: str, exp_name: str) -> str:
    """Create ``out_dir/<exp_name>_<timestamp>`` (with a suffix if it exists)."""
    os.makedirs(out_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(out_dir, f"{exp_name}_{stamp}")
    path, k = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            path, k = f"{base}-{k}", k + 1


def write_config(run_dir: str, config: dict[str, Any]) -> None:
    atomic_write_text(os.path.join(run_dir, "config.json"), json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_summary(run_dir: str, summary: dict[str, Any]) -> None:
    """``summary.json``: the run's final answer (written atomically when the run ends)."""
    atomic_write_text(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")


def read_summary(run_dir: str) -> dict[str, Any] | None:
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def read_config(run_dir: str) -> dict[str, Any]:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no config.json")
    with open(path) as fh:
        return json.load(fh)


class MetricsWriter:
    """Appends rows to ``metrics.csv``, flushed and synced row by row."""

    def __init__(self, run_dir: str, columns: list[str], resume_from: int | None = None) -> None:
        self.path = os.path.join(run_dir, "metrics.csv")
        self.columns = columns
        if resume_from is not None and os.path.exists(self.path):
            # keep the rows before the resumed step; later ones are recomputed, never duplicated
            rows = [r for r in read_metrics(run_dir) if int(r["step"]) < resume_from]
            _rewrite(self.path, columns, rows)
        elif not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            _rewrite(self.path, columns, [])
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=columns, extrasaction="raise")

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: _fmt(row.get(k)) for k in self.columns})
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def _rewrite(path: str, columns: list[str], rows: Iterable[dict[str, Any]]) -> None:
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def read_metrics(run_dir: str) -> list[dict[str, str]]:
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def save_checkpoint(run_dir: str, step: int, state: dict[str, Any]) -> str:
    path = os.path.join(run_dir, f"state_step{step:06d}.pt")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def last_checkpoint(run_dir: str) -> tuple[int, str] | None:
    found = [(int(m.group(1)), name) for name in os.listdir(run_dir) if (m := CHECKPOINT.match(name))]
    if not found:
        return None
    step, name = max(found)
    return step, os.path.join(run_dir, name)


def load_checkpoint(path: str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
