"""The promotion gate: thresholds, the champion, and a failed gate leaving the champion alone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tasks.config import GateConfig
from tasks.errors import UserError
from tasks.gate import load_champion, promote, promotion_verdict


def _model(folder, value: float):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.full((2,), value)}, str(folder / "model.safetensors"))
    return folder


def test_passes_thresholds_with_no_champion_and_becomes_it(tmp_path):
    cfg = GateConfig(min={"accuracy": 0.8}, max={"ece": 0.1}, champion=tmp_path / "champion")
    verdict = promotion_verdict.fn({"accuracy": 0.85, "ece": 0.05}, cfg, None)
    assert verdict["promoted"] and "no champion yet" in verdict["reason"] and len(verdict["checks"]) == 2
    promote({"accuracy": 0.85, "ece": 0.05}, _model(tmp_path / "m", 1.0), cfg)
    champion = load_champion(cfg)
    assert champion["metrics"]["accuracy"] == 0.85 and len(champion["weights_sha256"]) == 64


def test_fails_on_a_threshold_and_says_which():
    verdict = promotion_verdict.fn({"accuracy": 0.7, "macro_f1": 0.9}, GateConfig(min={"accuracy": 0.8, "macro_f1": 0.8}), None)
    assert not verdict["promoted"]
    assert verdict["reason"] == "accuracy 0.7 fails accuracy >= 0.8"
    assert [c["passed"] for c in verdict["checks"]] == [False, True]


def test_fails_against_the_champion_and_leaves_it_untouched(tmp_path):
    cfg = GateConfig(min={"accuracy": 0.5}, vs_champion=["accuracy", "ece"], tolerance=0.01, champion=tmp_path / "champion")
    promote({"accuracy": 0.9, "ece": 0.05}, _model(tmp_path / "first", 1.0), cfg)
    before = (tmp_path / "champion" / "metrics.json").read_bytes()

    worse = promotion_verdict.fn({"accuracy": 0.88, "ece": 0.07}, cfg, load_champion(cfg))  # 0.88 < 0.9 - 0.01; ece 0.07 > 0.06
    assert not worse["promoted"] and "no worse than the champion (0.9)" in worse["reason"] and "ece 0.07" in worse["reason"]
    assert worse["champion_before"] == {"accuracy": 0.9, "ece": 0.05}
    # flows/evaluate.py promotes only on a pass; the champion's file is byte-for-byte the same
    assert (tmp_path / "champion" / "metrics.json").read_bytes() == before

    within = promotion_verdict.fn({"accuracy": 0.895, "ece": 0.055}, cfg, load_champion(cfg))  # inside the tolerance
    assert within["promoted"] and json.loads(before)["metrics"]["accuracy"] == 0.9


def test_an_unknown_metric_in_the_gate_is_a_user_error():
    with pytest.raises(UserError, match=r"evaluate.gate.min.auc: .*no metric 'auc' \(available: accuracy\)"):
        promotion_verdict.fn({"accuracy": 0.9}, GateConfig(min={"auc": 0.9}), None)


@pytest.mark.parametrize(("metrics", "named"), [
    ({"accuracy": float("nan"), "ece": 0.05}, "accuracy nan"),  # NaN fails a minimum anyway: the reason must say why
    ({"accuracy": 0.9, "ece": float("-inf")}, "ece -inf"),  # -inf passes any maximum
    ({"accuracy": 0.9, "ece": 0.05, "scratch_accuracy": float("inf")}, "scratch_accuracy inf"),  # in no check at all
])
def test_a_metric_that_is_not_finite_is_never_promoted_and_the_reason_names_it(tmp_path, metrics, named):
    cfg = GateConfig(min={"accuracy": 0.8}, max={"ece": 0.1}, champion=tmp_path / "champion")
    verdict = promotion_verdict.fn(metrics, cfg, None)
    assert not verdict["promoted"]
    assert verdict["reason"].startswith(f"metrics not finite: {named} ")
    assert {"check": f"{named.split()[0]} is finite", "passed": False}.items() <= verdict["checks"][0].items()
    assert all(not c["passed"] for c in verdict["checks"] if c["metric"] == named.split()[0])
    with pytest.raises(UserError, match=f"not promoting .*metrics not finite \\({named}\\)"):
        promote(metrics, _model(tmp_path / "m", 1.0), cfg)  # even a caller that skips judge() crowns nothing
    assert load_champion(cfg) is None


def test_a_diverged_model_leaves_the_champion_alone(tmp_path):
    cfg = GateConfig(min={"accuracy": 0.5}, vs_champion=["accuracy"], champion=tmp_path / "champion")
    promote({"accuracy": 0.9}, _model(tmp_path / "first", 1.0), cfg)
    before = (tmp_path / "champion" / "metrics.json").read_bytes()
    verdict = promotion_verdict.fn({"accuracy": float("nan"), "samples": 100}, cfg, load_champion(cfg))
    assert not verdict["promoted"] and verdict["reason"].startswith("metrics not finite: accuracy nan ")
    assert (tmp_path / "champion" / "metrics.json").read_bytes() == before
