r"""Train and evaluate one experiment config into a run folder; resume from its checkpoints."""
from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import run_dir as R
from .config import ExperimentConfig, from_dict
from .tasks import Task, build_task

COLUMNS = ["step", "loss", "plan_entropy", "gamma", "runtime_sec", "nnz", "sinkhorn_iter", "band_radius",
           "band_halfwidth", "marginal_error", "perm_acc", "perm_acc_hungarian", "perm_acc_refined",
           "hits_at_5", "rotation_err_deg", "edges_preserved", "accuracy"]


@dataclass(frozen=True)
class RunResult:
    """Where a run lives and its last metrics row."""

    run_dir: str
    final: dict
    steps_done: int


def gamma_at(cfg: ExperimentConfig, step: int) -> float:
    """The annealed gamma used at ``step`` (0-based): ``max(gamma * decay^step, gamma_min)``."""
    t, g = cfg.train, cfg.ot.gamma
    if not t.anneal_gamma:
        return g
    return max(g * t.gamma_decay ** step, min(t.gamma_min, g))


def _optimizer(task: Task, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(task.model.parameters(), lr=cfg.train.lr)


def run(cfg: ExperimentConfig, *, resume: str | None = None, quiet: bool = False, plot: bool = False,
        out_dir: str | None = None, progress: Callable[[dict], None] | None = None) -> RunResult:
    """Train ``cfg`` (or continue the run folder ``resume``) and return the final metrics.

    Row ``step = k`` of ``metrics.csv`` holds the forward pass after ``k``
    updates; the last row (``k = train.steps``) is the final evaluation.
    ``progress(row)`` is called after every row is written.
    """
    torch.manual_seed(cfg.seed)  # nothing below draws from it; pinned for user code in hooks
    t_start = time.perf_counter()
    task = build_task(cfg)
    opt = _optimizer(task, cfg)
    start = 0
    if resume is not None:
        folder = resume
        def restore(state: dict) -> None:
            task.model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            task.head.load_warm_state(state.get("warm", {}))
        fresh = (copy.deepcopy(task.model.state_dict()), copy.deepcopy(opt.state_dict()))
        start = R.restore_latest(folder, restore)
        if start == 0:  # a checkpoint that failed half-way must not leave its weights behind
            restore({"model": fresh[0], "optimizer": fresh[1], "warm": {}})
        if not quiet:
            print(f"resuming {folder} from step {start} of {cfg.train.steps}", file=sys.stderr, flush=True)
    else:
        folder = R.new_run_dir(out_dir or cfg.log.out_dir, cfg.exp_name)
        R.write_config(folder, cfg.to_dict())
    writer = R.MetricsWriter(folder, COLUMNS, resume_from=start if resume is not None else None)
    total = cfg.train.steps
    bar = _progress(total, start, quiet)
    final: dict = {}
    patience, same, previous = cfg.train.stop_when_stable, 0, None
    try:
        step = start
        while step <= total:
            row = _step(task, opt, cfg, step, train=step < total)
            writer.write(row)
            final = row
            bar(row)
            if progress is not None:
                progress(row)
            done = step + 1 if step < total else total
            stable = False
            if step < total and row.get("accuracy") is not None and task.answer is not None:
                # the answer (a matching, compared without labels) has not changed over `patience` eval rows:
                # further steps do not pay for themselves; the next row is the final evaluation
                same = same + 1 if previous is not None and torch.equal(task.answer, previous) else 1
                previous = task.answer.clone()
                stable = patience > 0 and same >= patience
            if step < total and (done % cfg.log.save_every == 0 or done == total or stable):
                R.save_checkpoint(folder, done, {"model": task.model.state_dict(), "optimizer": opt.state_dict(),
                                                 "warm": task.head.warm_state(), "step": done})
            if stable:
                final = _step(task, opt, cfg, done, train=False)
                writer.write(final)
                bar(final)
                if progress is not None:
                    progress(final)
                break
            step += 1
    finally:
        writer.close()
        bar(None)
    prior = R.read_summary(folder) if resume is not None else None
    seconds = time.perf_counter() - t_start + (prior or {}).get("seconds", 0.0)
    R.write_summary(folder, summary(folder, final, seconds, task.stage_seconds, total))
    if plot:
        from .plots import plot_run
        plot_run(folder, task)
    return RunResult(folder, final, total)


def summary(folder: str, final: dict, seconds: float, stage_seconds: float, steps: int) -> dict:
    """What ``summary.json`` holds: the run's answer at the end and before any training step."""
    rows = R.read_metrics(folder)
    first = next((r for r in rows if r.get("accuracy")), None)
    out = {"accuracy": final.get("accuracy"),
           "accuracy_at_step0": float(first["accuracy"]) if first is not None and int(first["step"]) == 0 else None,
           "seconds": seconds, "stage_seconds": stage_seconds, "steps": final.get("step"),
           "stopped_early": final.get("step") is not None and final["step"] < steps}
    if final.get("rotation_err_deg") is not None:
        out["rotation_err_deg"] = final["rotation_err_deg"]
    return out


def _step(task: Task, opt: torch.optim.Optimizer, cfg: ExperimentConfig, step: int, train: bool) -> dict:
    """One training step (or, at ``step == steps``, the final evaluation without an update)."""
    gamma = gamma_at(cfg, step)
    t0 = time.perf_counter()
    out = task.forward(gamma)
    if train:
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    runtime = time.perf_counter() - t0
    full = (not train) or step % cfg.train.eval_every == 0
    row = {"step": step, "loss": float(out.loss.detach()), "plan_entropy": out.plan_entropy, "gamma": gamma,
           "runtime_sec": runtime, "nnz": out.nnz, "sinkhorn_iter": out.iterations,
           "band_radius": out.band_radius, "band_halfwidth": out.band_halfwidth,
           "marginal_error": out.marginal_error}
    row.update(task.evaluate(out, full))
    return row


def _progress(total: int, start: int, quiet: bool) -> Callable[[dict | None], None]:
    if quiet:
        return lambda row: None
    if sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=total + 1, initial=start, desc="train", unit="step", file=sys.stderr)

        def update(row: dict | None) -> None:
            if row is None:
                bar.close()
                return
            shown = {"loss": f"{row['loss']:.4g}", "gamma": f"{row['gamma']:.3g}"}
            if row.get("accuracy") is not None:
                shown["accuracy"] = f"{row['accuracy']:.3f}"
            bar.set_postfix(**shown)
            bar.update(1)
        return update
    every = max(1, total // 20)

    def plain(row: dict | None) -> None:
        if row is not None and (row["step"] % every == 0 or row["step"] == total):
            acc = f" accuracy={row['accuracy']:.3f}" if row.get("accuracy") is not None else ""
            rot = f" rotation_err_deg={row['rotation_err_deg']:.3g}" if row.get("rotation_err_deg") is not None else ""
            print(f"step {row['step']}/{total} loss={row['loss']:.5g}{acc}{rot} gamma={row['gamma']:.4g}",
                  file=sys.stderr, flush=True)
    return plain


def resume_config(run_dir: str) -> ExperimentConfig:
    """The config a run folder was started with."""
    return from_dict(R.read_config(run_dir), os.path.join(run_dir, "config.json"))
