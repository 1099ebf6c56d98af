r"""PNG figures of a run: every logged metric's curve, the coupling ordered by the ground truth, S^2 matches."""
from __future__ import annotations

import os

import torch

from .._atomic import atomic_path
from .._optional import pyplot
from . import run_dir as R
from .tasks import Task

#: the curves panel of each logged metric: (column, label) per panel
_PANELS = (
    ("lifted loss", (("loss", "lifted loss"),)),
    ("correspondences", (("accuracy", "the run's answer"), ("perm_acc", "row argmax"),
                         ("perm_acc_hungarian", "Hungarian on the plan"),
                         ("perm_acc_refined", "lifted-cost decoding"), ("hits_at_5", "hits@5"),
                         ("edges_preserved", "edges preserved"))),
    ("rotation error (deg)", (("rotation_err_deg", "rotation error"),)),
    ("plan entropy", (("plan_entropy", "entropy of the averaged plan"),)),
)


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure as PNG through a temporary file and a rename, then close it."""
    plt = pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


def _series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    out = []
    for r in rows:
        v = r.get(key)
        if v not in (None, ""):
            out.append((int(r["step"]), float(v)))
    return out


def plot_curves(run_dir: str) -> str:
    """One panel per group of logged metrics (those the run logged), legends beside the axes."""
    plt = pyplot()
    rows = R.read_metrics(run_dir)
    panels = [(title, [(label, pts) for key, label in group if (pts := _series(rows, key))])
              for title, group in _PANELS]
    panels = [(title, lines) for title, lines in panels if lines]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, lines) in zip(axes[:, 0], panels):
        for label, pts in lines:
            answer = label == "the run's answer"  # drawn wide and black: it coincides with a decoder at times
            ax.plot(*zip(*pts), label=label, marker="." if len(pts) < 50 else None,
                    linewidth=3 if answer else 1.5, color="black" if answer else None, alpha=0.6 if answer else 1)
        ax.set(ylabel=title)
        if title == "correspondences":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    axes[-1, 0].set_xlabel("step")
    path = os.path.join(run_dir, "curves.png")
    save_figure(fig, path)
    return path


def plot_coupling(run_dir: str, plan: torch.Tensor, y: torch.Tensor, answer: torch.Tensor | None = None,
                  max_n: int = 2000) -> str | None:
    """The averaged plan, target columns in ground-truth order (a diagonal when right), on a log scale."""
    n, m = plan.shape
    if max(n, m) > max_n:
        return None
    plt = pyplot()
    from matplotlib.colors import LogNorm
    order = torch.full((n,), -1, dtype=torch.long)
    order[y[0]] = y[1]
    dense = plan.detach().to_dense()[:, order[order >= 0]].double()
    positive = dense[dense > 0]
    fig, ax = plt.subplots(figsize=(6, 5))
    if positive.numel():
        top = float(positive.max())
        low = max(float(positive.min()), top * 1e-6)
        shown = dense.clamp_min(low).masked_fill(dense <= 0, float("nan"))
        im = ax.imshow(shown.numpy(), cmap="viridis", norm=LogNorm(vmin=low, vmax=top), interpolation="nearest")
        fig.colorbar(im, ax=ax, label="plan entry (log scale; blank: not stored)")
    title = "GLASS plan, target columns in ground-truth order"
    if answer is not None:  # the answer's pairs, at the column of their target: on the diagonal when right
        column = torch.full((m,), -1, dtype=torch.long)
        kept = order[order >= 0]
        column[kept] = torch.arange(kept.numel())
        rows = torch.nonzero(answer.cpu() >= 0).flatten()
        cols = column[answer.cpu()[rows]]
        right = int((answer.cpu() == order).sum())
        ax.scatter(cols.numpy(), rows.numpy(), s=5, c="red", marker="o", linewidths=0,
                   label=f"the run's answer ({right}/{n} right)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize="small", frameon=False, markerscale=3)
        title += f"\nrun's answer: {right}/{n} right"
    ax.set(title=title, xlabel="target (true partner of source i at column i)", ylabel="source")
    path = os.path.join(run_dir, "coupling.png")
    save_figure(fig, path)
    return path


def plot_sphere_matches(run_dir: str, src: torch.Tensor, dst: torch.Tensor, pred: torch.Tensor,
                        y: torch.Tensor) -> str:
    """Source points, their matched targets, and a line per match (green right, red wrong)."""
    plt = pyplot()
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
    right_count = 0
    for correct in (True, False):  # one artist per kind, so the legend has one entry each
        segs = []
        for i in range(s.size(0)):
            j = int(pred[i])
            if j >= 0 and (j == int(truth[i])) == correct:
                segs.append(torch.stack([s[i], d[j]]).T.numpy())
        right_count += len(segs) if correct else 0
        for k, seg in enumerate(segs):
            label = f"{'right' if correct else 'wrong'} match ({len(segs)})" if k == 0 else None
            ax.plot(*seg, color="tab:green" if correct else "tab:red", linewidth=0.6, label=label)
    ax.set_box_aspect((1, 1, 1))
    ax.set_title(f"matches on S²: accuracy {right_count / max(s.size(0), 1):.3f} ({right_count}/{s.size(0)})")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, 1.0), fontsize="small")
    path = os.path.join(run_dir, "matches.png")
    save_figure(fig, path)
    return path


def plot_run(run_dir: str, task: Task) -> list[str]:
    """All figures of a run folder, from its metrics and the trained task."""
    from .. import metrics
    paths = [plot_curves(run_dir)]
    with torch.no_grad():
        out = task.forward(float(R.read_metrics(run_dir)[-1]["gamma"]))
    if task.head.cost == "sq_euclidean":
        p = plot_coupling(run_dir, out.plan, task.y, task.answer)
        if p:
            paths.append(p)
    else:
        # the run's answer (its last full evaluation), else the lifted-cost decoding of this pass
        pred = task.answer if task.answer is not None else metrics.to_permutation(out.plan, task.cost())
        paths.append(plot_sphere_matches(run_dir, task.src, task.target(), pred, task.y))
    return paths
