r"""PNG figures of a run: curves, the coupling ordered by the ground truth, matched points on S^2."""
from __future__ import annotations

import os

import torch

from .._optional import pyplot
from . import run_dir as R
from .tasks import Task


def _pyplot():
    return pyplot()


def plot_curves(run_dir: str) -> str:
    plt = _pyplot()
    rows = R.read_metrics(run_dir)
    steps = [int(r["step"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(steps, [float(r["loss"]) for r in rows])
    ax1.set(xlabel="step", ylabel="lifted loss", title="loss")
    for key, label in (("perm_acc", "row argmax"), ("perm_acc_hungarian", "Hungarian"),
                       ("perm_acc_refined", "Hungarian, lifted cost"), ("accuracy", "the run's answer")):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        if pts:
            answer = key == "accuracy"  # drawn last and wide, so it shows where it coincides with a decoder
            ax2.plot(*zip(*pts), label=label, marker="." if len(pts) < 50 else None,
                     linewidth=3 if answer else 1.5, color="black" if answer else None, alpha=0.6 if answer else 1)
    ax2.set(xlabel="step", ylabel="accuracy", ylim=(-0.02, 1.02), title="correspondences")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    path = os.path.join(run_dir, "curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_coupling(run_dir: str, plan: torch.Tensor, y: torch.Tensor, max_n: int = 2000) -> str | None:
    """The averaged plan with target columns reordered by the ground truth (a diagonal when right)."""
    n, m = plan.shape
    if max(n, m) > max_n:
        return None
    plt = _pyplot()
    order = torch.full((n,), -1, dtype=torch.long)
    order[y[0]] = y[1]
    dense = plan.detach().to_dense()[:, order[order >= 0]].double()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(dense.sqrt().numpy(), cmap="magma", interpolation="nearest")
    ax.set(title="coupling (sqrt), columns in ground-truth order", xlabel="target", ylabel="source")
    path = os.path.join(run_dir, "coupling.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sphere_matches(run_dir: str, src: torch.Tensor, dst: torch.Tensor, pred: torch.Tensor,
                        y: torch.Tensor) -> str:
    """Source points, their matched targets, and a line per match (green right, red wrong)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(projection="3d")
    u, v = torch.meshgrid(torch.linspace(0, 2 * torch.pi, 40), torch.linspace(0, torch.pi, 20), indexing="ij")
    ax.plot_wireframe(torch.cos(u) * torch.sin(v), torch.sin(u) * torch.sin(v), torch.cos(v),
                      color="0.85", linewidth=0.3)
    truth = torch.full((src.size(0),), -1, dtype=torch.long)
    truth[y[0]] = y[1]
    s, d = src.detach().double(), dst.detach().double()
    ax.scatter(*s.T.numpy(), s=6, c="tab:blue", label="source")
    ax.scatter(*d.T.numpy(), s=6, c="tab:orange", label="target (model frame)")
    shown = set()
    for i in range(s.size(0)):
        j = int(pred[i])
        if j >= 0:
            right = j == int(truth[i])
            label = ("right match" if right else "wrong match") if right not in shown else None
            shown.add(right)
            seg = torch.stack([s[i], d[j]]).T.numpy()
            ax.plot(*seg, color="tab:green" if right else "tab:red", linewidth=0.6, label=label)
    ax.set_box_aspect((1, 1, 1))
    ax.legend(loc="upper left")
    path = os.path.join(run_dir, "matches.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run_dir: str, task: Task) -> list[str]:
    """All figures of a run folder, from its metrics and the trained task."""
    from .. import metrics
    paths = [plot_curves(run_dir)]
    with torch.no_grad():
        out = task.forward(float(R.read_metrics(run_dir)[-1]["gamma"]))
    if task.head.cost == "sq_euclidean":
        p = plot_coupling(run_dir, out.plan, task.y)
        if p:
            paths.append(p)
    else:
        # the run's answer (its last full evaluation), else the lifted-cost decoding of this pass
        pred = task.answer if task.answer is not None else metrics.to_permutation(out.plan, task.cost())
        paths.append(plot_sphere_matches(run_dir, task.src, task.target(), pred, task.y))
    return paths
