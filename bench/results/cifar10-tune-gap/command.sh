#!/usr/bin/env bash
# After bench/cifar10_tune_workers.sh /tmp/accept2 (issue 19's acceptance tune, the run of 2026-12-05 07:00):
# the template as given and the winner made wider, on the tune's 3 confirmation seeds, 2 trainings at a time.
set -euo pipefail
.venv/bin/python bench/cifar10_tune_gap.py /tmp/accept2 /tmp/gap
