"""Fine-tuning: few labels, safe weights files, key mapping, and each strategy on a tiny model."""

from __future__ import annotations

import pickle

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from lightning_modules.transfer import TransferSchedule, group_prefixes, layer_groups
from tasks.config import AugmentConfig, DataConfig, FinetuneConfig, OptimizerConfig, TrainerConfig
from tasks.errors import UserError
from tasks.finetune import (
    augment_labels,
    balanced_weights,
    few_labels,
    keep_classes,
    replay_rows,
    schedule,
    seed_joint_head,
    with_replay,
)
from tasks.init_from import check_transfer, map_keys, read_weights_file
from tasks.model_io import ModelSpec
from tasks.train import fit_classifier, transfer_state

SPEC = ModelSpec({"kind": "cnn", "widths": [4, 8], "hidden": 8, "dropout": 0.0}, (1, 8, 8), [0, 1, 2], {})
TRAINER = TrainerConfig(max_epochs=2, batch_size=16, accelerator="cpu", num_threads=1)


def _arrays(n: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.random((n, 1, 8, 8), dtype=np.float32) * 0.2
    x[np.arange(n), 0, y * 2, y * 2] = 1.0  # a learnable bright pixel per class
    return {"train": (x, y), "val": (x[:12], y[:12])}


def _source_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return SPEC.build().state_dict()


def _fit(cfg: FinetuneConfig, callbacks: list[pl.Callback] = ()):
    init, _ = transfer_state(_source_state(), SPEC.build(), ("head.",))
    network = SPEC.build()
    unfreeze_at, lrs = schedule(cfg, len(layer_groups(network.backbone)), cfg.optimizer.lr)
    result = fit_classifier.fn(_arrays(), SPEC, cfg.optimizer, TRAINER, 0, None, init, 0.0,
                               callbacks=[TransferSchedule(unfreeze_at, lrs, cfg.batchnorm), *callbacks])
    return init, result.state


def _changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix) and before[k].is_floating_point())


# ---------------------------------------------------------------------------------- few labels
def test_few_labels_keeps_n_originals_a_class_with_their_copies():
    data = DataConfig(modality="tabular", image_shape=None)
    frame = pd.DataFrame({"id": range(12), "label": [0, 1] * 6, "f": range(12),
                          "augmented_from": pd.array([pd.NA] * 6 + list(range(6)), dtype="Int64")})
    few = few_labels.fn(frame, data, 2, seed=0)
    originals = few[few["augmented_from"].isna()]
    assert originals["label"].value_counts().to_dict() == {0: 2, 1: 2}
    assert set(few["augmented_from"].dropna()) <= set(originals["id"])
    with pytest.raises(UserError, match="labels_per_class=9"):
        few_labels.fn(frame, data, 9, seed=0)


def test_augment_labels_adds_copies_of_each_image():
    x, y = _arrays(6)["train"]
    bigger_x, bigger_y = augment_labels(x, y, 3, AugmentConfig(), seed=0)
    assert bigger_x.shape == (24, 1, 8, 8) and list(bigger_y) == list(y) * 4
    assert np.array_equal(bigger_x[:6], x) and not np.array_equal(bigger_x[6:12], x)


# ------------------------------------------------------------------------------- source replay
def test_replay_rows_takes_the_classes_in_turn_seeded():
    x, y = np.arange(10)[:, None], np.array([0] * 6 + [1] * 3 + [2])
    kx, ky = replay_rows(x, y, 5, seed=0)
    assert sorted(np.bincount(ky, minlength=3)) == [1, 2, 2] and np.bincount(ky, minlength=3)[2] == 1
    assert np.array_equal(kx[:, 0], np.sort(kx[:, 0])) and set(kx[:, 0]) <= set(range(10))
    assert np.array_equal(replay_rows(x, y, 5, seed=0)[0], kx) and replay_rows(x, y, 99, seed=0)[1] is y


