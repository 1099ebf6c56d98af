"""The public contract: every name in a public module's ``__all__`` is documented with a summary and an
Example, every Example runs as written, and the API documentation builds without a warning."""
import dataclasses
import doctest
import importlib
import inspect
import os
import subprocess
import sys
import types

import pytest

PUBLIC = ["glass_pyg", "glass_pyg.ot", "glass_pyg.nn", "glass_pyg.geometry", "glass_pyg.datasets",
          "glass_pyg.baselines", "glass_pyg.metrics", "glass_pyg.losses", "glass_pyg.refinement",
          "glass_pyg.consensus", "glass_pyg.community_consensus", "glass_pyg.graph_matching",
          "glass_pyg.sphere_alignment"]
DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")


def _public():
    seen = {}
    for module in PUBLIC:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, types.ModuleType) or not callable(obj):
                continue  # subpackages and constants (``__version__``)
            seen.setdefault(f"{obj.__module__}.{obj.__qualname__}", (f"{module}.{name}", obj))
    return sorted(seen.values())


NAMES = _public()


def test_the_public_surface_is_not_empty():
    assert len(NAMES) > 60


@pytest.mark.parametrize("name, obj", NAMES, ids=[n for n, _ in NAMES])
def test_public_name_has_summary_and_example(name, obj):
    doc = inspect.getdoc(obj) or ""
    summary = doc.split("\n", 1)[0]
    assert summary.strip(), f"{name} has no summary line"
    assert "\nExample:\n" in doc or "\nExamples:\n" in doc, f"{name} has no Example section"


def _takes_arguments(obj) -> bool:
    """Functions and classes built from arguments; result dataclasses document fields, not arguments."""
    if dataclasses.is_dataclass(obj) or (inspect.isclass(obj) and issubclass(obj, Warning)):
        return False
    if inspect.isclass(obj) and obj.__name__ == "PairData":  # its attributes section lists the stores
        return False
    params = [p for p in inspect.signature(obj).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return bool(params)


WITH_ARGUMENTS = [(n, o) for n, o in NAMES if _takes_arguments(o)]


@pytest.mark.parametrize("name, obj", WITH_ARGUMENTS, ids=[n for n, _ in WITH_ARGUMENTS])
def test_public_callable_documents_its_arguments(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert "\nArgs:\n" in doc, f"{name} has no Args section"
    documented = doc.split("\nArgs:\n", 1)[1]
    for p in inspect.signature(obj).parameters.values():
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self":
            assert p.name in documented, f"{name}: argument {p.name!r} is not documented"


@pytest.mark.parametrize("name, obj", NAMES, ids=[n for n, _ in NAMES])
def test_public_example_runs(name, obj):
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={})
    assert tests and tests[0].examples, f"{name}: no runnable example"
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0, f"{name}: its Example fails (output above)"


def test_api_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")  # the test extra installs it; a plain user install need not
    out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS,
                          str(tmp_path / "html")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "html" / "api.html").exists()
