"""finetune from a user's weights file, then evaluate with the gate: pass, fail, fail the stage."""

from __future__ import annotations

import json

import pytest
import torch

from flows.augment import augment
from flows.evaluate import evaluate
from flows.finetune import finetune
from flows.ingest import ingest
from flows.repair import repair
from flows.validate import validate
from tasks.config import parse_params
from tasks.model_io import ModelSpec
from tasks.train import backbone_spec
from tests.conftest import shrunk_params_dict


def _params(**sections):
    raw = shrunk_params_dict()
    for section, values in sections.items():
        raw[section].update(values)
    return parse_params(raw)


@pytest.mark.slow  # builds the data stages and runs three flows: about a minute on a quiet machine
def test_weights_file_gradual_unfreezing_then_the_gate(prefect_harness, project):
    base = _params()
    for stage in (ingest, validate, repair, augment):
        stage(base)

    # A torchvision/timm-style checkpoint of the same network, saved from a DataParallel wrapper.
    spec = ModelSpec(backbone_spec(base.train.backbone), tuple(base.data.image_shape), list(range(10)), {})
    torch.save({"state_dict": {f"module.{k}": v for k, v in spec.build().state_dict().items()}}, project / "mine.pth")
    params = _params(finetune={"init_from": "mine.pth", "key_map": {"module.": ""}, "strategy": "gradual", "unfreeze_at_epoch": 0,
                               "unfreeze_every": 1, "augment_copies": 1, "baseline": False},
                     evaluate={"gate": {"min": {"accuracy": 0.0}, "vs_champion": ["accuracy"], "champion": "champion"}})
    summary = finetune(params)
    transfer = json.loads((project / "reports/finetune/transfer.json").read_text())
    assert transfer["init_from"] == "mine.pth" and "backbone.features.0.weight" in transfer["loaded"]
    # a 10-class head vs 5 classes
    assert transfer["missing"] == ["head.bias", "head.weight"] and transfer["mismatched"] == ["head.bias", "head.weight"]
    assert [g["unfreeze_at_epoch"] for g in transfer["schedule"]] == [2, 1, 0]  # top group first
    assert summary["training_rows"] == 2 * summary["labelled_rows"]
    assert not (project / "models/finetune/scratch/model.json").exists()

    scores = evaluate(params)
    gate = json.loads((project / "reports/evaluate/gate.json").read_text())
    assert gate["promoted"] and gate["metrics"] == scores and {"roc_auc", "ece"} <= set(scores)
    for name in ("confusion.csv", "roc.csv", "pr.csv", "calibration.csv"):
        assert (project / "reports/evaluate/plots" / name).stat().st_size > 0
    assert (project / "reports/evaluate/figures/curves.png").read_bytes()[:4] == b"\x89PNG"
    champion = (project / "champion/metrics.json").read_bytes()
    assert json.loads(champion)["weights_sha256"] == gate["weights_sha256"]

    strict = _params(evaluate={"gate": {"min": {"accuracy": 1.01}, "champion": "champion"}})
    evaluate(strict)
    gate = json.loads((project / "reports/evaluate/gate.json").read_text())
    assert not gate["promoted"] and "accuracy >= 1.01" in gate["reason"]
    assert "**not promoted**" in (project / "reports/evaluate/report.md").read_text()
    assert (project / "champion/metrics.json").read_bytes() == champion  # a failed gate leaves the champion alone

    failing = _params(evaluate={"gate": {"min": {"accuracy": 1.01}, "champion": "champion", "fail_stage": True}})
    state = evaluate(failing, return_state=True)
    assert state.is_failed() and "gate: not promoted: accuracy" in state.message
    assert (project / "champion/metrics.json").read_bytes() == champion
