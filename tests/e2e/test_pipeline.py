"""The whole pipeline through `dvc repro` in a fresh copy of the repo, on a shrunk config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_repo, free_port, shrunk_params_dict

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = copy_repo(tmp_path_factory.mktemp("repo"))
    (root / "params.yaml").write_text(yaml.safe_dump(shrunk_params_dict(), sort_keys=False))
    (root / "dvc.lock").unlink(missing_ok=True)
    env = _env(root)
    commit = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], commit):
        subprocess.run(cmd, cwd=root, check=True, env=env)
    yield root
    subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=root, env=env, capture_output=True)
    subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=root, env=env, capture_output=True)


def _env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TRAINFLOW_"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", PREFECT_HOME=str(root / ".prefect"),
               TRAINFLOW_PREFECT_HOME=str(root.parent / "prefect-server"),
               TRAINFLOW_PREFECT_PORT=str(free_port()),
               TRAINFLOW_PREFECT_IDLE_S="120", TRAINFLOW_WARM_IDLE="120", DVC_NO_ANALYTICS="1")
    return env


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["dvc", *args], cwd=root, env=_env(root), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_repro_builds_every_stage_and_reports_metrics(repo):
    out = _dvc(repo, "repro").stdout
    for stage in ("ingest", "validate", "repair", "augment", "train", "finetune", "evaluate", "compress", "predict"):
        assert f"Running stage '{stage}'" in out
    metrics = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert {"accuracy", "macro_f1", "scratch_accuracy"} <= set(metrics)
    shown = _dvc(repo, "metrics", "show").stdout
    assert "reports/evaluate/metrics.json" in shown and "macro_f1" in shown
    assert list((repo.parent / "prefect-server").glob("*.db")), "the runs are recorded in the shared server's database"


def test_second_repro_is_up_to_date(repo):
    start = time.monotonic()
    out = _dvc(repo, "repro").stdout
    assert "Data and pipelines are up to date." in out
    assert time.monotonic() - start < 10  # generous for CI; the README's figure is measured by hand


def test_changing_finetune_params_reruns_only_finetune_evaluate_compress_and_predict(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["finetune"]["labels_per_class"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc(repo, "repro").stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    # compress reads models/finetune and finetune's labels; predict scores with the compressed model
    assert ran == {"finetune", "evaluate", "compress", "predict"}
