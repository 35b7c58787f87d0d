"""Sphinx configuration of the django-dataflows documentation (furo theme, MyST Markdown).

Build it with ``make docs``, or ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from django_dataflows import __version__

project = "django-dataflows"
author = "django-dataflows contributors"
copyright = "django-dataflows contributors"
version = release = __version__

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"django-dataflows {release}"
