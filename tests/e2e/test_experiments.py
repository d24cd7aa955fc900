"""DVC experiments on a copy of the repo on the shrunk config, beside a Prefect server and the warm
stage runner: two `dvc exp run`s whose accuracies `dvc exp show` lists with the baseline's, `dvc
metrics diff` / `dvc plots diff` against the last commit (reports are cached DVC outputs: DVC reads a
past revision's from the cache by dvc.lock's hash), and a 2x2 sweep queued with `dvc exp run --queue`
and run by `dvc queue start -j 2` in temporary copies, each point's stage flow runs on the server
tagged `exp:<name>`. Nothing the test started (server, queue workers, warm runners) outlives it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.test_deployment import VENV, api, client_env, make_repo, start_server, stop, stop_warm

pytestmark = pytest.mark.slow  # a server, one repro, two experiments, four queued: 2.5-5 minutes on 2 cores
METRICS = "reports/evaluate/metrics.json"
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
# The sweep varies the fine-tune only: each point reruns finetune, evaluate, compress and predict.
SWEEP = ["-S", "finetune.optimizer.lr=0.002,0.01", "-S", "finetune.seed=1,2"]
RERUN = {"finetune", "evaluate", "compress", "predict"}


def run(root: Path, env: dict, *cmd: str, timeout: float = 600) -> str:
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def dvc(root: Path, env: dict, *args: str, timeout: float = 600) -> str:
    return run(root, env, str(VENV / "bin" / "dvc"), *args, timeout=timeout)


def accuracy(data: dict) -> float | None:
    """A revision's evaluate accuracy in `dvc exp show --json`'s `data`, None if DVC could not read it."""
    return ((data.get("metrics") or {}).get(METRICS) or {}).get("data", {}).get("accuracy")


def exp_show(root: Path, env: dict) -> tuple[dict, dict]:
    """`dvc exp show --json` over all commits: {commit: its row's data}, {experiment name: its data}."""
    commits, experiments = {}, {}
    for row in json.loads(dvc(root, env, "exp", "show", "--all-commits", "--json")):
        if row["rev"] == "workspace":
            continue
        commits[row["rev"]] = row["data"] | {"name": row.get("name")}
        for experiment in row.get("experiments") or []:
            for rev in experiment["revs"]:
                experiments[rev["name"]] = rev["data"]
    return commits, experiments


def started_by(tmp: Path) -> list[psutil.Process]:
    """Processes that belong to this test's folder: their working directory, command line or
    environment (PREFECT_HOME, TRAINFLOW_PREFECT_HOME) names it."""
    found = []
    for process in psutil.process_iter(["cwd", "cmdline", "environ"]):
        info = process.info
        text = " ".join([info["cwd"] or "", *(info["cmdline"] or []), *(info["environ"] or {}).values()])
        if process.pid != os.getpid() and str(tmp) in text:
            found.append(process)
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The copy, built once by `dvc repro` and committed, with a server; afterwards, checks that the
    server, the queue's workers and every warm runner (the copy's and the temporary copies') are gone."""
    tmp = tmp_path_factory.mktemp("experiments")
    root = make_repo(tmp / "repo")
    server, url = start_server(tmp / "server-home", client_env(root, ""))
    env = client_env(root, url)
    try:
        dvc(root, env, "repro")
        run(root, env, *GIT, "add", "dvc.lock")
        run(root, env, *GIT, "commit", "-qm", "built")
        yield tmp, root, url, env
    finally:
        subprocess.run([str(VENV / "bin" / "dvc"), "queue", "stop"], cwd=root, env=env, capture_output=True, timeout=120)
        stop_warm(root)
        stop(server)
    deadline = time.monotonic() + 60  # idle queue workers exit within ~10 s, warm runners once their socket is gone
    while (left := started_by(tmp)) and time.monotonic() < deadline:
        time.sleep(2)
    for process in left:
        process.kill()
    assert not left, "left running: " + "; ".join(" ".join(p.info["cmdline"] or []) for p in left)


def test_experiments_and_the_baseline_show_their_metrics_and_diff_across_commits(built):
    tmp, root, url, env = built
    dvc(root, env, "exp", "run", "-S", "finetune.optimizer.lr=0.01", "-n", "a")
    dvc(root, env, "exp", "run", "-S", "finetune.optimizer.lr=0.005", "-n", "b")
    head = run(root, env, "git", "rev-parse", "HEAD").strip()
    branch = run(root, env, "git", "branch", "--show-current").strip()

    commits, experiments = exp_show(root, env)
    assert commits[head]["name"] == branch and 0 <= accuracy(commits[head]) <= 1, commits[head]
    for name, lr in (("a", 0.01), ("b", 0.005)):
        assert 0 <= accuracy(experiments[name]) <= 1, experiments[name]
        assert experiments[name]["params"]["params.yaml"]["data"]["finetune"]["optimizer"]["lr"] == lr

    # Experiment b, the last run, is the workspace: committed, both commits' metrics and plots are read
    # back (HEAD~1's from the cache).
    run(root, env, *GIT, "commit", "-qam", "experiment b")
    diff = json.loads(dvc(root, env, "metrics", "diff", "HEAD~1", "--json"))[METRICS]["accuracy"]
    assert diff["old"] == accuracy(commits[head]) and diff["new"] == accuracy(experiments["b"]), diff
    plots = json.loads(dvc(root, env, "plots", "diff", "HEAD~1", "--json"))
    ours = [error for error in plots.get("errors") or [] if not error["name"].startswith("examples/")]
    assert not ours, ours  # (examples/* are DVC projects of their own, never built here)
    confusion = plots["data"]["Confusion matrix (test)"]
    drawn = {point["rev"] for plot in confusion for point in plot["content"]["data"]["values"]}
    assert drawn == {"HEAD~1", "workspace"}, drawn


def test_a_queued_sweep_runs_in_two_workers_and_each_point_reports_its_metrics_and_flow_runs(built):
    tmp, root, url, env = built
    out = dvc(root, env, "exp", "run", "--queue", *SWEEP, "-n", "sweep")
    names = [f"sweep-{i}" for i in range(1, 5)]
    assert all(f"'{name}'" in out for name in names), out
    dvc(root, env, "queue", "start", "-j", "2")

    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        status = {line.split()[1]: line.split()[-1] for line in dvc(root, env, "queue", "status").splitlines()
                  if line.split()[1:2] and line.split()[1] in names}
        if len(status) == len(names) and all(state in ("Success", "Failed") for state in status.values()):
            break
        time.sleep(5)
    else:
        raise AssertionError(f"the queue did not finish in time: {status}")
    failed = [name for name, state in status.items() if state != "Success"]
    assert not failed, {name: dvc(root, env, "queue", "logs", name)[-3000:] for name in failed}

    _, experiments = exp_show(root, env)
    grid = set()
    for name in names:
        finetune = experiments[name]["params"]["params.yaml"]["data"]["finetune"]
        grid.add((finetune["optimizer"]["lr"], finetune["seed"]))
        assert 0 <= accuracy(experiments[name]) <= 1, experiments[name]
    assert grid == {(lr, seed) for lr in (0.002, 0.01) for seed in (1, 2)}

    # Each point's stage flow runs, on the server, tagged with the project and the experiment.
    for name in names:
        runs = api(url, "/flow_runs/filter", {"flow_runs": {"tags": {"all_": [f"exp:{name}"]}}}, auth=None)
        flows = api(url, "/flows/filter", {"flows": {"id": {"any_": [r["flow_id"] for r in runs]}}}, auth=None)
        assert {flow["name"] for flow in flows} >= RERUN, (name, runs)
        assert all(r["state_type"] == "COMPLETED" and "project:repo" in r["tags"] for r in runs), runs
