"""Transfer-learning schedules: which backbone layers train, from when, at which learning rate.

`layer_groups(backbone)` splits a backbone into groups, bottom to top (a backbone may say how with
its own `layer_groups()`; otherwise each module owning parameters is a group, with a following
normalisation layer folded into it). `TransferSchedule` is a Lightning callback in the spirit of
`BackboneFinetuning`: the backbone starts frozen, every group that will train is an optimizer group
with its own learning rate from the first step, and each is unfrozen at its epoch. That one
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


def group_prefixes(backbone: nn.Module, groups: list[list[nn.Module]], owner: str = "backbone.") -> tuple[str, ...]:
    """The state-dict key prefixes of `groups`' modules, e.g. ("backbone.dense.",): what
    transfer_state should leave out when those groups start fresh (finetune.reinit_top)."""
    names = {id(module): name for name, module in backbone.named_modules()}
    return tuple(f"{owner}{names[id(module)]}." for group in groups for module in group)


class TransferSchedule(pl.Callback):
    """Unfreeze backbone group i at `unfreeze_at[i]` (None: never) with learning rate `lrs[i]`.

    Every group that will train has its own optimizer group from the first step (`setup` hands them to
    the module before Lightning builds the optimizer: the head first, then the backbone groups in the
    order they unfreeze), frozen by `requires_grad` until its epoch: an optimizer skips parameters
    without gradients, and a learning-rate schedule moves every group's rate from the start, so a group
    joins at the rate the schedule has reached. Frozen groups run in eval mode, so their BatchNorm
    statistics stay the source's; with `batchnorm="frozen"` every BatchNorm of the backbone keeps them,
    trained or not. The module must take optimizer groups (`Classifier.backbone_groups`).
    """

    def __init__(self, unfreeze_at: list[int | None], lrs: list[float], batchnorm: str = "train"):
        if len(unfreeze_at) != len(lrs):
            raise ValueError("one unfreeze epoch and one learning rate per layer group")
        self.unfreeze_at, self.lrs, self.batchnorm = list(unfreeze_at), list(lrs), batchnorm

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        groups = layer_groups(pl_module.backbone)
        if len(groups) != len(self.unfreeze_at):
            raise ValueError(f"the schedule has {len(self.unfreeze_at)} groups, the backbone {len(groups)}")
        pl_module.backbone.requires_grad_(False)
        order = sorted((i for i, at in enumerate(self.unfreeze_at) if at is not None), key=lambda i: (self.unfreeze_at[i], i))
        pl_module.backbone_groups = [{"params": [p for module in groups[i] for p in module.parameters()], "lr": self.lrs[i]}
                                     for i in order]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The groups whose epoch has come train (a resumed run gets them back here too), the rest stay frozen."""
        groups = layer_groups(pl_module.backbone)
        unfrozen = {i for i, at in enumerate(self.unfreeze_at) if at is not None and at <= trainer.current_epoch}
        for i, group in enumerate(groups):
            for module in group:
                module.requires_grad_(i in unfrozen)
        self._set_modes(pl_module.backbone, groups, unfrozen)

    def _set_modes(self, backbone: nn.Module, groups: list[list[nn.Module]], unfrozen: set[int]) -> None:
        backbone.train(bool(unfrozen))  # dropout and the like follow the backbone as a whole
        for i, group in enumerate(groups):
            if i not in unfrozen:
                for module in group:
                    module.eval()
        if self.batchnorm == "frozen":
            for module in backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
