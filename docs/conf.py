"""Sphinx configuration: the API reference from the docstrings, and the Markdown pages beside it.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (``pip install '.[docs]'``)."""

from __future__ import annotations

import torch_gd

project = "torch_gd"
release = torch_gd.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Members torch_gd inherits from torch.optim keep torch's docstrings, written for torch's own
# reference (its cross-references and roles): only torch_gd's own members are documented here.
autodoc_inherit_docstrings = False
html_theme = "alabaster"
