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
from torch.optim import lr_scheduler as S

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


def join_schedules(trainer: pl.Trainer, group: dict) -> None:
    """A parameter group added mid-run (a layer just unfrozen) joins the learning-rate schedules
    where the head's group is: its rate is scaled by the same factor, and each scheduler gets an
    entry for it. Schedulers keep one entry per group from their construction and would otherwise
    leave a late group at a fixed rate (cosine, step, warmup) or fail on it (one-cycle)."""
    head, base = trainer.optimizers[0].param_groups[0], group["lr"]
    for config in trainer.lr_scheduler_configs:
        for scheduler in (config.scheduler, *getattr(config.scheduler, "_schedulers", ())):
            if isinstance(scheduler, S.OneCycleLR):  # it reads its phases' rates (and momenta) from each group
                for key in ("initial_lr", "max_lr", "min_lr"):
                    group[key] = base * head[key] / head["max_lr"]
                group.update({k: head[k] for k in ("base_momentum", "max_momentum") if k in head})
                group["lr"] = base * head["lr"] / head["max_lr"]
                continue
            if isinstance(scheduler, S.ReduceLROnPlateau):  # from now on it cuts every group's rate alike
                scheduler.min_lrs.append(scheduler.min_lrs[0])
                continue
            group.setdefault("initial_lr", base)
            group["lr"] = base * head["lr"] / head["initial_lr"]
            if isinstance(scheduler, S.LambdaLR):
                scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs.append(group["initial_lr"])
        for scheduler in (config.scheduler, *getattr(config.scheduler, "_schedulers", ())):
            if hasattr(scheduler, "_last_lr"):
                scheduler._last_lr.append(group["lr"])


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
            self._unfreeze(trainer, groups[i], self.lrs[i])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = layer_groups(pl_module.backbone)
        for i, (group, at, lr) in enumerate(zip(groups, self.unfreeze_at, self.lrs)):
            if at is not None and at <= trainer.current_epoch and i not in self.unfrozen:
                self._unfreeze(trainer, group, lr)
                self.unfrozen.add(i)
        self._set_modes(pl_module.backbone, groups)

    @staticmethod
    def _unfreeze(trainer: pl.Trainer, group: list[nn.Module], lr: float) -> None:
        params = [p for module in group for p in module.parameters()]
        for p in params:
            p.requires_grad_(True)
        trainer.optimizers[0].add_param_group({"params": params, "lr": lr})
        join_schedules(trainer, trainer.optimizers[0].param_groups[-1])

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