def test_with_replay_puts_source_then_target_classes_in_one_head():
    source = (np.zeros((3, 2), np.float32), np.array([0, 1, 1]))   # classes [0, 1]
    target = (np.ones((2, 2), np.float32), np.array([1, 0]))       # classes [1, 5]: 1 is shared
    (x, y), joint, rows, source_rows = with_replay(target, source, [1, 5], [0, 1])
    assert joint == [0, 1, 5] and rows == [1, 2] and source_rows == [0, 1]
    assert list(y) == [0, 1, 1, 2, 1] and x.shape == (5, 2) and x.dtype == np.float32
    assert balanced_weights(y, 3) == pytest.approx([5 / 3, 5 / 9, 5 / 3])


def test_joint_head_starts_from_the_source_rows_and_is_cut_to_the_target_classes():
    source = {"head.weight": torch.ones(2, 4), "head.bias": torch.ones(2)}
    state = {"head.weight": torch.zeros(3, 4), "head.bias": torch.zeros(3), "backbone.w": torch.ones(1)}
    seeded = seed_joint_head(state, source, [0, 1])
    assert seeded["head.weight"][:2].eq(1).all() and seeded["head.weight"][2].eq(0).all() and state["head.weight"].eq(0).all()
    kept = keep_classes(seeded, [2])
    assert kept["head.weight"].shape == (1, 4) and kept["head.bias"].tolist() == [0.0]
    assert kept["backbone.w"] is state["backbone.w"]


# ------------------------------------------------------------------------------------ schedule
def test_schedule_per_strategy():
    lr = 1.0
    assert schedule(FinetuneConfig(strategy="linear_probe"), 3, lr)[0] == [None, None, None]
    at, lrs = schedule(FinetuneConfig(strategy="full", backbone_lr_ratio=0.5, layer_lr_decay=0.5), 3, lr)
    assert at == [0, 0, 0] and lrs == [0.125, 0.25, 0.5]  # bottom group slowest
    assert schedule(FinetuneConfig(strategy="gradual", unfreeze_at_epoch=2, unfreeze_every=3), 3, lr)[0] == [8, 5, 2]
    assert schedule(FinetuneConfig(strategy="probe_then_full", unfreeze_at_epoch=4), 3, lr)[0] == [4, 4, 4]


def test_reinit_top_groups_train_from_the_start_at_the_head_rate():
    cfg = FinetuneConfig(strategy="probe_then_full", unfreeze_at_epoch=4, backbone_lr_ratio=0.1, reinit_top=1)
    at, lrs = schedule(cfg, 3, 1.0)
    assert at == [4, 4, 0] and lrs == [0.1, 0.1, 1.0]
    assert schedule(FinetuneConfig(strategy="linear_probe", reinit_top=2), 3, 1.0)[0] == [None, 0, 0]
    with pytest.raises(UserError, match="finetune.reinit_top: 3 must be below"):
        schedule(FinetuneConfig(reinit_top=3), 3, 1.0)


def test_reinit_top_leaves_the_dense_layer_out_of_the_transfer():
    network = SPEC.build()
    groups = layer_groups(network.backbone)
    fresh = group_prefixes(network.backbone, groups[-1:])
    assert fresh == ("backbone.dense.",)
    init, report = transfer_state(_source_state(), network, ("head.", *fresh))
    assert report["skipped"] and all(k.startswith(("head.", "backbone.dense.")) for k in report["skipped"])
    assert any(k.startswith("backbone.features.") for k in report["loaded"]) and not any("dense" in k for k in report["loaded"])


def test_cnn_layer_groups_cover_every_backbone_parameter():
    backbone = SPEC.build().backbone
    grouped = {id(p) for group in layer_groups(backbone) for m in group for p in m.parameters()}
    assert grouped == {id(p) for p in backbone.parameters()} and len(layer_groups(backbone)) == 3


# ---------------------------------------------------------------------------------- strategies
def test_linear_probe_trains_only_the_head_and_keeps_batchnorm_statistics():
    init, state = _fit(FinetuneConfig(strategy="linear_probe"))
    assert not _changed(init, state, "backbone.")  # weights and running statistics alike
    assert _changed(init, state, "head.")


def test_full_fine_tuning_trains_the_backbone():
    init, state = _fit(FinetuneConfig(strategy="full", backbone_lr_ratio=0.5, layer_lr_decay=0.5))
    assert _changed(init, state, "backbone.features.0.") and _changed(init, state, "backbone.dense.")


