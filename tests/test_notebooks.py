import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.join(os.path.dirname(__file__), "..", "notebooks")
NOTEBOOKS = sorted(f for f in os.listdir(ROOT) if f.endswith(".ipynb"))


def test_three_notebooks_exist():
    assert NOTEBOOKS == ["01_pyg_pipeline.ipynb", "02_soft_sorting.ipynb", "03_sphere_geomstats.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path, monkeypatch):
    # the python3 kernelspec launches `python`: make it this interpreter, venv or not
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    book = nbformat.read(os.path.join(ROOT, name), as_version=4)
    assert book.cells[0].cell_type == "markdown"  # the first cell says what it shows
    assert not any(c.get("outputs") for c in book.cells if c.cell_type == "code"), "outputs are not committed"
    client = nbclient.NotebookClient(book, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
