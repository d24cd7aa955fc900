"""The train flow in-process: each backbone by changing params alone, dvclive outputs, and a clear
line for hardware that is not there."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.config import parse_params
from tests.conftest import shrunk_params_dict

BACKBONES = {
    "mlp": {"kind": "mlp", "widths": [32]},
    "cnn": {"kind": "cnn", "widths": [8, 16], "hidden": 16},
    "rnn": {"kind": "rnn", "cell": "gru", "hidden": 16, "layers": 1, "bidirectional": True, "embed": 16},
    "transformer": {"kind": "transformer", "d_model": 16, "heads": 2, "layers": 1},
}


def _params(**train):
    raw = shrunk_params_dict()
    raw["train"]["trainer"].update(progress_bar=False)
    for key, value in train.items():
        if key == "trainer":
            raw["train"]["trainer"].update(value)
        else:
            raw["train"][key] = value
    return parse_params(raw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, prefect_harness):
    """data/augmented for the shrunk config, built once by the upstream flows."""
    import os

    from flows.augment import augment
    from flows.ingest import ingest
    from flows.repair import repair
    from flows.validate import validate

    root, here = tmp_path_factory.mktemp("train_flow"), os.getcwd()
    os.chdir(root)
    try:
        for stage in (ingest, validate, repair, augment):
            stage(_params())
    finally:
        os.chdir(here)
    return root


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_each_backbone_trains_through_the_flow_by_params_alone(prepared, monkeypatch, kind):
    from flows.train import train

    monkeypatch.chdir(prepared)
    train(_params(backbone=BACKBONES[kind], trainer={"fast_dev_run": True}))
    spec = json.loads((prepared / "models/train/model.json").read_text())
    assert spec["backbone"]["kind"] == kind and spec["task"] == "classification"
    assert (prepared / "models/train/model.safetensors").stat().st_size > 0


def test_a_full_epoch_logs_to_dvclive_and_keeps_checkpoints(prepared, monkeypatch):
    from flows.train import train

    monkeypatch.chdir(prepared)
    metrics = train(_params(trainer={"max_epochs": 1}))
    live = json.loads((prepared / "reports/train/live/metrics.json").read_text())
    assert live["val"]["loss"] == pytest.approx(metrics["val/loss"], rel=1e-4)
    assert list((prepared / "reports/train/live/plots/metrics").rglob("*.tsv"))
    assert list((prepared / "checkpoints/train").glob("*/last.ckpt"))


def test_an_absent_gpu_fails_the_stage_with_one_line(prepared, monkeypatch):
    from flows.train import train

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(prepared)
    state = train(_params(trainer={"accelerator": "gpu"}), return_state=True)
    assert state.is_failed()
    assert state.message == "train.trainer.accelerator: asked for gpu, found no GPU; set accelerator: auto or cpu"


def test_dvclive_in_a_git_repository_without_a_commit_is_one_clear_line(tmp_path, monkeypatch):
    import subprocess

    from flows._training import require_a_commit
    from tasks.errors import UserError

    monkeypatch.chdir(tmp_path)
    require_a_commit("train.trainer.logger")  # no git at all: dvclive logs without one
    subprocess.run(["git", "init", "-q"], check=True)
    with pytest.raises(UserError, match=r"^train.trainer.logger: dvclive needs a first commit .*git commit -m start"):
        require_a_commit("train.trainer.logger")
    (tmp_path / "a.txt").write_text("a")
    subprocess.run(["git", "add", "a.txt"], check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "start"], check=True)
    require_a_commit("train.trainer.logger")
