"""Compress: cheaper versions of a trained model, each measured and judged against declared budgets.

Pure: a network, arrays and typed config in; candidates and their measurements out. Methods:
dynamic int8 (torch.ao, Linear/LSTM; conv weights int8 weight-only), static int8 (torch.ao FX:
conv-bn-relu fused, activations calibrated), L1 magnitude pruning (global or per layer, weights or whole channels; masked fine-tune,
then the zeros made permanent) and knowledge distillation into a smaller declared backbone.
Training goes through Lightning (the `Classifier` and `Distiller` modules). flows/compress.py reads
inputs and writes the chosen model; tasks/export.py serialises and exports it.
"""

from __future__ import annotations

import copy
import signal
import time
import warnings
from dataclasses import dataclass, field

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from prefect import task
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn.utils import prune

from lightning_modules.backbones import Network
from lightning_modules.callbacks import EpochHistory
from lightning_modules.classifier import Classifier
from lightning_modules.datamodule import ArrayDataModule
from lightning_modules.distill import UNLABELLED, Distiller
from lightning_modules.epoch_means import Diverged
from tasks.config import BudgetConfig, DistillConfig, LatencyConfig, OptimizerConfig, PruneConfig, TrainerConfig
from tasks.errors import diverged
from tasks.export import encode_state, int8_kernels_allowed, quantize_like, torch_logits
from tasks.model_io import ModelSpec
from tasks.train import backbone_spec

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
        raise NotImplementedError(f"quantized engine {engine!r} not in this torch build ({torch.backends.quantized.supported_engines})")
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
    tuned = copy.deepcopy(network)
    x, y = arrays["train"]
    if cfg.recover == "distill":
        module = Distiller(tuned.backbone, None, len(spec.classes), optimizer.model_dump(), cfg.temperature, cfg.alpha)
        train = (x, np.concatenate([y[:, None].astype(np.float32), torch_logits(network, x)], axis=1))
    else:
        module = Classifier(tuned.backbone, len(spec.classes), optimizer.model_dump())
        train = (x[y != UNLABELLED], y[y != UNLABELLED])
    module.head.load_state_dict(tuned.head.state_dict())
    layers = apply_pruning(module, cfg)
    history = []
    if cfg.finetune_epochs:
        history = lightning_fit(module, {**arrays, "train": train},
                                trainer_cfg.model_copy(update={"max_epochs": cfg.finetune_epochs}), seed)
    for layer, name in layers:
        prune.remove(layer, name)  # weight_orig * mask becomes the plain weight: the zeros are permanent
    pruned = spec.build()
    pruned.load_state_dict({k: v for k, v in module.cpu().state_dict().items() if k.startswith(("backbone.", "head."))})
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
    module = Distiller(student.backbone, None, len(spec.classes), cfg.optimizer.model_dump(),
                       cfg.temperature, cfg.alpha, class_weights)
    module.head.load_state_dict(student.head.state_dict())
    x, y = arrays["train"]
    # The teacher's logits once, beside the labels: no teacher forward pass in every step.
    targets = np.concatenate([y[:, None].astype(np.float32), torch_logits(teacher, x)], axis=1)
    history = lightning_fit(module, {**arrays, "train": (x, targets)}, cfg.trainer, seed)
    student.load_state_dict(module.cpu().student_state())
    recipe = {"method": "distill", "distill": cfg.model_dump(mode="json"),
              "train_rows": int(len(arrays["train"][1])), "labelled_rows": int((arrays["train"][1] >= 0).sum())}
    return Candidate("distill", student.eval(), student, student_spec, recipe, history)


def lightning_fit(module: pl.LightningModule, arrays: dict, cfg: TrainerConfig, seed: int) -> list[dict]:
    """The trainer settings of tasks/train.fit_classifier, for a module built here (masks, a teacher)."""
    torch.set_num_threads(cfg.num_threads)
    history = EpochHistory()
    module.train()  # Lightning keeps the modes it is given; copies of an evaluated network arrive in eval
    trainer = pl.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision, max_epochs=cfg.max_epochs,
        gradient_clip_val=cfg.gradient_clip_val, fast_dev_run=cfg.fast_dev_run,
        # None rather than 1.0: an explicit 1.0 makes Lightning print a line about it (as in tasks/train.py).
        limit_train_batches=None if cfg.limit_train_batches == 1.0 else cfg.limit_train_batches,
        deterministic=True, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False, num_sanity_val_steps=0, callbacks=[history],
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*treespec.*")  # Lightning 2.6 on torch 2.13, harmless
            trainer.fit(module, datamodule=ArrayDataModule(arrays, cfg.batch_size, seed))
    except Diverged as e:
        raise diverged(str(e)) from None  # the stage's one line, naming the params to change
    except SIGTERMException:  # Lightning stops at a batch's end and exits 0: a stopped run must not pass for done
        raise SystemExit(128 + signal.SIGTERM) from None
    return history.rows


