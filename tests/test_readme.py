import os
import re

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_pipeline_example_runs(capsys):
    text = open(README).read()
    section = text.split("## GLASS in a PyG pipeline", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2  # two mini-batches of two pairs, each printing (loss, accuracy)
    for line in printed:
        loss, acc = map(float, line.split())
        assert loss > 0 and 0 <= acc <= 1


def test_sphere_alignment_example_runs(capsys):
    text = open(README).read()
    section = text.split("## Rotated point clouds on S²", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    line = capsys.readouterr().out.strip()
    m = re.match(r"rotation error ([\d.]+) deg, accuracy ([\d.]+), ([\d.]+) s", line)
    assert m and float(m.group(1)) < 0.5 and float(m.group(2)) > 0.7


def test_solver_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in an empty folder, as a user would paste it
    text = open(README).read()
    section = text.split("## The solver", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["P"].shape == (4, 10_000, 12_000) and scope["loss"].shape == (4,)
    assert bool((scope["loss"] > 0).all()) and os.listdir(tmp_path) == []
