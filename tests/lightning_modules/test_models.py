import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.backbones import Network, build_backbone
from lightning_modules.classifier import Classifier
from lightning_modules.datamodule import ArrayDataModule
from lightning_modules.transformer import SelfAttention


@pytest.mark.parametrize(("spec", "shape"), [({"kind": "cnn", "widths": [32, 64, 128], "hidden": 128}, (1, 28, 28)),
                                              ({"kind": "mlp", "hidden": 32, "depth": 2}, (20,))])
def test_backbones_map_a_batch_to_features(spec, shape):
    backbone = build_backbone(spec, shape)
    assert backbone(torch.zeros(4, *shape)).shape == (4, backbone.out_features)


def test_classifier_trains_the_network_it_is_given():
    """One network definition: the module's state is the network's under `network.`, its output the network's."""
    network = Network(build_backbone({"kind": "cnn", "widths": [8]}, (1, 8, 8)), 3)
    module = Classifier(network, {"name": "adam", "lr": 1e-3, "weight_decay": 0, "momentum": 0.9})
    assert module.state_dict().keys() == {f"network.{k}" for k in network.state_dict()}
    assert module.backbone is network.backbone and module.head is network.head
    module.eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(network(x), module(x), rtol=0, atol=0)


def _cnn(classes: int = 3) -> Network:
    return Network(build_backbone({"kind": "cnn", "widths": [8]}, (1, 8, 8)), classes)


def _fit_one_batch(module, arrays) -> None:
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=ArrayDataModule(arrays, 16))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_fast_dev_run_trains_with_each_optimizer(optimizer):
    rng = np.random.default_rng(0)
    arrays = {s: (rng.random((32, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, 32)) for s in ("train", "val")}
    module = Classifier(_cnn(), {"name": optimizer, "lr": 1e-2, "weight_decay": 1e-4, "momentum": 0.9})
    before = [p.clone() for p in module.parameters()]
    _fit_one_batch(module, arrays)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_linear_probe_keeps_the_backbone_frozen():
    rng = np.random.default_rng(0)
    arrays = {s: (rng.random((32, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, 32)) for s in ("train", "val")}
    module = Classifier(_cnn(), {"name": "adam", "lr": 1e-2, "weight_decay": 0, "momentum": 0.9}, backbone_lr_ratio=0.0)
    frozen = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    _fit_one_batch(module, arrays)
    assert all(torch.equal(frozen[k], v) for k, v in module.backbone.state_dict().items())


# ------------------------------------------------------------------------------ sequence backbones
TOKENS = {"vocab_size": 20, "pad_id": 0}


@pytest.mark.parametrize(("spec", "shape"), [
    ({"kind": "rnn", "cell": "lstm", "hidden": 12, "layers": 2, "bidirectional": True, "embed": 8}, (1, 8, 8)),
    ({"kind": "rnn", "cell": "gru", "hidden": 12, "layers": 1, "embed": 8, **TOKENS}, (10,)),
    ({"kind": "rnn", "cell": "gru", "hidden": 12, "layers": 1, "embed": 8}, (5,)),
    ({"kind": "transformer", "d_model": 16, "heads": 4, "layers": 2}, (1, 8, 8)),
    ({"kind": "transformer", "d_model": 16, "heads": 2, "layers": 1, **TOKENS}, (10,)),
])
def test_sequence_backbones_read_images_tokens_and_tables(spec, shape):
    backbone = build_backbone(spec, shape)
    x = torch.randint(1, 20, (3, *shape)).float() if "vocab_size" in spec else torch.rand(3, *shape)
    out = backbone(x)
    assert out.shape == (3, backbone.out_features) and torch.isfinite(out).all()
    assert backbone.out_features == (24 if spec.get("bidirectional") else spec.get("hidden", spec.get("d_model")))


def test_cnn_and_mlp_refuse_token_ids():
    with pytest.raises(ValueError, match="cannot read token ids"):
        build_backbone({"kind": "mlp", "hidden": 8, "depth": 1, **TOKENS}, (10,))


def test_attention_is_softmax_of_qk_over_sqrt_head_size_with_padding_masked():
    torch.manual_seed(0)
    attn = SelfAttention(d_model=8, heads=2, dropout=0.0).eval()
    x = torch.randn(2, 5, 8)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    q, k, v = attn.qkv(x).split(8, dim=2)
    q, k, v = (z.view(2, 5, 2, 4).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
    scores = q @ k.transpose(-2, -1) / math.sqrt(4)
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    expected = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(2, 5, 8)
    torch.testing.assert_close(attn(x, pad), attn.proj(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "transformer"])
def test_padding_does_not_change_the_features(kind):
    torch.manual_seed(0)
    spec = {"kind": kind, "layers": 2, "dropout": 0.0, **TOKENS}
    spec |= {"hidden": 8, "embed": 8, "bidirectional": True} if kind == "rnn" else {"d_model": 8, "heads": 2}
    short, long = build_backbone(spec, (4,)).eval(), build_backbone(spec, (9,)).eval()
    long.load_state_dict(short.state_dict())
    ids = torch.tensor([[3.0, 7, 2, 0], [5, 0, 0, 0]])
    padded = torch.cat([ids, torch.zeros(2, 5)], dim=1)  # the same sentences with more padding
    torch.testing.assert_close(short(ids), long(padded), rtol=1e-5, atol=1e-5)


def test_a_row_of_padding_only_gives_finite_features():
    backbone = build_backbone({"kind": "transformer", "d_model": 8, "heads": 2, "layers": 1, **TOKENS}, (4,)).eval()
    assert torch.isfinite(backbone(torch.zeros(2, 4))).all()


@pytest.mark.parametrize("kind", ["mlp", "cnn", "rnn", "transformer"])
def test_layer_groups_cover_every_parameter(kind):
    spec = {"kind": kind, "dropout": 0.0} | {"mlp": {"hidden": 8, "depth": 2}, "cnn": {"hidden": 8, "widths": [4, 8]},
                                             "rnn": {"hidden": 8}, "transformer": {"d_model": 8, "heads": 2}}[kind]
    backbone = build_backbone(spec, (1, 8, 8))
    grouped = {id(p) for group in backbone.layer_groups() for m in group for p in m.parameters()}
    assert grouped == {id(p) for p in backbone.parameters()}


def test_binary_network_returns_two_logits_whose_softmax_is_the_sigmoid():
    network = Network(build_backbone({"kind": "mlp", "hidden": 4, "depth": 1}, (3,)), 2, task="binary")
    x = torch.rand(5, 3)
    z = network.head(network.backbone(x))
    assert network.head.out_features == 1
    torch.testing.assert_close(torch.softmax(network(x), dim=1)[:, 1], torch.sigmoid(z[:, 0]))
