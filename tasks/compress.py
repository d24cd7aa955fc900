"""Compress: cheaper versions of a trained model, each measured and judged against declared budgets.

Pure: a network, arrays and typed config in; candidates and their measurements out. Methods:
dynamic int8 (torch.ao, Linear/LSTM; conv weights int8 weight-only), static int8 (torch.ao FX:
conv-bn-relu fused, activations calibrated), L1 magnitude pruning (global or per layer, weights or whole
channels; masked fine-tune, then the zeros made permanent) and knowledge distillation into a smaller
declared backbone. Training goes through train's one path (tasks/train.fit) with the `Classifier` and
`Distiller` modules. `run` is the stage:
candidates made, measured and judged (tasks/budgets.py), the pick exported to ONNX (tasks/export.py)
and described in a model card. flows/compress.py reads the inputs and writes what `run` returns.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from prefect import task
from torch import nn
from torch.nn.utils import prune

from lightning_modules.backbones import Network
from lightning_modules.classifier import Classifier
from lightning_modules.distill import UNLABELLED, Distiller
from tasks.arrays import to_arrays
from tasks.budgets import judge_budgets, measure
from tasks.config import DistillConfig, OptimizerConfig, Params, PruneConfig, TrainerConfig
from tasks.errors import UserError
from tasks.export import encode_state, export_onnx, quantize_like, torch_logits
from tasks.finetune import augment_labels
from tasks.model_card import model_card
from tasks.model_io import ModelSpec
from tasks.train import backbone_spec, fit

PRUNABLE = (nn.Conv2d, nn.Linear)


@dataclass
class Candidate:
    name: str
    model: nn.Module  # what runs: fp32, or torch.ao-quantized
    fp32: nn.Module  # the fp32 network it came from or is (ONNX exports this one)
    spec: ModelSpec  # the architecture `fp32` is built from
    recipe: dict = field(default_factory=dict)  # how it was made (JSON), stored in model.json
    history: list[dict] = field(default_factory=list)

    @property
    def quantized(self) -> bool:
        return "quantization" in self.recipe

    def saved_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """What goes into model.safetensors: fp32 weights, or int8 tensors + scales (tasks/export.py)."""
        if self.quantized:
            return encode_state(self.model.state_dict())
        return {k: v.detach().contiguous() for k, v in self.fp32.state_dict().items()}, {}


def original(network: Network, spec: ModelSpec) -> Candidate:
    return Candidate("original", network.eval(), network, spec, {"method": "original"})


@dataclass
class CompressData:
    """What the compress stage reads."""

    teacher: Network  # the model to compress (compress.model), loaded in eval mode
    spec: ModelSpec
    test: pd.DataFrame  # the yardstick
    val: pd.DataFrame
    pool: pd.DataFrame  # the whole augmented train pool: calibration, pruning fine-tune, distillation
    labelled_ids: pd.Series | None = None  # finetune's labelled rows (data/finetune/labelled_ids.parquet)
    data_version: dict[str, str] = field(default_factory=dict)  # md5 of each input file, for the model card


@dataclass
class CompressResult:
    chosen: Candidate
    rows: list[dict]  # every candidate's measurements and verdict, the original first
    metrics: dict  # reports/compress/metrics.json
    onnx: bytes
    onnx_report: dict
    card: str  # MODEL_CARD.md


def needs_labelled_ids(params: Params) -> bool:
    """Pruning fine-tunes and a `labels: few` distillation of finetune's model use its labelled ids
    (train's model learnt from every label of its pool: no ids to read)."""
    cfg = params.compress
    return cfg.model == "finetune" and (bool(cfg.prune) or (cfg.distill is not None and cfg.distill.labels == "few"))


def run(params: Params, data: CompressData) -> CompressResult:
    """The compress stage: candidates made, measured, judged against the budgets; the pick exported."""
    cfg = params.compress
    if data.spec.task == "regression":
        raise UserError("compress: compression is for classifiers; a regression model is not compressed yet: remove the "
                        "compress block (and its stage: trainflow stages)")
    if cfg.distill is not None and cfg.distill.student.kind == "cnn" and params.data.modality != "image":
        raise UserError(f"compress.distill.student: a cnn needs images, data.modality is {params.data.modality}: "
                        "use e.g. {kind: mlp, widths: [32, 32]}")
    x, y = to_arrays(data.test, params.data, data.spec.classes)
    candidates, failed = make_candidates(params, data)
    rows = [measure(c, x, y, cfg.latency) for c in candidates]
    rows, chosen = judge_budgets(rows, cfg.budgets, cfg.select, cfg.latency.budget_batch)
    rows += [{"name": name, "verdict": why, "missed": [why]} for name, why in failed.items()]
    if chosen is None:
        missed = "; ".join(f"{r['name']}: {', '.join(r['missed'])}" for r in rows[1:]) or "no candidate enabled"
        if cfg.on_miss == "fail":
            raise UserError(f"compress: no candidate met every budget in params.yaml compress.budgets ({missed})")
        print(f"no candidate met every budget; shipping the uncompressed model ({missed})")
        chosen = "original"
    pick = next(c for c in candidates if c.name == chosen)
    # ONNX first: a parity failure stops the stage before any model file is written.
    onnx, onnx_report = export_onnx(pick.fp32, pick.model if pick.quantized else None, pick.spec.in_shape, x, y,
                                    cfg.onnx, cfg.latency.num_threads)
    before, after = rows[0], next(r for r in rows if r["name"] == chosen)
    metrics = {"chosen": chosen, "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
               "bytes_before": before["bytes"], "bytes_after": after["bytes"], "size_reduction": after["size_reduction"],
               "onnx_max_abs_diff": onnx_report["fp32"]["max_abs_diff"], "onnx_bytes": len(onnx),
               "candidates": {r["name"]: {k: r[k] for k in ("accuracy", "accuracy_drop_points", "size_reduction", "bytes",
                                                              "nonzero_parameters", f"p50_ms_b{cfg.latency.budget_batch}")}
                              for r in rows if "accuracy" in r}}
    card = model_card(pick.name, rows, cfg, data.data_version, onnx_report, pick.recipe)
    return CompressResult(pick, rows, metrics, onnx, onnx_report, card)


def make_candidates(params: Params, data: CompressData) -> tuple[list[Candidate], dict[str, str]]:
    """The original and every enabled candidate; `failed`: a method this torch cannot run, and why."""
    cfg, teacher, spec = params.compress, data.teacher, data.spec
    val = to_arrays(data.val, params.data, spec.classes)
    pool_x, pool_y = to_arrays(data.pool, params.data, spec.classes)
    candidates, failed = [original(teacher, spec)], {}
    if cfg.quantize.dynamic:
        candidates.append(quantize_dynamic_int8(teacher, spec, cfg.quantize.conv_weights))
    if cfg.quantize.static:
        try:
            candidates.append(quantize_static_int8(teacher, spec, pool_x[:cfg.quantize.calibration_rows], cfg.quantize.engine))
        except (NotImplementedError, RuntimeError) as e:  # an op or engine this torch cannot quantize
            failed["static_int8"] = f"static quantization failed: {str(e).splitlines()[0]}"
    if cfg.prune:
        # Every pool image (the unpruned model's outputs) and the labels the fine-tuned model saw.
        arrays = {"train": (pool_x, _labels_kept(params, data, "few", pool_y)), "val": val}
        for entry in cfg.prune:
            candidates.append(prune_candidate(teacher, spec, entry, arrays, cfg.prune_optimizer, cfg.prune_trainer, cfg.seed))
    if cfg.distill:
        # Every pool image carries the teacher's soft targets; hard labels only where cfg.distill.labels allows.
        # Augmented copies widen the transfer set: the teacher labels each copy as it sees it.
        train = augment_labels(pool_x, _labels_kept(params, data, cfg.distill.labels, pool_y), cfg.distill.augment_copies,
                               params.augment, cfg.seed)
        candidates.append(distill_candidate(teacher, spec, cfg.distill, {"train": train, "val": val}, cfg.seed))
    return candidates, failed


def _labels_kept(params: Params, data: CompressData, mode: str, y: np.ndarray) -> np.ndarray:
    """The pool's labels where compression may use them (DistillConfig.labels: all, none, or few: the
    rows finetune labelled), UNLABELLED elsewhere."""
    if mode == "all" or (mode == "few" and params.compress.model == "train"):  # train's model saw every label
        return y
    if mode == "none":
        return np.full_like(y, UNLABELLED)
    return np.where(data.pool[params.data.id].isin(data.labelled_ids).to_numpy(), y, UNLABELLED)


# ---------------------------------------------------------------------------------- quantization
@task
def quantize_dynamic_int8(network: Network, spec: ModelSpec, conv_weights: str = "int8") -> Candidate:
    """Linear (and LSTM) weights stored int8, activations quantized per batch at run time (torch.ao).
    Conv weights int8 per output channel too (`conv_weights="int8"`), computed in fp32 after
    dequantizing (tasks/export.Int8WeightConv2d), or kept fp32."""
    recipe = {"method": "dynamic_int8", "quantization": {"kind": "dynamic", "layers": ["Linear", "LSTM"], "dtype": "qint8",
                                                         "conv_weights": conv_weights}}
    return Candidate("dynamic_int8", quantize_like(network, recipe["quantization"]), network, spec, recipe)


@task
def quantize_static_int8(network: Network, spec: ModelSpec, calibration: np.ndarray, engine: str) -> Candidate:
    """FX graph mode: conv-bn-relu fused, weights int8 per channel, activation ranges observed on
    `calibration` rows. Raises NotImplementedError where the quantized engine is missing."""
    if engine not in torch.backends.quantized.supported_engines:
        raise NotImplementedError(f"quantized engine {engine!r} not in this torch build "
                                  f"({torch.backends.quantized.supported_engines})")
    recipe = {"method": "static_int8", "quantization": {"kind": "static", "engine": engine, "calibration_rows": len(calibration)}}
    return Candidate("static_int8", quantize_like(network, recipe["quantization"], calibration), network, spec, recipe)


# --------------------------------------------------------------------------------------- pruning
def prunable(module: nn.Module, structure: str) -> list[tuple[nn.Module, str]]:
    """Conv and Linear weights; whole-channel pruning spares the head (a zero row is a dead class)."""
    layers = [(m, "weight") for name, m in module.named_modules() if isinstance(m, PRUNABLE)
              and not (structure == "channels" and name.startswith("head"))]
    return layers


def apply_pruning(module: nn.Module, cfg: PruneConfig) -> list[tuple[nn.Module, str]]:
    """Attach L1 masks (weight = weight_orig * weight_mask) so a fine-tune keeps the zeros at zero."""
    layers = prunable(module, cfg.structure)
    if cfg.scope == "global":
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=cfg.amount)
    else:
        for layer, name in layers:
            if cfg.structure == "channels":
                prune.ln_structured(layer, name, amount=cfg.amount, n=1, dim=0)  # output channels / rows
            else:
                prune.l1_unstructured(layer, name, amount=cfg.amount)
    return layers


