"""The data: every source as train / val / test splits of uint8 images (sources.py, images.py), the decode cache
(cache.py), the epoch order and each rank's batches, on the training device where the split fits (batches.py),
and augmentation as batched ops on the device (augment.py, with the RandAugment family in randaugment.py).

Imports the core only (config, stopping)."""
