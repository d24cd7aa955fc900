"""Optimisers and learning-rate schedules from plain dicts (OptimizerConfig.model_dump()).

`build_scheduler` returns what Lightning's `configure_optimizers` expects under "lr_scheduler":
batch-wise schedules (step, cosine, one-cycle, linear warmup) step every optimiser step, the
plateau schedule steps once an epoch on val/loss.
"""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler as S

OPTIMIZERS = {
    "sgd": lambda groups, o: torch.optim.SGD(groups, momentum=o["momentum"], weight_decay=o["weight_decay"],
                                             nesterov=o.get("nesterov", False)),
    "adam": lambda groups, o: torch.optim.Adam(groups, weight_decay=o["weight_decay"]),
    "adamw": lambda groups, o: torch.optim.AdamW(groups, weight_decay=o["weight_decay"]),
    "rmsprop": lambda groups, o: torch.optim.RMSprop(groups, momentum=o["momentum"], weight_decay=o["weight_decay"]),
}


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict | None, total_steps: int, max_epochs: int) -> dict | None:
    """cfg: SchedulerConfig as a dict; total_steps: optimiser steps in the whole run."""
    if not cfg or (cfg["name"] == "none" and not cfg.get("warmup_steps")):
        return None
    name, warmup = cfg["name"], cfg.get("warmup_steps", 0)
    total = max(int(total_steps), 1)
    if name == "plateau":
        plateau = S.ReduceLROnPlateau(optimizer, mode="min", factor=cfg["factor"], patience=cfg["patience"], min_lr=cfg["min_lr"])
        return {"scheduler": plateau, "interval": "epoch", "monitor": "val/loss"}
    if name == "onecycle":  # has its own warmup: the warmup steps become its rising phase
        max_lr = [group["lr"] for group in optimizer.param_groups]
        pct = min(max(warmup / total, 0.01), 0.99) if warmup else 0.3
        return {"scheduler": S.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct), "interval": "step"}
    main_steps = max(total - warmup, 1)
    steps_per_epoch = max(total // max(max_epochs, 1), 1)
    main = {
        "none": lambda: S.LambdaLR(optimizer, lambda _: 1.0),
        "step": lambda: S.StepLR(optimizer, step_size=cfg["step_size"] * steps_per_epoch, gamma=cfg["gamma"]),
        "cosine": lambda: S.CosineAnnealingLR(optimizer, T_max=main_steps, eta_min=cfg["min_lr"]),
    }[name]()
    if warmup:
        ramp = S.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
        main = S.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
    return {"scheduler": main, "interval": "step"}