def sparsity(module: nn.Module, structure: str = "unstructured") -> float:
    """Fraction of exact zeros among the prunable weights."""
    weights = [getattr(m, n) for m, n in prunable(module, structure)]
    return float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights))


@task
def prune_candidate(network: Network, spec: ModelSpec, cfg: PruneConfig, arrays: dict, optimizer: OptimizerConfig,
                    trainer_cfg: TrainerConfig, seed: int) -> Candidate:
    """Masks, then a fine-tune that keeps the zeros at zero. `recover: distill` fits the pruned
    network to the dense one's logits on every `arrays["train"]` row (label -1: unlabelled), plus
    cross-entropy where a label is known; `recover: labels` trains on the labelled rows alone."""
    pl.seed_everything(seed, verbose=False)
    pruned = copy.deepcopy(network).requires_grad_(True)  # the model to compress may arrive frozen
    x, y = arrays["train"]
    if cfg.recover == "distill":
        module = Distiller(pruned, None, optimizer.model_dump(), cfg.temperature, cfg.alpha)
        train = (x, np.concatenate([y[:, None].astype(np.float32), torch_logits(network, x)], axis=1))
    else:
        module = Classifier(pruned, optimizer.model_dump())
        train = (x[y != UNLABELLED], y[y != UNLABELLED])
    layers = apply_pruning(pruned, cfg)
    history = []
    if cfg.finetune_epochs:
        epochs = trainer_cfg.model_copy(update={"max_epochs": cfg.finetune_epochs})
        history = _fit(module, {**arrays, "train": train}, epochs, seed)
    for layer, name in layers:
        prune.remove(layer, name)  # weight_orig * mask becomes the plain weight: the zeros are permanent
    pruned = pruned.cpu()
    name = f"prune_{cfg.scope}_{cfg.structure}_{round(cfg.amount * 100)}"
    recipe = {"method": "prune", "prune": cfg.model_dump(), "sparsity": round(sparsity(pruned.eval(), cfg.structure), 6)}
    return Candidate(name, pruned, pruned, spec, recipe, history)


