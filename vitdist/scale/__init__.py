"""Scale: how much of a model fits where. The memory of one training step, estimated from the model's shape and
measured on the device (memory.py); the micro-batch and accumulation that keep the global batch (plan.py); and
`vitdist autobatch`, the measured search with its cache (autobatch.py). The trainer uses all three (--batch.auto,
an out-of-memory step shrinking the micro-batch).

Imports the core only."""
