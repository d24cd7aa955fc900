"""The model predict runs, and how: the champion (or a stage's model), its ONNX file, a runner.

`choose_model` reads the champion's record (evaluate.gate.champion: tasks/gate.py) and refuses weights
on disk that are not the promoted ones (sha256); it takes the compress stage's model.onnx when that
file was made from these very weights (the md5 compress records of its input). A runner maps a
float32 feature array to class probabilities (the softmax of the logits) or to values: onnxruntime
on the ONNX file, or evaluate's own PyTorch prediction function. `export_checked` exports a model
that has no ONNX file yet, checked against PyTorch first (tasks/export.py); flows/predict.py caches it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.config import GateConfig, Params, PredictConfig
from tasks.errors import UserError
from tasks.gate import load_champion, weights_digest
from tasks.io import load_json


@dataclass
class ModelChoice:
    """The model predict runs, and why that one."""

    folder: Path  # models/<stage>: the weights evaluate scored
    spec: dict  # its model.json
    weights_sha256: str
    why: str
    onnx: Path | None = None  # the compress stage's ONNX file of this very model, if it made one

    @property
    def dataset(self) -> str:
        return self.spec["trained_on"]

    @property
    def classes(self) -> list:
        return list(self.spec["classes"])

    @property
    def regression(self) -> bool:
        return self.spec.get("task") == "regression"


def choose_model(cfg: PredictConfig, gate: GateConfig, models: Path) -> ModelChoice:
    if cfg.model == "champion":
        record = load_champion(gate)
        if record is None:
            raise UserError(f"no champion yet ({gate.champion}/metrics.json): evaluate promotes one; or set predict.model "
                            f"(--model train|finetune) to score a model that was not promoted")
        folder = Path(record["model"])
        digest = _digest(folder)
        if digest != record["weights_sha256"]:
            raise UserError(f"{folder}/model.safetensors is not the champion's weights (sha256 {digest[:12]}, "
                            f"{gate.champion}/metrics.json names {record['weights_sha256'][:12]}): the last evaluate did "
                            f"not promote it; check out the champion's revision, or --model {folder.name} to score it anyway")
        why = f"the champion ({gate.champion}/metrics.json: {folder}, promoted {record.get('promoted_at', '?')})"
    else:
        folder = models / cfg.model
        digest, why = _digest(folder), f"predict.model: {cfg.model} ({folder})"
    choice = ModelChoice(folder, load_json(folder / "model.json"), digest, why)
    packed = models / "compressed"
    if cfg.runtime == "onnx" and cfg.compressed and (packed / "model.onnx").exists():
        teacher = load_json(packed / "model.json").get("data_version", {}).get(str(folder / "model.safetensors"))
        if teacher == hashlib.md5((folder / "model.safetensors").read_bytes()).hexdigest():
            choice.onnx, choice.why = packed / "model.onnx", f"{why}, compressed by the compress stage ({packed})"
    return choice


def _digest(folder: Path) -> str:
    if not (folder / "model.safetensors").exists():
        raise UserError(f"{folder}/model.safetensors: weights file not found (run the pipeline first: dvc repro)")
    return weights_digest(folder)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def onnx_runner(model: bytes, threads: int, batch_size: int, regression: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities (N, K) or values (N,) from onnxruntime. tasks/export.py's session settings; made
    here because importing that module imports torch (2 s, hundreds of MB) that ONNX does not need."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        z = np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])
        return z.reshape(len(z), -1)[:, 0] if regression else softmax(z)

    return run


def torch_runner(folder: Path, threads: int, batch_size: int, regression: bool) -> Callable[[np.ndarray], np.ndarray]:
    """evaluate's own prediction function on the saved network."""
    import torch

    from tasks.evaluate import predict
    from tasks.model_io import load_model

    torch.set_num_threads(threads)
    network, _ = load_model(folder)
    return lambda x: predict.fn(network, x, batch_size, regression=regression)


def export_checked(folder: Path, x: np.ndarray, params: Params) -> bytes:
    """The fp32 network as ONNX, checked against PyTorch on `x` (compress.onnx's tolerances) first."""
    import logging

    from tasks.export import export_onnx
    from tasks.model_io import load_model

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" x4: nothing predict uses
    network, spec = load_model(folder)
    model, _ = export_onnx(network, None, spec.in_shape, x, np.zeros(len(x), np.int64), params.compress.onnx,
                           params.predict.num_threads)
    return model
