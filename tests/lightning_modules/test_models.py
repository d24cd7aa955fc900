import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_modules.backbones import Network, build_backbone
from lightning_modules.classifier import Classifier
from lightning_modules.datamodule import ArrayDataModule


@pytest.mark.parametrize(("spec", "shape"), [({"kind": "cnn", "widths": [32, 64, 128], "hidden": 128}, (1, 28, 28)),
                                              ({"kind": "mlp", "hidden": 32, "depth": 2}, (20,))])
def test_backbones_map_a_batch_to_features(spec, shape):
    backbone = build_backbone(spec, shape)
    assert backbone(torch.zeros(4, *shape)).shape == (4, backbone.out_features)


def test_classifier_and_plain_network_share_parameter_names():
    backbone = build_backbone({"kind": "cnn", "widths": [8]}, (1, 8, 8))
    module = Classifier(backbone, 3, {"name": "adam", "lr": 1e-3, "weight_decay": 0, "momentum": 0.9})
    network = Network(build_backbone({"kind": "cnn", "widths": [8]}, (1, 8, 8)), 3)
    network.load_state_dict(module.state_dict(), strict=True)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_fast_dev_run_trains_with_each_optimizer(optimizer):
    rng = np.random.default_rng(0)
    arrays = {s: (rng.random((32, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, 32)) for s in ("train", "val")}
    module = Classifier(build_backbone({"kind": "cnn", "widths": [8]}, (1, 8, 8)), 3,
                        {"name": optimizer, "lr": 1e-2, "weight_decay": 1e-4, "momentum": 0.9})
    before = [p.clone() for p in module.parameters()]
    pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False).fit(module, datamodule=ArrayDataModule(arrays, 16))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_linear_probe_keeps_the_backbone_frozen():
    rng = np.random.default_rng(0)
    arrays = {s: (rng.random((32, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, 32)) for s in ("train", "val")}
    module = Classifier(build_backbone({"kind": "cnn", "widths": [8]}, (1, 8, 8)), 3,
                        {"name": "adam", "lr": 1e-2, "weight_decay": 0, "momentum": 0.9}, backbone_lr_ratio=0.0)
    frozen = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False).fit(module, datamodule=ArrayDataModule(arrays, 16))
    assert all(torch.equal(frozen[k], v) for k, v in module.backbone.state_dict().items())
