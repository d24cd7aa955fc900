"""prefect.yaml's `predict` deployment run by a worker against a real `prefect server` (started here, auth
on), in a fresh copy of the repository on the shrunk config: the pipeline is built up to evaluate with
`dvc repro`, `make deploy` and `make worker` start, then a predict run scores the target's raw test
split and its artifacts are on the server; a run with a missing input fails with its one line."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from tests.e2e.test_deployment import AUTH, api, client_env, make, make_repo, start_server, stop, stop_warm, wait_for_run

pytestmark = pytest.mark.slow  # a server, the shrunk pipeline to evaluate, a worker: about 3 minutes on 2 cores


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict-deploy")
    root = make_repo(tmp / "repo")
    server, url = start_server(tmp / "server-home", client_env(root, ""), auth=AUTH)
    env = client_env(root, url, auth=AUTH)
    worker = None
    try:
        built = subprocess.run(["dvc", "repro", "evaluate"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        done = make(root, "deploy", env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = done.communicate(timeout=300)
        assert done.returncode == 0, out[-3000:]
        worker = make(root, "worker", env, stdout=open(tmp / "worker.log", "wb"), stderr=subprocess.STDOUT,
                      start_new_session=True)
        yield root, url, tmp / "worker.log"
    finally:
        if worker:
            stop(worker)
        stop_warm(root)
        stop(server)


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
