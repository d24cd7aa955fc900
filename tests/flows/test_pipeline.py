"""The pipeline flow under the session's Prefect harness, in a fresh copy of the repo (shrunk
params): DVC's DAG and order, overrides checked before anything runs, stale stages run and
up-to-date ones skipped with the reason, stage logs in the run, and a cancel during training
that leaves no process behind and lets the next run finish."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from flows import pipeline as pipeline_module
from flows.pipeline import apply_overrides, pipeline, pipeline_lock, stages_upstream_of
from tasks.errors import UserError
from tests.conftest import ROOT, copy_repo, shrunk_params_dict


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    (root / "params.yaml").write_text(yaml.safe_dump(shrunk_params_dict(), sort_keys=False))
    (root / "dvc.lock").unlink(missing_ok=True)
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(root / ".dvc" / "tmp", ignore_errors=True)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True)
    yield root
    # The copy's warm stage runner (flows/_warm.py) would otherwise idle on for 10 minutes.
    subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=root, capture_output=True, timeout=60)


@pytest.fixture
def in_repo(repo, monkeypatch) -> Path:
    monkeypatch.chdir(repo)
    return repo


def _task_runs(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.state for run in runs}


def _logs(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    time.sleep(2.5)  # Prefect ships logs in batches (every 2 s)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return "\n".join(log.message for log in logs)


def test_the_plan_is_dvcs_own(in_repo):
    declared = list(yaml.safe_load((in_repo / "dvc.yaml").read_text())["stages"])
    assert sorted(stages_upstream_of()) == sorted(declared) and stages_upstream_of()[0] == "ingest"
    assert stages_upstream_of(["train"]) == ["ingest", "validate", "repair", "augment", "train"]
    # A stage added to dvc.yaml shows up with no change to the flow: nothing is restated.
    original = (in_repo / "dvc.yaml").read_text()
    try:
        dvc_yaml = yaml.safe_load(original)
        dvc_yaml["stages"]["summary"] = {"cmd": "cat reports/validate/report.md", "deps": ["reports/validate/report.md"]}
        (in_repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
        assert stages_upstream_of(["summary"]) == ["ingest", "validate", "summary"]
    finally:
        (in_repo / "dvc.yaml").write_text(original)
    with pytest.raises(UserError, match="no_such_stage"):
        stages_upstream_of(["no_such_stage"])


def test_overrides_apply_like_dvc_exp_run_and_keep_comments(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copyfile(ROOT / "params.yaml", params)
    apply_overrides(["train.optimizer.lr=0.01", "finetune.labels_per_class=3"], params)
    text = params.read_text()
    assert "# fail the stage if more rows than this are quarantined" in text  # comments survive, as with -S
    raw = yaml.safe_load(text)
    assert raw["train"]["optimizer"]["lr"] == 0.01 and raw["finetune"]["labels_per_class"] == 3
    assert not list(tmp_path.glob(".params*"))


@pytest.mark.parametrize(("override", "expected"), [
    ("train.optimiser.lr=1", "train.optimiser"),  # no such key: DVC's (Hydra's) struct check
    ("train.optimizer.lr=-1", "train.optimizer.lr: got -1; input should be greater than 0"),  # tasks/config.py
    ("finetune.strategy=freeze_all", "finetune.strategy: got 'freeze_all'"),
])
def test_a_bad_override_fails_before_any_stage(in_repo, prefect_harness, override, expected):
    params, lock = (in_repo / "params.yaml").read_bytes(), (in_repo / "dvc.lock").exists()
    state = pipeline(overrides=[override], return_state=True)
    assert state.is_failed() and expected in state.message and "\n" not in state.message
    assert (in_repo / "params.yaml").read_bytes() == params and (in_repo / "dvc.lock").exists() == lock
    assert _task_runs(state.state_details.flow_run_id) == {}


def test_a_second_pipeline_in_the_checkout_waits_once_then_runs(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    held, order, said = threading.Event(), [], []

    def first() -> None:
        with pipeline_lock("'first' (1), pid 1"):
            held.set()
            time.sleep(1.0)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(5)
    with pipeline_lock("'second' (2), pid 2", wait_s=30, log=said.append, poll_s=0.05):
        order.append("second runs")
    thread.join()
    assert order == ["first done", "second runs"]  # never both at once
    assert said == ["waiting for the pipeline run 'first' (1), pid 1 in this checkout"]  # once, not every poll
    assert (tmp_path / ".dvc" / "tmp" / "trainflow-pipeline.lock").read_text() == "'second' (2), pid 2\n"


def test_a_pipeline_run_is_refused_after_the_wait_and_changes_nothing(in_repo, prefect_harness, monkeypatch):
    params = (in_repo / "params.yaml").read_bytes()
    monkeypatch.setattr(pipeline_module, "PIPELINE_WAIT_S", 0.5)
    # Held by another process, as a run served by a second worker would hold it.
    holder = subprocess.Popen([sys.executable, "-c", "import time; from flows.pipeline import pipeline_lock\n"
                               "with pipeline_lock(\"'other' (abc), pid 1\"):\n print('held', flush=True); time.sleep(60)"],
                              cwd=in_repo, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        state = pipeline(targets=["ingest"], overrides=["train.seed=7"], return_state=True)
    finally:
        holder.kill()
        holder.wait()
    assert state.is_failed() and "\n" not in state.message, state.message
    assert "the pipeline run 'other' (abc), pid 1 still runs in this checkout" in state.message
    assert "waiting for the pipeline run 'other' (abc), pid 1 in this checkout" in _logs(state.state_details.flow_run_id)
    assert (in_repo / "params.yaml").read_bytes() == params  # no override applied under another run
    assert _task_runs(state.state_details.flow_run_id) == {}


@pytest.mark.slow  # three stage processes: about a minute on 2 cores
def test_stale_stages_run_and_up_to_date_ones_are_skipped(in_repo, prefect_harness):
    first = pipeline(targets=["validate"], return_state=True)
    assert first.is_completed(), first.message
    assert [r["outcome"] for r in first.result()] == ["ran", "ran"]
    runs = _task_runs(first.state_details.flow_run_id)
    assert {name: s.name for name, s in runs.items()} == {"ingest": "Completed", "validate": "Completed"}
    logs = _logs(first.state_details.flow_run_id)
    assert "Running stage 'validate'" in logs and "validated: 1797 rows valid" in logs  # the stage's own output

    second = pipeline(targets=["validate"], overrides=["validate.min_rows=5"], return_state=True)
    assert second.is_completed(), second.message
    runs = _task_runs(second.state_details.flow_run_id)
    assert runs["ingest"].name == "Skipped" and "up to date" in runs["ingest"].message
    # DVC names the change at the granularity dvc.yaml declares (the whole `validate` section).
    assert runs["validate"].name == "Completed" and "params.yaml: validate modified" in runs["validate"].message
    assert yaml.safe_load((in_repo / "params.yaml").read_text())["validate"]["min_rows"] == 5


def _repo_processes(root: Path, exclude: set[int]) -> list[psutil.Process]:
    """Processes working in `root`, but for the long-lived servers (Prefect's, the warm runner's)."""
    warm = root / ".prefect" / "warm.pid"
    exclude = exclude | {os.getpid()} | ({int(warm.read_text().split()[0])} if warm.exists() else set())
    found = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.pid not in exclude and proc.info["cwd"] and Path(proc.info["cwd"]).is_relative_to(root):
            if "flows._server" not in cmdline and "prefect server" not in cmdline:
                found.append(proc)
    return found


@pytest.mark.slow  # repair, augment and two trainings on 2 cores: about 2 minutes
def test_cancelling_during_training_stops_every_process_and_the_next_run_finishes(in_repo, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import get_current_settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_API_URL"] = get_current_settings().api.url
    # ddp_spawn with two devices: Lightning starts worker processes that the cancel must stop too.
    long_training = ["-S", "train.trainer.max_epochs=1000", "-S", "train.trainer.strategy=ddp_spawn",
                     "-S", "train.trainer.devices=2", "-S", "train.trainer.progress_bar=false"]
    started = time.time()
    client_process = subprocess.Popen([sys.executable, "-m", "flows.pipeline", "train", *long_training], cwd=in_repo,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 400
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and client_process.poll() is None:
            # Lightning's ddp_spawn workers (children of the stage, or of its warm fork).
            workers = [p for p in _repo_processes(in_repo, {client_process.pid})
                       if "spawn_main" in " ".join(p.info["cmdline"] or [])]
            if workers:
                break
            time.sleep(1)
        assert workers, "training never started its worker processes:\n" + (
            client_process.stdout.read() if client_process.poll() is not None else "")
        time.sleep(3)
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])),
                                         flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
            run = max((r for r in runs if r.start_time and r.start_time.timestamp() >= started - 5), key=lambda r: r.start_time)
        cancelled_at = time.monotonic()
        subprocess.run([sys.executable, "-m", "prefect", "flow-run", "cancel", str(run.id)],
                       env=env, check=True, capture_output=True)
        output, _ = client_process.communicate(timeout=90)
        assert time.monotonic() - cancelled_at < 60
    finally:
        if client_process.poll() is None:
            client_process.kill()
    assert client_process.returncode == 1 and "cancelled" in output, output[-2000:]
    psutil.wait_procs(workers, timeout=10)
    left = [(p.pid, " ".join(p.info["cmdline"] or [])[:200]) for p in _repo_processes(in_repo, set()) if p.is_running()]
    assert left == [], f"processes left behind after the cancel: {left}"
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.is_cancelled()
    assert not (in_repo / "models" / "train" / "model.json").exists()  # nothing half-made recorded as done

    # The next run starts cleanly: no stale DVC lock, and train runs (its stale reason is the param change).
    state = pipeline(targets=["train"], overrides=["train.trainer.max_epochs=1", "train.trainer.strategy=auto",
                                                   "train.trainer.devices=auto"], return_state=True)
    assert state.is_completed(), state.message
    assert (in_repo / "models" / "train" / "model.safetensors").exists()
    assert [r["outcome"] for r in state.result()][-1] == "ran"


@pytest.mark.slow  # two Dask worker processes: about 40 s on 2 cores
def test_shards_validate_in_parallel_on_a_dask_cluster(tmp_path, params, prefect_harness):
    import numpy as np
    import pandas as pd
    from prefect_dask import DaskTaskRunner
    from sklearn.datasets import load_digits

    from flows.shards import validate_shards
    from tasks.validate import validate_split

    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"px_{i:04d}" for i in range(64)])
    frame.insert(0, "id", np.arange(len(frame)))
    frame.insert(1, "label", digits.target)
    frame.loc[[3, 700, 1300], "px_0010"] = 99.0  # outside data.pixel_range: one bad row in each of 3 shards of 599
    path = tmp_path / "digits.parquet"
    frame.to_parquet(path)
    cluster = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    runner = DaskTaskRunner(cluster_kwargs=cluster)
    state = validate_shards.with_options(task_runner=runner)(params, str(path), 3, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    _, _, whole = validate_split.fn(frame, params.data, list(range(10)), params.validate_)
    assert result["total"] == {"shard": "total", "rows": 1797, "valid": whole.valid, "quarantined": whole.quarantined}
    assert whole.quarantined == 3 and [s["quarantined"] for s in result["shards"]] == [1, 1, 1]
    assert np.isclose(sum(result["class_counts"].values()), whole.valid)
