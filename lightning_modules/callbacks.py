"""Callbacks: a per-epoch history that stages turn into plots, progress and reports."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl


class EpochHistory(pl.Callback):
    """Collects the epoch-level metrics; calls `on_epoch(epoch, max_epochs, row)` after each."""

    def __init__(self, on_epoch: Callable[[int, int, dict], None] | None = None):
        self.rows: list[dict] = []
        self.on_epoch = on_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Runs after the epoch's validation in Lightning 2, so train/* and val/* are both here.
        row = {"epoch": trainer.current_epoch, **{k: round(float(v), 6) for k, v in trainer.callback_metrics.items()}}
        self.rows.append(row)
        if self.on_epoch:
            self.on_epoch(trainer.current_epoch + 1, trainer.max_epochs, row)