def test_gradual_unfreezing_reaches_the_top_group_first():
    # 2 epochs; the top group (dense) unfreezes at epoch 1, the conv blocks later: never within the run
    init, state = _fit(FinetuneConfig(strategy="gradual", unfreeze_at_epoch=1, unfreeze_every=5))
    assert _changed(init, state, "backbone.dense.")
    assert not _changed(init, state, "backbone.features.")


def test_probe_then_full_with_frozen_batchnorm_keeps_running_statistics():
    init, state = _fit(FinetuneConfig(strategy="probe_then_full", unfreeze_at_epoch=1, batchnorm="frozen"))
    assert _changed(init, state, "backbone.features.0.weight")
    assert torch.equal(init["backbone.features.1.running_mean"], state["backbone.features.1.running_mean"])


class LearningRates(pl.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, *args):
        self.rows.append([group["lr"] for group in trainer.optimizers[0].param_groups])


@pytest.mark.parametrize("scheduler", [{"name": "cosine"}, {"name": "step", "step_size": 1, "gamma": 0.5},
                                       {"name": "none", "warmup_steps": 4}, {"name": "onecycle"},
                                       {"name": "plateau", "patience": 0}])
def test_frozen_groups_are_in_the_optimizer_and_its_schedule_from_the_first_step(scheduler):
    # probe_then_full: the three backbone groups train from epoch 1 (batch 4 of 6) at lr x 0.5; their
    # optimizer groups exist from the first step, so every schedule moves them with the head's rate
    cfg = FinetuneConfig(strategy="probe_then_full", unfreeze_at_epoch=1, backbone_lr_ratio=0.5,
                         optimizer=OptimizerConfig(name="adam", lr=0.01, scheduler=scheduler))
    rates = LearningRates()
    _fit(cfg, [rates])
    assert [len(row) for row in rates.rows] == [4] * 6
    for row in rates.rows:
        assert row[1:] == pytest.approx([row[0] * 0.5] * 3)
    if scheduler["name"] != "plateau":  # the others change the rate within the run
        assert len({row[0] for row in rates.rows}) > 1


class Snapshots(pl.Callback):
    """The backbone's parameters after each epoch, and the optimizer's groups at the first step."""

    def __init__(self):
        self.after, self.first_groups = [], None

    def on_train_batch_start(self, trainer, pl_module, *args):
        if self.first_groups is None:
            self.first_groups = [{id(p) for p in group["params"]} for group in trainer.optimizers[0].param_groups]

    def on_train_epoch_end(self, trainer, pl_module):
        self.after.append({k: v.detach().clone() for k, v in pl_module.backbone.named_parameters()})


def test_a_frozen_group_stays_unchanged_before_its_epoch_and_trains_from_it():
    # gradual, top down: group 2 (dense) from epoch 1, group 1 from epoch 2, group 0 from epoch 3 (after this run)
    cfg = FinetuneConfig(strategy="gradual", unfreeze_at_epoch=1, unfreeze_every=1,
                         optimizer=OptimizerConfig(name="adam", lr=0.01, scheduler={"name": "cosine"}))
    snapshots = Snapshots()
    init, _ = transfer_state(_source_state(), SPEC.build(), ("head.",))
    network = SPEC.build()
    groups = layer_groups(network.backbone)
    unfreeze_at, lrs = schedule(cfg, len(groups), cfg.optimizer.lr)
    assert unfreeze_at == [3, 2, 1]
    fit_classifier.fn(_arrays(), SPEC, cfg.optimizer, TRAINER.model_copy(update={"max_epochs": 3}), 0, None, init, 0.0,
                      callbacks=[TransferSchedule(unfreeze_at, lrs), snapshots])
    names = {id(p): f"backbone.{n}" for n, p in network.backbone.named_parameters()}
    params = [{names[id(p)] for m in group for p in m.parameters()} for group in groups]
    # the head, then the groups in the order they unfreeze (2, 1, 0), all there from the first step
    assert [len(group) for group in snapshots.first_groups[1:]] == [len(params[i]) for i in (2, 1, 0)]
    before = [{k.removeprefix("backbone."): init[k] for k in group} for group in params]
    after = snapshots.after  # after epochs 0, 1, 2
    for i, at in enumerate(unfreeze_at):
        for epoch in range(3):
            previous = before[i] if epoch == 0 else {k: after[epoch - 1][k] for k in before[i]}
            moved = any(not torch.equal(previous[k], after[epoch][k]) for k in before[i])
            assert moved == (epoch >= at), (i, epoch)


