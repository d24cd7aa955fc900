"""One LightningModule for classification: an injected backbone, a linear head, one shared step.

Optimisers and per-group learning rates come in as plain values, so transfer learning is the
same module with a different backbone learning rate (0 freezes it: a linear probe).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

OPTIMIZERS = {
    "sgd": lambda groups, o: torch.optim.SGD(groups, momentum=o["momentum"], weight_decay=o["weight_decay"]),
    "adam": lambda groups, o: torch.optim.Adam(groups, weight_decay=o["weight_decay"]),
    "adamw": lambda groups, o: torch.optim.AdamW(groups, weight_decay=o["weight_decay"]),
    "rmsprop": lambda groups, o: torch.optim.RMSprop(groups, momentum=o["momentum"], weight_decay=o["weight_decay"]),
}


class Classifier(pl.LightningModule):
    def __init__(self, backbone: nn.Module, num_classes: int, optimizer: dict, backbone_lr_ratio: float = 1.0,
                 class_weights: list[float] | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_features, num_classes)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        if backbone_lr_ratio == 0:  # linear probe: the backbone is a fixed feature extractor
            self.backbone.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def on_train_epoch_start(self) -> None:
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()  # frozen BatchNorm statistics stay those of the source data

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing)
        acc = (logits.argmax(dim=1) == y).float().mean()
        # Per-epoch logging only: per-step logging costs ~1 ms a step on small models.
        self.log_dict({f"{stage}/loss": loss, f"{stage}/acc": acc}, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def configure_optimizers(self):
        o = self.hparams.optimizer
        groups = [{"params": self.head.parameters(), "lr": o["lr"]}]
        if self.hparams.backbone_lr_ratio > 0:
            groups.append({"params": self.backbone.parameters(), "lr": o["lr"] * self.hparams.backbone_lr_ratio})
        return OPTIMIZERS[o["name"]](groups, o)
