"""The shared Prefect server: one for every project, never without its watchdog, gone with its home."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from flows import _server
from tests.conftest import free_port


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home as a running server leaves it: last_used and a server.json that names this process."""
    home = tmp_path / ".prefect"
    monkeypatch.setattr(_server, "HOME", home)
    monkeypatch.setattr(_server, "STATE", home / "server.json")
    monkeypatch.setattr(_server, "LAST_USED", home / "last_used")
    _server.touch()
    _server._write_state({"api_url": "http://127.0.0.1:9/api", "pid": os.getpid(), "server_pid": 0})
    return home


def test_the_watchdog_keeps_a_used_server(home):
    assert _server.stop_reason(_server._home_id(), idle_s=600) is None
    assert _server.stop_reason(_server._home_id(), idle_s=0) is None  # `make ui`: no idle limit


@pytest.mark.parametrize(("change", "reason"), [
    (lambda home: shutil.rmtree(home), "was deleted or replaced"),
    (lambda home: shutil.rmtree(home) or _server.touch(), ""),  # a new run made a new one (same inode, maybe)
    (lambda home: (home / "last_used").unlink(), "last_used is gone"),
    (lambda home: (home / "server.json").unlink(), "server.json is gone or names another server"),
    (lambda home: _server._write_state({"api_url": "x", "pid": 1}), "server.json is gone or names another server"),
    (lambda home: os.utime(home / "last_used", (0, 0)), "no stage for 600 s"),
], ids=["home-deleted", "home-replaced", "last_used-deleted", "state-deleted", "state-of-another", "idle"])
def test_the_watchdog_stops_the_server(home, change, reason):
    started = _server._home_id()
    change(home)
    said = _server.stop_reason(started, idle_s=600)  # a reason, not FileNotFoundError
    assert said is not None and reason in said


def test_watch_returns_soon_after_the_home_is_deleted(home):
    stand_in = subprocess.Popen(["sleep", "60"])  # for `prefect server start`
    threading.Timer(0.5, shutil.rmtree, [home]).start()
    try:
        start = time.monotonic()
        assert "was deleted" in _server.watch(stand_in, idle_s=600, interval_s=0.1)
        assert time.monotonic() - start < 2
    finally:
        _server._stop_server(stand_in)
    assert stand_in.returncode == -signal.SIGTERM


def test_the_server_dies_with_its_watchdog_even_by_kill_9(tmp_path):
    # The watchdog starts its child exactly as serve() starts `prefect server start`.
    watchdog = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, os, sys, time; from flows import _server\n"
        "child = subprocess.Popen(['sleep', '60'], preexec_fn=_server._dies_with(os.getpid()))\n"
        "print(child.pid, flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    child = psutil.Process(int(watchdog.stdout.readline()))
    watchdog.kill()
    watchdog.wait()
    try:
        assert not psutil.wait_procs([child], timeout=3)[1], "the server outlived its watchdog's kill -9"
    finally:
        if child.is_running():
            child.kill()


def test_stop_leaves_a_process_that_took_a_dead_servers_pid(home):
    stranger = subprocess.Popen(["sleep", "60"])  # server.json outlived a reboot: its pid is another's now
    _server._write_state({"api_url": "http://127.0.0.1:9/api", "pid": stranger.pid, "server_pid": stranger.pid})
    try:
        _server.stop()
        assert stranger.poll() is None, "stop() killed a process that only reused a dead server's pid"
    finally:
        stranger.kill()
        stranger.wait()
    assert not (home / "server.json").exists()


