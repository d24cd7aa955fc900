"""Backbones: networks that map an input batch to a feature vector of size `out_features`.

The classifier owns the head, so transfer learning swaps heads and keeps backbones.
Each backbone is rebuilt from a plain dict (`build_backbone(spec, in_shape)`) saved beside the
weights, so a model loads from safetensors + JSON without the training code's pickles.
MLP and CNN live here; the RNN (sequence.py) and the Transformer (transformer.py) read images as
rows, tables as features and text as tokens through one input adapter. Each backbone lists its
`layer_groups()` bottom to top, for gradual unfreezing and per-layer learning rates.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lightning_modules.sequence import RNN
from lightning_modules.transformer import Transformer


class MLP(nn.Module):
    """Linear-ReLU-Dropout layers, one a width. `hidden` x `depth` is the same as `widths` of equal
    entries (how model.json files written before per-layer widths describe theirs)."""

    def __init__(self, in_shape: tuple[int, ...], widths: list[int] | None = None, dropout: float = 0.0,
                 hidden: int = 128, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(in_shape)
        for out in widths if widths is not None else [hidden] * depth:
            layers += [nn.Linear(width, out), nn.ReLU(), nn.Dropout(dropout)]
            width = out
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def layer_groups(self) -> list[list[nn.Module]]:
        linear = [i for i, m in enumerate(self.net) if isinstance(m, nn.Linear)]
        return [list(self.net[i:i + 3]) for i in linear]


class CNN(nn.Module):
    """Conv-BN-ReLU-MaxPool blocks, each halving the resolution, then pooling to a `pool` x `pool`
    map, flattened, and a dense layer.

    `widths=[32, 64, 128]` with `hidden=128` and `pool=3` is the classic conv32-conv64-conv128 +
    dense design on 28x28 digits (the 3x3 map flattened). `pool=1` is global average pooling: fewer
    weights, but it forgets where a stroke is, and features learned on some digits transfer worse.
    """

    def __init__(self, in_shape: tuple[int, int, int], widths: list[int] = (32, 64), hidden: int = 128, dropout: float = 0.25,
                 pool: int = 1):
        super().__init__()
        channels, blocks = in_shape[0], []
        for width in widths:
            blocks += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.dense = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels * pool * pool, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.out_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, hidden)
        return self.dense(self.features(x))

    def layer_groups(self) -> list[list[nn.Module]]:
        return [list(self.features[i:i + 4]) for i in range(0, len(self.features) - 2, 4)] + [[self.dense]]


BACKBONES = {"mlp": MLP, "cnn": CNN, "rnn": RNN, "transformer": Transformer}


def build_backbone(spec: dict[str, Any], in_shape: tuple[int, ...]) -> nn.Module:
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind == "cnn" and len(in_shape) != 3:
        raise ValueError(f"the cnn backbone needs image input (C, H, W), got shape {in_shape}")
    if kind not in BACKBONES:  # pretrained adapters import their (large) packages only when used
        from lightning_modules.pretrained import build_pretrained

        return build_pretrained({"kind": kind, **spec}, in_shape)
    if kind in ("mlp", "cnn"):
        if spec.pop("vocab_size", None) is not None:
            raise ValueError(f"the {kind} backbone cannot read token ids; use rnn or transformer for text")
        spec.pop("pad_id", None)
    return BACKBONES[kind](tuple(in_shape), **spec)


class Network(nn.Module):
    """Backbone + linear head: the one network definition. The LightningModules train it (`Classifier`,
    `Distiller` hold one as `network`), and plain torch uses it as is (evaluation, export, compression)
    without importing Lightning; its state dict (`backbone.*`, `head.*`) is what model.safetensors holds.

    classification: one logit a class. binary: one logit, returned as the pair (0, z) so that
    softmax gives (1 - sigmoid(z), sigmoid(z)) and every consumer of class logits works unchanged.
    regression: one output, in the label's units: the head learns the standardised label and
    `target` = (mean, std) of train's labels maps it back (a label in the thousands would
    otherwise start every weight far from where it must end).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, task: str = "classification",
                 target: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        self.backbone = backbone
        self.task = task
        self.head = nn.Linear(backbone.out_features, num_classes if task == "classification" else 1)
        self.target_mean, self.target_std = float(target[0]), float(target[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.backbone(x))
        if self.task == "binary":
            return torch.cat([torch.zeros_like(z), z], dim=1)
        if self.task == "regression":
            return z * self.target_std + self.target_mean
        return z
