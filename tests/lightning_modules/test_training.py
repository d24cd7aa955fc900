"""Training controls in plain torch + Lightning: schedules, losses, batches, on-the-fly augmentation."""

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_modules.augment import BatchAugment
from lightning_modules.backbones import Network, build_backbone
from lightning_modules.classifier import Classifier
from lightning_modules.datamodule import ArrayDataModule, EpochBatches
from lightning_modules.distill import Distiller
from lightning_modules.optim import OPTIMIZERS, build_scheduler

ADAM = {"name": "adam", "lr": 1e-2, "weight_decay": 0.0, "momentum": 0.9}


def _mlp(in_features: int = 3, classes: int = 3, hidden: int = 4, task: str = "classification") -> Network:
    return Network(build_backbone({"kind": "mlp", "hidden": hidden, "depth": 1}, (in_features,)), classes, task)


def _lrs(name: str, steps: int = 20, **extra) -> list[float]:
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=1.0)
    cfg = {"name": name, "warmup_steps": 0, "step_size": 1, "gamma": 0.5, "factor": 0.5, "patience": 0, "min_lr": 0.0} | extra
    sched = build_scheduler(opt, cfg, total_steps=steps, max_epochs=4)["scheduler"]
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


def test_schedules_shape_the_learning_rate():
    step = _lrs("step")  # 20 steps over 4 epochs: x0.5 every 5 steps
    assert step[0] == step[4] == 1.0 and step[5] == 0.5 and step[10] == 0.25
    cosine = _lrs("cosine")
    assert cosine[0] == 1.0 and all(a >= b for a, b in zip(cosine, cosine[1:], strict=False)) and cosine[-1] < 0.05
    warm = _lrs("cosine", warmup_steps=5)
    assert warm[0] < 0.2 and warm[4] < warm[5] and max(warm) == pytest.approx(1.0)
    onecycle = _lrs("onecycle")
    assert onecycle[0] < 0.1 and max(onecycle) == pytest.approx(1.0, rel=0.05) and onecycle[-1] < 0.01
    one = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert build_scheduler(one, {"name": "none", "warmup_steps": 0}, 10, 1) is None


def test_plateau_steps_on_validation_loss():
    sched = build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                            {"name": "plateau", "factor": 0.5, "patience": 1, "min_lr": 0.0}, 10, 1)
    assert sched["monitor"] == "val/loss" and sched["interval"] == "epoch"


def test_sgd_nesterov_from_params():
    opt = OPTIMIZERS["sgd"]([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}],
                            {"momentum": 0.9, "weight_decay": 0.0, "nesterov": True})
    assert opt.param_groups[0]["nesterov"] is True


def test_epoch_batches_depend_on_seed_and_epoch_only():
    a, b = EpochBatches(10, 4, shuffle=True, seed=1), EpochBatches(10, 4, shuffle=True, seed=1)
    first = [t.tolist() for t in a]
    b.set_epoch(1)
    assert [t.tolist() for t in b] != first  # another epoch, another order
    b.set_epoch(0)
    assert [t.tolist() for t in b] == first and sorted(sum(first, [])) == list(range(10))
    assert len(a) == 3


def test_mixup_targets_weigh_two_labels():
    module = Classifier(_mlp(), ADAM)
    out = torch.randn(4, 3)
    a, b = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    plain = torch.nn.functional.cross_entropy(out, a, reduction="none")
    other = torch.nn.functional.cross_entropy(out, b, reduction="none")
    mixed = torch.stack([a.float(), b.float(), torch.full((4,), 0.25)], dim=1)
    torch.testing.assert_close(module.loss(out, mixed), (0.75 * plain + 0.25 * other).mean())


def test_l1_penalty_raises_the_training_loss():
    x, y = torch.rand(8, 3), torch.randint(0, 3, (8,))
    losses = []
    for l1 in (0.0, 1.0):
        torch.manual_seed(0)
        module = Classifier(_mlp(), ADAM | {"l1": l1})
        losses.append(module.training_step((x, y), 0))
    assert losses[1] > losses[0] + 1.0


@pytest.mark.parametrize("cfg", [{"rotation_deg": 15, "translate": 0.1, "hflip": 0.5, "erasing": 0.5, "noise_std": 0.05},
                                 {"mixup": 1.0}, {"cutmix": 1.0}])
