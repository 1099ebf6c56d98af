import csv
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from glass_pyg.experiments import run_dir as R
from glass_pyg.experiments.config import ConfigError, from_dict, load_config, shipped_configs
from glass_pyg.experiments.train import gamma_at, run

EXPECTED = (
    [f"_auto_s2_M1_tie_K{k}_g{g}" for k in (8, 16, 32) for g in ("0.05", "0.10")] + ["_auto_s2_M1_tie_K8_g0.15"]
    + [f"_auto_s2_M1_K{k}_g0.10" for k in (8, 16, 32)] + [f"_auto_s2_M2_r{r}" for r in (10, 20, 30, 40)]
    + [f"_auto_s2_M4_n{n}" for n in (64, 128, 256, 512, 1024)] + [f"_auto_sbm_G1_n{n}" for n in (200, 500, 1000)]
    + [f"_auto_sbm_G1_noise_rw{r}" for r in ("0.00", "0.02", "0.05", "0.10")]
    + [f"_auto_sbm_G2_q{q}_tau{t}" for q in (8, 12, 16, 24) for t in ("0.2", "0.5", "1.0")]
    + [f"_auto_sbm_G2_tau{t}" for t in ("0.10", "0.15", "0.20", "0.25", "0.30", "0.40")]
    + [f"_auto_sbm_G3_n{n}" for n in (500, 1000, 2000, 4000)] + ["manifold_s2_small", "graph_sbm_small"])


def test_every_reference_config_ships_and_validates():
    assert sorted(shipped_configs()) == sorted(EXPECTED)
    for name in EXPECTED:
        cfg = load_config(name)
        assert cfg.exp_name and cfg.kind in ("manifold", "graph")
    assert load_config("_auto_s2_M1_tie_K16_g0.10").model.K == 16
    assert load_config("_auto_s2_M1_K8_g0.10.yaml").model.gate_mode == "fixed"
    assert load_config("_auto_s2_M2_r30").model.chart_radius_deg == 30
    g2 = load_config("_auto_sbm_G2_q16_tau1.0", ["train.steps=7"])  # a point, then the user's overrides
    assert (g2.model.cheby_degree, g2.model.tau, g2.exp_name, g2.train.steps) == (16, 1.0, "sbm_G2_q16_tau1.0", 7)
    assert load_config("_auto_sbm_G1_noise_rw0.05").data.rewire_prob == 0.05
    assert load_config("_auto_s2_M4_n64").data.n == 64 and load_config("_auto_s2_M4_n64").kind == "manifold"


def test_grid_points_are_their_base_with_the_varied_values():
    from glass_pyg.cli import UsageError, sweep_names
    from glass_pyg.experiments.config import describe_configs
    from glass_pyg.experiments.grids import grid_points
    base = load_config("graph_sbm_small")
    point = grid_points()["_auto_sbm_G2_q8_tau0.2"]
    assert dict(point.values) == {"model.graph.cheby_degree": 8, "model.graph.tau": 0.2}
    got = load_config(point.name)
    assert got == dataclasses.replace(base, exp_name="sbm_G2_q8_tau0.2",
                                      model=dataclasses.replace(base.model, cheby_degree=8, tau=0.2))
    assert sweep_names(["G3"]) == [f"_auto_sbm_G3_n{n}" for n in (500, 1000, 2000, 4000)]
    assert sweep_names(["_auto_s2_M2_r*"]) == [f"_auto_s2_M2_r{r}" for r in (10, 20, 30, 40)]
    with pytest.raises(UsageError, match="G9"):
        sweep_names(["G9"])
    rows, grids = describe_configs()
    by_name = {r[0]: r for r in rows}
    assert by_name["_auto_s2_M1_K16_g0.10"][1:] == ("manifold", "M1", "gate_mode=fixed K=16 gamma=0.1")
    assert by_name["graph_sbm_small"][1:3] == ("graph", "-") and set(grids) == {"M1", "M2", "M4", "G1", "G2", "G3"}
    assert load_config("_auto_sbm_G2_q24_tau1.0").model.cheby_degree == 24
    assert load_config("_auto_sbm_G1_noise_rw0.05").data.rewire_prob == 0.05
    assert load_config("_auto_sbm_G3_n4000").data.n == 4000


