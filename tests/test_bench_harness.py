import math
import time

import numpy as np
import pytest

from harness import common as C
from harness import graph as G


def sleepy(seconds):
    time.sleep(seconds)
    return seconds


def failing(message):
    raise RuntimeError(message)


def allocating(mib):
    block = np.ones(mib * 2**20 // 8)
    return float(block.sum())


def test_budgeted_run_reports_ok_dnf_and_error():
    ok = C.run_budgeted(allocating, {"mib": 200}, budget_s=120)
    assert ok.status == "ok" and ok.value == 200 * 2**20 // 8
    assert ok.wall_s >= 0 and ok.cpu_s >= 0 and 150 < ok.peak_mib < 400
    slow = C.run_budgeted(sleepy, {"seconds": 60}, budget_s=8)
    assert slow.status == "dnf" and slow.value is None and "budget" in slow.message
    bad = C.run_budgeted(failing, {"message": "no such matrix"}, budget_s=120)
    assert bad.status == "error" and "no such matrix" in bad.message
    with pytest.raises(ValueError, match="budget_s"):
        C.run_budgeted(sleepy, {"seconds": 0}, budget_s=0)


def test_hits_from_similarity_brute_force():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(20, 25))
    truth = rng.integers(0, 25, size=20)
    got = C.hits_from_similarity(sim, truth, ks=(1, 3))
    for k in (1, 3):
        top = np.argsort(-sim, axis=1)[:, :k]
        assert got[f"hits_at_{k}"] == pytest.approx(np.mean([truth[i] in top[i] for i in range(20)]))


def test_table_summary_and_files(tmp_path):
    t = C.Table(["n", "method"], ["acc"])
    for seed, acc in enumerate([0.5, 0.9, 0.7]):
        t.add({"n": 10, "method": "x", "seed": seed, "status": "ok", "acc": acc})
    t.add({"n": 10, "method": "x", "seed": 3, "status": "dnf"})
    (s,) = t.summary()
    assert s["acc"] == "0.7 [0.5, 0.9]" and s["runs"] == "3/4" and s["note"] == "dnf"
    csv_path, md_path = t.write(str(tmp_path), "bench", "# header")
    assert open(csv_path).read().splitlines()[0].split(",")[:4] == ["n", "method", "seed", "status"]
    assert "| 10 | x | 3/4 | 0.7 [0.5, 0.9] | dnf |" in open(md_path).read()
    back = C.Table.from_csv(csv_path, ["n", "method"], ["acc"])
    assert back.summary() == t.summary()
    t.add({"n": 20, "method": "x", "seed": 0, "status": "dnf"})
    t.add({"n": 10, "method": "y", "seed": 0, "status": "ok"})  # finished, no accuracy
    table = C.pivot(t.rows, "method", "n", lambda r: r.get("acc"))
    assert table.splitlines()[2] == "| x | 0.700 | dnf |"
    assert table.splitlines()[3] == "| y | - | - |"


def test_graph_bench_rows_on_a_small_instance():
    inst = G.instance(90, 0.0, seed=0)
    settings = G.GlassSettings(steps=2)
    row = G.bench_one("glass", inst, settings)
    trained = G.bench_one("glass_trained", inst, settings)
    assert row["train_s"] < trained["train_s"] and trained["acc_refined"] == 1.0
    assert row["acc_refined"] == 1.0 and row["edges_preserved"] == pytest.approx(1.0)
    assert 0 <= row["acc_argmax"] <= 1 and 0 <= row["hits_at_5"] <= 1
    assert {"features_s", "train_s", "match_s", "pipeline_s", "diagnostics_s"} <= set(row)
    parts = sum(row[k] for k in ("features_s", "train_s", "match_s"))
    assert parts == pytest.approx(row["pipeline_s"], rel=1e-6)
    assert row["pipeline_s"] + row["diagnostics_s"] <= row["wall_s"]
    base = G.bench_one("grampa+refine", inst, settings)
    assert base["acc_refined"] == 1.0 and base["hits_at_10"] >= base["hits_at_1"]
    p_in, p_out = G.family_params("sparse", 1000)
    deg = p_in * 1000 / 3 + p_out * 2000 / 3
    assert deg == pytest.approx(math.log(1000), rel=1e-6)
    with pytest.raises(ValueError, match="family"):
        G.family_params("dense", 10)


def test_sphere_bench_rows_on_a_small_instance():
    from harness import sphere as S
    inst = S.instance(60, 1.0, "10", seed=0)
    assert 0 < inst["true_angle_deg"] <= 10
    row = S.bench_one("glass", inst, S.SphereGlassSettings(steps=3, slices=2))
    assert {"acc_hungarian", "acc_argmax", "acc_refined", "rotation_err_deg"} <= set(row)
    lap = S.bench_one("geodesic_lap", S.instance(60, 1.0, "none", seed=0), S.SphereGlassSettings())
    assert lap["acc_hungarian"] > 0.9
    with pytest.raises(ValueError, match="rotation"):
        S.instance(60, 1.0, "sideways", seed=0)


def test_scaling_rows_and_slopes(tmp_path):
    from harness import scaling as S
    cfg = S.ScalingConfig(sphere_sizes=[32, 64, 128], temperatures=[("rank", 1.0)], repeats=1)
    table = S.run(cfg, ["sphere"])
    assert [r["n"] for r in table.rows] == [32, 64, 128]
    for r in table.rows:
        parts = sum(r[k] for k in ("features_s", "projection_s", "ot_s", "loss_s", "backward_s"))
        assert parts <= r["step_s"] * 1.001 and r["nnz"] > 0
        assert 0 < r["floor_s"] < r["ot_s"]
    (fit,) = S.slopes(table)
    assert fit["from_n"] == 32 and math.isfinite(fit["slope"])
    S.plot(table, str(tmp_path / "scaling.png"))
    assert (tmp_path / "scaling.png").stat().st_size > 1000


def test_scaling_series_stop_before_a_size_that_cannot_fit(monkeypatch):
    from harness import scaling as S

    monkeypatch.setattr(S, "_physical_memory", lambda: 24 * 2**30)
    # quadratic growth (absolute temperature): 0.7 s -> 10.8 s from n = 1024 to 4096
    done = [{"n": 1024, "step_s": 0.7, "nnz": 2 * 1024 ** 2}, {"n": 4096, "step_s": 10.8, "nnz": 2 * 4096 ** 2}]
    assert "projected band working set" in S._projected_limit(done, 16384, max_step_s=1000)
    assert "projected step" in S._projected_limit(done, 16384 // 4 * 2, max_step_s=5)
    # near-linear growth fits
    done = [{"n": 1024, "step_s": 0.1, "nnz": 40 * 1024}, {"n": 4096, "step_s": 0.42, "nnz": 40 * 4096}]
    assert S._projected_limit(done, 16384, max_step_s=30) == ""
    assert S._projected_limit(done[:1], 16384, max_step_s=30) == ""


def test_gpu_check_logic_runs_on_the_cpu(tmp_path, capsys):
    import gpu_check
    import torch
    assert gpu_check.main(["--device", "cpu", "--sizes", "10", "--check-log2", "9", "--repeats", "1",
                           "--out", str(tmp_path)]) == 0
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| gradient, float32, rank |" in text and "| 2^10 |" in text and "NO" not in text
    if not torch.cuda.is_available():
        assert gpu_check.main(["--device", "cuda"]) == 2
