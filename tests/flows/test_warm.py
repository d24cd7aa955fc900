"""A stage dies with the process that started it (kill -9 included), warm or cold; the warm server
stops a stage whose client is gone, and retires once its socket file is deleted.

The project here is the flows package's two stdlib files plus a stand-in stage that only sleeps,
and the warm server preloads nothing: each case takes about a second.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

SLEEPER = '''
import os, signal, sys, time
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the server must SIGKILL it after its grace
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
'''
# The process that starts the stage and is killed, as dvc is (a parent that does not exec it).
STARTER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


@pytest.fixture
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("w")  # short: the socket path must fit in sun_path
    (root / "flows").mkdir()
    for name in ("__init__.py", "_warm.py"):
        shutil.copy(ROOT / "flows" / name, root / "flows" / name)
    (root / "flows" / "sleeper.py").write_text(SLEEPER)
    yield root
    for process in _in(root):  # what a failed case left: the server, a client, a stage
        process.kill()


def _in(folder: Path) -> list[psutil.Process]:
    """The live processes whose working directory is `folder`."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.cwd() == str(folder) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINFLOW_", "PREFECT_"))}
    return env | {"TRAINFLOW_WARM_PRELOAD": "", "TRAINFLOW_WARM_IDLE": "30", **extra}


def _start(project: Path, *, mode: str = "plain", starter_preexec=None, stderr=None, **env: str) -> tuple[subprocess.Popen, int]:
    """The starter process and the pid of the stage's code (a fork of the server when warm)."""
    pid_file = project / f"stage-{time.monotonic_ns()}.pid"
    starter = subprocess.Popen([sys.executable, "-c", STARTER, sys.executable, "-m", "flows.sleeper", str(pid_file), mode],
                               cwd=project, env=_env(**env), preexec_fn=starter_preexec, stderr=stderr, text=True)
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert starter.poll() is None, "the stage ended before it started"
        assert time.monotonic() < deadline, "the stage did not start within 60 s"
        time.sleep(0.02)
    return starter, int(pid_file.read_text())


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _kill_9(starter: subprocess.Popen) -> list[int]:
    """kill -9 the starter; the pids of its children (the stage's client) as they were."""
    children = [p.pid for p in psutil.Process(starter.pid).children()]
    starter.kill()
    starter.wait()
    return children


@pytest.mark.parametrize("mode", ["plain", "stubborn"])
def test_warm_stage_dies_with_its_starter(project, mode):
    starter, stage = _start(project, mode=mode)
    assert psutil.Process(stage).ppid() == int((project / ".prefect" / "warm.pid").read_text()), "it ran cold"
    clients = _kill_9(starter)
    assert all(_gone(pid, 3) for pid in clients), "the client outlived its starter"
    assert _gone(stage, 5), f"the warm stage ({mode}) outlived its starter's kill -9"


def test_cold_stage_dies_with_its_starter(project):
    starter, stage = _start(project, TRAINFLOW_WARM="0")
    assert _kill_9(starter) == [stage]  # cold: the stage is the starter's child itself
    assert _gone(stage, 3), "the cold stage outlived its starter's kill -9"


def test_nohup_stage_outlives_its_starter(project):
    starter, stage = _start(project, TRAINFLOW_WARM="0", starter_preexec=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    _kill_9(starter)
    try:
        assert not _gone(stage, 1), "a stage under nohup (SIGHUP ignored) must not die with its starter"
    finally:
        os.kill(stage, signal.SIGKILL)


def test_warm_server_retires_when_its_socket_is_deleted(project):
    starter, stage = _start(project, stderr=subprocess.PIPE)
    server = int((project / ".prefect" / "warm.pid").read_text())
    os.kill(stage, signal.SIGKILL)
    assert starter.wait(timeout=10) == -signal.SIGKILL % 256  # the client died the same way (SIGKILL) ...
    assert "Traceback" not in starter.stderr.read()  # ... without trying to reset SIGKILL's handler first
    shutil.rmtree(project / ".prefect")  # as `rm -rf .prefect` while the server idles
    assert _gone(server, 5), "the warm server kept running without its socket"
