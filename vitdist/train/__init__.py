"""The run: train(cfg) and its phases (run.py: open, build, start or resume, finish), the epochs (epoch.py), the state
the phases pass on (parts.py), one optimizer step and what the host reads of it (step.py), the run folder as it is
written (folder.py) and read (record.py) and its lock (lock.py), the processes and their Accelerator (processes.py),
the progress display and the epoch table (progress.py), the trackers (trackers.py), a split's scores (scores.py), and
the `vitdist train` command (command.py).

Imports the core, data and scale.

    from vitdist.train import train     # train(cfg) -> results
    python -m vitdist.train --preset demo
"""

from .command import main
from .run import train

__all__ = ["main", "train"]
