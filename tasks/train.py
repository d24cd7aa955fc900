"""Train: fit a model with Lightning. Fine-tuning is this same code with other weights to start
from and another backbone learning rate (see tasks/finetune.py), never a copied loop.

Pure apart from Lightning's own files: arrays, a model spec and typed config in; weights (a state
dict), the per-epoch history and the final validation metrics out. Lightning writes checkpoints
to the folder it is given (resume: tasks/checkpoints.py) and dvclive metrics to `live_dir`;
flows/train.py reads frames and writes models/ and reports/.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from prefect import task

from lightning_modules.callbacks import EpochHistory, EpochSeed
from lightning_modules.classifier import LOSS_TASK, Classifier
from lightning_modules.datamodule import ArrayDataModule
from lightning_modules.epoch_means import Diverged
from tasks import checkpoints
from tasks.arrays import classes_of, input_shape, to_arrays, vocab_size, weights_for
from tasks.config import BackboneConfig, BatchAugmentConfig, DataConfig, OptimizerConfig, Params, TrainerConfig
from tasks.errors import UserError, diverged
from tasks.model_io import ModelSpec

# Lightning advertises a cloud logger on every run; the stage logs are ours.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: "litlogger" not in record.getMessage())

__all__ = ["TrainData", "TrainedModel", "run", "FitResult", "Plan", "hardware_plan", "preflight", "to_arrays", "transfer_state",
           "fit_classifier", "fit", "backbone_spec", "input_shape", "vocab_size", "LOSS_TASK"]


@dataclass
class FitResult:
    state: dict[str, torch.Tensor]
    history: list[dict]
    val_metrics: dict[str, float]
    resumed_from_epoch: int | None = None


@dataclass
class TrainData:
    """What the train stage reads: its data set's augmented train split, the repaired val split and
    the repairer's class weights by label (None unless repair.imbalance is class_weight)."""

    train: pd.DataFrame
    val: pd.DataFrame
    class_weights: dict[str, float] | None = None


@dataclass
class TrainedModel:
    spec: ModelSpec  # what rebuilds the network (model.json)
    fit: FitResult


def run(params: Params, data: TrainData, on_epoch: Callable[[int, int, dict], None] | None = None,
        checkpoint_dir: Path | None = None, live_dir: Path | None = None) -> TrainedModel:
    """The train stage: the model `params.train` declares, fitted on `data` (train.loss picks the task)."""
    cfg, declared = params.train, params.data
    task = LOSS_TASK[cfg.loss]
    classes = classes_of(data.train, declared)
    if task == "binary" and len(classes) != 2:
        raise UserError(f"train.loss: bce needs two classes, found {len(classes)} in column '{declared.label}'; "
                        "use cross_entropy")
    if cfg.on_the_fly is not None and declared.modality != "image":
        raise UserError(f"train.on_the_fly: batch augmentation is for images, data.modality is {declared.modality}")
    classes = [] if task == "regression" else classes
    extra = {"trained_on": cfg.dataset, "task": task, "data": declared.model_dump(mode="json")}
    if task == "regression":
        labels = data.train[declared.label].to_numpy(dtype=float)
        extra["target"] = {"mean": float(labels.mean()), "std": float(labels.std()) or 1.0}
    spec = ModelSpec(backbone_spec(cfg.backbone, declared, vocab_size(data.train, declared)), input_shape(data.train, declared),
                     classes, extra)
    arrays = {split: to_arrays(frame, declared, classes, task) for split, frame in (("train", data.train), ("val", data.val))}
    weights = weights_for(classes, data.class_weights) if task != "regression" else None
    fit = fit_classifier(arrays, spec, cfg.optimizer, cfg.trainer, cfg.seed, weights, label_smoothing=cfg.label_smoothing,
                         on_epoch=on_epoch, on_the_fly=cfg.on_the_fly, checkpoint_dir=checkpoint_dir, live_dir=live_dir)
    return TrainedModel(spec, fit)


@dataclass
class Plan:
    device: str  # cpu | gpu | tpu | mps
    strategy: str  # what Lightning gets
    line: str  # what was asked, found and will happen