# ------------------------------------------------------------------------------------ measuring
def latency_ms(run, x: np.ndarray, cfg: LatencyConfig) -> dict[str, float]:
    """p50/p95 wall time of `run(batch)` per batch size, after `warmup` untimed calls."""
    out = {}
    for size in cfg.batch_sizes:
        batch = np.resize(x, (size, *x.shape[1:])).astype(np.float32)  # repeats rows if the split is smaller
        for _ in range(cfg.warmup):
            run(batch)
        times = []
        for _ in range(cfg.repeats):
            start = time.perf_counter()
            run(batch)
            times.append((time.perf_counter() - start) * 1000)
        out[f"p50_ms_b{size}"] = round(float(np.percentile(times, 50)), 4)
        out[f"p95_ms_b{size}"] = round(float(np.percentile(times, 95)), 4)
    return out


@task
def measure(candidate: Candidate, x: np.ndarray, y: np.ndarray, cfg: LatencyConfig) -> dict:
    """Accuracy on the test split, serialised size, parameters, non-zeros, latency (cfg.num_threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        with warnings.catch_warnings(), int8_kernels_allowed():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice, once per quantized call
            accuracy = float((torch_logits(candidate.model, x).argmax(axis=1) == y).mean())

            def run(batch: np.ndarray) -> None:
                with torch.inference_mode():
                    candidate.model(torch.from_numpy(batch))

            timings = latency_ms(run, x, cfg)
    finally:
        torch.set_num_threads(threads)
    tensors, _ = candidate.saved_state()
    weights = list(candidate.fp32.parameters())
    return {"name": candidate.name, "method": candidate.recipe["method"], "accuracy": round(accuracy, 6),
            "bytes": len(safetensors_bytes(tensors)), "parameters": int(sum(w.numel() for w in weights)),
            "nonzero_parameters": int(sum((w != 0).sum() for w in weights)), **timings}


# -------------------------------------------------------------------------------------- budgets
@task
def judge(rows: list[dict], budgets: BudgetConfig, select: str, budget_batch: int) -> tuple[list[dict], str | None]:
    """Each row gets its accuracy drop (points), size reduction and a verdict naming every budget it
    missed; returns the rows and the best row within every budget (None when there is none).
    `rows[0]` is the uncompressed model."""
    base, latency_key = rows[0], f"p50_ms_b{budget_batch}"
    judged = []
    for row in rows:
        drop = round((base["accuracy"] - row["accuracy"]) * 100, 4)
        reduction = round(base["bytes"] / row["bytes"], 4)
        missed = []
        if drop > budgets.max_accuracy_drop + 1e-9:
            missed.append(f"accuracy drop {drop:.2f} > {budgets.max_accuracy_drop} points")
        if reduction < budgets.min_size_reduction - 1e-9:
            missed.append(f"size reduction {reduction:.2f}x < {budgets.min_size_reduction}x")
        if budgets.max_latency_ms is not None and row[latency_key] > budgets.max_latency_ms:
            missed.append(f"latency {row[latency_key]:.2f} ms > {budgets.max_latency_ms} ms at batch {budget_batch}")
        verdict = "reference" if row is base else ("within budget" if not missed else "missed: " + "; ".join(missed))
        judged.append({**row, "accuracy_drop_points": drop, "size_reduction": reduction, "missed": missed, "verdict": verdict})
    passing = [r for r in judged[1:] if not r["missed"]]
    order = {"smallest": lambda r: (r["bytes"], -r["accuracy"]), "fastest": lambda r: (r[latency_key], r["bytes"]),
             "most_accurate": lambda r: (-r["accuracy"], r["bytes"])}[select]
    return judged, (min(passing, key=order)["name"] if passing else None)
