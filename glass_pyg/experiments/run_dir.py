r"""Run folders: ``config.json``, an append-only ``metrics.csv`` and checkpoints, never half-written."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

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
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(20, "it is a file, not a folder for runs (out_dir)", out_dir)
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
    """Write ``config.json`` of a run folder (atomically)."""
    atomic_write_text(os.path.join(run_dir, "config.json"), json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_summary(run_dir: str, summary: dict[str, Any]) -> None:
    """``summary.json``: the run's final answer (written atomically when the run ends)."""
    atomic_write_text(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")


def read_summary(run_dir: str) -> dict[str, Any] | None:
    """``summary.json`` of a run folder, or ``None`` while the run has not ended."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def read_config(run_dir: str) -> dict[str, Any]:
    """The ``config.json`` mapping of a run folder."""
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
        """Append ``row`` (missing columns left empty), flushed and synced."""
        self._writer.writerow({k: _fmt(row.get(k)) for k in self.columns})
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def _rewrite(path: str, columns: list[str], rows: Iterable[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def read_metrics(run_dir: str) -> list[dict[str, str]]:
    """The rows of ``metrics.csv``; a last row torn by a crash (no final newline, or fields missing) is left out."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        text = fh.read()
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]  # the torn tail
    rows = list(csv.DictReader(io.StringIO(text)))
    return [r for r in rows if None not in r.values() and None not in r]


def save_checkpoint(run_dir: str, step: int, state: dict[str, Any]) -> str:
    """Write ``state_stepXXXXXX.pt`` (atomically) and return its path."""
    path = os.path.join(run_dir, f"state_step{step:06d}.pt")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint's state, read with ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


def restore_latest(run_dir: str, apply: Callable[[dict[str, Any]], None]) -> int:
    """Load the newest checkpoint that reads and applies; returns its step (0: none did).

    A truncated or foreign file (a crash mid-copy, a stray file with a higher
    step) is skipped with a warning naming it, and the next older one is tried.
    """
    found = sorted(((int(m.group(1)), name) for name in os.listdir(run_dir) if (m := CHECKPOINT.match(name))),
                   reverse=True)
    for step, name in found:
        path = os.path.join(run_dir, name)
        try:
            state = load_checkpoint(path)
            if not isinstance(state, dict):
                raise ValueError("not a checkpoint mapping")
            apply(state)
            return step
        except Exception as exc:  # unreadable or not ours: fall back to an older one
            warnings.warn(f"skipping checkpoint {path}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}", RuntimeWarning, stacklevel=2)
    if found:
        warnings.warn(f"no checkpoint in {run_dir} could be restored: the run restarts from step 0",
                      RuntimeWarning, stacklevel=2)
    return 0