def hardware_plan(cfg: TrainerConfig, where: str = "trainer") -> Plan:
    """Check the asked hardware against this machine; refuse what cannot run, with one line."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    found = f"{cuda} CUDA GPU(s)" if cuda else "no GPU"
    asked = (f"accelerator={cfg.accelerator} devices={cfg.devices} precision={cfg.precision} strategy={cfg.strategy}"
             + (f" num_nodes={cfg.num_nodes}" if cfg.num_nodes > 1 else ""))
    if cfg.accelerator == "gpu" and not cuda:
        raise UserError(f"{where}.accelerator: asked for gpu, found {found}; set accelerator: auto or cpu")
    if cfg.accelerator == "tpu":
        from lightning.fabric.accelerators import XLAAccelerator

        if not XLAAccelerator.is_available():
            raise UserError(f"{where}.accelerator: asked for tpu, found none (torch_xla not installed or no TPU); "
                            "set accelerator: auto or cpu")
    if cfg.accelerator == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{where}.accelerator: asked for mps, found none (not an Apple GPU); set accelerator: auto or cpu")
    device = "gpu" if cfg.accelerator in ("gpu", "auto") and cuda else cfg.accelerator if cfg.accelerator != "auto" else "cpu"
    if device == "cpu" and cfg.precision == "16-mixed":
        raise UserError(f"{where}.precision: 16-mixed needs a GPU, found {found}; use bf16-mixed or 32-true on CPU")
    if device == "gpu" and isinstance(cfg.devices, int) and cfg.devices > cuda:
        raise UserError(f"{where}.devices: asked for {cfg.devices} GPUs, found {cuda}")
    if cfg.strategy == "fsdp" and device != "gpu":
        raise UserError(f"{where}.strategy: fsdp shards over GPUs, found {found}; use ddp (CPU processes) or auto")
    launched = TorchElasticEnvironment.detect() or SLURMEnvironment.detect()  # torchrun / srun started the ranks
    if cfg.num_nodes > 1 and not launched:
        raise UserError(f"{where}.num_nodes: {cfg.num_nodes} nodes need a launcher (torchrun or SLURM) that starts every rank")
    processes = cfg.devices if isinstance(cfg.devices, int) else (cuda if device == "gpu" and cfg.devices == "auto" else 1)
    strategy = cfg.strategy
    if not launched and (strategy == "ddp" or (strategy == "auto" and processes > 1)):
        # Lightning's ddp re-runs the command for every extra rank: inside a stage that is a whole second
        # flow run. ddp_spawn starts the ranks from this process instead.
        strategy = "ddp_spawn" if processes > 1 else "auto"
    unit = "process" if device == "cpu" else device
    plan_text = f"{strategy} over {processes} {unit}(es)" if processes > 1 else f"one {device}"
    line = (f"preflight: asked {asked}; found {found}, {os.cpu_count()} CPU core(s); "
            f"will train on {plan_text} with {cfg.precision}")
    return Plan(device, strategy, line)


def preflight(cfg: TrainerConfig, where: str = "trainer") -> str:
    """One line: what was asked, what this machine has, what will run. Refuses absent hardware."""
    return hardware_plan(cfg, where).line


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
    on_the_fly: BatchAugmentConfig | None = None,
    checkpoint_dir: Path | None = None,
    live_dir: Path | None = None,
    callbacks: list[pl.Callback] | None = None,
    run_settings: dict | None = None,
) -> FitResult:
    """Train `spec`'s network (task from spec.extra["task"]: classification, binary or regression).

    checkpoint_dir: keep best/last checkpoints under it and resume an interrupted identical run;
    live_dir: dvclive metrics and plots (trainer.logger: dvclive); callbacks: extra Lightning callbacks;
    run_settings: what else decides the result (e.g. the callbacks' schedule), part of the resume key."""
    torch.set_num_threads(trainer_cfg.num_threads)
    pl.seed_everything(seed, workers=True, verbose=False)
    network = spec.build()
    if init_state is not None:
        network.load_state_dict(init_state)
    module = Classifier(network, optimizer.model_dump(), backbone_lr_ratio, class_weights, label_smoothing)
    settings = {"spec": spec.to_json(), "optimizer": optimizer.model_dump(), "seed": seed, "weights": class_weights,
                "ratio": backbone_lr_ratio, "smoothing": label_smoothing,
                "augment": on_the_fly.model_dump() if on_the_fly else None,
                "trainer": trainer_cfg.model_dump(exclude={"progress_bar", "logger", "num_threads"}), "extra": run_settings}
    return fit(module, arrays, trainer_cfg, seed, on_epoch=on_epoch, on_the_fly=on_the_fly, checkpoint_dir=checkpoint_dir,
               live_dir=live_dir, callbacks=callbacks, resume_key=(settings, init_state))


def fit(module: pl.LightningModule, arrays: dict[str, tuple[np.ndarray, np.ndarray]], trainer_cfg: TrainerConfig, seed: int,
        on_epoch: Callable[[int, int, dict], None] | None = None, on_the_fly: BatchAugmentConfig | None = None,
        checkpoint_dir: Path | None = None, live_dir: Path | None = None, callbacks: list[pl.Callback] | None = None,
        resume_key: tuple[dict, dict | None] | None = None) -> FitResult:
    """The one training path (train, finetune, pruning fine-tunes, distillation): `trainer_cfg` made into a
    Lightning Trainer (hardware plan, callbacks, per-epoch reseed, checkpoints, logger) that fits `module`
    (a LightningModule around a `network`, lightning_modules.backbones.Network) on `arrays`. The network
    ends with the weights the result holds (the best epoch's with restore_best).

    A diverged run becomes the stage's one line (tasks/errors.diverged), SIGTERM exit 143.
    checkpoint_dir + resume_key (settings, starting weights): resume an interrupted identical run."""
    run = hardware_plan(trainer_cfg)
    torch.set_num_threads(trainer_cfg.num_threads)
    module.train()  # Lightning keeps the modes it is given; a copy of an evaluated network arrives in eval
    spawn = run.strategy == "ddp_spawn"
    with tempfile.TemporaryDirectory(prefix="trainflow-ckpt-") as scratch:
        if checkpoint_dir is None and (spawn or trainer_cfg.restore_best):
            # ddp_spawn: the history comes back through the last checkpoint; restore_best: the best one's weights
            checkpoint_dir = Path(scratch)
        folder, resume = None, None
        if checkpoint_dir is not None:
            settings, init_state = resume_key or ({}, None)
            folder, resume = checkpoints.prepare(Path(checkpoint_dir), checkpoints.run_key(settings, arrays, init_state))
        history = EpochHistory(None if spawn else on_epoch)  # a Prefect callback cannot cross into spawned ranks
        has_val = "val" in arrays and not trainer_cfg.fast_dev_run
        trainer = pl.Trainer(**_trainer_args(trainer_cfg, run, folder, has_val, seed, history, live_dir, resume, callbacks))
        resumed_epoch = None
        if resume is not None:
            resumed_epoch = int(checkpoints.load(resume)["epoch"]) + 1
            print(f"resume: continuing from {resume} (epoch {resumed_epoch} of {trainer_cfg.max_epochs} done)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # tensors in memory: none needed
            warnings.filterwarnings("ignore", message=".*sampler.*")
            warnings.filterwarnings("ignore", message=".*treespec.*")  # Lightning 2.6 on torch 2.13, harmless
            datamodule = ArrayDataModule(arrays, trainer_cfg.batch_size, seed, on_the_fly.model_dump() if on_the_fly else None)
            try:
                trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
            except Diverged as e:
                raise diverged(str(e)) from None  # the stage's one line, naming the params to change
            except SIGTERMException:  # Lightning stops at a batch's end and exits 0: a stopped run must not pass for done
                raise SystemExit(128 + signal.SIGTERM) from None
        rows = history.rows
        if spawn and folder is not None and (folder / "last.ckpt").exists():
            saved = checkpoints.callback_state(checkpoints.load(folder / "last.ckpt"), "EpochHistory")
            rows = saved["rows"] if saved else rows
            for row in rows if on_epoch else ():
                on_epoch(row["epoch"] + 1, trainer_cfg.max_epochs, row)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback and has_val else ""
        if trainer_cfg.restore_best and best and Path(best).exists():
            module.load_state_dict(checkpoints.load(Path(best))["state_dict"])
        if folder is not None and trainer.state.finished:
            checkpoints.mark_complete(folder)
    state = {k: v.detach().cpu() for k, v in module.network.state_dict().items()}  # backbone.*, head.*
    final = rows[-1] if rows else {}
    return FitResult(state, rows, {k: v for k, v in final.items() if k.startswith("val/")}, resumed_epoch)


def _trainer_args(cfg: TrainerConfig, run: Plan, folder: Path | None, has_val: bool, seed: int, history: EpochHistory,
                  live_dir: Path | None, resume: Path | None, extra: list[pl.Callback] | None) -> dict:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar

    callbacks: list[pl.Callback] = [history, EpochSeed(seed), *(extra or [])]
    if folder is not None:
        # Two callbacks, because save_last only refreshes last.ckpt when the monitored one saves.
        if has_val:
            callbacks.append(ModelCheckpoint(dirpath=folder, filename="best", monitor="val/loss", enable_version_counter=False))
        callbacks.append(ModelCheckpoint(dirpath=folder, filename="last", enable_version_counter=False))  # every epoch
    if cfg.early_stopping_patience and has_val:
        callbacks.append(EarlyStopping(monitor="val/loss", patience=cfg.early_stopping_patience, mode="min"))
    if cfg.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=20))  # a redraw every 20 steps: per-step redraws cost time
    logger = False
    if cfg.logger == "dvclive" and live_dir is not None and not cfg.fast_dev_run:
        from lightning_modules.live import LiveLogger

        if resume is not None:
            _drop_torn_json(Path(live_dir) / "metrics.json")  # a kill mid-write: dvclive's resume would fail on it
        # dvcyaml=None: the metrics and plots are declared in dvc.yaml by hand. An absolute dir: with a
        # relative one dvclive has deleted its own checkpoint.
        logger = LiveLogger(dir=str(Path(live_dir).resolve()), dvcyaml=None, save_dvc_exp=False, resume=resume is not None)
    deterministic = True if run.device == "cpu" else "warn"  # some GPU kernels have no deterministic version
    return dict(
        accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision, strategy=run.strategy, num_nodes=cfg.num_nodes,
        max_epochs=cfg.max_epochs, gradient_clip_val=cfg.gradient_clip_val, gradient_clip_algorithm=cfg.gradient_clip_algorithm,
        accumulate_grad_batches=cfg.accumulate_grad_batches, fast_dev_run=cfg.fast_dev_run,
        # None rather than 1.0: an explicit 1.0 makes Lightning print a line about it.
        limit_train_batches=None if cfg.limit_train_batches == 1.0 else cfg.limit_train_batches,
        limit_val_batches=None if has_val else 0,
        deterministic=deterministic, logger=logger, enable_checkpointing=folder is not None,
        enable_progress_bar=cfg.progress_bar, enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
        default_root_dir=str(folder) if folder is not None else None,
    )


