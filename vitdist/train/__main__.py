"""`python -m vitdist.train` and `accelerate launch -m vitdist.train`."""

from __future__ import annotations

import sys


from .command import main


if __name__ == "__main__":
    sys.exit(main())
