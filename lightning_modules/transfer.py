"""Transfer-learning schedules: which backbone layers train, from when, at which learning rate.

`layer_groups(backbone)` splits a backbone into groups, bottom to top (a backbone may say how with
its own `layer_groups()`; otherwise each module owning parameters is a group, with a following
normalisation layer folded into it). `TransferSchedule` is a Lightning callback in the spirit of
`BackboneFinetuning`: the backbone starts frozen (the optimizer holds only the head), and each
group is unfrozen at its epoch and added to the optimizer with its own learning rate. That one
mechanism gives a linear probe (never), full fine-tuning (all at epoch 0), discriminative and
per-layer-decayed learning rates, gradual unfreezing and probe-then-fine-tune.
"""

from __future__ import annotations

import lightning.pytorch as pl
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

NORMS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)


def layer_groups(backbone: nn.Module) -> list[list[nn.Module]]:
    """Bottom-to-top groups of modules whose parameters train together."""
    if hasattr(backbone, "layer_groups"):
        return backbone.layer_groups()
    groups: list[list[nn.Module]] = []
    for module in backbone.modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, NORMS) and groups:
            groups[-1].append(module)  # conv + its BatchNorm are one layer
        else:
            groups.append([module])
    return groups


class TransferSchedule(pl.Callback):
    """Unfreeze backbone group i at `unfreeze_at[i]` (None: never) with learning rate `lrs[i]`.

    Frozen groups run in eval mode, so their BatchNorm statistics stay the source's; with
    `batchnorm="frozen"` every BatchNorm of the backbone keeps them, trained or not.
    Use it with a module whose optimizer holds only the head (`Classifier(backbone_lr_ratio=0)`).
    """

    def __init__(self, unfreeze_at: list[int | None], lrs: list[float], batchnorm: str = "train"):
        if len(unfreeze_at) != len(lrs):
            raise ValueError("one unfreeze epoch and one learning rate per layer group")
        self.unfreeze_at, self.lrs, self.batchnorm = list(unfreeze_at), list(lrs), batchnorm
        self.unfrozen: set[int] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        groups = layer_groups(pl_module.backbone)
        if len(groups) != len(self.unfreeze_at):
            raise ValueError(f"the schedule has {len(self.unfreeze_at)} groups, the backbone {len(groups)}")
        pl_module.backbone.requires_grad_(False)
        self.unfrozen = set()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resuming (`unfrozen` came back through load_state_dict): the checkpoint's optimizer holds
        the head and every group unfrozen by then, in the order they were added. Lightning loads
        that state right after this hook, so the same groups go back in first, in that order."""
        groups = layer_groups(pl_module.backbone)
        for i in sorted(self.unfrozen, key=lambda i: (self.unfreeze_at[i], i)):
            self._unfreeze(trainer.optimizers[0], groups[i], self.lrs[i])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = layer_groups(pl_module.backbone)
        for i, (group, at, lr) in enumerate(zip(groups, self.unfreeze_at, self.lrs)):
            if at is not None and at <= trainer.current_epoch and i not in self.unfrozen:
                self._unfreeze(trainer.optimizers[0], group, lr)
                self.unfrozen.add(i)
        self._set_modes(pl_module.backbone, groups)

    @staticmethod
    def _unfreeze(optimizer, group: list[nn.Module], lr: float) -> None:
        params = [p for module in group for p in module.parameters()]
        for p in params:
            p.requires_grad_(True)
        optimizer.add_param_group({"params": params, "lr": lr})

    def _set_modes(self, backbone: nn.Module, groups: list[list[nn.Module]]) -> None:
        backbone.train(bool(self.unfrozen))  # dropout and the like follow the backbone as a whole
        for i, group in enumerate(groups):
            if i not in self.unfrozen:
                for module in group:
                    module.eval()
        if self.batchnorm == "frozen":
            for module in backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    def state_dict(self) -> dict:
        return {"unfrozen": sorted(self.unfrozen)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.unfrozen = set(state_dict["unfrozen"])
