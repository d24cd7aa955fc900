"""Faults a run must survive without leaving processes behind.

- `kill -9` of `dvc repro` in the middle of training: the stage goes with it (warm or cold), and a
  rerun resumes the checkpoints and ends with the weights of a run that was never interrupted.
- A second stage in the same checkout, while one runs: one line, exit 1, and nothing else happens.
- `kill -9` of `dvc repro` as any other stage starts: nothing is left behind, and the rerun completes.
- `kill -9` of the Prefect server (and its watchdog) during train: the stage fails with a reason,
  dvc.lock records nothing of it, the next `dvc repro` starts a new server and completes, and the
  interrupted stage's flow run ends Crashed on it (same database).
- `kill -9` of a worker during an on-demand run: the flow run ends Crashed, its stage goes with it,
  dvc.lock records nothing of the stage, and a new worker's run completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
import yaml

from flows._stage import checkout_lock
from tests.conftest import ROOT, copy_repo, free_port, shrunk_params_dict
from tests.e2e import test_deployment as deploy

BIN = Path(sys.executable).parent
EPOCHS = 100  # 0.1-0.6 s an epoch: time to kill it, and to ask a second stage (3 s) meanwhile, on an idle machine too


def _refusal(stage: str, holder: str, pid: int) -> str:
    return f"error: {stage}: another stage is running in this checkout ({holder}, pid {pid}): wait for it or stop it"


# ------------------------------------------------------------------------ the stage lock
def test_a_second_stage_in_the_same_checkout_refuses_in_one_line(tmp_path):
    (tmp_path / ".dvc").mkdir()  # a DVC project: no params.yaml needed, the lock comes first
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from flows._stage import checkout_lock\n"
        "with checkout_lock('train'):\n    print('held', flush=True); time.sleep(120)")],
        cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        second = subprocess.run([sys.executable, "-m", "flows.validate"], cwd=tmp_path, capture_output=True, text=True,
                                env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "TRAINFLOW_WARM": "0",
                                     "PREFECT_API_URL": "http://127.0.0.1:9/api"}, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 1
    assert second.stderr.splitlines() == [_refusal("validate", "train", holder.pid)], second.stderr
    assert second.stdout == "" and not (tmp_path / "reports").exists()


def test_the_lock_is_free_again_as_soon_as_a_stage_ends(tmp_path, monkeypatch):
    """Sequential stages (flows/pipeline.py runs one `dvc repro -s` after another) never wait."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".dvc").mkdir()
    start = time.monotonic()
    for stage in ("ingest", "validate", "repair"):
        with checkout_lock(stage, wait_s=0):
            pass
    assert time.monotonic() - start < 0.5


def test_a_stage_in_a_subfolder_takes_the_checkouts_lock(tmp_path, monkeypatch, capsys):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "examples" / "credit").mkdir(parents=True)  # where examples/credit/dvc.yaml's stages run
    monkeypatch.chdir(tmp_path)
    with checkout_lock("train"):
        monkeypatch.chdir(tmp_path / "examples" / "credit")
        with pytest.raises(SystemExit) as stopped, checkout_lock("evaluate", wait_s=0):
            pass
    assert stopped.value.code == 1
    assert capsys.readouterr().err == _refusal("evaluate", "train", os.getpid()) + "\n"


