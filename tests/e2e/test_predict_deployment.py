"""prefect.yaml's `predict` deployment run by a worker against a real `prefect server` (started here, auth
on), in a fresh copy of the repository on the shrunk config: the pipeline is built up to evaluate with
`dvc repro`, `make deploy` and `make worker` start, then a predict run scores the target's raw test
split and its artifacts are on the server; a run with a missing input fails with its one line."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.e2e.test_deployment import api, deployment, wait_for_run

pytestmark = pytest.mark.slow  # a server, the shrunk pipeline to evaluate, a worker: about 3 minutes on 2 cores


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    # predict reads evaluate's model and the fitted repairer: the stages up to evaluate built first
    with deployment(tmp_path_factory.mktemp("predict-deploy"), build=["dvc", "repro", "evaluate"]) as (root, url, _, log):
        yield root, url, log


def _run(url: str, parameters: dict) -> dict:
    deployment = api(url, "/deployments/name/predict/predict")
    run = api(url, f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters})
    return wait_for_run(url, run["id"], timeout=300)


def test_the_predict_deployment_scores_a_file_and_publishes_its_artifacts(deployed):
    root, url, worker_log = deployed
    run = _run(url, {"path": "data/raw/target/test.parquet", "output": "data/predict/deployed"})
    assert run["state"]["type"] == "COMPLETED", run["state"]["message"] + worker_log.read_text()[-3000:]
    artifacts = api(url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    keys = {a["key"] for a in artifacts}
    assert {"predict-report", "drift", "drift-plot", "predict-progress"} <= keys, keys
    report = next(a for a in artifacts if a["key"] == "predict-report")["data"]
    assert "# Predictions" in report and "0 unaccounted" in report
    predictions = pd.read_parquet(root / "data/predict/deployed/predictions.parquet")  # in this checkout
    rows = len(pd.read_parquet(root / "data/raw/target/test.parquet"))
    quarantined = len(pd.read_parquet(root / "data/predict/deployed/quarantine.parquet"))
    assert len(predictions) + quarantined == rows and set(predictions["predicted"]) <= {5, 6, 7, 8, 9}


def test_a_predict_run_with_a_missing_input_fails_with_one_line(deployed):
    _, url, _ = deployed
    run = _run(url, {"path": "no-such-folder"})
    assert run["state"]["type"] == "FAILED" and run["state"]["message"] == "no-such-folder: input not found"
