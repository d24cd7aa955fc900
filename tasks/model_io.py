"""Save and load models as safetensors weights + a JSON spec that rebuilds the network.

Nothing here unpickles: safetensors holds only tensors, the spec is JSON, and the network is
rebuilt from the spec with the code in lightning_modules/backbones.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lightning_modules.backbones import Network, build_backbone
from tasks.errors import UserError
from tasks.io import atomic_path, load_json, save_json

FORMAT = "trainflow-model/1"


@dataclass
class ModelSpec:
    backbone: dict[str, Any]
    in_shape: tuple[int, ...]
    classes: list
    extra: dict[str, Any]

    @property
    def task(self) -> str:
        """classification | binary | regression (the head's shape and how its outputs read)."""
        return self.extra.get("task", "classification")

    def build(self) -> Network:
        target = self.extra.get("target", {"mean": 0.0, "std": 1.0})  # regression: train's label mean and std
        return Network(build_backbone(self.backbone, self.in_shape), len(self.classes), self.task,
                       (target["mean"], target["std"]))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "backbone": self.backbone, "in_shape": list(self.in_shape), "classes": self.classes,
                **self.extra}

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> ModelSpec:
        if blob.get("format") != FORMAT:
            raise UserError(f"model spec format {blob.get('format')!r} is not {FORMAT!r}")
        known = {"format", "backbone", "in_shape", "classes"}
        extra = {k: v for k, v in blob.items() if k not in known}
        return cls(blob["backbone"], tuple(blob["in_shape"]), list(blob["classes"]), extra)


def save_model(state: dict[str, torch.Tensor], spec: ModelSpec, folder: str | Path) -> None:
    folder = Path(folder)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    save_json(spec.to_json(), folder / "model.json")


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (a pickle, a damaged file) is refused, never run."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a safetensors weights file ({e})") from None


def load_model(folder: str | Path) -> tuple[Network, ModelSpec]:
    folder = Path(folder)
    spec = ModelSpec.from_json(load_json(folder / "model.json"))
    network = spec.build()
    state = load_weights(folder / "model.safetensors")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"{folder / 'model.safetensors'}: weights do not fit the spec in model.json ({first})") from None
    return network.eval(), spec