def test_watch_returns_when_the_server_is_killed(home):
    stand_in = subprocess.Popen(["sleep", "60"])
    threading.Timer(0.3, stand_in.kill).start()
    assert _server.watch(stand_in, idle_s=600, interval_s=0.1) == f"the server exited ({-signal.SIGKILL})"


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TRAINFLOW_"))}
    return env | dict(TRAINFLOW_PREFECT_HOME=str(tmp_path / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      TRAINFLOW_PREFECT_PORT=str(free_port()), TRAINFLOW_PREFECT_IDLE_S="300", TRAINFLOW_PREFECT_WATCH_S="1")


def _start(tmp_path, env: dict) -> list[psutil.Process]:
    """`flows._server url` as a stage calls it: the watchdog and its server, once it answers."""
    started = subprocess.run([sys.executable, "-m", "flows._server", "url"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=150)
    assert started.returncode == 0, started.stderr[-3000:]
    state = json.loads((Path(env["TRAINFLOW_PREFECT_HOME"]) / "server.json").read_text())
    watchdog = psutil.Process(state["pid"])
    processes = [watchdog, *watchdog.children(recursive=True)]
    assert state["server_pid"] in [p.pid for p in processes]
    return processes


@pytest.mark.slow
def test_deleting_prefect_home_stops_the_idle_project_server(tmp_path):
    processes = _start(tmp_path, _env(tmp_path))
    try:
        shutil.rmtree(tmp_path / ".prefect")  # what `make clean` did, with the server idle
        start = time.monotonic()
        alive = psutil.wait_procs(processes, timeout=60)[1]
        assert not alive, f"still running a minute after .prefect/ was deleted: {[p.cmdline()[:4] for p in alive]}"
        print(f"server gone {time.monotonic() - start:.1f} s after .prefect/ was deleted")
    finally:
        for process in processes:
            if process.is_running():
                process.kill()


@pytest.mark.slow
def test_a_killed_server_is_replaced_by_the_next_stage_and_stop_stops_it(tmp_path):
    env = _env(tmp_path)
    killed = _start(tmp_path, env)
    processes = list(killed)
    try:
        killed[0].kill()  # the watchdog, kill -9: its server follows, server.json stays behind
        assert not psutil.wait_procs(killed, timeout=30)[1], "the server outlived its watchdog's kill -9"
        assert (tmp_path / ".prefect" / "server.json").exists()
        processes += _start(tmp_path, env)  # the next stage's call
        stopped = subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert not psutil.wait_procs(processes, timeout=30)[1], "`flows._server stop` left the new server running"
    finally:
        for process in processes:
            if process.is_running():
                process.kill()


@pytest.mark.slow
def test_every_project_shares_one_server_and_make_ui_shows_it(tmp_path):
    env = _env(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    processes = _start(tmp_path / "a", env)
    try:
        again = subprocess.run([sys.executable, "-m", "flows._server", "url"], cwd=tmp_path / "b", env=env,
                               capture_output=True, text=True, timeout=60)
        state = json.loads((tmp_path / ".prefect" / "server.json").read_text())
        assert again.stdout.strip() == state["api_url"] and state["pid"] == processes[0].pid  # the same one
        ui = subprocess.Popen([sys.executable, "-m", "flows._server", "ui"], cwd=tmp_path / "b", env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = ui.stdout.readline()
        assert state["api_url"].removesuffix("/api") in first and "project:" in first
        ui.send_signal(signal.SIGINT)  # Ctrl-C: the hold ends, the server stays for the other projects
        assert ui.wait(timeout=30) == 0
        assert all(p.is_running() for p in processes)
        explicit = subprocess.run([sys.executable, "-m", "flows._server", "ui"], cwd=tmp_path / "b",
                                  env=env | {"PREFECT_API_URL": "http://example:1/api"}, capture_output=True, text=True)
        assert explicit.returncode == 0 and "http://example:1" in explicit.stdout  # no server of ours for it
    finally:
        subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=tmp_path, env=env, capture_output=True)
        psutil.wait_procs(processes, timeout=30)


@pytest.mark.slow
def test_make_ui_db_postgres_runs_the_shared_server_on_its_own_cluster(tmp_path):
    from flows import _postgres
    from tests.flows.test_postgres import HAVE_POSTGRES

    if not HAVE_POSTGRES:
        pytest.skip("PostgreSQL is not installed (.ci/run installs the Debian package)")
    env = _env(tmp_path) | {"TRAINFLOW_PREFECT_DB": "postgres"}
    processes = _start(tmp_path, env)
    try:
        state = json.loads((tmp_path / ".prefect" / "server.json").read_text())
        assert state["database"] == "postgres" and not list((tmp_path / ".prefect").glob("*.db"))
        cluster = _postgres.url(tmp_path / ".prefect" / "postgres")
        assert cluster and cluster.startswith("postgresql+asyncpg://")
    finally:
        subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=tmp_path, env=env, capture_output=True)
        psutil.wait_procs(processes, timeout=30)
    postmasters = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not postmasters, "the cluster outlived the server"
