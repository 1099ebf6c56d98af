"""Sphinx configuration of the glass-pyg API documentation (``sphinx-build -W docs docs/_build``)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "glass-pyg"
author = "glass-pyg developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signatures show them; the Args sections say the shapes
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]
html_theme = "alabaster"
