"""`vitdist.export.timm_model(folder)`, as the README of every exported timm folder names it: the exports live in
vitdist/after/export.py, timm's in vitdist/after/timm.py."""

from .after.export import ExportArgs, export_run, main
from .after.timm import timm_model

__all__ = ["ExportArgs", "export_run", "main", "timm_model"]

if __name__ == "__main__":  # `python -m vitdist.export RUN --format F`, as before the move
    import sys

    sys.exit(main())
