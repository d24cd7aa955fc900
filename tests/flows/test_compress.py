"""The compress flow once, in-process under the session's Prefect harness, on the 8x8 digits.

Its inputs (a briefly trained CNN and the target splits) are made here directly, so the test
does not pay for the six upstream flows (tests/flows/test_stages.py runs those)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits

from flows.compress import compress
from tasks.config import parse_params
from tasks.export import load_compressed, onnx_logits, onnx_session, torch_logits
from tasks.frames import features_array, images_to_frame
from tasks.io import save_frame
from tasks.model_io import ModelSpec, save_model
from tests.conftest import shrunk_params_dict

CLASSES = [5, 6, 7, 8, 9]


def _params(**compress):
    raw = shrunk_params_dict()
    raw["compress"] = {
        "quantize": {"dynamic": True, "static": True, "calibration_rows": 128},
        "prune": [{"amount": 0.5, "scope": "global", "structure": "unstructured", "finetune_epochs": 1}],
        "prune_trainer": {"batch_size": 64, "accelerator": "cpu", "num_threads": 1},
        "distill": {"student": {"kind": "cnn", "widths": [4, 8], "hidden": 8, "dropout": 0.0},
                    "trainer": {"max_epochs": 2, "batch_size": 64, "accelerator": "cpu", "num_threads": 1}},
        "budgets": {"max_accuracy_drop": 10.0, "min_size_reduction": 1.5},
        "latency": {"batch_sizes": [1, 16], "budget_batch": 16, "warmup": 1, "repeats": 5},
        **compress,
    }
    return parse_params(raw)


def _make_inputs(project, params) -> None:
    """Target splits of the 8x8 digits 5-9 and a CNN trained on them for a few hundred steps."""
    digits = load_digits()
    keep = np.isin(digits.target, CLASSES)
    frame = images_to_frame(digits.images[keep].astype(np.float32), digits.target[keep], params.data)
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    test, val, pool = frame[:200], frame[200:300], frame[300:]
    save_frame(test, project / "data/repaired/target/test.parquet")
    save_frame(val, project / "data/repaired/target/val.parquet")
    save_frame(pool, project / "data/augmented/target/train.parquet")
    # finetune's declared output: the rows whose labels it used (5 a class)
    save_frame(pool.groupby(params.data.label).head(5)[[params.data.id]], project / "data/finetune/labelled_ids.parquet")

    torch.manual_seed(0)
    spec = ModelSpec({"kind": "cnn", "widths": [8, 16], "hidden": 32, "dropout": 0.0}, (1, 8, 8), CLASSES,
                     {"trained_on": "target"})
    network = spec.build()
    x = torch.as_tensor(features_array(pool, params.data))
    y = torch.as_tensor(pool["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy().copy())
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    for _ in range(150):
        batch = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(network(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_model(network.state_dict(), spec, project / "models/finetune")


@pytest.mark.slow  # five candidates, two short fits, an ONNX export: about a minute on 2 cores
def test_compress_flow_measures_chooses_and_exports(prefect_harness, project):
    params = _params()
    _make_inputs(project, params)
    metrics = compress(params)

    out, reports = project / "models/compressed", project / "reports/compress"
    assert json.loads((reports / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    table = json.loads((reports / "candidates.json").read_text())
    names = [row["name"] for row in table["candidates"]]
    assert names == ["original", "dynamic_int8", "static_int8", "prune_global_unstructured_50", "distill"]
    assert metrics["chosen"] in names and metrics["chosen"] != "original"  # something fits these loose budgets
    rows = {row["name"]: row for row in table["candidates"]}
    assert rows["prune_global_unstructured_50"]["nonzero_parameters"] < rows["original"]["nonzero_parameters"]
    assert rows["distill"]["parameters"] < rows["original"]["parameters"] / 4
    assert all(row["verdict"] for row in table["candidates"])

    # The exported model loads back and ONNX agrees with it on the test split.
    model, spec = load_compressed(out)
    test = features_array(pd.read_parquet(project / "data/repaired/target/test.parquet"), params.data)
    reference = torch_logits(model, test)
    shipped = onnx_logits(onnx_session((out / "model.onnx").read_bytes()), test)
    if table["onnx"]["shipped"] == "fp32":
        np.testing.assert_allclose(shipped, reference, atol=1e-3)
    else:  # onnxruntime int8 against torch int8: argmax agreement, as the stage checked
        assert (shipped.argmax(1) == reference.argmax(1)).mean() >= params.compress.onnx.min_quantized_agreement
    assert metrics["accuracy_after"] == pytest.approx(rows[metrics["chosen"]]["accuracy"])

    card = (out / "MODEL_CARD.md").read_text()
    digest = hashlib.md5((project / "data/repaired/target/test.parquet").read_bytes()).hexdigest()
    assert digest in card and f"**Chosen:** `{metrics['chosen']}`" in card and "## Budgets" in card

    from prefect.artifacts import Artifact

    assert Artifact.get("compression") is not None and Artifact.get("model-card") is not None


def test_no_candidate_within_budget_fails_with_the_missed_budgets(prefect_harness, project):
    params = _params(quantize={"dynamic": True, "static": False}, prune=[], distill=None, on_miss="fail",
                     budgets={"max_accuracy_drop": 1.0, "min_size_reduction": 50.0})
    _make_inputs(project, params)
    state = compress(params, return_state=True)
    assert state.is_failed()
    assert "no candidate met every budget" in state.message and "dynamic_int8: size reduction" in state.message
    assert not (project / "models/compressed").exists()
