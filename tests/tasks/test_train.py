"""tasks/train.py: the preflight, fit_classifier's training controls, determinism, resume, DDP."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from tasks.config import BackboneConfig, OptimizerConfig, TrainerConfig
from tasks.errors import UserError
from tasks.model_io import ModelSpec, load_model, save_model
from tasks.train import backbone_spec, fit_classifier, preflight

QUIET = dict(accelerator="cpu", num_threads=1, progress_bar=False, logger="none", batch_size=32)


def _trainer(**kw) -> TrainerConfig:
    return TrainerConfig(**(QUIET | kw))


def _digits(n: int = 600, seed: int = 0) -> dict:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))[: n + 200]
    x = (x[order] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return {"train": (x[:n], y[order][:n]), "val": (x[n:], y[order][n:])}


def _spec(kind: str = "cnn", in_shape=(1, 8, 8), classes=tuple(range(10)), task="classification", **backbone) -> ModelSpec:
    own = {"mlp": {"widths": [16, 16]}, "cnn": {"widths": [8, 16], "hidden": 16},
           "rnn": {"hidden": 16, "layers": 1, "embed": 8},
           "transformer": {"d_model": 16, "heads": 2, "layers": 1}}[kind]  # a key another kind reads is refused
    cfg = BackboneConfig(kind=kind, dropout=0.2, **own).model_copy(update=backbone)
    vocab = backbone.get("vocab")
    return ModelSpec(backbone_spec(cfg, None if vocab is None else _Data(), vocab), in_shape, list(classes), {"task": task})


class _Data:  # the one DataConfig field backbone_spec reads for tokens
    pad_id = 0


def _hash(state: dict) -> str:
    return hashlib.sha256(b"".join(k.encode() + v.numpy().tobytes() for k, v in sorted(state.items()))).hexdigest()


# ----------------------------------------------------------------------------------- preflight
@pytest.mark.parametrize(("asked", "says"), [
    ({"accelerator": "gpu"}, "train.trainer.accelerator: asked for gpu, found no GPU; set accelerator: auto or cpu"),
    ({"accelerator": "tpu"}, "train.trainer.accelerator: asked for tpu, found none"),
    ({"accelerator": "cpu", "precision": "16-mixed"}, "train.trainer.precision: 16-mixed needs a GPU"),
    ({"accelerator": "cpu", "strategy": "fsdp"}, "train.trainer.strategy: fsdp shards over GPUs"),
    ({"accelerator": "cpu", "num_nodes": 2}, "train.trainer.num_nodes: 2 nodes need a launcher"),
])
def test_preflight_refuses_what_this_machine_cannot_run_in_one_line(asked, says):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError) as error:
        preflight(TrainerConfig(**asked), "train.trainer")
    assert str(error.value).startswith(says) and "\n" not in str(error.value)


def test_preflight_says_what_was_asked_found_and_will_run():
    line = preflight(TrainerConfig(accelerator="cpu", devices=2, strategy="ddp", precision="bf16-mixed"))
    assert line.startswith("preflight: asked accelerator=cpu devices=2 precision=bf16-mixed strategy=ddp; found ")
    assert line.endswith("will train on ddp_spawn over 2 process(es) with bf16-mixed")  # ddp would re-run the stage per rank
    line = preflight(TrainerConfig(accelerator="auto"))
    assert line.endswith("will train on one cpu with 32-true") or torch.cuda.is_available()


# ---------------------------------------------------------------------------- training controls
@pytest.mark.parametrize("kind", ["mlp", "cnn", "rnn", "transformer"])
def test_each_backbone_trains_on_images(kind):
    result = fit_classifier.fn(_digits(200), _spec(kind), OptimizerConfig(), _trainer(fast_dev_run=True), seed=0)
    assert set(result.state) >= {"head.weight", "head.bias"} and result.history


@pytest.mark.parametrize("kind", ["rnn", "transformer"])
def test_sequence_backbones_train_on_token_ids(kind):
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 12, 96)
    ids = np.where(np.arange(12) < lengths[:, None], rng.integers(1, 30, (96, 12)), 0).astype(np.float32)
    y = (ids[:, 0] > 15).astype(np.int64)  # the first token decides the class
    arrays = {"train": (ids[:64], y[:64]), "val": (ids[64:], y[64:])}
    spec = _spec(kind, (12,), (0, 1), vocab=30)
    result = fit_classifier.fn(arrays, spec, OptimizerConfig(lr=0.01), _trainer(max_epochs=2), seed=0)
    assert "backbone.input.embed.weight" in result.state and result.val_metrics["val/loss"] > 0


def test_optimisers_schedules_and_regularisation_from_params():
    optimizer = OptimizerConfig(name="sgd", lr=0.05, nesterov=True, l1=1e-5, weight_decay=1e-4,
                                scheduler={"name": "cosine", "warmup_steps": 3})
    trainer = _trainer(max_epochs=2, gradient_clip_val=0.5, gradient_clip_algorithm="value", accumulate_grad_batches=2)
    result = fit_classifier.fn(_digits(200), _spec(), optimizer, trainer, seed=0)
    assert len(result.history) == 2 and {"val/loss", "val/acc"} <= set(result.val_metrics)


def test_binary_and_regression_from_the_same_function():
    arrays = _digits(200)
    binary = {s: (x, (y >= 5).astype(np.int64)) for s, (x, y) in arrays.items()}
    spec = _spec(classes=(0, 1), task="binary")
    result = fit_classifier.fn(binary, spec, OptimizerConfig(), _trainer(max_epochs=1), 0, [1.0, 2.0])
    assert result.state["head.weight"].shape[0] == 1 and "val/acc" in result.val_metrics
    regression = {s: (x, y.astype(np.float32)) for s, (x, y) in arrays.items()}
    result = fit_classifier.fn(regression, _spec(classes=(), task="regression"), OptimizerConfig(), _trainer(max_epochs=1), 0)
    assert "val/mae" in result.val_metrics


def test_same_params_give_the_same_metrics_and_weights():
    runs = [fit_classifier.fn(_digits(300), _spec(), OptimizerConfig(), _trainer(max_epochs=2), seed=3) for _ in range(2)]
    assert runs[0].history == runs[1].history and _hash(runs[0].state) == _hash(runs[1].state)
    other = fit_classifier.fn(_digits(300), _spec(), OptimizerConfig(), _trainer(max_epochs=2), seed=4)
    assert _hash(other.state) != _hash(runs[0].state)


class _Interrupt(Exception):
    pass


class _StopAfter:
    """A callback that dies in the middle of epoch `epochs` + 1, like a killed process (checkpoints stay)."""

    def __new__(cls, epochs: int):
        import lightning.pytorch as pl

        class Stop(pl.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if trainer.current_epoch == epochs and batch_idx == 2:
                    raise _Interrupt

        return Stop()


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path):
    arrays, spec, optimizer = _digits(300), _spec(), OptimizerConfig(scheduler={"name": "step", "step_size": 1, "gamma": 0.5})
    trainer = _trainer(max_epochs=3)
    whole = fit_classifier.fn(arrays, spec, optimizer, trainer, seed=1)
    with pytest.raises(_Interrupt):
        fit_classifier.fn(arrays, spec, optimizer, trainer, seed=1, checkpoint_dir=tmp_path, callbacks=[_StopAfter(2)])
    resumed = fit_classifier.fn(arrays, spec, optimizer, trainer, seed=1, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 2
    assert _hash(resumed.state) == _hash(whole.state) and resumed.history == whole.history
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert {"best.ckpt", "last.ckpt", "complete"} <= {p.name for p in folder.iterdir()}
    again = fit_classifier.fn(arrays, spec, optimizer, trainer, seed=1, checkpoint_dir=tmp_path)
    assert again.resumed_from_epoch is None  # a finished run trains again instead of "resuming" its end


def test_a_sigterm_stops_training_with_a_signal_status_and_no_complete_marker(tmp_path):
    import lightning.pytorch as pl

    class Sigterm(pl.Callback):  # what Lightning's own SIGTERM handler does: set the flag, stop at the batch's end
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1:
                trainer._signal_connector.received_sigterm = True

    with pytest.raises(SystemExit) as stopped:  # Lightning alone exits 0 here, as if training had finished
        fit_classifier.fn(_digits(200), _spec(), OptimizerConfig(), _trainer(max_epochs=3), seed=1, checkpoint_dir=tmp_path,
                          callbacks=[Sigterm()])
    assert stopped.value.code == 143
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert "complete" not in {p.name for p in folder.iterdir()}


def test_other_params_never_resume_a_stale_checkpoint(tmp_path):
    arrays, spec = _digits(200), _spec()
    with pytest.raises(_Interrupt):
        fit_classifier.fn(arrays, spec, OptimizerConfig(), _trainer(max_epochs=2), seed=1, checkpoint_dir=tmp_path,
                          callbacks=[_StopAfter(1)])
    other = fit_classifier.fn(arrays, spec, OptimizerConfig(lr=0.01), _trainer(max_epochs=2), seed=1, checkpoint_dir=tmp_path)
    assert other.resumed_from_epoch is None and len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1


def test_restore_best_and_early_stopping(tmp_path):
    trainer = _trainer(max_epochs=4, early_stopping_patience=1, restore_best=True)
    optimizer = OptimizerConfig(lr=0.5, name="sgd")
    result = fit_classifier.fn(_digits(200), _spec(), optimizer, trainer, seed=0, checkpoint_dir=tmp_path)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    best = torch.load(folder / "best.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(best[f"network.{k}"], v) for k, v in result.state.items())  # the module holds the network
    losses = [row["val/loss"] for row in result.history]
    assert len(losses) == 4 or losses[-1] >= min(losses[:-1])  # stopped only after a worse epoch


# -------------------------------------------------------------------------------- divergence
HINT = ("; likely cause: learning rate too high or inputs not finite: lower train.optimizer.lr, "
        "set train.trainer.gradient_clip_val, check the data")


def test_a_huge_learning_rate_stops_at_the_first_nan_epoch_with_one_line(tmp_path):
    # (params refuse an lr of .inf; 1e30 is finite and takes the weights past float32 in two steps)
    with pytest.raises(UserError) as error:
        fit_classifier.fn(_digits(200), _spec("mlp"), OptimizerConfig(lr=1e30), _trainer(max_epochs=3), seed=0,
                          checkpoint_dir=tmp_path)
    assert str(error.value) == "training stopped at epoch 1 of 3: the mean training loss is nan" + HINT
    # stopped before the epoch was validated or checkpointed: a rerun cannot resume from NaN weights
    assert not list(tmp_path.rglob("*.ckpt"))


def test_inputs_that_are_not_finite_stop_training_too():
    arrays = _digits(200)
    x, y = arrays["train"]
    x = x.copy()
    x[5, 0, 3, 3] = np.inf  # one pixel of one image
    with pytest.raises(UserError, match=r"^training stopped at epoch 1 of 2: the mean training loss is nan; "):
        fit_classifier.fn(arrays | {"train": (x, y)}, _spec("mlp"), OptimizerConfig(), _trainer(max_epochs=2), seed=0)


def test_weights_that_diverged_in_the_last_step_stop_the_run():
    import lightning.pytorch as pl

    class LastStepDiverges(pl.Callback):  # what a step that overflows leaves behind, after its (finite) loss
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.is_last_batch:
                module.head.bias.data.fill_(float("nan"))

    with pytest.raises(UserError) as error:
        fit_classifier.fn(_digits(200), _spec("mlp"), OptimizerConfig(), _trainer(max_epochs=1), seed=0,
                          callbacks=[LastStepDiverges()])
    assert str(error.value) == "training ended at epoch 1 of 1 with weights that are not finite" + HINT


@pytest.mark.parametrize("kind", ["rnn", "transformer"])
def test_new_backbones_round_trip_through_safetensors_and_json(tmp_path, kind):
    spec = _spec(kind)
    network = spec.build().eval()
    save_model(network.state_dict(), spec, tmp_path)
    loaded, _ = load_model(tmp_path)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(network(x), loaded(x))


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_evaluates_like_one_process(tmp_path):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    order = np.random.default_rng(0).permutation(len(x))
    train, val, test = order[:1200], order[1200:1400], order[1400:]  # 397 test images neither run has seen
    arrays = {"train": (x[train], y[train]), "val": (x[val], y[val])}
    test_x = torch.as_tensor(x[test])
    accuracy = {}
    # Two ranks of 16 make the same global batch (32) and number of steps as one process of 32.
    runs = {"one": _trainer(max_epochs=8), "ddp": _trainer(max_epochs=8, devices=2, strategy="ddp", batch_size=16)}
    for name, trainer in runs.items():
        result = fit_classifier.fn(arrays, _spec(), OptimizerConfig(lr=0.01), trainer, seed=0, checkpoint_dir=tmp_path / name)
        save_model(result.state, _spec(), tmp_path / name / "model")
        network, _ = load_model(tmp_path / name / "model")
        with torch.inference_mode():
            accuracy[name] = float((network(test_x).argmax(1).numpy() == y[test]).mean())
        assert len(result.history) == 8 and {"train/loss", "val/loss", "val/acc"} <= set(result.history[-1])
    assert accuracy["one"] > 0.8 and abs(accuracy["ddp"] - accuracy["one"]) < 0.05, accuracy


@pytest.mark.parametrize(("flow", "task", "says"), [
    ("finetune", "fit_from_scratch", "fine-tuning stopped at epoch 2 of 20: x; likely cause: learning rate too high or inputs "
     "not finite: lower finetune.optimizer.lr, set finetune.trainer.gradient_clip_val, check the data"),
    ("compress", "prune_candidate", "the pruning fine-tune stopped at epoch 2 of 20: x; likely cause: learning rate too high or "
     "inputs not finite: lower compress.prune_optimizer.lr, set compress.prune_trainer.gradient_clip_val, check the data"),
])
def test_the_divergence_line_names_the_params_of_the_stage_that_trains(monkeypatch, flow, task, says):
    from types import SimpleNamespace

    from prefect.context import FlowRunContext, TaskRunContext

    from tasks.errors import TrainingDiverged, diverged

    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: SimpleNamespace(flow=SimpleNamespace(name=flow))))
    monkeypatch.setattr(TaskRunContext, "get", classmethod(lambda cls: SimpleNamespace(task=SimpleNamespace(name=task))))
    error = diverged("stopped at epoch 2 of 20: x")
    assert isinstance(error, TrainingDiverged) and isinstance(error, UserError) and str(error) == says


def test_a_torn_dvclive_metrics_file_is_dropped_before_resuming(tmp_path, capsys):
    from tasks.train import _drop_torn_json

    torn, whole = tmp_path / "torn.json", tmp_path / "whole.json"
    torn.write_text('{"step": 3, "train": {"lo')
    whole.write_text('{"step": 3}')
    _drop_torn_json(torn)
    _drop_torn_json(whole)
    _drop_torn_json(tmp_path / "absent.json")
    assert not torn.exists() and whole.exists()
    assert "cannot be read (cut off mid-write?)" in capsys.readouterr().out


def test_run_fits_the_declared_model_on_frames(params):
    from sklearn.datasets import load_digits

    import tasks.train
    from tasks.frames import images_to_frame

    digits = load_digits()
    keep = digits.target < 3
    frame = images_to_frame(digits.images[keep][:, None].astype(np.float32), digits.target[keep], params.data)
    result = tasks.train.run(params, tasks.train.TrainData(frame[:90], frame[90:120], {"0": 2.0}))
    assert result.spec.classes == [0, 1, 2] and result.spec.extra["task"] == "classification"
    assert result.spec.extra["trained_on"] == params.train.dataset and result.spec.in_shape == (1, 8, 8)
    assert result.fit.state["head.weight"].shape[0] == 3 and len(result.fit.history) == params.train.trainer.max_epochs
