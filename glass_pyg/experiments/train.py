r"""Train and evaluate one experiment config into a run folder; resume from its checkpoints."""
from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._limits import DENSE_PAIRS
from . import run_dir as R
from .config import ExperimentConfig, from_dict
from .distributed import World, current_world
from .tasks import Task, build_tasks

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


class _PairsLoss(torch.nn.Module):
    """The loss of this process's pairs, scaled by ``world / num_pairs``: averaged over processes (as
    :class:`~torch.nn.parallel.DistributedDataParallel` averages gradients) it is the mean over all pairs."""

    def __init__(self, model: torch.nn.Module, tasks: list[Task], owned: list[int], world: int) -> None:
        super().__init__()
        self.model = model  # registered: its parameters are the ones synchronised
        self.tasks, self.owned = tasks, owned
        self.scale = world / len(tasks)
        self.outputs: list = []

    def forward(self, gamma: float) -> torch.Tensor:
        # the last step's plans go first: a new solve never shares the memory with the old ones
        self.outputs = []
        self.outputs = [self.tasks[k].forward(gamma) for k in self.owned]
        return sum(out.loss for out in self.outputs) * self.scale


def _warm_state(tasks: list[Task], world: World) -> dict:
    """The heads' warm starts of every pair, on the leader (one pair: the head's own format)."""
    local = {k: tasks[k].head.warm_state() for k in world.owned(len(tasks))}
    merged = {k: v for part in world.gather(local) for k, v in part.items()}
    return merged[0] if len(tasks) == 1 else {"pairs": {str(k): v for k, v in merged.items()}}


def _load_warm_state(tasks: list[Task], state: dict) -> None:
    if len(tasks) == 1:
        tasks[0].head.load_warm_state(state)
        return
    for k, v in state.get("pairs", {}).items():
        tasks[int(k)].head.load_warm_state(v)


def run(cfg: ExperimentConfig, *, resume: str | None = None, quiet: bool = False, plot: bool = False,
        out_dir: str | None = None, progress: Callable[[dict], None] | None = None) -> RunResult:
    """Train ``cfg`` (or continue the run folder ``resume``) and return the final metrics.

    Row ``step = k`` of ``metrics.csv`` holds the forward pass after ``k``
    updates; the last row (``k = train.steps``) is the final evaluation.
    With ``data.num_pairs > 1`` one projection is trained on the mean loss
    over the pairs and each row averages the pairs' metrics. Under
    ``torchrun`` the pairs are split across the processes
    (:mod:`~glass_pyg.experiments.distributed`) and the first process alone
    writes the run folder; the rows equal a one-process run's within float
    tolerance. ``progress(row)`` is called after every row is written.
    """
    torch.manual_seed(cfg.seed)  # nothing below draws from it; pinned for user code in hooks
    t_start = time.perf_counter()
    world = current_world()
    quiet = quiet or not world.leader
    model, tasks = build_tasks(cfg)
    owned = world.owned(len(tasks))
    per_pair = "rotations" in model and any(p.requires_grad for p in model["rotations"].parameters())
    loss_of = world.wrap(_PairsLoss(model, tasks, owned, world.size), per_pair)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    start = 0
    if resume is not None:
        folder = resume
        def restore(state: dict) -> None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            _load_warm_state(tasks, state.get("warm", {}))
        fresh = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        start = R.restore_latest(folder, restore)
        if start == 0:  # a checkpoint that failed half-way must not leave its weights behind
            restore({"model": fresh[0], "optimizer": fresh[1], "warm": {}})
        if not quiet:
            print(f"resuming {folder} from step {start} of {cfg.train.steps}", file=sys.stderr, flush=True)
    else:
        folder = world.broadcast(R.new_run_dir(out_dir or cfg.log.out_dir, cfg.exp_name) if world.leader else None)
        if world.leader:
            R.write_config(folder, cfg.to_dict())
    writer = R.MetricsWriter(folder, COLUMNS, resume_from=start if resume is not None else None) \
        if world.leader else None
    total = cfg.train.steps
    bar = _progress(total, start, quiet)
    final: dict = {}
    patience, same, previous = cfg.train.stop_when_stable, 0, None

    def emit(row: dict) -> None:
        if writer is not None:
            writer.write(row)
        bar(row)
        if progress is not None and world.leader:
            progress(row)

    try:
        step = start
        while step <= total:
            row = _step(loss_of, tasks, owned, opt, cfg, step, world, train=step < total)
            emit(row)
            if step == start and world.leader:
                _warn_if_dense(cfg, row, tasks)
            final = row
            done = step + 1 if step < total else total
            stable = False
            if step < total and row.get("accuracy") is not None:
                # the answers (matchings, compared without labels) have not changed over `patience` eval rows:
                # further steps do not pay for themselves; the next row is the final evaluation
                answers = [tasks[k].answer.clone() for k in owned]
                unchanged = previous is not None and all(torch.equal(a, b) for a, b in zip(answers, previous))
                same = same + 1 if all(world.gather(unchanged)) else 1
                previous = answers
                stable = patience > 0 and same >= patience
            if step < total and (done % cfg.log.save_every == 0 or done == total or stable):
                warm = _warm_state(tasks, world)
                if world.leader:
                    R.save_checkpoint(folder, done, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                     "warm": warm, "step": done})
            if stable:
                final = _step(loss_of, tasks, owned, opt, cfg, done, world, train=False)
                emit(final)
                break
            step += 1
    finally:
        if writer is not None:
            writer.close()
        bar(None)
    stage_seconds = sum(world.gather(sum(tasks[k].stage_seconds for k in owned)))
    if world.leader:
        prior = R.read_summary(folder) if resume is not None else None
        seconds = time.perf_counter() - t_start + (prior or {}).get("seconds", 0.0)
        R.write_summary(folder, summary(folder, final, seconds, stage_seconds, total))
        if plot:
            from .plots import plot_run
            plot_run(folder, tasks[0])
    world.broadcast(None)  # the others return once the run folder is complete
    return RunResult(folder, final, total)


