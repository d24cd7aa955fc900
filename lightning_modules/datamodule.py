"""A DataModule over in-memory tensors: the stages hand it arrays, it hands Lightning loaders.

Data sets here are small enough to live in memory as tensors. Batches are cut by indexing the
tensors with a whole index vector (no per-sample Python objects, no collate, no worker
processes), which keeps the per-step cost near a hand-written loop's. The shuffle order of an
epoch depends only on (seed, epoch), so a run resumed from a checkpoint sees exactly the batches
an uninterrupted run would. Optional on-the-fly augmentation (kornia) runs on each training
batch after it reaches its device.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_modules.augment import BatchAugment


class EpochBatches(Sampler):
    """Yields one index tensor per batch; the permutation is a function of (seed, epoch) alone."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0):
        self.n, self.batch_size, self.shuffle, self.seed, self.epoch = n, batch_size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.n)
        yield from order.split(self.batch_size)


class TensorPairs(Dataset):
    """(x, y) tensors indexed by a whole batch of indices at once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: torch.Tensor):
        return self.x[index], self.y[index]


def target_tensor(y: np.ndarray) -> torch.Tensor:
    """Class indices stay integers; regression targets are floats."""
    return torch.tensor(y, dtype=torch.float32 if np.issubdtype(np.asarray(y).dtype, np.floating) else torch.long)


class ArrayDataModule(pl.LightningDataModule):
    def __init__(self, arrays: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int, seed: int = 0,
                 augment: dict | None = None):
        super().__init__()
        self.arrays = arrays  # split -> (x, y); no I/O here, as Lightning's examples advise
        self.batch_size = batch_size
        self.seed = seed
        self.augment_cfg = augment  # BatchAugmentConfig as a dict; built lazily (kornia imports in ~1 s)
        self._augment: BatchAugment | None = None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        x, y = self.arrays[split]
        dataset = TensorPairs(torch.tensor(x, dtype=torch.float32), target_tensor(y))  # a copy: frames' arrays are read-only
        # batch_size=None: the sampler already yields whole batches of indices. The loader's own
        # generator: otherwise each new iterator draws from the global one, and a resumed run (whose
        # first iterator starts at another moment) would see other dropout masks.
        return DataLoader(dataset, sampler=EpochBatches(len(dataset), self.batch_size, shuffle, self.seed), batch_size=None,
                          generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.augment_cfg and self.trainer is not None and self.trainer.training:
            if self._augment is None:
                self._augment = BatchAugment(self.augment_cfg)
            batch = self._augment(*batch)
        return batch
