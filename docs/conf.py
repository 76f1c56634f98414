"""Sphinx configuration for the physgen documentation (furo theme, MyST markdown).

Built offline: no intersphinx, no remote fetches. Tables that describe what is installed (the
solver table, process defaults, the top-level exports) are generated at build time by the
local extension ``_ext/physgen_docs.py`` from the registry, so they never go stale.

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import physgen  # noqa: E402

project = "physgen"
author = "physgen contributors"
copyright = "physgen contributors"
release = physgen.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_click",
    "physgen_docs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# Curly quotes and ellipses only: docutils' smartquotes would also typeset "--" as an en dash,
# and option names (``--steps`` in help text and prose) must survive copy and paste.
smartquotes_action = "qe"

# -- MyST ---------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# -- autodoc / napoleon ---------------------------------------------------------------------
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
# False: preserving defaults swaps functions' default values for placeholders while the site builds,
# and the sampler records read their options from those defaults (physgen.solvers.Sampler).
autodoc_preserve_defaults = False
autodoc_class_signature = "separated"
autodoc_inherit_docstrings = False
# Module docstrings use numpy-style headings ("References", "Conventions ..."); napoleon turns
# the known ones into rubrics, the custom ones below likewise.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_custom_sections = [("Conventions, stated once for the whole package", "notes_style")]

# -- HTML -----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"physgen {release}"
html_static_path: list[str] = []

# Offline: no intersphinx, and MathJax is only fetched by the reader's browser.


# docs/plugin-guide.md is written separately; until it exists, the index's toctree leaves it out.
def _drop_missing_guide(app, docname, source):  # type: ignore[no-untyped-def]
    if docname == "index" and not (HERE / "plugin-guide.md").exists():
        source[0] = source[0].replace("plugin-guide\n", "")


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("source-read", _drop_missing_guide)