def test_a_stage_that_was_killed_left_no_lock(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    held = subprocess.Popen([sys.executable, "-c", (
        "import os, signal; from flows._stage import checkout_lock\n"
        "with checkout_lock('train'):\n    os.kill(os.getpid(), signal.SIGKILL)")], cwd=tmp_path)
    assert held.wait(timeout=60) == -signal.SIGKILL
    monkeypatch.chdir(tmp_path)
    with checkout_lock("train", wait_s=0):
        pass


# --------------------------------------------------------------------------- kill -9 of dvc
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh clone on the shrunk config with the stages up to augment already run."""
    root = copy_repo(tmp_path_factory.mktemp("faults"))
    params = shrunk_params_dict()
    params["train"]["trainer"].update(max_epochs=EPOCHS, progress_bar=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.lock").unlink(missing_ok=True)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True, env=_env(root))
    assert _dvc(root, "repro", "augment").returncode == 0
    yield root
    subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=root, env=_env(root), capture_output=True)
    subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=root, env=_env(root), capture_output=True)
    for process in _stages(root):
        process.kill()


def _env(root: Path, **extra: str) -> dict:
    # No SHELL: dvc then runs the stage through /bin/sh (dash on Debian), which does not exec it and
    # outlives a killed dvc: the harder case (bash, with SHELL set, execs the stage).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TRAINFLOW_")) and k != "SHELL"}
    # The server's home (flows/_server.py): the test's own, never the user's ~/.trainflow/prefect.
    env.update(PATH=f"{BIN}:{env['PATH']}", PREFECT_HOME=str(root / ".prefect"), TRAINFLOW_PREFECT_HOME=str(_server_home(root)),
               TRAINFLOW_PREFECT_PORT=str(free_port()),
               TRAINFLOW_PREFECT_IDLE_S="120", TRAINFLOW_WARM_IDLE="120", DVC_NO_ANALYTICS="1", **extra)
    return env


def _server_home(root: Path) -> Path:
    return root.parent / "prefect-server"


def _server_state(root: Path) -> dict | None:
    """server.json of the server a stage here uses (under TRAINFLOW_PREFECT_HOME), None if there is none."""
    try:
        return json.loads((_server_home(root) / "server.json").read_text())
    except (OSError, ValueError):
        return None


def _dvc(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["dvc", *args], cwd=root, env=_env(root, **env), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _helpers(root: Path) -> set[int]:
    """The long-lived helpers a run starts: the warm server, the Prefect server and its watchdog."""
    pids = set()
    try:
        pids.add(int((root / ".prefect" / "warm.pid").read_text()))
    except (OSError, ValueError):
        pass
    try:
        watchdog = psutil.Process(int(_server_state(root)["pid"]))
        pids |= {watchdog.pid, *(p.pid for p in watchdog.children(recursive=True))}
    except (ValueError, KeyError, TypeError, psutil.NoSuchProcess):
        pass
    return pids


def _stages(root: Path) -> list[psutil.Process]:
    """Live processes working in `root` other than the helpers: a stage, its client, dvc."""
    helpers, found = _helpers(root), []
    for process in psutil.process_iter():
        try:
            if (process.pid not in helpers and process.cwd() == str(root)
                    and process.status() != psutil.STATUS_ZOMBIE):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _weights(root: Path) -> str:
    return hashlib.sha256((root / "models" / "train" / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("warm", ["1", "0"], ids=["warm", "cold"])
def test_kill_9_of_dvc_repro_during_train_leaves_no_stage_and_the_rerun_completes(project, warm):
    shutil.rmtree(project / "checkpoints", ignore_errors=True)
    log = (project.parent / f"killed-{warm}.log").open("w+")
    dvc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "train"], cwd=project,
                           env=_env(project, TRAINFLOW_WARM=warm), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list(project.glob("checkpoints/train/*/last.ckpt")):  # an epoch is done
        assert dvc.poll() is None, log.seek(0) or log.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    running = [p for p in _stages(project) if p.pid != dvc.pid]
    assert running, "no stage process found"

    if warm == "1":  # meanwhile, a second stage in this checkout: refused in one line (warm: ~1 s)
        stage = next(p for p in running if p.ppid() in _helpers(project))  # the warm server's fork
        second = subprocess.run(["python3", "-m", "flows.train"], cwd=project, env=_env(project), capture_output=True,
                                text=True, timeout=120)
        assert (second.returncode, second.stderr.splitlines()) == (1, [_refusal("train", "train", stage.pid)])

    dvc.kill()  # kill -9, as a user's `kill -9 <dvc pid>` or an OOM killer would
    dvc.wait()
    assert not list(project.glob("checkpoints/train/*/complete")), "training ended before the kill: raise EPOCHS"
    start = time.monotonic()
    left = [p for p in psutil.wait_procs(running, timeout=5)[1] if _alive(p)]  # a zombie is gone (init may reap late)
    assert not left, f"left behind: {[(p.pid, p.cmdline()[:4]) for p in left]}"
    assert not _stages(project)
    assert not list(project.glob("checkpoints/train/*/complete")), "the stage trained to its end after dvc was killed"
    print(f"{'warm' if warm == '1' else 'cold'}: no stage {time.monotonic() - start:.1f} s after kill -9 of dvc")

    resumed = _dvc(project, "repro", "--force", "--single-item", "train")  # right away: warm, either way
    assert "resume: continuing from" in resumed.stdout + resumed.stderr, resumed.stdout[-3000:]
    assert "Traceback" not in resumed.stdout + resumed.stderr, resumed.stderr[-3000:]
    if warm == "1":  # the same weights as a run never interrupted (the complete marker: this one starts afresh)
        digest = _weights(project)
        whole = _dvc(project, "repro", "--force", "--single-item", "train")
        assert "resume:" not in whole.stdout + whole.stderr
        assert _weights(project) == digest


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ingest", "validate", "repair", "augment", "finetune", "evaluate", "compress"])
def test_kill_9_of_dvc_repro_during_any_stage_leaves_nothing_and_the_rerun_completes(project, stage):
    """Every stage, not only train: killed as soon as its process starts, it leaves no process, and
    the next `dvc repro` of it completes without a traceback (a stage killed mid-write left no torn
    output that the rerun would trip on)."""
    if stage in ("finetune", "evaluate", "compress"):
        _dvc(project, "repro", "--single-item", *_upstream(stage))  # their inputs, built once
    log = (project.parent / f"killed-{stage}.log").open("w+")
    dvc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", stage], cwd=project, env=_env(project),
                           stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (running := [p for p in _stages(project) if p.pid != dvc.pid and _is_stage(p)]):
        assert dvc.poll() is None, log.seek(0) or log.read()[-3000:]
        assert time.monotonic() < deadline, f"no {stage} process within 60 s"
        time.sleep(0.02)
    dvc.kill()
    dvc.wait()
    left = [p for p in psutil.wait_procs(running, timeout=5)[1] if _alive(p)]
    assert not left, f"left behind: {[(p.pid, p.cmdline()[:4]) for p in left]}"
    deadline = time.monotonic() + 5  # the warm runner's fork, which did the work, goes too
    while (others := _stages(project)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not others, f"left behind: {[(p.pid, p.cmdline()[:4]) for p in others]}"
    rerun = _dvc(project, "repro", "--single-item", stage)
    assert "Traceback" not in rerun.stdout + rerun.stderr, rerun.stderr[-3000:]


def _upstream(stage: str) -> list[str]:
    return {"finetune": ["train"], "evaluate": ["train", "finetune"], "compress": ["train", "finetune", "evaluate"]}[stage]


def _is_stage(process: psutil.Process) -> bool:
    try:
        return any("flows." in part for part in process.cmdline())  # the stage, or the shell dvc runs it with
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


# ------------------------------------------------------------------- kill -9 of the Prefect server
def _lock_entry(root: Path, stage: str) -> dict | None:
    try:
        return (yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages", {}).get(stage)
    except FileNotFoundError:
        return None


def _running_flow_run(url: str, flow: str, since: datetime, auth: str | None = None) -> dict | None:
    """The newest Running flow run of `flow` started after `since`."""
    runs = deploy.api(url, "/flow_runs/filter", {"flows": {"name": {"any_": [flow]}}, "flow_runs": {
        "start_time": {"after_": since.isoformat()}, "state": {"type": {"any_": ["RUNNING"]}}},
        "sort": "START_TIME_DESC"}, auth=auth)
    return runs[0] if runs else None


@pytest.mark.slow
def test_kill_9_of_the_prefect_server_during_train_fails_the_stage_and_the_rerun_completes(project):
    shutil.rmtree(project / "checkpoints", ignore_errors=True)
    before = _lock_entry(project, "train")
    since = datetime.now(UTC)
    log = (project.parent / "server-killed.log").open("w+")
    dvc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "train"], cwd=project, env=_env(project),
                           stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list(project.glob("checkpoints/train/*/last.ckpt")):  # an epoch is done
        assert dvc.poll() is None, log.seek(0) or log.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    state = _server_state(project)
    assert state, "no server.json: the stage did not start the project's server"
    interrupted = _running_flow_run(state["api_url"], "train", since)
    assert interrupted, "the stage's flow run is not Running on the server"

    watchdog = psutil.Process(state["pid"])  # `flows._server serve`, and under it `prefect server start`
    server = [*watchdog.children(recursive=True), watchdog]
    for process in server:  # kill -9 of both, as an OOM killer or a user's kill would
        process.kill()
    psutil.wait_procs(server, timeout=10)
    killed = time.monotonic()
    try:
        code = dvc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        dvc.kill()
        raise AssertionError("the stage still runs 180 s after its server was killed") from None
    exited_s = time.monotonic() - killed
    log.seek(0)
    out = log.read()
    print(f"server killed: the stage exited {code} after {exited_s:.1f} s")
    assert code != 0, out[-3000:]
    deadline = time.monotonic() + 10
    while (left := _stages(project)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"left behind: {[(p.pid, p.cmdline()[:4]) for p in left]}"
    assert _lock_entry(project, "train") == before  # nothing of the interrupted run recorded as done
    status = subprocess.run(["dvc", "status", "train"], cwd=project, env=_env(project), capture_output=True, text=True)
    assert "train:" in status.stdout, status.stdout  # stale: the next repro runs it

    # Forced: after the module's other tests DVC's run cache holds these very outputs and would restore them.
    rerun = _dvc(project, "repro", "--force", "--single-item", "train")  # a new server, the same database
    assert "Running stage 'train'" in rerun.stdout and "Traceback" not in rerun.stdout + rerun.stderr, rerun.stderr[-3000:]
    assert subprocess.run(["dvc", "status", "train"], cwd=project, env=_env(project), capture_output=True,
                          text=True).stdout.strip() == "Data and pipelines are up to date."
    new = _server_state(project)
    assert new and new["pid"] != state["pid"]
    run = deploy.api(new["api_url"], f"/flow_runs/{interrupted['id']}", auth=None)
    assert run["state"]["type"] == "CRASHED" and run["state"]["message"], run["state"]
    # How the stage ended: one line with the reason, soon (Prefect's client alone retries each call
    # for about a minute), and no wall of tracebacks.
    assert "error: train:" in out, out[-3000:]
    assert "Traceback" not in out, out[-5000:]
    assert exited_s < 60, f"the stage took {exited_s:.0f} s to end after its server was killed"


# ----------------------------------------------------------------------- kill -9 of a worker
WORKER_EPOCHS = EPOCHS  # to kill it mid-training; the rerun resumes and trains the rest
_MORE_EPOCHS = ("import yaml; p = yaml.safe_load(open('params.yaml'));"
                f"p['train']['trainer'].update(max_epochs={WORKER_EPOCHS}, progress_bar=False);"
                "open('params.yaml', 'w').write(yaml.safe_dump(p, sort_keys=False))")


def _worker(root: Path) -> psutil.Process:
    """`prefect worker start` of `make worker` in `root`."""
    for process in psutil.process_iter():
        try:
            if process.cwd() == str(root) and {"worker", "start"} <= set(process.cmdline()):
                return process
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no `prefect worker start` in {root}")


@pytest.mark.slow
def test_kill_9_of_a_worker_during_a_run_crashes_the_run_and_a_new_worker_completes(tmp_path):
    home = {"TRAINFLOW_PREFECT_HOME": str(tmp_path / "trainflow-home")}  # the stages' run records: not in ~
    with deploy.deployment(tmp_path, build=[sys.executable, "-c", _MORE_EPOCHS], extra_env=home) as (root, url, env, worker_log):
        on_demand = deploy.api(url, "/deployments/name/pipeline/on-demand")
        run = deploy.api(url, f"/deployments/{on_demand['id']}/create_flow_run", {"parameters": {"targets": ["train"]}})
        since = datetime.now(UTC)
        deadline, polls = time.monotonic() + 240, 0
        while not list(root.glob("checkpoints/train/*/last.ckpt")):  # train runs: an epoch is done
            if (polls := polls + 1) % 20 == 0:
                state = deploy.api(url, f"/flow_runs/{run['id']}")["state"]
                assert state["type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"), state
            assert time.monotonic() < deadline, "no checkpoint within 240 s:\n" + worker_log.read_text()[-3000:]
            time.sleep(0.1)
        worker = _worker(root)
        stage_run = _running_flow_run(url, "train", since, auth=deploy.AUTH)
        # The flow run's process (`python -m prefect.engine`), dvc, the stage, the warm runner's fork.
        running = [p for p in _stages(root) if p.pid not in (worker.pid, worker.ppid())]
        assert any("prefect.engine" in p.cmdline() for p in running), [p.cmdline()[:4] for p in running]
        worker.kill()
        killed = time.monotonic()

        ended = deploy.wait_for_run(url, run["id"], timeout=90)
        print(f"worker killed: the flow run ended {ended['state']['name']} after {time.monotonic() - killed:.1f} s: "
              f"{ended['state']['message']}")
        assert ended["state"]["type"] in ("CRASHED", "FAILED") and ended["state"]["message"], ended["state"]
        left = [p for p in psutil.wait_procs(running, timeout=30)[1] if _alive(p)]
        assert not left, f"left behind: {[(p.pid, p.cmdline()[:4]) for p in left]}"
        assert not list(root.glob("checkpoints/train/*/complete")), "training ended after its worker was killed"
        assert _lock_entry(root, "train") is None and _lock_entry(root, "augment")  # the stages before it: done
        if stage_run:  # the stage's own flow run ends too (SIGTERM from the pipeline, or the next stage's reaper)
            stage_state = deploy.api(url, f"/flow_runs/{stage_run['id']}")["state"]
            assert stage_state["type"] in ("CRASHED", "FAILED", "CANCELLED"), stage_state

        second_log = open(tmp_path / "worker-2.log", "wb")
        second = deploy.make(root, "worker", env, stdout=second_log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rerun = deploy.api(url, f"/deployments/{on_demand['id']}/create_flow_run",
                               {"parameters": {"targets": ["train"]}})
            rerun = deploy.wait_for_run(url, rerun["id"], timeout=300)
            assert rerun["state"]["type"] == "COMPLETED", (rerun["state"]["message"] +
                                                           (tmp_path / "worker-2.log").read_text()[-3000:])
        finally:
            deploy.stop(second)
        assert _lock_entry(root, "train")
