"""Knowledge distillation: a small student learns from a frozen teacher's softened outputs.

The student and the teacher are injected networks (lightning_modules.backbones.Network, as in
`Classifier`), so the student's weights are those of any trained model (`backbone.*`, `head.*`).
Rows with label -1 have no hard label: they learn from the teacher alone (Hinton et al., 2015).
Training targets are either labels (the teacher runs on every batch) or (B, 1 + K) floats: the label,
then the teacher's K logits computed once beforehand, which saves a teacher forward pass per step
when nothing augments the batches.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import Network
from lightning_modules.epoch_means import EpochMeans
from lightning_modules.optim import OPTIMIZERS

UNLABELLED = -1


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                      temperature: float, alpha: float, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y) over labelled rows.

    T^2 keeps the soft term's gradient scale independent of T (Hinton et al.); the KL is averaged
    over every row, the cross-entropy over the rows whose label is not -1 (0 when none is).
    """
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t
    labelled = y != UNLABELLED
    hard = (F.cross_entropy(student_logits[labelled], y[labelled], weight=class_weights)
            if labelled.any() else student_logits.new_zeros(()))
    return alpha * soft + (1 - alpha) * hard


class Distiller(EpochMeans, pl.LightningModule):
    """Trains `network` (the student, a classifier) against `teacher`'s logits: live, or given with the labels."""

    def __init__(self, network: Network, teacher: nn.Module | None, optimizer: dict,
                 temperature: float = 4.0, alpha: float = 0.7, class_weights: list[float] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["network", "teacher"])
        self.network = network
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher's BatchNorm statistics and dropout stay fixed
        return self

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        if y.dim() == 2:  # (label, teacher logits...) computed beforehand
            y, teacher_logits = y[:, 0].long(), y[:, 1:]
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
        loss = distillation_loss(logits, teacher_logits, y, self.hparams.temperature, self.hparams.alpha, self.class_weights)
        agree = (logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float().mean()
        self.add_to_epoch("train", {"loss": loss, "teacher_agreement": agree}, len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch  # the val split is fully labelled
        logits = self(x)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.add_to_epoch("val", {"loss": F.cross_entropy(logits, y), "acc": acc}, len(y))

    def configure_optimizers(self):
        o = self.hparams.optimizer
        params = list(self.network.parameters())  # never the teacher's
        return OPTIMIZERS[o["name"]]([{"params": params, "lr": o["lr"]}], o)