@pytest.mark.parametrize("override, message", [
    ("data.bogus=3", "unknown key data.bogus"), ("train.stepz=3", "unknown key train.stepz"),
    ("ot.gamma=-1", "ot.gamma=-1.0 is outside"), ("train.steps=abc", "train.steps must be int"),
    ("data.p_in=1.5", "data.p_in=1.5 is outside"), ("ot.temperature=hot", "ot.temperature must be one of"),
    ("model.manifold.K=4", "exactly one of model.manifold or model.graph"), ("extra=1", "unknown key extra")])
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config("graph_sbm_small", [override])
    assert "graph_sbm_small.yaml" in str(info.value)


def test_overrides_and_unknown_names():
    cfg = load_config("graph_sbm_small", ["train.steps=50", "ot.gamma=0.02", "ot.temperature=rank"])
    assert (cfg.train.steps, cfg.ot.gamma, cfg.ot.temperature) == (50, 0.02, "rank")
    with pytest.raises(ConfigError, match="no config file or shipped config named"):
        load_config("_auto_nothing")
    with pytest.raises(ConfigError, match="blocks"):
        from_dict({"data": {"n": 2, "blocks": 3}, "model": {"graph": {}}})


def small(name, tmp_path, steps=2, extra=()):
    n = ["data.n=40"]
    return load_config(name, [f"train.steps={steps}", "log.save_every=1", f"log.out_dir={tmp_path}", *n, *extra])


@pytest.mark.parametrize("name", EXPECTED)
def test_every_config_runs_two_steps(name, tmp_path):
    result = run(small(name, tmp_path), quiet=True)
    rows = R.read_metrics(result.run_dir)
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert all(float(r["loss"]) >= 0 for r in rows)
    assert os.path.exists(os.path.join(result.run_dir, "state_step000002.pt"))


def _strip_time(rows):
    return [{k: v for k, v in r.items() if k != "runtime_sec"} for r in rows]


class Interrupt(Exception):
    pass


def crashed_run(cfg, out_dir, at_step):
    """Run ``cfg`` into a fresh ``out_dir`` until the row of ``at_step`` is written, then crash; the run folder."""
    def crash(row):
        if row["step"] == at_step:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(cfg, quiet=True, out_dir=str(out_dir), progress=crash)
    (folder,) = [os.path.join(out_dir, d) for d in os.listdir(out_dir)]
    return folder


@pytest.mark.parametrize("name", ["graph_sbm_small", "manifold_s2_small"])
def test_deterministic_and_resumable(name, tmp_path):
    cfg = small(name, tmp_path / "a", steps=6, extra=("log.save_every=3",))
    full = R.read_metrics(run(cfg, quiet=True).run_dir)
    again = R.read_metrics(run(cfg, quiet=True, out_dir=str(tmp_path / "b")).run_dir)
    assert _strip_time(full) == _strip_time(again)
    folder = crashed_run(cfg, tmp_path / "c", 4)
    assert [int(r["step"]) for r in R.read_metrics(folder)] == [0, 1, 2, 3, 4]  # every finished row kept
    state = torch.load(os.path.join(folder, "state_step000003.pt"), weights_only=True)
    assert state["step"] == 3
    resumed = run(cfg, quiet=True, resume=folder)
    rows = R.read_metrics(resumed.run_dir)
    assert [int(r["step"]) for r in rows] == list(range(7))
    assert _strip_time(rows) == _strip_time(full)


