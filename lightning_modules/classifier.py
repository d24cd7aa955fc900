"""One LightningModule for classification, binary classification and regression: an injected
backbone, a linear head, one shared step.

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

from lightning_modules.epoch_means import EpochMeans
from lightning_modules.optim import OPTIMIZERS, build_scheduler

__all__ = ["Classifier", "OPTIMIZERS", "LOSS_TASK"]

LOSS_TASK = {"cross_entropy": "classification", "bce": "binary", "mse": "regression"}


class Classifier(EpochMeans, pl.LightningModule):
    def __init__(self, backbone: nn.Module, num_classes: int, optimizer: dict, backbone_lr_ratio: float = 1.0,
                 class_weights: list[float] | None = None, label_smoothing: float = 0.0, task: str = "classification"):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_features, num_classes if task == "classification" else 1)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        if weights is not None and task == "binary":  # BCE weighs the positive class against the negative one
            weights = (weights[1] / weights[0]).reshape(1)
        self.register_buffer("class_weights", weights, persistent=False)
        if backbone_lr_ratio == 0:  # linear probe: the backbone is a fixed feature extractor
            self.backbone.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def on_train_epoch_start(self) -> None:
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()  # frozen BatchNorm statistics stay those of the source data

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self.hparams.task
        if task == "regression":
            return F.mse_loss(out.squeeze(1), y.float())
        if y.dim() == 2:  # mixed targets: (label a, label b, weight of b)
            a, b, lam = y[:, 0].long(), y[:, 1].long(), y[:, 2]
            return ((1 - lam) * self._per_sample(out, a) + lam * self._per_sample(out, b)).mean()
        return self._per_sample(out, y).mean() if task == "binary" else F.cross_entropy(
            out, y, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing)

    def _per_sample(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.hparams.task == "binary":
            return F.binary_cross_entropy_with_logits(out.squeeze(1), y.float(), pos_weight=self.class_weights, reduction="none")
        return F.cross_entropy(out, y, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing, reduction="none")

    def metric(self, out: torch.Tensor, y: torch.Tensor) -> tuple[str, torch.Tensor]:
        """acc for the classifiers (against label a of a mixed batch), mae for regression."""
        if self.hparams.task == "regression":
            return "mae", (out.squeeze(1) - y.float()).abs().mean()
        target = y[:, 0].long() if y.dim() == 2 else y
        pred = (out.squeeze(1) > 0).long() if self.hparams.task == "binary" else out.argmax(dim=1)
        return "acc", (pred == target).float().mean()

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
        if self.hparams.backbone_lr_ratio > 0:
            groups.append({"params": self.backbone.parameters(), "lr": o["lr"] * self.hparams.backbone_lr_ratio})
        optimizer = OPTIMIZERS[o["name"]](groups, o)
        schedule = build_scheduler(optimizer, o.get("scheduler"), self.trainer.estimated_stepping_batches, self.trainer.max_epochs)
        return optimizer if schedule is None else {"optimizer": optimizer, "lr_scheduler": schedule}
