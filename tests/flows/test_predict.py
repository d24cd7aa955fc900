"""The predict flow end to end on a small built credit project (examples/credit, 3 epochs), under the
session's Prefect harness: the skew test (predict's output on the test split equals evaluate's
predictions for the same model), bad new data, a folder read in chunks, drift that fails the run."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from flows.augment import augment
from flows.cli import main as cli
from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.predict import main, predict
from flows.repair import repair
from flows.train import train
from flows.validate import validate
from tasks.arrays import to_arrays
from tasks.config import parse_params
from tasks.evaluate import predict as evaluate_predict
from tasks.model_io import load_model
from tests.conftest import ROOT

RAW_TEST = "data/raw/source/test.parquet"


@pytest.fixture(scope="module")
def credit(prefect_harness, tmp_path_factory):
    """examples/credit built in a temporary folder (ingest to evaluate; the first evaluate promotes)."""
    root = tmp_path_factory.mktemp("credit")
    raw = yaml.safe_load((ROOT / "examples/credit/params.yaml").read_text())
    raw["train"]["trainer"].update(max_epochs=3, logger="none", progress_bar=False)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    before = os.getcwd()
    os.chdir(root)
    try:
        for stage in (ingest, validate, repair, augment, train, evaluate):
            stage(params)
        yield params
    finally:
        os.chdir(before)


def _new_rows(n: int = 200) -> pd.DataFrame:
    return pd.read_parquet(RAW_TEST).head(n).drop(columns="Status")


def test_predict_on_the_test_split_equals_evaluate_no_skew(credit):
    network, spec = load_model("models/train")
    test = pd.read_parquet("data/repaired/source/test.parquet")
    x, _ = to_arrays(test, credit.data, spec.classes)
    expected = pd.DataFrame(evaluate_predict.fn(network, x, 512), columns=[f"prob_{c}" for c in spec.classes])
    expected.insert(0, "rownames", test["rownames"].to_numpy())
    expected["predicted"] = np.asarray(spec.classes)[expected.filter(like="prob_").to_numpy().argmax(axis=1)]
    for runtime in ("onnx", "torch"):
        summary = predict(RAW_TEST, output=f"out/{runtime}", runtime=runtime)
        got = pd.read_parquet(f"out/{runtime}/predictions.parquet").set_index("rownames").loc[expected["rownames"]]
        assert (got["predicted"].to_numpy() == expected["predicted"].to_numpy()).all(), runtime
        diff = np.abs(got.filter(like="prob_").to_numpy() - expected.filter(like="prob_").to_numpy()).max()
        assert diff <= 1e-5, (runtime, diff)
        quarantined = pd.read_parquet(f"out/{runtime}/quarantine.parquet")["rownames"]
        assert sorted([*got.index, *quarantined]) == sorted(pd.read_parquet(RAW_TEST)["rownames"])  # every id
        assert summary["unaccounted"] == 0 and summary["rows"] == summary["predicted"] + summary["quarantined"]
        assert "champion" in summary["model"]["why"]
    drift = json.loads(open("out/onnx/drift.json").read())
    assert drift["drifted"] == [] and drift["class_mix"]["value"] < 0.1  # the test split is train's population


def test_bad_new_data_gives_one_line_or_a_quarantine_with_the_reason(credit, tmp_path):
    rows = _new_rows()
    rows["Home"] = rows["Home"].astype("object")
    rows.loc[0, "Home"] = "castle"  # a category train never saw
    rows["Income"] = rows["Income"].astype("object")
    rows.loc[1, "Income"] = "lots"  # text in a numeric column
    rows.to_csv(tmp_path / "messy.csv", index=False)
    summary = predict(str(tmp_path / "messy.csv"), output=str(tmp_path / "messy"))
    quarantine = pd.read_parquet(tmp_path / "messy/quarantine.parquet").set_index("rownames")
    first, second = rows["rownames"].iloc[0], rows["rownames"].iloc[1]
    assert "known category" in quarantine.loc[first, "reason"] and "castle" in quarantine.loc[first, "reason"]
    assert "got text" in quarantine.loc[second, "reason"]
    assert summary["rows"] == 200 and summary["quarantined"] == 2 and summary["unaccounted"] == 0
    assert summary["quarantine_reasons"] == {"Home: known category (seen in train)": 1,
                                             "Income: wrong dtype: expected float, got text": 1}

    lines = {"missing.csv": ("Price", "column 'Price' is missing: the model was trained with it"),
             "extra.csv": (None, "column 'Colour': not declared in validate.schema.columns"),
             "empty.csv": (None, "the file is empty"), "latin1.csv": (None, "not UTF-8 text")}
    _new_rows().drop(columns="Price").to_csv(tmp_path / "missing.csv", index=False)
    _new_rows().assign(Colour="red").to_csv(tmp_path / "extra.csv", index=False)
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "latin1.csv").write_bytes(_new_rows().assign(Home="caf\xe9").to_csv(index=False).encode("latin-1"))
    for name, (_, line) in lines.items():
        state = predict(str(tmp_path / name), output=str(tmp_path / name.split(".")[0]), return_state=True)
        assert state.is_failed() and line in state.message, (name, state.message)
        assert "\n" not in state.message and not (tmp_path / name.split(".")[0] / "predictions.parquet").exists()


def test_a_folder_is_read_in_chunks_and_drift_can_fail_the_run(credit, tmp_path):
    raw = yaml.safe_load(open("params.yaml").read())
    raw["predict"] = {"chunk_rows": 64, "drift": {"fail": True}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    folder = tmp_path / "batch"
    folder.mkdir()
    rows = _new_rows(300)
    rows.iloc[:150].to_csv(folder / "a.csv", index=False)
    shifted = rows.iloc[150:].copy()
    shifted["Amount"] *= 4  # loans four times larger
    shifted.to_parquet(folder / "b.parquet")
    state = predict(str(folder), output=str(tmp_path / "out"), params_file=str(tmp_path / "params.yaml"), return_state=True)
    assert state.is_failed() and "drift in" in state.message and "Amount psi" in state.message
    summary = json.loads((tmp_path / "out/summary.json").read_text())  # every output is written before it fails
    assert summary["rows"] == 300 and summary["chunks"] == 6 and summary["unaccounted"] == 0
    predictions = pd.read_parquet(tmp_path / "out/predictions.parquet")
    assert predictions.groupby("file").size().to_dict() == {"a.csv": 150, "b.parquet": 150}
    assert (tmp_path / "out/drift.png").read_bytes()[:4] == b"\x89PNG"


def test_the_command_line_stops_a_mistake_before_anything_starts(credit, capsys):
    assert main(["no-such-file.csv"]) == 2
    assert capsys.readouterr().err.strip() == "error: predict: no-such-file.csv: input not found"
    assert main([RAW_TEST, "--params", "nope.yaml"]) == 2
    assert "nope.yaml: file not found: run predict in the project's folder" in capsys.readouterr().err
    assert cli(["predict", "no-such-file.csv", "--runtime", "torch"]) == 2  # `trainflow predict` is this command
