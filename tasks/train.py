"""Train: fit a classifier with Lightning. Fine-tuning is this same code with other weights to
start from and another backbone learning rate (see tasks/finetune.py), never a copied loop.

Pure: arrays, a model spec and typed config in; weights (a state dict), the per-epoch history and
the final validation metrics out. flows/train.py reads frames and writes models/ and reports/.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from prefect import task

from lightning_modules.callbacks import EpochHistory
from lightning_modules.classifier import Classifier
from lightning_modules.datamodule import ArrayDataModule
from tasks.config import BackboneConfig, DataConfig, OptimizerConfig, TrainerConfig
from tasks.errors import UserError
from tasks.frames import feature_columns, features_array
from tasks.model_io import ModelSpec


@dataclass
class FitResult:
    state: dict[str, torch.Tensor]
    history: list[dict]
    val_metrics: dict[str, float]


def preflight(cfg: TrainerConfig, where: str = "trainer") -> str:
    """One line: what was asked, what this machine has, what will run. Refuses absent hardware."""
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    found = f"{cuda} CUDA GPU(s)" if cuda else "no GPU"
    asked = f"accelerator={cfg.accelerator} devices={cfg.devices} precision={cfg.precision}"
    if cfg.accelerator == "gpu" and not cuda:
        raise UserError(f"{where}.accelerator: asked for gpu, found {found}; set accelerator: auto or cpu")
    if cfg.accelerator == "tpu":
        from lightning.fabric.accelerators import XLAAccelerator

        if not XLAAccelerator.is_available():
            raise UserError(f"{where}.accelerator: asked for tpu, found none (torch_xla not installed or no TPU); set accelerator: auto or cpu")
    if cfg.accelerator == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{where}.accelerator: asked for mps, found none (not an Apple GPU); set accelerator: auto or cpu")
    device = "gpu" if cfg.accelerator in ("gpu", "auto") and cuda else cfg.accelerator if cfg.accelerator != "auto" else "cpu"
    if device == "cpu" and cfg.precision == "16-mixed":
        raise UserError(f"{where}.precision: 16-mixed needs a GPU, found {found}; use bf16-mixed or 32-true on CPU")
    return f"preflight: asked {asked}; found {found}, {os.cpu_count()} CPU core(s); will train on {device} with {cfg.precision}"


def to_arrays(frame: pd.DataFrame, data: DataConfig, classes: list) -> tuple[np.ndarray, np.ndarray]:
    """Features and class indices (position in `classes`)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = set(frame[data.label].unique()) - set(index)
    if unknown:
        raise UserError(f"column '{data.label}': labels {sorted(unknown)[:5]} are not among the trained classes {classes}")
    return features_array(frame, data), frame[data.label].map(index).to_numpy(dtype=np.int64)


def transfer_state(source: dict[str, torch.Tensor], target: torch.nn.Module, exclude: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """Take every source tensor whose name and shape fit the target, except names starting with
    `exclude` (a head trained for other classes); report what was loaded, skipped or mismatched."""
    own = target.state_dict()
    loaded = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape and not k.startswith(exclude)}
    report = {
        "loaded": sorted(loaded),
        "mismatched": sorted(k for k in source if k in own and own[k].shape != source[k].shape),
        "skipped": sorted(k for k in source if k not in own or k.startswith(exclude)),
        "missing": sorted(k for k in own if k not in loaded),
    }
    return {**own, **loaded}, report


@task
def fit_classifier(
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    spec: ModelSpec,
    optimizer: OptimizerConfig,
    trainer_cfg: TrainerConfig,
    seed: int,
    class_weights: list[float] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    backbone_lr_ratio: float = 1.0,
    label_smoothing: float = 0.0,
    on_epoch: Callable[[int, int, dict], None] | None = None,
    callbacks: list[pl.Callback] | None = None,
) -> FitResult:
    torch.set_num_threads(trainer_cfg.num_threads)
    pl.seed_everything(seed, workers=True, verbose=False)
    network = spec.build()
    if init_state is not None:
        network.load_state_dict(init_state)
    module = Classifier(network.backbone, len(spec.classes), optimizer.model_dump(), backbone_lr_ratio,
                        class_weights, label_smoothing)
    module.head.load_state_dict(network.head.state_dict())
    history = EpochHistory(on_epoch)
    trainer = pl.Trainer(
        accelerator=trainer_cfg.accelerator, devices=trainer_cfg.devices, precision=trainer_cfg.precision,
        max_epochs=trainer_cfg.max_epochs, gradient_clip_val=trainer_cfg.gradient_clip_val,
        fast_dev_run=trainer_cfg.fast_dev_run, limit_train_batches=trainer_cfg.limit_train_batches,
        deterministic=True, logger=False, enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[history, *(callbacks or [])],
    )
    trainer.fit(module, datamodule=ArrayDataModule(arrays, trainer_cfg.batch_size, seed))
    state = {k: v.detach().cpu() for k, v in module.state_dict().items() if not k.startswith("class_weights")}
    final = history.rows[-1] if history.rows else {}
    return FitResult(state, history.rows, {k: v for k, v in final.items() if k.startswith("val/")})


def backbone_spec(cfg: BackboneConfig) -> dict:
    """The JSON that rebuilds the backbone (lightning_modules.backbones.build_backbone)."""
    if cfg.kind == "mlp":
        return {"kind": "mlp", "hidden": cfg.hidden, "depth": len(cfg.widths), "dropout": cfg.dropout}
    return {"kind": "cnn", "widths": list(cfg.widths), "hidden": cfg.hidden, "dropout": cfg.dropout}


def input_shape(frame: pd.DataFrame, data: DataConfig) -> tuple[int, ...]:
    return tuple(data.image_shape) if data.modality == "image" else (len(feature_columns(frame, data)),)