# ---------------------------------------------------------------------------------- distillation
@task
def distill_candidate(teacher: Network, spec: ModelSpec, cfg: DistillConfig, arrays: dict, seed: int,
                      class_weights: list[float] | None = None) -> Candidate:
    """Train `cfg.student` on `arrays["train"]` (label -1: teacher only) against the frozen teacher."""
    pl.seed_everything(seed, verbose=False)
    student_spec = ModelSpec(backbone_spec(cfg.student), spec.in_shape, spec.classes,
                             {**spec.extra, "distilled_from": spec.backbone})
    student = student_spec.build()
    module = Distiller(student, None, cfg.optimizer.model_dump(), cfg.temperature, cfg.alpha, class_weights)
    x, y = arrays["train"]
    # The teacher's logits once, beside the labels: no teacher forward pass in every step.
    targets = np.concatenate([y[:, None].astype(np.float32), torch_logits(teacher, x)], axis=1)
    history = _fit(module, {**arrays, "train": (x, targets)}, cfg.trainer, seed)
    student = student.cpu()
    recipe = {"method": "distill", "distill": cfg.model_dump(mode="json"),
              "train_rows": int(len(arrays["train"][1])), "labelled_rows": int((arrays["train"][1] >= 0).sum())}
    return Candidate("distill", student.eval(), student, student_spec, recipe, history)


def _fit(module: pl.LightningModule, arrays: dict, cfg: TrainerConfig, seed: int) -> list[dict]:
    """A candidate's fit through train's one training path (tasks/train.fit): the same trainer, callbacks,
    per-epoch reseed, divergence line and SIGTERM exit; the history comes back.

    No dvclive logger and no resume: a candidate fit is a few epochs that compress reruns whole, its curves
    are no DVC output of this stage (candidates.json is its record) and several candidates would write over
    each other's live/ folder. Checkpoints only in a throwaway folder, when restore_best or ddp_spawn needs one."""
    return fit(module, arrays, cfg, seed).history
