"""Epoch-level metrics without Lightning's per-step logging cost.

`self.log_dict(..., on_epoch=True)` on every step cost about 1 ms a step on a CPU (Lightning walks its
whole result collection on each call): as much as a small tabular model's entire training step
(benchmarks/train_throughput.py --models mlp: Lightning's cost a step went from 1.94 to 0.99 ms,
its speed from 0.30 to 0.45 of a hand-written loop's). The mixin
keeps the same figures, the batch-size-weighted mean of each value over the epoch, as one running
tensor a stage and hands them to `self.log` once an epoch. Under DDP the sums are added across
ranks before dividing, so every sample counts once, as Lightning's own `sync_dist` mean does.

A training run that diverged stops here with `Diverged` (tasks/ turns it into the stage's one line):
at the end of the first epoch whose mean training loss is NaN or infinite (before that epoch is
validated or checkpointed), or when training ends with weights that are not finite (a last step that
diverged). Both look at the host once, at the end of an epoch or of training: no per-step cost.

    class Model(EpochMeans, pl.LightningModule):   # the mixin first: its hooks below do the logging
        def training_step(self, batch, batch_idx):
            ...
            self.add_to_epoch("train", {"loss": loss, "acc": acc}, len(y))  # likewise "val", "test"
            return loss
"""

from __future__ import annotations

import torch


class Diverged(FloatingPointError):
    """The loss or the weights went to NaN or infinity: nothing after this point is worth keeping."""


class EpochMeans:
    def add_to_epoch(self, stage: str, values: dict[str, torch.Tensor], n: int) -> None:
        """Add one batch of `n` samples: each value is that batch's mean."""
        sums = self.__dict__.setdefault("_epoch_sums", {})
        batch = torch.stack([v.detach().float() for v in values.values()])
        row = torch.cat([batch * n, batch.new_tensor([n])])
        names, total = sums.get(stage, (list(values), 0))
        sums[stage] = (names, total + row)

    def log_epoch(self, stage: str) -> None:
        """Log `<stage>/<name>`: the epoch's weighted means; the sums start again."""
        names, total = self.__dict__.setdefault("_epoch_sums", {}).pop(stage, (None, None))
        if names is None:  # no batch of this stage ran this epoch
            return
        total = self.trainer.strategy.reduce(total, reduce_op="sum")  # DDP: all ranks' samples; one device: as is
        means = {f"{stage}/{name}": total[i] / total[-1] for i, name in enumerate(names)}
        # Every rank sees the same reduced loss, so all of them stop together (none waits in a collective).
        if stage == "train" and "train/loss" in means and not torch.isfinite(means["train/loss"]):
            raise Diverged(f"stopped at epoch {self.current_epoch + 1} of {self.trainer.max_epochs}: "
                           f"the mean training loss is {float(means['train/loss'])}")
        self.log_dict(means, on_step=False, on_epoch=True, batch_size=1)

    # Lightning's hooks: train means after the epoch's last batch (still inside the epoch, so callbacks
    # reading callback_metrics at on_train_epoch_end see them), val and test means at their epoch's end.
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.trainer.is_last_batch:
            self.log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def on_train_end(self) -> None:
        # Each loss is computed before its step, so no loss shows what the run's last step did to the
        # weights (with one batch an epoch, that is a whole epoch's training).
        tensors = [t for t in (*self.parameters(), *self.buffers()) if t.is_floating_point()]
        if tensors and not torch.stack([torch.isfinite(t).all() for t in tensors]).all():
            raise Diverged(f"ended at epoch {self.current_epoch} of {self.trainer.max_epochs} "
                           "with weights that are not finite")
