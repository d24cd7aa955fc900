"""The retrain flow against a DVC S3 remote served by moto on 127.0.0.1, under the session's
Prefect harness, in a fresh copy of the repo on the shrunk config: a first run with nothing to
pull builds, promotes and pushes; a model the gate rejects is not pushed; pull/push are retried
when the remote is down; a missing remote fails once, with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.retrain import retrain
from tests.conftest import free_port
from tests.e2e.test_deployment import make_repo, stop_warm

pytestmark = pytest.mark.slow  # one whole pipeline and a moto server: about 4 minutes on 2 cores
BUCKET = "trainflow-models"
KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}
# Hydra merges a dict override into the existing one (as `dvc exp run -S` does): set each bound.
OPEN_GATE = ["evaluate.gate.min.accuracy=0", "evaluate.gate.min.macro_f1=0", "evaluate.gate.max.ece=1",
             "evaluate.gate.vs_champion=[]"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    port = free_port()
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(endpoint, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=KEYS["access_key_id"], aws_secret_access_key=KEYS["secret_access_key"])
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client, server
    server.kill()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, s3):
    endpoint, _, _ = s3
    root = make_repo(tmp_path_factory.mktemp("remote") / "repo")

    def dvc(*args):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True, capture_output=True)

    dvc("remote", "add", "-d", "s3remote", f"s3://{BUCKET}/trainflow")
    dvc("remote", "modify", "s3remote", "endpointurl", endpoint)
    for key, value in KEYS.items():  # credentials in .dvc/config.local, never in git
        dvc("remote", "modify", "--local", "s3remote", key, value)
    yield root
    stop_warm(root)


@pytest.fixture
def in_repo(repo, monkeypatch):
    monkeypatch.chdir(repo)
    return repo


def _objects(client) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def _task_runs(state) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    return {run.name: run for run in runs}


def test_a_missing_remote_fails_once_with_one_line(tmp_path, monkeypatch, prefect_harness):
    root = make_repo(tmp_path / "repo")
    monkeypatch.chdir(root)
    state = retrain(return_state=True)
    assert state.is_failed() and "no DVC remote" in state.message and "\n" not in state.message
    (run,) = _task_runs(state).values()
    assert run.run_count == 1  # a configuration mistake is not retried


def test_first_run_pulls_nothing_builds_promotes_and_pushes_to_s3(in_repo, s3, prefect_harness):
    _, client, _ = s3
    assert _objects(client) == set()
    state = retrain(overrides=OPEN_GATE, retry_base_s=0.5, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["promoted"] and result["pushed"] and result["remote"] == "s3remote"
    assert set(result["stages"].values()) == {"ran"}
    gate = json.loads((in_repo / "reports/evaluate/gate.json").read_text())
    assert gate["promoted"] is True
    # The promoted model's directory listing (and so its files) is now in the bucket, content-addressed.
    lock = yaml.safe_load((in_repo / "dvc.lock").read_text())
    (model,) = [out for out in lock["stages"]["finetune"]["outs"] if out["path"] == "models/finetune"]
    objects = _objects(client)
    assert objects and all(key.startswith("trainflow/files/md5/") for key in objects)
    assert f"trainflow/files/md5/{model['md5'][:2]}/{model['md5'][2:]}" in objects
    from prefect.artifacts import Artifact

    summary = Artifact.get("retrain-summary")
    assert summary and "promoted and pushed" in summary.data


def test_a_rejected_model_is_not_pushed(in_repo, s3, prefect_harness):
    _, client, _ = s3
    before = _objects(client)
    state = retrain(overrides=["evaluate.gate.min={accuracy: 1.01}"], retry_base_s=0.5, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert not result["promoted"] and not result["pushed"]
    assert result["stages"]["evaluate"] == "ran" and result["stages"]["train"] == "skipped"
    runs = _task_runs(state)
    assert sum(name.startswith("dvc_transfer") for name in runs) == 1  # the pull only
    assert _objects(client) == before


def test_pull_is_retried_with_backoff_when_the_remote_is_down(in_repo, s3, prefect_harness):
    _, _, server = s3
    server.kill()
    server.wait(timeout=10)
    state = retrain(retry_base_s=0.2, return_state=True)
    assert state.is_failed() and "dvc pull" in state.message
    runs = _task_runs(state)
    pulls = [run for name, run in runs.items() if name.startswith("dvc_transfer")]
    assert [run.run_count for run in pulls] == [4]  # the first try and three retries
    assert not any(name.startswith("pipeline") for name in runs)  # nothing was rebuilt
