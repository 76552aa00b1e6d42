"""Used by tests/test_tune_engine.py: wait until the given time, then take trainings from the study until none
waits, and print their ids (JSON). Several of these race to show that no training is taken twice."""

import json
import sys
import time

from vitdist.checklist.study import TuneStudy

url, start = sys.argv[1], float(sys.argv[2])
study = TuneStudy(url, "race")
while time.time() < start:
    time.sleep(0.001)
taken = []
while (trial_id := study.take()) is not None:
    taken.append(trial_id)
print(json.dumps(taken))
