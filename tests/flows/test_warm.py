"""The warm stage runner: a stage dies with the process that started it (kill -9 included), warm or
cold; the runner stops a stage whose client is gone and retires once its socket file is deleted.
A stale socket, a runner killed or stopped during a stage, a changed interpreter, virtualenv or
environment, two stages at once, and an interpreter without the project's packages.

The project here is the flows package's two stdlib files plus stand-in stages (one sleeps, one
prints and exits with the status it is given), and the warm server preloads nothing: each case
takes about a second.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
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
# Prints its name and its parent (the runner when warm), exits with `code`; first it waits for the
# stages named after it to have started, so two of them prove they ran at the same time.
ECHO = '''
import os, sys, time
name, code, *others = sys.argv[1:]
open(name + ".started", "w").write(str(os.getpid()))
deadline = time.monotonic() + 20
while not all(os.path.exists(other + ".started") for other in others):
    if time.monotonic() > deadline:
        sys.exit(f"{name}: {others} never started")
    time.sleep(0.01)
print(name, os.getppid())
sys.exit(int(code))
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
    (root / "flows" / "echo.py").write_text(ECHO)
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


def _echo(project: Path, name: str, code: int = 0, *others: str, python: Path | str = sys.executable,
          **env: str) -> subprocess.Popen:
    return subprocess.Popen([str(python), "-m", "flows.echo", name, str(code), *others], cwd=project, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(client: subprocess.Popen) -> tuple[int, str, str]:
    out, err = client.communicate(timeout=60)
    return client.returncode, out, err


def _started(project: Path, name: str) -> int:
    """The pid of the echo stage `name`, once it runs."""
    marker, deadline = project / f"{name}.started", time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, f"{name} did not start within 60 s"
        time.sleep(0.02)
    return int(marker.read_text())


def _runner(project: Path) -> int:
    return int((project / ".prefect" / "warm.pid").read_text())


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _venv(folder: Path, *, with_our_packages: bool) -> Path:
    """A fresh virtualenv's python: bare, or with this one's packages on its path (another interpreter
    that has what a stage needs)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    if with_our_packages:
        (_site_packages(folder) / "ours.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder / "bin" / "python3"


def _gone_file(path: Path, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not path.exists()


def _replaced(project: Path, old: int, reason: str) -> None:
    """The stage just run was served by a new runner; the old one retired, saying why."""
    assert _runner(project) != old, "the old runner served it"
    assert _gone(old, 3), "the old runner did not retire"
    assert f"retiring: {reason}" in (project / ".prefect" / "warm.log").read_text()


@pytest.mark.parametrize("leftover", ["killed-runner", "plain-file"])
def test_a_stale_socket_file_gets_a_new_runner(project, leftover):
    sock = project / ".prefect" / "warm.sock"
    if leftover == "killed-runner":
        assert _finish(_echo(project, "first"))[0] == 0
        os.kill(_runner(project), signal.SIGKILL)
        assert _gone(_runner(project), 3)
    else:
        sock.parent.mkdir()
        sock.touch()
    assert sock.exists()
    code, out, err = _finish(_echo(project, "next", 4))
    assert (code, err) == (4, ""), err  # no "[warm] running cold" either
    assert out == f"next {_runner(project)}\n"


def test_a_runner_killed_during_a_stage_fails_it_in_one_line(project):
    client = _echo(project, "long", 0, "never")
    stage = _started(project, "long")
    os.kill(_runner(project), signal.SIGKILL)
    assert _finish(client) == (1, "", "[warm] lost the warm server during the run\n")
    assert _gone(stage, 3), "the stage outlived its runner"
    code, out, _ = _finish(_echo(project, "next"))
    assert (code, out) == (0, f"next {_runner(project)}\n")


def test_a_stopped_runner_finishes_its_stage_while_a_new_one_serves(project):
    client = _echo(project, "long", 3, "go")
    _started(project, "long")
    old = _runner(project)
    subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=project, env=_env(), check=True)
    assert _gone_file(project / ".prefect" / "warm.sock", 3), "the stopped runner kept listening"
    code, out, _ = _finish(_echo(project, "next"))
    assert (code, out) == (0, f"next {_runner(project)}\n") and _runner(project) != old
    (project / "go.started").touch()
    assert _finish(client) == (3, f"long {old}\n", "")
    assert _gone(old, 3), "the stopped runner stayed after its last stage"


def test_another_interpreter_gets_its_own_runner(project, tmp_path):
    python = _venv(tmp_path / "venv", with_our_packages=True)
    assert _finish(_echo(project, "first"))[0] == 0
    old = _runner(project)
    code, out, err = _finish(_echo(project, "next", python=python))
    assert (code, out, err) == (0, f"next {_runner(project)}\n", "")
    _replaced(project, old, "python changed")
    assert psutil.Process(_runner(project)).cmdline()[0] == str(python)


def test_installing_a_package_retires_the_runner(project, tmp_path):
    python = _venv(tmp_path / "venv", with_our_packages=True)
    assert _finish(_echo(project, "first", python=python))[0] == 0
    old = _runner(project)
    (_site_packages(python.parent.parent) / "new.py").touch()  # as `pip install` adds a module
    code, out, _ = _finish(_echo(project, "next", python=python))
    assert (code, out) == (0, f"next {_runner(project)}\n")
    _replaced(project, old, "venv changed")


def test_a_changed_thread_setting_retires_the_runner(project):
    assert _finish(_echo(project, "first"))[0] == 0  # read once by native libraries: a fork can't change it
    old = _runner(project)
    code, out, _ = _finish(_echo(project, "next", OMP_NUM_THREADS="1"))
    assert (code, out) == (0, f"next {_runner(project)}\n")
    _replaced(project, old, "env changed")


def test_two_stages_at_once_share_one_runner_and_keep_their_own_results(project):
    a, b = _echo(project, "a", 3, "b"), _echo(project, "b", 5, "a")  # both start the runner: one wins
    results = _finish(a), _finish(b)
    runner = _runner(project)
    assert results == ((3, f"a {runner}\n", ""), (5, f"b {runner}\n", ""))
    servers = [p for p in _in(project) if "_trainflow_warm_server" in " ".join(p.cmdline())]
    assert [p.pid for p in servers] == [runner]


def test_a_signal_to_one_client_stops_only_its_own_stage(project):
    a = _echo(project, "a", 5, "go")
    _started(project, "a")
    b = _echo(project, "b", 0, "never")  # the later one: a stage picked by order would be a
    _started(project, "b")
    b.terminate()
    assert _finish(b)[0] == -signal.SIGTERM
    (project / "go.started").touch()
    assert _finish(a) == (5, f"a {_runner(project)}\n", "")


@pytest.mark.parametrize("runner", ["none", "running"])
def test_an_interpreter_without_our_packages_stops_in_one_line(project, tmp_path, runner):
    python = _venv(tmp_path / "bare", with_our_packages=False)
    if runner == "running":
        assert _finish(_echo(project, "first"))[0] == 0
        first = _runner(project)
    code, out, err = _finish(_echo(project, "stage", python=python))
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith(f"error: flows.echo: {python} has no prefect"), err
    if runner == "none":
        assert not (project / ".prefect").exists(), "it started a runner"
    else:  # still serving: it was not even asked
        assert _finish(_echo(project, "next"))[1] == f"next {first}\n"
