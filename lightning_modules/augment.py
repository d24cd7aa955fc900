"""On-the-fly image augmentation with kornia: applied to each training batch on its device.

`BatchAugment(cfg)` takes a BatchAugmentConfig as a plain dict and maps (x, y) -> (x, y). Affine,
flips, random erasing and noise keep the labels; mixup and cutmix turn them into (B, 3) targets
(label a, label b, weight of b) that `Classifier.loss` understands. Randomness comes from torch's
global generator, which the trainer reseeds each epoch (see callbacks.EpochSeed).
"""

from __future__ import annotations

import torch
from torch import nn


class BatchAugment(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        import kornia.augmentation as K

        ops: list[nn.Module] = []
        if cfg.get("rotation_deg") or cfg.get("translate") or tuple(cfg.get("scale", (1, 1))) != (1, 1):
            t = cfg.get("translate", 0.0)
            ops.append(K.RandomAffine(degrees=cfg.get("rotation_deg", 0.0), translate=(t, t) if t else None,
                                      scale=tuple(cfg.get("scale", (1, 1))), p=1.0))
        if cfg.get("hflip"):
            ops.append(K.RandomHorizontalFlip(p=cfg["hflip"]))
        if cfg.get("vflip"):
            ops.append(K.RandomVerticalFlip(p=cfg["vflip"]))
        if cfg.get("erasing"):
            ops.append(K.RandomErasing(p=cfg["erasing"]))
        if cfg.get("noise_std"):
            ops.append(K.RandomGaussianNoise(mean=0.0, std=cfg["noise_std"], p=1.0))
        self.ops = K.AugmentationSequential(*ops) if ops else None
        # At most one of the two (the config refuses both); either returns (B, 3) targets.
        self.mixup = K.RandomMixUpV2(p=cfg["mixup"], data_keys=["input", "class"]) if cfg.get("mixup") else None
        self.cutmix = (K.RandomCutMixV2(p=cfg["cutmix"], data_keys=["input", "class"], use_correct_lambda=True)
                       if cfg.get("cutmix") else None)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ops is not None:
            x = self.ops(x)
        if self.mixup is not None:
            x, y = self.mixup(x, y)  # (B, 3): label a, label b, weight of b
        elif self.cutmix is not None:
            x, mixed = self.cutmix(x, y)
            mixed = mixed[-1]  # (B, 3): label a, label b, area kept from a (the paper's lambda)
            y = torch.stack([mixed[:, 0], mixed[:, 1], 1 - mixed[:, 2]], dim=1)
        return x, y