def test_gamma_annealing():
    cfg = load_config("graph_sbm_small", ["ot.gamma=0.1", "train.gamma_decay=0.5", "train.gamma_min=0.02"])
    assert [gamma_at(cfg, k) for k in range(4)] == [0.1, 0.05, 0.025, 0.02]
    off = load_config("graph_sbm_small", ["train.anneal_gamma=false"])
    assert gamma_at(off, 10) == off.ot.gamma


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "glass_pyg.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_end_to_end(tmp_path):
    out = cli("configs", cwd=tmp_path)
    assert out.returncode == 0 and "_auto_sbm_G3_n4000" in out.stdout.split()
    line = next(row for row in out.stdout.splitlines() if row.startswith("_auto_sbm_G1_n500 "))
    assert line.split() == ["_auto_sbm_G1_n500", "graph", "G1", "n=500"]
    out = cli("graph", "--config", "graph_sbm_small", "--set", "train.steps=3", "data.n=45",
              "--out_dir", "runs", "--plot", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (run_folder,) = os.listdir(tmp_path / "runs")
    files = set(os.listdir(tmp_path / "runs" / run_folder))
    assert {"config.json", "metrics.csv", "curves.png", "coupling.png", "state_step000003.pt"} <= files
    with open(tmp_path / "runs" / run_folder / "metrics.csv") as fh:
        header = next(csv.reader(fh))
    for col in ("step", "loss", "plan_entropy", "gamma", "runtime_sec", "nnz", "sinkhorn_iter",
                "band_radius", "perm_acc"):
        assert col in header
    out = cli("manifold", "--config", "_auto_s2_M2_r10", "--set", "train.steps=2", "data.n=30",
              "--out_dir", "runs", "--plot", "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = cli("compile-runs", "--logdir", "runs", cwd=tmp_path)
    assert out.returncode == 0 and "model.manifold.chart_radius_deg" in out.stdout
    assert (tmp_path / "runs" / "summary.csv").exists() and (tmp_path / "runs" / "summary.md").exists()
    out = cli("graph", "--config", "graph_sbm_small", "--set", "data.bogus=3", cwd=tmp_path)
    assert out.returncode == 2 and "unknown key data.bogus" in out.stderr
    out = cli("manifold", "--config", "graph_sbm_small", cwd=tmp_path)
    assert out.returncode != 0 and "glass-pyg graph" in out.stderr


def test_sweep_runs_globs(tmp_path):
    out = cli("sweep", "_auto_s2_M2_r*", "--set", "train.steps=1", "data.n=20", "--out_dir", "sw", "--quiet",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len([d for d in os.listdir(tmp_path / "sw") if d.startswith("s2_M2")]) == 4
    assert "summary.md" in os.listdir(tmp_path / "sw")


def _summary(folder):
    import json
    with open(os.path.join(folder, "summary.json")) as fh:
        return json.load(fh)


def test_rotated_sphere_run_is_aligned_from_step0(tmp_path):
    # the reference M1 experiment (Haar-rotated pairs, n = 256) with 4 training steps
    cfg = load_config("_auto_s2_M1_tie_K8_g0.05", ["train.steps=4", f"log.out_dir={tmp_path}"])
    result = run(cfg, quiet=True)
    rows = R.read_metrics(result.run_dir)
    assert all(r["rotation_err_deg"] and float(r["rotation_err_deg"]) < 0.5 for r in rows)
    s = _summary(result.run_dir)
    assert set(s) >= {"accuracy", "accuracy_at_step0", "seconds", "rotation_err_deg"}
    # exact assignment on the unrotated pair: the ceiling of any matcher
    from glass_pyg.datasets import SpherePairDataset
    from glass_pyg.sphere_alignment import match_points
    pair = SpherePairDataset(n=256, noise_deg=2.0, rotation=True, seed=0)[0]
    truth = pair.y[1]
    ceiling = float((match_points(pair.pos_s, pair.pos_t.double() @ pair.rotation[0].double()) == truth)
                    .double().mean())
    assert s["accuracy"] >= ceiling - 0.01 and s["accuracy_at_step0"] >= ceiling - 0.01
    assert s["accuracy"] == float(rows[-1]["accuracy"])


def test_graph_run_answer_is_the_refined_matching(tmp_path):
    cfg = load_config("graph_sbm_small", ["train.steps=2", f"log.out_dir={tmp_path}"])
    result = run(cfg, quiet=True)
    s = _summary(result.run_dir)
    assert s["accuracy"] >= 0.95 and s["accuracy_at_step0"] >= 0.95
    out = cli("compile-runs", "--logdir", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "summary.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert float(row["accuracy"]) == s["accuracy"] and float(row["seconds"]) == pytest.approx(s["seconds"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["_auto_s2_M1_tie_K8_g0.05", "_auto_s2_M2_r40", "_auto_s2_M4_n1024",
                                  "manifold_s2_small"])
def test_reference_sphere_configs_succeed_as_shipped(name, tmp_path):
    s = _summary(run(load_config(name, [f"log.out_dir={tmp_path}"]), quiet=True).run_dir)
    assert s["rotation_err_deg"] < 0.5
    assert s["accuracy"] >= s["accuracy_at_step0"] - 0.01
    assert s["accuracy"] > 0.6  # exact assignment on the unrotated pairs: 0.93 at n = 256, 0.73 at 1024


def test_resume_skips_a_corrupt_checkpoint_and_a_torn_row(tmp_path):
    cfg = small("graph_sbm_small", tmp_path / "a", steps=6, extra=("log.save_every=2", "train.stop_when_stable=0"))
    full = R.read_metrics(run(cfg, quiet=True).run_dir)
    folder = crashed_run(cfg, tmp_path / "c", 5)
    newest = os.path.join(folder, "state_step000004.pt")
    with open(newest, "r+b") as fh:  # a crash while the newest checkpoint was copied
        fh.truncate(os.path.getsize(newest) // 2)
    with open(os.path.join(folder, "state_step000009.pt"), "wb") as fh:  # a stray file with a higher step
        fh.write(b"not a checkpoint")
    with open(os.path.join(folder, "metrics.csv"), "a") as fh:  # a row torn by the crash
        fh.write("5,0.12")
    assert [int(r["step"]) for r in R.read_metrics(folder)] == [0, 1, 2, 3, 4, 5]
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        resumed = run(cfg, quiet=True, resume=folder)
    rows = R.read_metrics(resumed.run_dir)
    assert [int(r["step"]) for r in rows] == list(range(7))
    assert _strip_time(rows) == _strip_time(full)


def test_cli_errors_are_one_line_with_consistent_status(tmp_path, capsys):
    from glass_pyg.cli import main
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"seed: 1\n\xff\xfe\n")
    assert main(["graph"]) == 2
    assert main(["graph", "--config", str(bad)]) == 2
    assert main(["graph", "--config", "graph_sbm_small", "--set", "train.lr=["]) == 2
    assert main(["graph", "--config", "graph_sbm_small", "--set", f"seed={2 ** 64}"]) == 2
    assert main(["manifold", "--config", "graph_sbm_small"]) == 2
    (tmp_path / "afile").write_text("")
    assert main(["graph", "--config", "graph_sbm_small", "--set", "train.steps=1", "--quiet",
                 "--out_dir", str(tmp_path / "afile")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("glass-pyg: error: ") for line in err), err
    assert "not UTF-8" in err[1] and "not valid YAML" in err[2] and "2^63" in err[3] and "not a folder" in err[5]
    for argv in (["bench-sinkhorn", "--n", "0"], ["bench-sinkhorn", "--gamma", "-1"],
                 ["bench-sinkhorn", "--repeats", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_numbers_in_the_usual_spellings_are_numbers(tmp_path):
    cfg = load_config("graph_sbm_small", ["train.lr=1e-3", "ot.gamma=5E-2", "ot.tol=.5e-6"])
    assert cfg.train.lr == 1e-3 and cfg.ot.gamma == 0.05 and cfg.ot.tol == 5e-7
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  graph: {}\ntrain:\n  lr: 1e-3\n")
    assert load_config(str(path)).train.lr == 1e-3


def test_compile_runs_skips_broken_folders_and_marks_unfinished(tmp_path):
    import shutil

    from glass_pyg.experiments.aggregate import compile_runs
    done = run(small("graph_sbm_small", tmp_path), quiet=True).run_dir
    broken, unfinished = tmp_path / "broken_run", tmp_path / "unfinished_run"
    shutil.copytree(done, broken)
    shutil.copytree(done, unfinished)
    (broken / "config.json").write_text("{not json")
    os.remove(unfinished / "summary.json")
    _, _, md = compile_runs(str(tmp_path))
    lines = md.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in lines[2:]
             if r.startswith("| ")}
    finished = header.index("finished")
    assert table[os.path.basename(done)][finished] == "yes" and table["unfinished_run"][finished] == "no"
    assert "broken_run" not in table and "- `broken_run`: JSONDecodeError" in md


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        folder = run(small("graph_sbm_small", tmp_path, steps=1), quiet=True).run_dir
    finally:
        os.umask(old)
    for name in ("config.json", "metrics.csv", "summary.json", "state_step000001.pt"):
        assert os.stat(os.path.join(folder, name)).st_mode & 0o777 == 0o644, name


def test_help_and_configs_do_not_import_torch():
    code = ("import sys, contextlib, io\nfrom glass_pyg.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['configs'])\n"
            "print('torch' in sys.modules, 'torch_geometric' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out.stderr
    out = subprocess.run([sys.executable, "-c", "import glass_pyg; print(glass_pyg.align_sphere.__name__, "
                          "glass_pyg.nn.GLASS.__name__, glass_pyg.consensus.gw_consensus.__name__)"],
                         capture_output=True, text=True)
    assert out.stdout.split() == ["align_sphere", "GLASS", "gw_consensus"], out.stderr


def test_resume_says_where_and_refuses_a_finished_run(tmp_path, capsys):
    from glass_pyg.cli import main
    cfg = small("graph_sbm_small", tmp_path, steps=4, extra=("train.stop_when_stable=0",))
    folder = crashed_run(cfg, tmp_path, 3)
    assert main(["graph", "--resume", folder]) == 0
    err = capsys.readouterr().err
    assert f"resuming {folder} from step 3 of 4" in err
    assert main(["graph", "--resume", folder]) == 2
    assert "is a finished run" in capsys.readouterr().err


@pytest.mark.parametrize("temperature, gamma, warns", [("absolute", 0.1, True), ("rank", 3.0, False)])
def test_a_wide_absolute_plan_on_a_large_problem_is_reported_once(tmp_path, monkeypatch, temperature, gamma, warns):
    import warnings

    import glass_pyg.experiments.train as train
    monkeypatch.setattr(train, "DENSE_PAIRS", 100)  # "large" from 100 pairs, so n = 60 counts
    cfg = load_config("graph_sbm_small", ["data.n=60", "train.steps=2", "train.eval_every=1",
                                          "train.stop_when_stable=0", f"log.out_dir={tmp_path}",
                                          f"ot.temperature={temperature}", f"ot.gamma={gamma}"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(cfg, quiet=True)
    wide = [w for w in caught if "on the absolute scale is wide" in str(w.message)]
    assert len(wide) == (1 if warns else 0), [str(w.message) for w in caught]


def test_only_the_answers_decoding_warnings_reach_the_user(monkeypatch):
    """The raw plan's diagnostic decoders report by their numbers; the answer's decoding still warns."""
    import warnings

    from glass_pyg import metrics
    from glass_pyg.experiments.tasks import build_tasks

    _, tasks = build_tasks(load_config("manifold_s2_small", ["data.n=64"]))
    task = tasks[0]
    out = task.forward(0.05)
    real_perm_accuracy, real_to_permutation = metrics.perm_accuracy, metrics.to_permutation

    def perm_accuracy(*args, **kwargs):
        warnings.warn("diagnostic decoding fell back", metrics.DecodingWarning, stacklevel=2)
        return real_perm_accuracy(*args, **kwargs)

    def to_permutation(*args, **kwargs):
        warnings.warn("answer decoding fell back", metrics.DecodingWarning, stacklevel=2)
        return real_to_permutation(*args, **kwargs)

    monkeypatch.setattr(metrics, "perm_accuracy", perm_accuracy)
    monkeypatch.setattr(metrics, "to_permutation", to_permutation)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = task.evaluate(out, full=True)
    assert [str(w.message) for w in caught if w.category is metrics.DecodingWarning] == ["answer decoding fell back"]
    assert 0 <= row["perm_acc"] <= 1 and 0 <= row["perm_acc_hungarian"] <= 1 and 0 <= row["accuracy"] <= 1
