"""The tuning checklist as commands: the checks before training (checks.py), the learning-rate sweep, the range test and
the grid (sweep.py, lr_range.py, grid.py, over trials.py), the diagnosis of a run (diagnose.py, with its verdicts in
verdicts.py and its advice in advice.py), the checklist's tables (recommend.py), the pictures of runs and sweeps
(plots.py), and the whole loop (tune.py, deciding by tune_rule.py, spending by tune_budget.py and writing
tune_record.py's tables).

Imports everything below it: the core, data, scale, train and after."""