# ------------------------------------------------------------------------------- weights files
def test_safetensors_file_loads(tmp_path):
    save_file({k: v.contiguous() for k, v in _source_state().items()}, str(tmp_path / "w.safetensors"))
    state = read_weights_file(tmp_path / "w.safetensors")
    init, report = transfer_state(state, SPEC.build())
    assert len(report["loaded"]) == len(SPEC.build().state_dict()) and not report["missing"]


def test_pt_state_dict_with_a_prefix_maps_and_loads_partially(tmp_path):
    # A torchvision/timm-style checkpoint: nested under "state_dict", keys prefixed "module.",
    # plus a tensor the network does not have and a head of another shape.
    state = {f"module.{k}": v for k, v in _source_state().items()}
    state["module.head.weight"] = torch.zeros(10, 8)
    state["module.extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pt")
    mapped = map_keys(read_weights_file(tmp_path / "w.pt"), {"module.": ""})
    init, report = transfer_state(mapped, SPEC.build())
    assert report["mismatched"] == ["head.weight"] and "extra.weight" in report["skipped"]
    assert "backbone.features.0.weight" in report["loaded"] and "head.weight" in report["missing"]
    assert torch.equal(init["backbone.features.0.weight"], _source_state()["backbone.features.0.weight"])
    with pytest.raises(UserError, match="no tensor matched"):
        check_transfer(transfer_state(read_weights_file(tmp_path / "w.pt"), SPEC.build())[1], "w.pt")


def test_map_keys_longest_prefix_wins_and_empty_prefix_adds_one():
    state = {"a.b.w": 1, "a.w": 2, "c": 3}
    assert map_keys(state, {"a.": "x.", "a.b.": "y."}) == {"y.w": 1, "x.w": 2, "c": 3}
    assert map_keys({"w": 1}, {"": "backbone."}) == {"backbone.w": 1}


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["weights.pt", "weights.pth", "weights.bin", "weights.safetensors"])
def test_a_pickle_payload_as_user_weights_is_refused_without_running(tmp_path, name):
    payload = _Payload()
    payload.marker = tmp_path / "pwned"
    (tmp_path / name).write_bytes(pickle.dumps({"backbone.w": payload}))
    with pytest.raises(UserError, match="refused|not a safetensors"):
        read_weights_file(tmp_path / name)
    assert not payload.marker.exists()


def test_init_from_is_checked_in_params():
    from pydantic import ValidationError

    for good in ("train", "scratch", "package:all-minilm-l6-v2", "models/mine.pth", "w.safetensors"):
        FinetuneConfig(init_from=good)
    with pytest.raises(ValidationError, match="weights file"):
        FinetuneConfig(init_from="package:resnet50")
    assert FinetuneConfig().optimizer == OptimizerConfig()


# ------------------------------------------------------------------------------ packaged models
@pytest.mark.parametrize("package, in_shape, x", [
    ("efficientnet-lite0", (1, 28, 28), torch.rand(2, 1, 28, 28)),
    pytest.param("all-minilm-l6-v2", (16,), torch.tensor([[101, 7592, 2088, 102] + [0] * 12] * 2, dtype=torch.float32),
                 marks=pytest.mark.slow),  # importing transformers alone takes seconds
])
def test_packaged_pretrained_weights_load_offline_into_the_adapter(package, in_shape, x):
    from tasks.init_from import package_backbone, package_weights

    cfg = FinetuneConfig(init_from=f"package:{package}", image_size=32)
    spec = ModelSpec(package_backbone(cfg), in_shape, [0, 1, 2], {})
    network = spec.build()
    init, report = transfer_state(package_weights(cfg), network, ("head.",))
    assert report["missing"] == ["head.bias", "head.weight"] and not report["mismatched"]
    assert all(k.startswith("backbone.net._fc.") for k in report["skipped"])  # ImageNet's classifier, if any
    network.load_state_dict(init)
    assert network.eval()(x).shape == (2, 3)
    assert len(layer_groups(network.backbone)) > 3


