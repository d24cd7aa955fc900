"""prefect.yaml's deployments on a real `prefect server` started here (free port, PREFECT_HOME in
tmp, basic auth on), created by `make deploy` and run by `make worker`, in a fresh copy of the repo
on the shrunk config: an on-demand run, and a cron schedule that fires and completes in 30 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_repo, free_port, shrunk_params_dict

pytestmark = pytest.mark.slow  # a server, a worker and a cron minute: about 3 minutes on 2 cores
VENV = Path(sys.executable).parent.parent
AUTH = "trainflow:s3cret"


def start_server(home: Path, env: dict, auth: str | None = None) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on 127.0.0.1 and a free port, its database under `home`."""
    port = free_port()
    server_env = dict(env, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5", PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
    if auth:
        server_env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    home.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
                               "--analytics-off"], env=server_env, stdout=open(home / "server.log", "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            time.sleep(1)
    server.kill()
    raise AssertionError("prefect server did not start: " + (home / "server.log").read_text()[-3000:])


def stop(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):  # a worker needs a second signal
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=15)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def stop_warm(root: Path) -> None:
    """Ask the copy's warm stage runner (flows/_warm.py) to exit instead of idling on."""
    subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=root, capture_output=True, timeout=60)


def make_repo(dest: Path) -> Path:
    root = copy_repo(dest)
    (root / "params.yaml").write_text(yaml.safe_dump(shrunk_params_dict(), sort_keys=False))
    (root / "dvc.lock").unlink(missing_ok=True)
    for sub in ("cache", "tmp", "config.local"):
        path = root / ".dvc" / sub
        subprocess.run(["rm", "-rf", str(path)], check=True)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True)
    return root


def client_env(root: Path, api_url: str, auth: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TRAINFLOW_"))}
    env.update(PATH=f"{VENV / 'bin'}:{env['PATH']}", PREFECT_HOME=str(root / ".prefect"), PREFECT_API_URL=api_url,
               TRAINFLOW_PREFECT_HOME=str(root.parent / "prefect-server"),
               DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    return env


def make(root: Path, target: str, env: dict, **kwargs):
    # The venv is the suite's own; `-o` keeps make from reinstalling it.
    return subprocess.Popen(["make", "-s", target, f"VENV={VENV}", "-o", f"{VENV}/.installed"], cwd=root, env=env, **kwargs)


def api(url: str, path: str, body: dict | None = None, auth: str | None = AUTH, method: str | None = None):
    import base64

    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"}, method=method)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    for attempt in range(10):  # SQLite under load answers 503 ("database is locked"): retry as Prefect's client does
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code not in (429, 503) or attempt == 9:
                raise
            time.sleep(1 + attempt)


@contextmanager
def deployment(tmp: Path, build: list[str] | None = None, extra_env: dict | None = None):
    """A copy of the repo on the shrunk config, a server with basic auth, `make deploy` and `make
    worker` against it; `build`: a command run in the copy first (say, the stages a deployment reads);
    `extra_env`: more variables for the server and every client (a database URL, a worker's poll interval)."""
    root = make_repo(tmp / "repo")
    server, url = start_server(tmp / "server-home", client_env(root, "") | (extra_env or {}), auth=AUTH)
    env = client_env(root, url, auth=AUTH) | (extra_env or {})
    worker = None
    try:
        if build:
            built = subprocess.run(build, cwd=root, env=env, capture_output=True, text=True, timeout=900)
            assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        done = make(root, "deploy", env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = done.communicate(timeout=300)
        assert done.returncode == 0, out[-3000:]
        worker_log = open(tmp / "worker.log", "wb")
        worker = make(root, "worker", env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
        yield root, url, env, tmp / "worker.log"
    finally:
        if worker:
            stop(worker)
        stop_warm(root)
        stop(server)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    with deployment(tmp_path_factory.mktemp("deploy")) as made:
        yield made


def wait_for_run(url: str, flow_run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api(url, f"/flow_runs/{flow_run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise AssertionError(f"flow run still {run['state']['name']} after {timeout} s")


def test_the_server_refuses_clients_without_the_auth_string(deployed):
    _, url, _, _ = deployed
    with pytest.raises(urllib.error.HTTPError) as e:
        api(url, "/deployments/filter", {}, auth=None)
    assert e.value.code == 401
    assert api(url, "/health", auth=None) is True  # health stays open for probes


def test_make_deploy_creates_the_pool_and_the_deployments(deployed):
    root, url, _, _ = deployed
    names = {d["name"]: d for d in api(url, "/deployments/filter", {})}
    assert set(names) == {"nightly", "on-demand", "predict"}  # predict's run: tests/e2e/test_predict_deployment.py
    nightly = names["nightly"]
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 3 * * *"]
    assert nightly["work_pool_name"] == "trainflow" and nightly["entrypoint"] == "flows/retrain.py:retrain"
    pool = api(url, "/work_pools/trainflow")
    assert pool["type"] == "process" and pool["concurrency_limit"] == 1
    assert "local" in (root / ".dvc" / "config.local").read_text()  # a default DVC remote for the nightly push


def test_an_on_demand_run_is_picked_up_by_the_worker(deployed):
    root, url, _, worker_log = deployed
    deployment = api(url, "/deployments/name/pipeline/on-demand")
    run = api(url, f"/deployments/{deployment['id']}/create_flow_run", {"parameters": {"targets": ["ingest"]}})
    run = wait_for_run(url, run["id"], timeout=240)
    assert run["state"]["type"] == "COMPLETED", run["state"]["message"] + Path(worker_log).read_text()[-3000:]
    tasks = api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    assert [t["name"] for t in tasks] == ["ingest"]
    assert (root / "data" / "raw").is_dir() and (root / "dvc.lock").exists()  # it ran in this checkout
    stage_runs = api(url, "/flow_runs/filter", {"flows": {"name": {"any_": ["ingest"]}}})
    assert stage_runs and stage_runs[0]["state"]["type"] == "COMPLETED"  # the stage's own run, on the same server


def test_a_cron_schedule_fires_and_completes_within_30_s(deployed):
    _, url, _, worker_log = deployed
    # The pool runs one flow at a time: the nightly schedule must not take the slot if this minute is 03:00.
    nightly = api(url, "/deployments/name/retrain/nightly")
    api(url, f"/deployments/{nightly['id']}", {"paused": True}, method="PATCH")
    deployment = api(url, "/deployments/name/pipeline/on-demand")
    # Every minute, on the stage the previous test built: a scheduled run of the real deployment.
    api(url, f"/deployments/{deployment['id']}/schedules",
        [{"schedule": {"cron": "* * * * *", "timezone": "UTC"}, "active": True, "parameters": {"targets": ["ingest"]}}])
    since = datetime.now(UTC)
    deadline = time.monotonic() + 150
    run = None
    while time.monotonic() < deadline:
        runs = api(url, "/flow_runs/filter",
                   {"deployments": {"id": {"any_": [deployment["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"})
        finished = [r for r in runs if r["auto_scheduled"] and r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")]
        if finished:
            run = finished[0]
            break
        time.sleep(2)
    assert run, "no scheduled run finished:\n" + Path(worker_log).read_text()[-3000:]
    assert run["state"]["type"] == "COMPLETED", run["state"]["message"]
    scheduled = datetime.fromisoformat(run["expected_start_time"])
    ended = datetime.fromisoformat(run["end_time"])
    assert scheduled >= since - timedelta(seconds=60)
    assert ended - scheduled <= timedelta(seconds=30), f"scheduled {scheduled}, finished {ended}"
