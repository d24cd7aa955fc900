"""Fine-tune: adapt a model to the target data set with few labels, and measure the gain.

Transfer is training (tasks/train.py) started from other weights. `run` is the stage: it picks the
few labels (their ids are a stage output: compress reads them), augments them, transfers the
starting weights (tasks/init_from.py reads them), optionally replays the source data set beside
them through one joint head, turns the strategy into a schedule (which layer groups train, from
which epoch, at which learning rate) for lightning_modules.transfer.TransferSchedule, fine-tunes,
and trains the from-scratch baseline. flows/finetune.py does the I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task

from tasks.arrays import classes_of, input_shape, to_arrays, weights_for
from tasks.config import AugmentConfig, DataConfig, FinetuneConfig, Params
from tasks.errors import UserError
from tasks.init_from import StartingPoint, check_transfer
from tasks.model_io import ModelSpec
from tasks.train import FitResult, fit_classifier, transfer_state


@dataclass
class FinetuneData:
    """What the finetune stage reads."""

    pool: pd.DataFrame  # the target's augmented train split: the few labels are picked from it
    val: pd.DataFrame  # the target's repaired val split
    start: StartingPoint  # finetune.init_from's backbone and weights
    class_weights: dict[str, float] | None = None  # the repairer's, by label (repair.imbalance: class_weight)
    source_pool: pd.DataFrame | None = None  # train.dataset's augmented train split, when it is replayed


@dataclass
class FinetuneResult:
    spec: ModelSpec  # the target model (the joint head of a replay already cut to the target's classes)
    tuned: FitResult
    scratch: FitResult | None  # the same architecture trained from scratch on the same labels (finetune.baseline)
    labelled: pd.DataFrame  # the rows whose labels were used: the few originals and their augmented copies
    transfer: dict  # reports/finetune/transfer.json: tensors loaded, skipped, mismatched, missing; schedule; replay
    summary: dict


@dataclass
class _Fit:
    """What the fine-tune itself trains: with a replay, a joint head over source and target classes."""

    spec: ModelSpec
    arrays: dict
    weights: list[float] | None
    init_state: dict | None = None
    callbacks: list | None = None
    target_rows: list[int] | None = None  # the target classes' rows in a joint head


def replays_source(cfg: FinetuneConfig) -> bool:
    """finetune.replay_source applies: it replays the train stage's data set beside its head."""
    return cfg.replay_source > 0 and cfg.init_from == "train"


def run(params: Params, data: FinetuneData, on_epoch: Callable[[int, int, dict], None] | None = None,
        checkpoint_dir: Path | None = None, scratch_checkpoint_dir: Path | None = None) -> FinetuneResult:
    """The finetune stage: few labels, transfer, fine-tune, and the from-scratch baseline."""
    cfg, declared = params.finetune, params.data
    classes = classes_of(data.pool, declared)
    labelled = few_labels(data.pool, declared, cfg.labels_per_class, cfg.seed)
    arrays = {"train": augment_labels(*to_arrays(labelled, declared, classes), cfg.augment_copies, params.augment, cfg.seed),
              "val": to_arrays(data.val, declared, classes)}
    weights = weights_for(classes, data.class_weights)
    spec = ModelSpec(data.start.backbone, input_shape(data.pool, declared), classes,
                     {"trained_on": cfg.dataset, "init_from": cfg.init_from, "strategy": cfg.strategy,
                      "data": declared.model_dump(mode="json")})
    plain = _Fit(spec, arrays, weights)
    fit, transfer = (plain, {"loaded": [], "mismatched": [], "skipped": [], "missing": "all"}) if data.start.weights is None \
        else _transfer(params, data, plain)
    resume_key = {"schedule": transfer.get("schedule"), "batchnorm": cfg.batchnorm}
    # With a source, the schedule (TransferSchedule) gives the optimizer its backbone groups, frozen until their epoch.
    tuned = fit_classifier(fit.arrays, fit.spec, cfg.optimizer, cfg.trainer, cfg.seed, fit.weights, fit.init_state,
                           0.0 if data.start.weights is not None else 1.0, on_epoch=on_epoch, callbacks=fit.callbacks,
                           checkpoint_dir=checkpoint_dir, run_settings=resume_key)
    if fit.target_rows is not None:  # the joint head cut down to the target classes: an ordinary target model
        tuned = dataclasses.replace(tuned, state=keep_classes(tuned.state, fit.target_rows))
    scratch = None
    if cfg.baseline and data.start.weights is not None:
        from_scratch = fit_classifier.with_options(name="fit_from_scratch")
        scratch = from_scratch(arrays, spec, cfg.optimizer, cfg.trainer, cfg.seed, weights, checkpoint_dir=scratch_checkpoint_dir)
    summary = {"labelled_rows": len(labelled), "training_rows": len(fit.arrays["train"][1]), "finetune": tuned.val_metrics}
    if scratch is not None:
        summary["scratch"] = scratch.val_metrics
    return FinetuneResult(spec, tuned, scratch, labelled[[declared.id]], {"init_from": cfg.init_from, "strategy": cfg.strategy,
                                                                          **transfer}, summary)


