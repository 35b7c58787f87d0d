#!/usr/bin/env python
"""Django's command-line utility for the example project.

Run it from the repository root: ``python example_project/manage.py COMMAND``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    here = Path(__file__).resolve().parent
    # Python put this file's directory first on sys.path, where example_project/celery.py
    # would shadow the real celery package; the repository root belongs there instead.
    if sys.path and Path(sys.path[0] or ".").resolve() == here:
        sys.path[0] = str(here.parent)
    else:
        sys.path.insert(0, str(here.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
