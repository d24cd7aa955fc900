"""Compression methods on a tiny CNN: quantization shrinks, pruning zeros, distillation's loss,
the budget verdicts, the int8 safetensors round trip and ONNX parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lightning_modules.distill import distillation_loss
from tasks import export
from tasks.budgets import judge_budgets, measure
from tasks.compress import (
    apply_pruning,
    distill_candidate,
    needs_labelled_ids,
    original,
    prunable,
    prune_candidate,
    quantize_dynamic_int8,
    quantize_static_int8,
    sparsity,
)
from tasks.config import BudgetConfig, DistillConfig, LatencyConfig, OnnxConfig, OptimizerConfig, PruneConfig, TrainerConfig
from tasks.errors import UserError
from tasks.io import save_json
from tasks.model_io import ModelSpec

LATENCY = LatencyConfig(batch_sizes=[1, 8], budget_batch=8, warmup=1, repeats=3)
TRAINER = TrainerConfig(max_epochs=1, batch_size=32, accelerator="cpu", num_threads=1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    spec = ModelSpec({"kind": "cnn", "widths": [8, 16], "hidden": 32, "dropout": 0.0}, (1, 8, 8), [0, 1, 2], {})
    network = spec.build().eval()
    rng = np.random.default_rng(0)
    x = rng.random((96, 1, 8, 8), dtype=np.float32)
    y = export.torch_logits(network, x).argmax(axis=1)  # labels the network gets right: accuracy 1.0
    return network, spec, x, y


def _saved_bytes(candidate) -> int:
    from safetensors.torch import save

    return len(save(candidate.saved_state()[0]))


def test_quantized_models_are_smaller_and_close(tiny):
    network, spec, x, y = tiny
    base = original(network, spec)
    dynamic = quantize_dynamic_int8.fn(network, spec)
    static = quantize_static_int8.fn(network, spec, x, "x86")
    linear_only = quantize_dynamic_int8.fn(network, spec, conv_weights="fp32")
    assert _saved_bytes(dynamic) < _saved_bytes(linear_only) < _saved_bytes(base)  # the conv weights are int8 too
    assert _saved_bytes(dynamic) < _saved_bytes(base) / 2 and _saved_bytes(static) < _saved_bytes(linear_only)
    reference = export.torch_logits(network, x)
    for candidate in (dynamic, linear_only, static):
        agree = (export.torch_logits(candidate.model, x).argmax(axis=1) == reference.argmax(axis=1)).mean()
        assert agree > 0.9, candidate.name
    row = measure.fn(static, x, y, LATENCY)
    assert row["parameters"] == sum(p.numel() for p in network.parameters()) and row["p95_ms_b8"] >= row["p50_ms_b8"] > 0


def test_int8_conv_weights_are_within_half_a_step_of_the_fp32_ones():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    quantized = export.Int8WeightConv2d(conv)
    step = conv.weight.detach().abs().amax(dim=(1, 2, 3)) / 127
    error = (quantized.weight_int8.float() * quantized.weight_scale[:, None, None, None] - conv.weight.detach()).abs()
    assert (error <= step[:, None, None, None] / 2 + 1e-7).all()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(quantized(x), conv(x), atol=0.02)


def test_static_quantization_names_a_missing_engine(tiny):
    network, spec, x, _ = tiny
    with pytest.raises(NotImplementedError, match="no-such-engine"):
        quantize_static_int8.fn(network, spec, x, "no-such-engine")


@pytest.mark.parametrize("kind", ["dynamic", "dynamic_linear_only", "static"])
def test_int8_safetensors_round_trip_gives_the_same_logits(tiny, tmp_path, kind):
    network, spec, x, _ = tiny
    candidate = {"dynamic": lambda: quantize_dynamic_int8.fn(network, spec),
                 "dynamic_linear_only": lambda: quantize_dynamic_int8.fn(network, spec, conv_weights="fp32"),
                 "static": lambda: quantize_static_int8.fn(network, spec, x, "x86")}[kind]()
    tensors, encoding = candidate.saved_state()
    assert any(t.dtype == torch.int8 for t in tensors.values())  # int8 on disk, not fp32
    save_file(tensors, str(tmp_path / "model.safetensors"))
    save_json({**spec.to_json(), "compression": candidate.recipe, "encoding": encoding}, tmp_path / "model.json")
    loaded, _ = export.load_compressed(tmp_path)
    np.testing.assert_array_equal(export.torch_logits(loaded, x), export.torch_logits(candidate.model, x))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_pruning_makes_exact_zeros_at_the_requested_sparsity(tiny, scope):
    network, spec, _, _ = tiny
    pruned = spec.build()  # a copy: the fixture's network stays dense
    pruned.load_state_dict(network.state_dict())
    layers = apply_pruning(pruned, PruneConfig(amount=0.5, scope=scope))
    for layer, name in layers:
        torch.nn.utils.prune.remove(layer, name)
    assert not any(k.endswith(("_orig", "_mask")) for k in pruned.state_dict())  # permanent: plain weights again
    assert sparsity(pruned) == pytest.approx(0.5, abs=0.01)
    if scope == "layer":
        for layer, name in layers:
            assert (getattr(layer, name) == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_channel_pruning_zeros_whole_output_channels_and_spares_the_head(tiny):
    network, spec, _, _ = tiny
    pruned = spec.build()
    pruned.load_state_dict(network.state_dict())
    for layer, name in apply_pruning(pruned, PruneConfig(amount=0.25, scope="layer", structure="channels")):
        torch.nn.utils.prune.remove(layer, name)
        rows = getattr(layer, name).flatten(1).abs().sum(dim=1)
        assert int((rows == 0).sum()) == round(0.25 * len(rows))
    assert (pruned.head.weight != 0).all()
    pruned_layers = [layer for layer, _ in prunable(pruned, "channels")]
    assert all(not name.startswith("head") for name, m in pruned.named_modules() if any(m is layer for layer in pruned_layers))


def test_pruning_fine_tune_keeps_the_zeros(tiny):
    network, spec, x, y = tiny
    arrays = {"train": (x, y), "val": (x, y)}
    candidate = prune_candidate.fn(network, spec, PruneConfig(amount=0.5, finetune_epochs=1), arrays,
                                   OptimizerConfig(lr=0.01), TRAINER, seed=0)
    assert candidate.history, "the fine-tune ran"
    assert candidate.recipe["sparsity"] == pytest.approx(0.5, abs=0.01)
    row = measure.fn(candidate, x, y, LATENCY)
    weights = sum(w.numel() for w, _ in ((getattr(m, n), n) for m, n in prunable(candidate.fp32, "unstructured")))
    assert row["parameters"] - row["nonzero_parameters"] == pytest.approx(weights / 2, abs=2)


def test_candidate_fits_build_their_trainer_as_train_does(tiny, monkeypatch):
    """Pruning fine-tunes and distillation go through tasks/train.fit: the trainer settings train honours
    (accumulation, early stopping, restore_best, the per-epoch reseed) reach them; no dvclive logger."""
    import tasks.train
    from lightning_modules.callbacks import EpochSeed

    built = []
    real = tasks.train._trainer_args
    monkeypatch.setattr(tasks.train, "_trainer_args", lambda *a: built.append(real(*a)) or built[-1])
    network, spec, x, y = tiny
    trainer = TRAINER.model_copy(update={"accumulate_grad_batches": 2, "early_stopping_patience": 1, "restore_best": True})
    arrays = {"train": (x, y), "val": (x, y)}
    prune_candidate.fn(network, spec, PruneConfig(amount=0.5, finetune_epochs=2), arrays, OptimizerConfig(lr=0.01), trainer, 0)
    cfg = DistillConfig(student={"kind": "cnn", "widths": [4], "hidden": 8, "dropout": 0.0}, trainer=trainer)
    distill_candidate.fn(network, spec, cfg, arrays, seed=0)
    assert len(built) == 2
    for args in built:
        kinds = {type(c).__name__ for c in args["callbacks"]}
        assert args["accumulate_grad_batches"] == 2 and args["logger"] is False and args["enable_checkpointing"]
        assert {"EpochSeed", "EarlyStopping", "ModelCheckpoint"} <= kinds
        assert next(c for c in args["callbacks"] if isinstance(c, EpochSeed)).seed == 0


def test_distillation_loss_matches_a_hand_computed_case():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2 * math.log(3), 0.0]])  # at T=2: softmax (3/4, 1/4)
    # KL((3/4, 1/4) || (1/2, 1/2)) = 3/4 ln 1.5 + 1/4 ln 0.5 = 0.130812; x T^2 = 0.523248; CE(label 0) = ln 2
    loss = distillation_loss(student, teacher, torch.tensor([0]), temperature=2.0, alpha=0.5)
    assert loss.item() == pytest.approx(0.5 * 0.523248 + 0.5 * math.log(2), abs=1e-5)
    unlabelled = distillation_loss(student, teacher, torch.tensor([-1]), temperature=2.0, alpha=0.5)
    assert unlabelled.item() == pytest.approx(0.5 * 0.523248, abs=1e-5)  # teacher only


def test_distilled_student_is_smaller_and_loads_as_a_network(tiny):
    network, spec, x, y = tiny
    cfg = DistillConfig(student={"kind": "cnn", "widths": [4, 8], "hidden": 8, "dropout": 0.0}, trainer=TRAINER)
    labels = np.where(np.arange(len(y)) % 4 == 0, y, -1)
    candidate = distill_candidate.fn(network, spec, cfg, {"train": (x, labels), "val": (x, y)}, seed=0)
    assert sum(p.numel() for p in candidate.fp32.parameters()) < sum(p.numel() for p in network.parameters()) / 4
    assert candidate.recipe["labelled_rows"] == int((labels >= 0).sum()) and candidate.recipe["train_rows"] == len(y)
    candidate.spec.build().load_state_dict(candidate.fp32.state_dict())  # names fit the student spec


def _row(name, accuracy, size, latency):
    return {"name": name, "method": name, "accuracy": accuracy, "bytes": size, "p50_ms_b64": latency}


def test_judge_budgets_picks_the_best_within_budget_and_names_what_each_missed():
    rows = [_row("original", 0.90, 400, 10.0), _row("big", 0.90, 300, 5.0), _row("lossy", 0.85, 50, 5.0),
            _row("slow", 0.895, 100, 30.0), _row("good", 0.895, 150, 8.0), _row("better", 0.899, 120, 9.0)]
    budgets = BudgetConfig(max_accuracy_drop=1.0, min_size_reduction=2.0, max_latency_ms=20)
    judged, chosen = judge_budgets.fn(rows, budgets, "smallest", 64)
    verdicts = {r["name"]: r for r in judged}
    assert chosen == "better"
    assert verdicts["big"]["missed"] == ["size reduction 1.33x < 2.0x"]
    assert verdicts["lossy"]["missed"] == ["accuracy drop 5.00 > 1.0 points"]
    assert verdicts["slow"]["missed"] == ["latency 30.00 ms > 20.0 ms at batch 64"]
    assert verdicts["good"]["verdict"] == "within budget" and verdicts["original"]["verdict"] == "reference"
    assert judge_budgets.fn(rows, budgets, "fastest", 64)[1] == "good"
    assert judge_budgets.fn(rows, budgets, "most_accurate", 64)[1] == "better"
    _, none = judge_budgets.fn(rows[:4], budgets, "smallest", 64)
    assert none is None


def test_onnx_export_agrees_with_torch(tiny):
    network, spec, x, y = tiny
    model, report = export.export_onnx(network, None, spec.in_shape, x, y, OnnxConfig())
    assert report["fp32"]["max_abs_diff"] < 1e-4 and report["fp32"]["argmax_agreement"] == 1.0
    batch = export.onnx_logits(export.onnx_session(model), x[:5])  # another batch size: the batch dimension is dynamic
    np.testing.assert_allclose(batch, export.torch_logits(network, x[:5]), atol=1e-4)


def test_quantized_pick_ships_onnxruntime_int8_checked_against_torch_int8(tiny):
    network, spec, x, y = tiny
    static = quantize_static_int8.fn(network, spec, x, "x86")
    fp32_model = export.onnx_bytes(network, spec.in_shape)
    model, report = export.export_onnx(network, static.model, spec.in_shape, x, y, OnnxConfig(min_quantized_agreement=0.8))
    assert report["shipped"].startswith("int8") and len(model) < len(fp32_model)
    assert report["int8"]["argmax_agreement"] >= 0.8


def test_onnx_parity_failure_stops_the_export(tiny, monkeypatch):
    network, spec, x, y = tiny
    real = export.onnx_logits
    monkeypatch.setattr(export, "onnx_logits", lambda session, x: real(session, x) + 0.5)
    with pytest.raises(UserError, match="ONNX parity failed: max \\|diff\\| 5.00e-01"):
        export.export_onnx(network, None, spec.in_shape, x, y, OnnxConfig(atol=1e-3))


def test_distiller_gives_the_same_loss_with_a_live_or_a_precomputed_teacher(tiny):
    from lightning_modules.distill import Distiller

    network, spec, x, y = tiny
    student = ModelSpec({"kind": "cnn", "widths": [4], "hidden": 8, "dropout": 0.0}, spec.in_shape, spec.classes, {}).build()
    labels = torch.as_tensor(np.where(np.arange(16) % 2 == 0, y[:16], -1))
    batch = torch.as_tensor(x[:16])
    live = Distiller(student, network, {"name": "adam", "lr": 0.01, "weight_decay": 0.0}).eval()
    packed = torch.cat([labels[:, None].float(), torch.as_tensor(export.torch_logits(network, x[:16]))], dim=1)
    a = live.training_step((batch, labels), 0)
    b = live.training_step((batch, packed), 0)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_a_diverged_distillation_is_one_line_naming_the_compress_block(monkeypatch):
    from types import SimpleNamespace

    from prefect.context import TaskRunContext

    from lightning_modules.backbones import Network, build_backbone
    from lightning_modules.distill import Distiller
    from tasks.train import fit

    # as inside compress's distill_candidate task (tasks/errors.py reads the running task's name)
    running = SimpleNamespace(task=SimpleNamespace(name="distill_candidate"))
    monkeypatch.setattr(TaskRunContext, "get", classmethod(lambda cls: running))
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 4), dtype=np.float32), rng.integers(0, 3, 64)
    targets = np.concatenate([y[:, None], rng.normal(size=(64, 3))], axis=1).astype(np.float32)  # label, teacher logits
    adam = {"name": "adam", "lr": 1e30, "weight_decay": 0.0, "momentum": 0.9}
    module = Distiller(Network(build_backbone({"kind": "mlp", "hidden": 8, "depth": 1}, (4,)), 3), None, adam)
    with pytest.raises(UserError) as error:
        fit(module, {"train": (x, targets), "val": (x, y)}, TrainerConfig(max_epochs=2, batch_size=16, accelerator="cpu"), 0)
    assert str(error.value).startswith("distillation stopped at epoch 1 of 2: the mean training loss is nan; ")
    assert "lower compress.distill.optimizer.lr, set compress.distill.trainer.gradient_clip_val" in str(error.value)


def test_run_measures_judges_and_exports_with_finetunes_labelled_ids(tiny):
    import tasks.compress
    from tasks.config import parse_params
    from tasks.frames import images_to_frame
    from tests.conftest import shrunk_params_dict

    raw = shrunk_params_dict()
    raw["compress"].update(quantize={"dynamic": True, "static": False}, distill=None, on_miss="keep_original",
                           prune=[{"amount": 0.5, "scope": "global", "structure": "unstructured", "finetune_epochs": 1}],
                           latency={"batch_sizes": [4], "budget_batch": 4, "warmup": 0, "repeats": 3})
    params = parse_params(raw)
    network, spec, x, y = tiny
    frame = images_to_frame(x, np.array(spec.classes)[y], params.data)
    labelled = frame[params.data.id][:6]
    result = tasks.compress.run(params, tasks.compress.CompressData(network, spec, frame, frame, frame, labelled))
    assert [r["name"] for r in result.rows] == ["original", "dynamic_int8", "prune_global_unstructured_50"]
    assert result.metrics["chosen"] == result.chosen.name and result.onnx[:2] and "## Budgets" in result.card
    assert result.rows[2]["nonzero_parameters"] < result.rows[0]["nonzero_parameters"]


def test_train_s_model_is_compressed_without_finetune_s_labelled_ids():
    from tasks.config import parse_params

    table = {"data": {"modality": "tabular", "image_shape": None}}
    assert needs_labelled_ids(parse_params({**table, "compress": {"model": "finetune"}}))
    assert not needs_labelled_ids(parse_params({**table, "compress": {"model": "train"}}))  # it learnt from every label
    assert parse_params(table).compress.distill.student.kind == "mlp"  # a table's default student
    assert parse_params({**table, "compress": {"distill": {"student": {"kind": "cnn"}}}}).compress.distill.student.kind \
        == "cnn"  # written: kept, and the compress stage says in one line that it needs images
