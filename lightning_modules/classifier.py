"""One LightningModule for classification, binary classification and regression: an injected
network (lightning_modules.backbones.Network: backbone + head + forward, the one definition every
module trains), one shared step.

task (from the loss): classification (cross-entropy with class weights and label smoothing),
binary (one logit, BCE; class weights become the positive-class weight), regression (MSE).
Optimisers, schedules and per-group learning rates come in as plain values, so transfer learning
is the same module with a different backbone learning rate (0 freezes it: a linear probe).
Mixed batches from on-the-fly mixup/cutmix arrive as (B, 3) targets (label a, label b, weight of b).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import Network
from lightning_modules.epoch_means import EpochMeans
from lightning_modules.optim import OPTIMIZERS, build_scheduler

__all__ = ["Classifier", "OPTIMIZERS", "LOSS_TASK"]

LOSS_TASK = {"cross_entropy": "classification", "bce": "binary", "mse": "regression"}


class Classifier(EpochMeans, pl.LightningModule):
    """Trains `network` (its task: classification, binary or regression) on labels."""

    def __init__(self, network: Network, optimizer: dict, backbone_lr_ratio: float = 1.0,
                 class_weights: list[float] | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        if weights is not None and self.task == "binary":  # BCE weighs the positive class against the negative one
            weights = (weights[1] / weights[0]).reshape(1)
        self.register_buffer("class_weights", weights, persistent=False)
        # The backbone's optimizer groups when a transfer schedule sets them (lightning_modules.transfer.TransferSchedule,
        # before the optimizer is built); otherwise one group at lr x backbone_lr_ratio.
        self.backbone_groups: list[dict] | None = None
        if backbone_lr_ratio == 0:  # linear probe: the backbone is a fixed feature extractor
            self.backbone.requires_grad_(False)

    @property
    def backbone(self) -> nn.Module:
        return self.network.backbone

    @property
    def head(self) -> nn.Linear:
        return self.network.head

    @property
    def task(self) -> str:
        return self.network.task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)  # binary: the pair (0, z), so z is column 1

    def on_train_epoch_start(self) -> None:
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()  # frozen BatchNorm statistics stay those of the source data

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self.task
        if task == "regression":  # in standard deviations of the label: 1.0 is what predicting the mean scores
            return F.mse_loss(out.squeeze(1), y.float()) / self.network.target_std ** 2
        if y.dim() == 2:  # mixed targets: (label a, label b, weight of b)
            a, b, lam = y[:, 0].long(), y[:, 1].long(), y[:, 2]
            return ((1 - lam) * self._per_sample(out, a) + lam * self._per_sample(out, b)).mean()
        return self._per_sample(out, y).mean() if task == "binary" else F.cross_entropy(
            out, y, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing)

    def _per_sample(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "binary":
            return F.binary_cross_entropy_with_logits(out[:, 1], y.float(), pos_weight=self.class_weights, reduction="none")
        return F.cross_entropy(out, y, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing, reduction="none")

    def metric(self, out: torch.Tensor, y: torch.Tensor) -> tuple[str, torch.Tensor]:
        """acc for the classifiers (against label a of a mixed batch), mae for regression."""
        if self.task == "regression":
            return "mae", (out.squeeze(1) - y.float()).abs().mean()
        target = y[:, 0].long() if y.dim() == 2 else y
        return "acc", (out.argmax(dim=1) == target).float().mean()  # binary: z > 0 is argmax 1 of (0, z)

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        out = self(x)
        loss = self.loss(out, y)
        name, value = self.metric(out, y)
        self.add_to_epoch(stage, {"loss": loss, name: value}, len(y))  # logged once an epoch (see epoch_means)
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._shared_step(batch, "train")
        l1 = self.hparams.optimizer.get("l1", 0.0)
        if l1:  # L1 on weight matrices and kernels, not on biases or norm scales
            loss = loss + l1 * sum(p.abs().sum() for p in self.parameters() if p.requires_grad and p.dim() > 1)
        return loss

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def configure_optimizers(self):
        o = self.hparams.optimizer
        groups = [{"params": self.head.parameters(), "lr": o["lr"]}]
        if self.backbone_groups is not None:
            groups += self.backbone_groups
        elif self.hparams.backbone_lr_ratio > 0:
            groups.append({"params": self.backbone.parameters(), "lr": o["lr"] * self.hparams.backbone_lr_ratio})
        optimizer = OPTIMIZERS[o["name"]](groups, o)
        steps, epochs = self.trainer.estimated_stepping_batches, self.trainer.max_epochs
        schedule = build_scheduler(optimizer, o.get("scheduler"), steps, epochs)
        return optimizer if schedule is None else {"optimizer": optimizer, "lr_scheduler": schedule}
