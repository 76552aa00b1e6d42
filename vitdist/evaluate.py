"""`python -m vitdist.evaluate RUN` and `accelerate launch -m vitdist.evaluate RUN` (the README's form): the
`vitdist eval` command, which lives in vitdist/after/evaluate.py."""

import sys

from .after.evaluate import EvalArgs, evaluate_run, main

__all__ = ["EvalArgs", "evaluate_run", "main"]

if __name__ == "__main__":
    sys.exit(main())
