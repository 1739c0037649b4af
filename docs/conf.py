"""Sphinx configuration of the pyro-stcn documentation: ``python -m sphinx -W -b html docs docs/_build/html``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for a build without installing

project = "pyro-stcn"
author = "the pyro-stcn developers"
copyright = "2026, " + author

extensions = [
    "myst_parser",  # the guides are Markdown, as the README is
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings' "References:" and "Raises:" sections
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # links to a guide's sections, as the README had them

autodoc_member_order = "bysource"
autodoc_default_options = {"undoc-members": False, "show-inheritance": True}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Each project's own inventory, or, where the network is out of reach (CI, this project's
# machines), an empty one: the build then has no links into their documentation but no
# warning either (a warning fails the -W build).
intersphinx_mapping = {
    "pyro": ("https://docs.pyro.ai/en/stable/", (None, "_inventories/pyro-empty.inv")),
    "torch": ("https://docs.pytorch.org/docs/stable/", (None, "_inventories/pytorch-empty.inv")),
    "python": ("https://docs.python.org/3/", (None, "_inventories/python-empty.inv")),
}
intersphinx_timeout = 5

html_theme = "furo"
html_title = "pyro-stcn"
html_static_path = ["_static"]
