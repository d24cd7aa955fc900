"""flows/_runs.py: a stage's flow run carries its project, experiment and `dvc repro` as tags, and a
run whose process died without reporting is marked Crashed by the next stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from flows import _runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fake_dvc(tmp_path):
    """An executable named `dvc` that runs two children printing their repro group, as `dvc repro`
    runs two stages."""
    script = tmp_path / "dvc"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import subprocess, sys
        code = "import sys; sys.path.insert(0, {ROOT!r}); from flows import _runs; print(_runs.repro_group())"
        child = [sys.executable, "-c", code]
        for _ in range(2):
            subprocess.run(["/bin/sh", "-c", " ".join(repr(a) for a in child)], check=True)
        """))
    script.chmod(0o755)
    return script


def test_the_stages_of_one_dvc_repro_share_a_group_and_another_repro_gets_another(tmp_path):
    dvc = _fake_dvc(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != _runs.CLIENT_PID_ENV}
    first = subprocess.run([str(dvc), "repro"], capture_output=True, text=True, env=env, check=True).stdout.split()
    second = subprocess.run([str(dvc), "exp", "run"], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert len(first) == 2 and first[0] == first[1] != "None"
    assert second[0] == second[1] != first[0]
    assert subprocess.run([str(dvc), "status"], capture_output=True, text=True, env=env).stdout.split() == ["None"] * 2


def test_a_stage_outside_dvc_has_no_group():
    assert _runs.repro_group() is None  # pytest's ancestors run no dvc


def test_tags_name_the_project_and_the_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "credit-scoring"))
    monkeypatch.setenv("DVC_EXP_NAME", "lr-0.01")
    monkeypatch.setenv(_runs.GROUP_ENV, "abcd1234")
    assert _runs.tags() == ["project:credit-scoring", "exp:lr-0.01", "repro:abcd1234"]


def test_outside_an_experiment_the_project_is_the_dvc_root_above(tmp_path, monkeypatch):
    (tmp_path / "proj" / ".dvc").mkdir(parents=True)
    (tmp_path / "proj" / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "proj" / "sub")
    for name in ("DVC_ROOT", "DVC_EXP_NAME", _runs.GROUP_ENV):
        monkeypatch.delenv(name, raising=False)
    assert _runs.tags() == ["project:proj"]


@pytest.mark.usefixtures("prefect_harness")
def test_reap_marks_the_runs_of_dead_stages_crashed_and_keeps_live_ones(tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    @flow(name="stage-under-test")
    def stage():
        pass

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with get_client(sync_client=True) as client:
        runs = {}
        for name, state, pid in (("dead", Running(), dead.pid), ("live", Running(), os.getpid()),
                                 ("done", Completed(), dead.pid)):
            run = _runs.create(client, stage, {})
            client.set_flow_run_state(run.id, state, force=True)
            runs[name] = run.id
            (tmp_path / "runs").mkdir(exist_ok=True)
            start = _runs._starttime(os.getpid()) if pid == os.getpid() else "gone"
            (tmp_path / "runs" / f"{run.id}.json").write_text(json.dumps({"pid": pid, "start": start}))

        assert _runs.reap(client, tmp_path) == [runs["dead"]]
        crashed = client.read_flow_run(runs["dead"]).state
        assert crashed.is_crashed() and crashed.message == _runs.CRASHED
        assert client.read_flow_run(runs["live"]).state.is_running()
        assert client.read_flow_run(runs["done"]).state.is_completed()
    assert sorted(p.stem for p in (tmp_path / "runs").glob("*.json")) == [str(runs["live"])]


def test_a_recorded_run_is_dropped_when_the_stage_ends(tmp_path):
    import uuid

    run_id = uuid.uuid4()
    with _runs.recorded(tmp_path, run_id):
        seen = json.loads((tmp_path / "runs" / f"{run_id}.json").read_text())
        assert seen["pid"] == os.getpid() and seen["start"] == _runs._starttime(os.getpid())
    assert not list((tmp_path / "runs").iterdir())


@pytest.mark.usefixtures("prefect_harness")
def test_make_worker_reaps_first(tmp_path, monkeypatch, capsys):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from flows import _server

    @flow(name="pipeline-under-test")
    def pipeline():
        pass

    with get_client(sync_client=True) as client:
        run = _runs.create(client, pipeline, {})
        client.set_flow_run_state(run.id, Running(), force=True)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / f"{run.id}.json").write_text(json.dumps({"pid": 2**22 + 1, "start": "gone"}))
    monkeypatch.setattr(_server, "HOME", tmp_path)
    monkeypatch.setattr(sys, "argv", ["flows._runs", "reap"])
    assert _runs.main() == 0
    assert f"marked Crashed: flow run {run.id}" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.is_crashed()
