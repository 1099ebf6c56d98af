"""Runs of several pairs: one shared projection, and the same run split across torchrun processes."""
import csv
import os
import subprocess
import sys

import pytest
import torch

from glass_pyg.experiments.config import load_config
from glass_pyg.experiments.distributed import World
from glass_pyg.experiments.tasks import build_tasks
from glass_pyg.experiments.train import gamma_at, run


def _cfg(name, tmp_path, *extra):
    return load_config(name, ["data.n=50", "data.num_pairs=3", "train.steps=3", "train.eval_every=1",
                              "train.stop_when_stable=0", f"log.out_dir={tmp_path}", *extra])


def test_several_pairs_train_one_projection_on_their_mean_loss(tmp_path):
    cfg = _cfg("graph_sbm_small", tmp_path)
    model, tasks = build_tasks(cfg)
    assert len(tasks) == 3 and all(t.head.projection is model["projection"] for t in tasks)
    assert not torch.equal(tasks[0].src, tasks[1].src)  # different pairs
    with torch.no_grad():
        losses = [float(t.forward(gamma_at(cfg, 0)).loss) for t in tasks]
    res = run(cfg, quiet=True)
    with open(os.path.join(res.run_dir, "metrics.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]["loss"]) == pytest.approx(sum(losses) / 3, rel=1e-12)
    assert len(rows) == 4 and 0 <= float(rows[-1]["accuracy"]) <= 1


def test_a_process_needs_a_pair():
    assert World(1, 2).owned(5) == [1, 3] and World(0, 1).owned(2) == [0, 1]
    with pytest.raises(ValueError, match="num_pairs=2 is smaller than the 3 processes"):
        World(0, 3).owned(2)


def test_torchrun_gradient_is_that_of_the_mean_loss_over_all_pairs(tmp_path):
    # Adam hides a wrong gradient scale from the rows: the gradient itself is compared
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    out = tmp_path / "grad.pt"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          os.path.join(os.path.dirname(__file__), "ddp_gradient.py"), str(out)],
                         capture_output=True, text=True, env=env | {"OMP_NUM_THREADS": "1"}, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    model, tasks = build_tasks(load_config("graph_sbm_small", ["data.n=50", "data.num_pairs=3"]))
    (sum(t.forward(0.1).loss for t in tasks) / 3).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-9, atol=1e-12)


def _rows(folder):
    (run_folder,) = os.listdir(folder)
    with open(os.path.join(folder, run_folder, "metrics.csv")) as fh:
        return run_folder, list(csv.DictReader(fh))


@pytest.mark.parametrize("kind, name, extra", [
    ("graph", "graph_sbm_small", []),
    ("manifold", "manifold_s2_small", ["model.manifold.train_rotation=true"])])  # rotations: one per pair
def test_torchrun_two_processes_give_the_one_process_rows(kind, name, extra, tmp_path):
    args = [kind, "--config", name, "--quiet", "--set", "data.n=50", "data.num_pairs=3", "train.steps=4",
            "train.eval_every=2", "train.stop_when_stable=0", "log.save_every=2", *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    one = subprocess.run([sys.executable, "-m", "glass_pyg", *args, "--out_dir", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "glass_pyg", *args, "--out_dir", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    _, want = _rows(tmp_path / "one")
    folder, got = _rows(tmp_path / "two")  # one run folder: the first process alone writes
    assert {"config.json", "summary.json", "state_step000004.pt"} <= set(os.listdir(tmp_path / "two" / folder))
    assert len(got) == len(want) == 5
    for a, b in zip(got, want):
        for key in a:
            if key == "runtime_sec" or a[key] == b[key]:
                continue
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-7, abs=1e-9), (key, a["step"])