def test_batch_augment_keeps_shapes_and_mixes_labels(cfg):
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 3
    out, target = BatchAugment(cfg)(x, y)
    assert out.shape == x.shape and not torch.equal(out, x)
    if "mixup" in cfg or "cutmix" in cfg:
        assert target.shape == (8, 3) and torch.equal(target[:, 0].long(), y)
    else:
        assert torch.equal(target, y)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_targets_weigh_label_b_by_its_share_of_the_image(kind):
    """Classifier's loss is (1 - w) * CE(a) + w * CE(b): w must be b's share of the mixed image, for
    mixup (a blend) and cutmix (a pasted patch; kornia reports the area kept from a instead)."""
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)  # distinct labels: label b names the partner row
    out, target = BatchAugment({kind: 1.0})(x.clone(), y)
    a, b, w = target[:, 0].long(), target[:, 1].long(), target[:, 2]
    assert torch.equal(a, y) and not torch.equal(b, y)
    if kind == "mixup":
        torch.testing.assert_close(out, (1 - w)[:, None, None, None] * x[a] + w[:, None, None, None] * x[b])
    else:
        from_b = ((out == x[b]) & (x[a] != x[b])).flatten(1).float().mean(1)
        torch.testing.assert_close(from_b, w, rtol=0, atol=1e-6)
    assert ((w > 0.01) & (w < 0.99)).sum() >= 4  # mixed for real, not a batch of untouched images


@pytest.mark.parametrize(("task", "y"), [("binary", np.array([0, 1] * 16)),
                                         ("regression", np.linspace(0, 1, 32, dtype=np.float32))])
def test_binary_and_regression_train_in_the_same_module(task, y):
    rng = np.random.default_rng(0)
    arrays = {s: (rng.random((32, 4), dtype=np.float32), y) for s in ("train", "val")}
    module = Classifier(_mlp(4, 2, 8, task), ADAM, class_weights=[1.0, 3.0])
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=ArrayDataModule(arrays, 16))
    metric = "val/acc" if task == "binary" else "val/mae"
    assert module.head.out_features == 1 and metric in trainer.callback_metrics


def test_on_the_fly_augmentation_runs_on_training_batches_only():
    rng = np.random.default_rng(0)
    arrays = {s: (rng.random((32, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, 32)) for s in ("train", "val")}
    seen = {}

    class Spy(Classifier):
        def training_step(self, batch, batch_idx):
            seen["train"] = batch[1].shape
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            seen["val"] = batch[1].shape
            return super().validation_step(batch, batch_idx)

    module = Spy(Network(build_backbone({"kind": "cnn", "widths": [4]}, (1, 8, 8)), 3), ADAM)
    pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False).fit(
        module, datamodule=ArrayDataModule(arrays, 16, augment={"mixup": 1.0, "rotation_deg": 10}))
    assert seen == {"train": (16, 3), "val": (16,)}


@pytest.mark.parametrize("limit", [None, 2])
def test_epoch_metrics_are_the_batch_size_weighted_means_of_the_epoch(limit):
    # 40 rows in batches of 16: the last batch has 8, so a plain mean of batch means would differ
    rng = np.random.default_rng(0)
    arrays = {s: (rng.random((40, 4), dtype=np.float32), rng.integers(0, 3, 40)) for s in ("train", "val")}
    seen = {"train": [], "val": []}

    class Spy(Classifier):
        def _shared_step(self, batch, stage):
            loss = super()._shared_step(batch, stage)
            seen[stage].append((float(loss), len(batch[1])))
            return loss

    module = Spy(_mlp(4, 3, 8), ADAM)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         limit_train_batches=limit, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=ArrayDataModule(arrays, 16, seed=0))
    assert len(seen["train"]) == (limit or 3) and len(seen["val"]) == 3
    for stage, rows in seen.items():
        mean = sum(loss * n for loss, n in rows) / sum(n for _, n in rows)
        assert float(trainer.callback_metrics[f"{stage}/loss"]) == pytest.approx(mean, rel=1e-5)
    assert {"train/acc", "val/acc"} <= set(trainer.callback_metrics)


def test_a_diverged_distillation_stops_at_the_end_of_its_first_nan_epoch():
    from lightning_modules.epoch_means import Diverged

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 4), dtype=np.float32), rng.integers(0, 3, 64)
    targets = np.concatenate([y[:, None], rng.normal(size=(64, 3))], axis=1).astype(np.float32)  # label, teacher logits
    module = Distiller(_mlp(4, 3, 8), None, ADAM | {"lr": 1e30})
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         num_sanity_val_steps=0)
    with pytest.raises(Diverged, match=r"^stopped at epoch 1 of 2: the mean training loss is nan$"):
        trainer.fit(module, datamodule=ArrayDataModule({"train": (x, targets), "val": (x, y)}, 16, seed=0))