def _warn_if_dense(cfg: ExperimentConfig, row: dict, tasks: list[Task]) -> None:
    """Say once when an absolute-temperature plan keeps a large share of all pairs on a large problem:
    every step then costs O(n m), where the rank temperature keeps the band O(n)."""
    pairs = sum(t.src.size(0) * t.dst.size(0) for t in tasks)  # point pairs over the run's pairs
    full = cfg.train.slices * pairs  # every slice's plan entries if all were kept
    nnz = row.get("nnz") or 0
    if cfg.ot.temperature != "absolute" or pairs <= DENSE_PAIRS * len(tasks) or nnz < 0.1 * full:
        return
    warnings.warn(f"the plan keeps {nnz:.3g} entries, {nnz / full:.0%} of all pairs (band half-width "
                  f"{row.get('band_halfwidth')} ranks): ot.gamma={cfg.ot.gamma:g} on the absolute scale is wide "
                  f"for {tasks[0].src.size(0)} points, so every step costs O(n m); ot.temperature=rank with "
                  f"ot.gamma of a few units keeps the band O(n) (docs/experiments.md)", UserWarning, stacklevel=2)


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


_MAX = ("runtime_sec", "sinkhorn_iter", "band_radius", "band_halfwidth", "marginal_error")


def _step(loss_of: torch.nn.Module, tasks: list[Task], owned: list[int], opt: torch.optim.Optimizer,
          cfg: ExperimentConfig, step: int, world: World, train: bool) -> dict:
    """One training step (or, at ``step == steps``, the final evaluation without an update): a row of
    metrics, each the mean over the pairs (the solver's figures: the worst pair; ``nnz``: their sum)."""
    gamma = gamma_at(cfg, step)
    t0 = time.perf_counter()
    loss = loss_of(gamma)
    if train:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    runtime = time.perf_counter() - t0
    full = (not train) or step % cfg.train.eval_every == 0
    local = []
    for k, out in zip(owned, getattr(loss_of, "module", loss_of).outputs):
        row = {"loss": float(out.loss.detach()), "plan_entropy": out.plan_entropy, "runtime_sec": runtime,
               "nnz": out.nnz, "sinkhorn_iter": out.iterations, "band_radius": out.band_radius,
               "band_halfwidth": out.band_halfwidth, "marginal_error": out.marginal_error}
        row.update(tasks[k].evaluate(out, full))
        local.append(row)
    rows = [r for part in world.gather(local) for r in part]
    merged: dict = {"step": step, "gamma": gamma}
    for key in rows[0]:
        vals = [r[key] for r in rows if r.get(key) is not None]
        if not vals:
            continue
        merged[key] = max(vals) if key in _MAX else sum(vals) if key == "nnz" else (
            vals[0] if len(vals) == 1 else sum(vals) / len(vals))
    return merged


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
