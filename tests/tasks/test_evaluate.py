"""Evaluation metrics on inputs small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.config import SliceConfig
from tasks.errors import UserError
from tasks.evaluate import (
    classification_metrics,
    evaluation_markdown,
    headline,
    pr_curve,
    regression_metrics,
    reliability,
    roc_curve,
    slice_metrics,
)
from tasks.figures import curves_png, reliability_png


def test_accuracy_f1_and_one_vs_rest_roc_auc():
    # y = 0 1 1 0; P(class 1) = .3 .8 .2 .6 -> predictions 0 1 0 1: accuracy 0.5.
    # ROC-AUC of class 1: positives {.8, .2} vs negatives {.3, .6}: 2 of 4 pairs ordered -> 0.5;
    # class 0 mirrors it (P(0) = 1 - P(1)), so the macro one-vs-rest AUC is 0.5 too.
    probs = np.array([[.7, .3], [.2, .8], [.8, .2], [.4, .6]], dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    m = classification_metrics.fn(probs, y, ["a", "b"])
    assert m["accuracy"] == 0.5 and m["macro_f1"] == 0.5
    assert m["roc_auc"] == pytest.approx(0.5) and m["per_class"]["b"]["roc_auc"] == pytest.approx(0.5)
    assert m["per_class"]["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "roc_auc": pytest.approx(0.5), "support": 2}


def test_expected_calibration_error_by_hand():
    # confidences .9 .9 .6 .6, all predicting class 0, right 1 of 2 at .9 and 2 of 2 at .6:
    # ECE = 0.5 * |0.5 - 0.9| + 0.5 * |1.0 - 0.6| = 0.4
    probs = np.array([[.9, .1], [.9, .1], [.6, .4], [.6, .4]], dtype=np.float32)
    y = np.array([0, 1, 0, 0])
    assert classification_metrics.fn(probs, y, [0, 1])["ece"] == pytest.approx(0.4, abs=1e-5)
    table = reliability(probs, y, bins=10)
    assert table[["confidence", "accuracy", "count"]].to_numpy().ravel().tolist() == pytest.approx([0.6, 1.0, 2, 0.9, 0.5, 2])
    assert reliability_png(table, 0.4, "t")[:4] == b"\x89PNG"


def test_regression_metrics_by_hand():
    m = regression_metrics.fn(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    # errors 0 0 2: MSE 4/3, MAE 2/3; R2 = 1 - 4 / sum((y - 8/3)^2) = 1 - 4 / (26/3)
    assert m["mse"] == pytest.approx(4 / 3, abs=1e-6) and m["mae"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["r2"] == pytest.approx(1 - 12 / 26, abs=1e-6) and headline(m) == m


def test_curves_run_corner_to_corner_and_perfect_scores_give_a_perfect_curve():
    probs = np.array([[.9, .1], [.1, .9], [.8, .2], [.3, .7]], dtype=np.float32)
    y = np.array([0, 1, 0, 1])
    roc, pr = roc_curve(probs, y), pr_curve(probs, y)
    assert roc["tpr"].iloc[-1] == 1.0 and (np.diff(roc["tpr"]) >= 0).all()
    assert roc["tpr"].iloc[1:].eq(1.0).all()  # every positive scores above every negative
    assert pr["precision"].eq(1.0).all()
    assert curves_png({}, roc, pr, "t")[:4] == b"\x89PNG"


def test_slices_per_column_value_and_per_class():
    probs = np.array([[.9, .1], [.9, .1], [.2, .8], [.2, .8]], dtype=np.float32)  # predicts 0 0 1 1
    y = np.array([0, 1, 1, 1])
    frame = pd.DataFrame({"site": ["a", "a", "b", "b"], "label": [0, 1, 1, 1]})
    rows = slice_metrics.fn(probs, y, frame, [SliceConfig(column="site"), SliceConfig(column="label", values=[1, 7])], [0, 1])
    by = {r["slice"]: r for r in rows}
    assert by["site=a"]["accuracy"] == 0.5 and by["site=b"]["accuracy"] == 1.0
    assert by["label=1"]["accuracy"] == pytest.approx(2 / 3, abs=1e-6) and by["label=7"]["rows"] == 0
    with pytest.raises(UserError, match="column 'region'"):
        slice_metrics.fn(probs, y, frame, [SliceConfig(column="region")], [0, 1])
    assert "| site=a | 2 | 0.500 |" in evaluation_markdown(classification_metrics.fn(probs, y, [0, 1]), {}, "m", rows, None)


def test_a_model_that_outputs_nan_scores_nan_not_a_plausible_accuracy():
    # torchmetrics ranks a NaN row as class 0: here that would be a 0.5 accuracy from a model that predicts nothing
    probs = np.array([[np.nan, np.nan], [.2, .8], [.8, .2], [.4, .6]], dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    m = classification_metrics.fn(probs, y, ["a", "b"])
    assert m["nonfinite_rows"] == 1 and m["samples"] == 4
    assert all(np.isnan(m[k]) for k in ("accuracy", "macro_f1", "roc_auc", "ece"))
    assert np.isnan(m["per_class"]["a"]["f1"]) and m["per_class"]["a"]["support"] == 2
    rows = slice_metrics.fn(probs, y, pd.DataFrame({"g": ["x", "x", "y", "y"]}), [SliceConfig(column="g")], ["a", "b"])
    assert np.isnan(rows[0]["accuracy"]) and rows[1]["accuracy"] == 0.0  # only the slice holding the NaN row
    report = evaluation_markdown(m, {}, "models/train", rows, None)  # the report says nan rather than crashing
    assert "| accuracy | nan |" in report and "| nonfinite_rows | 1 |" in report
    assert curves_png({}, roc_curve(probs, y), pr_curve(probs, y), "t")[:4] == b"\x89PNG"
    regression = regression_metrics.fn(np.array([1.0, np.inf, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert regression["nonfinite_rows"] == 1 and regression["mse"] == np.inf
    assert "nonfinite_rows" not in classification_metrics.fn(probs[1:], y[1:], ["a", "b"])  # a sound model's metrics as before


def test_run_scores_a_model_against_its_baseline_and_gates_it(params):
    import torch

    import tasks.evaluate
    from tasks.frames import images_to_frame
    from tasks.model_io import ModelSpec

    spec = ModelSpec({"kind": "mlp", "hidden": 8, "depth": 1, "dropout": 0.0}, (1, 8, 8), [0, 1], {"trained_on": "target"})
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    test = images_to_frame(rng.random((20, 1, 8, 8), dtype=np.float32), np.arange(20) % 2, params.data)
    data = tasks.evaluate.EvaluateData(spec.build().eval(), spec, test, "models/finetune", "abc", spec.build().eval(), None)
    result = tasks.evaluate.run(params, data)
    assert result.scores["samples"] == 20 and "gain_accuracy" in result.scores and "scratch_accuracy" in result.scores
    assert result.verdict["weights_sha256"] == "abc" and result.verdict["metrics"] == result.scores
    assert set(result.plots) == {"confusion", "roc", "pr", "calibration"} and result.figures["curves"][:4] == b"\x89PNG"
    assert result.markdown.startswith("#") and result.details["slices"]