def test_the_imagenet_adapter_batchnorm_follows_the_new_data_at_pytorch_momentum():
    # The package's own 0.01 left the running statistics ImageNet's through a whole fine-tune.
    from lightning_modules.pretrained import EfficientNetLite0

    norms = [m for m in EfficientNetLite0((1, 28, 28), image_size=32).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == pytest.approx(0.1) for m in norms)


# ------------------------------------------------------------------------------------- resume
class _Crash(Exception):
    pass


class _CrashAt(pl.Callback):
    """Stands in for a kill: the run dies at the start of `epoch`, its last checkpoint on disk."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise _Crash


def test_an_interrupted_gradual_fine_tune_resumes_to_the_uninterrupted_weights(tmp_path):
    # with a cosine schedule: every group is in the optimizer from the start, so its state loads as saved
    cfg = FinetuneConfig(strategy="gradual", unfreeze_at_epoch=1, unfreeze_every=1,
                         optimizer=OptimizerConfig(name="adam", lr=0.002, scheduler={"name": "cosine"}))
    init, _ = transfer_state(_source_state(), SPEC.build(), ("head.",))
    unfreeze_at, lrs = schedule(cfg, len(layer_groups(SPEC.build().backbone)), cfg.optimizer.lr)
    trainer = TRAINER.model_copy(update={"max_epochs": 5})
    key = {"schedule": [unfreeze_at, lrs]}

    def fit(folder, *extra):
        return fit_classifier.fn(_arrays(), SPEC, cfg.optimizer, trainer, 0, None, init, 0.0, checkpoint_dir=folder,
                                 callbacks=[TransferSchedule(unfreeze_at, lrs), *extra], run_settings=key)

    whole = fit(tmp_path / "whole")
    with pytest.raises(_Crash):
        fit(tmp_path / "cut", _CrashAt(3))  # two of the three groups unfrozen (epochs 1 and 2), then the crash
    resumed = fit(tmp_path / "cut")
    assert resumed.resumed_from_epoch == 3
    for name, tensor in whole.state.items():
        assert torch.equal(tensor, resumed.state[name]), name


# ------------------------------------------------------------------------------- the stage, in-process
def _digit_frames(params, classes, rows_a_class):
    from sklearn.datasets import load_digits

    from tasks.frames import images_to_frame

    digits = load_digits()
    keep = np.concatenate([np.flatnonzero(digits.target == c)[:rows_a_class] for c in classes])
    return images_to_frame(digits.images[keep].astype(np.float32)[:, None], digits.target[keep], params.data)


def test_run_fine_tunes_from_the_train_model_and_returns_its_labelled_ids(params):
    import tasks.finetune
    from tasks.init_from import StartingPoint

    source = ModelSpec({"kind": "cnn", "widths": [8, 16], "hidden": 16, "dropout": 0.0}, (1, 8, 8), [0, 1, 2, 3, 4], {})
    torch.manual_seed(0)
    start = StartingPoint("train", source.backbone, source.build().state_dict(), source.classes)
    pool, val = _digit_frames(params, [5, 6, 7, 8, 9], 12), _digit_frames(params, [5, 6, 7, 8, 9], 4)
    data = tasks.finetune.FinetuneData(pool, val, start, source_pool=_digit_frames(params, [0, 1, 2, 3, 4], 12))
    result = tasks.finetune.run(params, data)

    assert list(result.labelled.columns) == [params.data.id] and len(result.labelled) == 5 * params.finetune.labels_per_class
    assert set(result.labelled[params.data.id]) <= set(pool[params.data.id])
    assert result.transfer["missing"] == ["head.bias", "head.weight"]
    assert result.transfer["replay"]["joint_classes"] == list(range(10))
    assert result.tuned.state["head.weight"].shape[0] == 5 and result.spec.classes == [5, 6, 7, 8, 9]  # the joint head cut
    rows = (params.finetune.augment_copies + 1) * 25 + result.transfer["replay"]["rows"]
    assert result.scratch is not None and result.summary["training_rows"] == rows
