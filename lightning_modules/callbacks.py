"""Callbacks: a per-epoch history that stages turn into plots, progress and reports, and a
per-epoch reseed that makes a resumed run continue exactly as an uninterrupted one would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl


class EpochHistory(pl.Callback):
    """Collects the epoch-level metrics; calls `on_epoch(epoch, max_epochs, row)` after each.
    Its rows are saved in checkpoints, so a resumed run keeps the epochs before the interruption."""

    def __init__(self, on_epoch: Callable[[int, int, dict], None] | None = None):
        self.rows: list[dict] = []
        self.on_epoch = on_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Runs after the epoch's validation in Lightning 2, so train/* and val/* are both here.
        row = {"epoch": trainer.current_epoch, **{k: round(float(v), 6) for k, v in trainer.callback_metrics.items()}}
        self.rows.append(row)
        if self.on_epoch and trainer.is_global_zero:
            self.on_epoch(trainer.current_epoch + 1, trainer.max_epochs, row)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


class EpochSeed(pl.Callback):
    """Reseeds every generator at the start of each epoch from (seed, epoch, rank).

    Lightning's checkpoints do not hold the random state, so without this a run resumed at epoch k
    would draw other dropout masks and augmentations than an uninterrupted one."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        pl.seed_everything(self.seed * 1_000 + trainer.current_epoch + 7_919 * trainer.global_rank, verbose=False)
