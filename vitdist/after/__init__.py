"""After training: a run's model loaded back (load.py: `vitdist.load_run`), scored on a split (evaluate.py), asked
about image files (predict.py), and exported for other tools (export.py, with the timm form in timm.py and the
Hub's model card in card.py).

Imports the core, data and train."""
