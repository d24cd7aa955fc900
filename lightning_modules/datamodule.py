"""A DataModule over in-memory tensors: the stages hand it arrays, it hands Lightning loaders.

Data sets here are small enough to live in memory as tensors; keeping them as tensors (no
per-sample Python objects, no worker processes) keeps the per-step cost near a plain loop's.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset


class ArrayDataModule(pl.LightningDataModule):
    def __init__(self, arrays: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int, seed: int = 0):
        super().__init__()
        self.arrays = arrays  # split -> (x, y); no I/O here, as Lightning's examples advise
        self.batch_size = batch_size
        self.seed = seed

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        x, y = self.arrays[split]
        dataset = TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