def _transfer(params: Params, data: FinetuneData, plain: _Fit) -> tuple[_Fit, dict]:
    """The starting weights in the network (a joint head with a replay), the unfreezing schedule, the report."""
    from lightning_modules.transfer import TransferSchedule, group_prefixes, layer_groups

    cfg, start = params.finetune, data.start
    if cfg.replay_source and not replays_source(cfg):
        print(f"finetune.replay_source: not used with init_from: {cfg.init_from} "
              "(it replays the train stage's data set beside its head)")
    fit, replay = (_with_replay(params, data, plain) if replays_source(cfg) else (plain, None))
    torch.manual_seed(cfg.seed)  # the new head's initial weights: seeded, or they follow the process's RNG state
    network = fit.spec.build()
    groups = layer_groups(network.backbone)
    unfreeze_at, lrs = schedule(cfg, len(groups), cfg.optimizer.lr)
    fresh = group_prefixes(network.backbone, groups[len(groups) - cfg.reinit_top:])  # reinit_top: not transferred
    init_state, transfer = transfer_state(start.weights, network, start.never_transfer(plain.spec.classes) + fresh)
    check_transfer(transfer, cfg.init_from)
    if replay is not None:
        init_state = seed_joint_head(init_state, start.weights, replay.pop("source_rows"))
        transfer["replay"] = replay
    transfer["schedule"] = [{"group": i, "unfreeze_at_epoch": at, "lr": lr}
                            for i, (at, lr) in enumerate(zip(unfreeze_at, lrs, strict=True))]
    callbacks = [TransferSchedule(unfreeze_at, lrs, cfg.batchnorm)]
    return dataclasses.replace(fit, init_state=init_state, callbacks=callbacks), transfer


def _with_replay(params: Params, data: FinetuneData, plain: _Fit) -> tuple[_Fit, dict]:
    """finetune.replay_source: source rows beside the target's through one joint head, class-balanced."""
    cfg, source_classes = params.finetune, data.start.classes  # the order of the source head's rows
    replayed = replay_rows(*to_arrays(data.source_pool, params.data, source_classes), cfg.replay_source, cfg.seed)
    train, joint, target_rows, source_rows = with_replay(plain.arrays["train"], replayed, plain.spec.classes, source_classes)
    val = (plain.arrays["val"][0], np.array(target_rows)[plain.arrays["val"][1]])
    spec = ModelSpec(plain.spec.backbone, plain.spec.in_shape, joint, plain.spec.extra)
    report = {"dataset": params.train.dataset, "rows": len(replayed[1]), "joint_classes": joint, "source_rows": source_rows}
    return _Fit(spec, {"train": train, "val": val}, balanced_weights(train[1], len(joint)), target_rows=target_rows), report


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