def backbone_spec(cfg: BackboneConfig, data: DataConfig | None = None, vocab: int | None = None) -> dict:
    """The JSON that rebuilds the backbone (lightning_modules.backbones.build_backbone)."""
    if cfg.kind in ("mlp", "cnn") and vocab:
        raise UserError(f"train.backbone.kind: {cfg.kind} cannot read token ids (data.modality: text); use rnn or transformer")
    if cfg.kind == "mlp":
        return {"kind": "mlp", "widths": list(cfg.widths), "dropout": cfg.dropout}
    if cfg.kind == "cnn":
        return {"kind": "cnn", "widths": list(cfg.widths), "hidden": cfg.hidden, "dropout": cfg.dropout, "pool": cfg.pool}
    tokens = {"vocab_size": vocab, "pad_id": data.pad_id} if vocab else {}
    if cfg.kind == "rnn":
        return {"kind": "rnn", "cell": cfg.cell, "hidden": cfg.hidden, "layers": cfg.layers, "bidirectional": cfg.bidirectional,
                "embed": cfg.embed, "dropout": cfg.dropout, **tokens}
    return {"kind": "transformer", "d_model": cfg.d_model, "heads": cfg.heads, "layers": cfg.layers, "dropout": cfg.dropout,
            **tokens}


def _drop_torn_json(path: Path) -> None:
    try:
        json.loads(path.read_text())
    except FileNotFoundError:
        pass
    except ValueError:
        print(f"warning: resume: {path} cannot be read (cut off mid-write?): its step count starts again")
        path.unlink()
