"""The epoch order and the batches: a seeded permutation per epoch cut to whole global batches (EpochSampler), each
rank's share of it through a DataLoader (train_loader) or, for a split held in memory, as indices into it on the
training device (DeviceBatches), and the evaluation loaders."""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import UserError
from .images import TensorImages


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, cut to whole global batches.

    The order is a function of (seed, epoch) alone, so a resumed run sees the same order, and accelerate's
    per-rank sharding of it gives every optimizer step the same global batch whatever the process count.
    """

    def __init__(self, n: int, global_batch_size: int, seed: int):
        self.n, self.global_batch_size, self.seed, self.epoch = n, global_batch_size, seed, 0
        self.steps = n // global_batch_size
        if self.steps == 0:
            raise UserError(f"--batch.global-batch-size {global_batch_size} is larger than the training split "
                            f"({n} images): lower it")

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return self.steps * self.global_batch_size

    def order(self) -> torch.Tensor:
        """This epoch's sample indices, whole global batches only."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g)[: len(self)]

    def __iter__(self):
        return iter(self.order().tolist())


def train_loader(ds: Dataset, batch_size: int, global_batch_size: int, seed: int, num_workers: int,
                 pin_memory: bool) -> DataLoader:
    """Batches of batch_size (one rank's share of a global batch) in EpochSampler's order."""
    sampler = EpochSampler(len(ds), global_batch_size, seed)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0, generator=own_generator())


class DeviceBatches:
    """A training split held as one uint8 tensor, kept on the training device: each step's share of the global
    batch is an index into it there, with no DataLoader, no collate and no copy from the host per step.

    The batches are train_loader's under accelerate's sharding (its BatchSamplerShard, split_batches off): step
    k's global batch is EpochSampler's k-th slice of global_batch_size, and rank r takes that slice's r-th part.
    """

    def __init__(self, ds: TensorImages, global_batch_size: int, seed: int, rank: int, world_size: int,
                 device: torch.device):
        self.images, self.labels = ds.images.to(device), ds.labels.to(device)
        self.sampler = EpochSampler(len(ds), global_batch_size, seed)
        self.rank, self.world_size, self.device = rank, world_size, device

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)

    def __len__(self):
        return self.sampler.steps

    def __iter__(self):
        return self.from_step(0)

    def from_step(self, first: int):
        """This epoch's batches from step `first` (0-based) on."""
        # (steps, ranks, share): this rank's indices for every step of the epoch, on the device at once.
        shares = self.sampler.order().view(self.sampler.steps, self.world_size, -1)[:, self.rank].to(self.device)
        for idx in shares[first:]:
            yield self.images[idx], self.labels[idx]


def loader_workers(ds: Dataset, requested: Optional[int]) -> int:
    """--data.num-workers, or by default none for a split held in memory (indexing it beats a worker's round
    trip) and min(8, the CPUs per process on this machine) for files decoded per batch."""
    if requested is not None:
        return requested
    if isinstance(ds, TensorImages):
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def eval_loader(ds: Dataset, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
                      generator=own_generator())


def own_generator() -> torch.Generator:
    """For a DataLoader's per-iteration base seed (it seeds workers; our samplers draw nothing from it). Left
    to torch's global generator, each iteration would shift every later random draw (weights, dropout,
    augmentation): a run would then depend on whether its images were decoded or cached, or held on the device."""
    return torch.Generator().manual_seed(0)
