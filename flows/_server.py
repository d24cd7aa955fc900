"""One Prefect server per user and machine, shared by every trainflow project and every stage.

Without `PREFECT_API_URL`, Prefect 3 starts a temporary server in every process that runs a flow
(9-20 s each on 2 cores). The first stage to run starts the shared server instead (127.0.0.1 only;
its home, database and log under TRAINFLOW_PREFECT_HOME, default ~/.trainflow/prefect), later
stages of any project find it through server.json there, and it stops itself after `IDLE_S`
without a stage. Runs carry their project's name as a tag (flows/_runs.py), so the UI filters one
project. An explicit `PREFECT_API_URL` always wins.

The database is SQLite unless TRAINFLOW_PREFECT_DB=postgres (a PostgreSQL cluster of the user's
own under the home, started and stopped with the server: flows/_postgres.py) or
PREFECT_SERVER_DATABASE_CONNECTION_URL names one. An idle Prefect server polls its database from
a dozen loop services; `IDLE_SETTINGS` slows the loops a local server does not need often and
turns off the one that made SQLite log "database is locked" (each still overridable in the
environment): see docs/orchestration.md for the measured cost.

`serve` is the watchdog of `prefect server start`, its child: every `WATCH_S` it stops the server
when the home was deleted or replaced, `last_used` or server.json is gone, or the idle time is up.
The server never outlives it: any error in the watchdog stops the server, and the kernel sends the
server SIGTERM if the watchdog dies some other way (kill -9: PR_SET_PDEATHSIG).

    python -m flows._server ui                       # start it if needed; hold it while open
    python -m flows._server serve [--idle SECONDS]   # the server itself, in the foreground
    python -m flows._server stop
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOME = Path(os.environ.get("TRAINFLOW_PREFECT_HOME") or Path.home() / ".trainflow" / "prefect")
STATE = HOME / "server.json"
LAST_USED = HOME / "last_used"
POSTGRES = HOME / "postgres"  # TRAINFLOW_PREFECT_DB=postgres: the cluster's folder
IDLE_S = int(os.environ.get("TRAINFLOW_PREFECT_IDLE_S", "600"))
WATCH_S = float(os.environ.get("TRAINFLOW_PREFECT_WATCH_S", "2"))  # the watchdog's interval
START_TIMEOUT_S = 120
# Loop services of an idle server that a local one can run less often: pauses, cancellations,
# leases and worker health checked each minute, not each 5-20 s.
# The late-runs service is off: on SQLite it is what logs "database is locked". Its docket task
# (prefect/server/services/late_runs.py, mark_flow_run_late) reads in a DEFERRED transaction, then
# writes the Late state; when any other write commits in between (another run marked late at the
# same moment, a worker's state change), SQLite answers SQLITE_BUSY_SNAPSHOT at once, busy_timeout
# or not, and prefect.server logs a traceback (orchestration/rules.py, "Encountered error during
# state validation"). 20 queued runs gave 44 tracebacks; with it off, none from it. The cost: a
# queued run shows Scheduled instead of Late; workers pick it up the same (a Scheduled-type state).
# The one such path no setting reaches: a worker's heartbeat (server/utilities/worker_channel.py)
# can still log it now and then under load; the worker reconnects. PostgreSQL never does.
IDLE_SETTINGS = {
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "10",
}


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def touch() -> None:
    HOME.mkdir(parents=True, exist_ok=True)
    LAST_USED.touch()


@contextmanager
def in_use(interval_s: float = 30.0) -> Iterator[None]:
    """Keep the idle clock at zero while a stage runs: a long training must not outlive the server."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval_s):
            touch()

    touch()
    thread = threading.Thread(target=beat, name="prefect-server-keepalive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        touch()


def running_url() -> str | None:
    """The API URL of the shared server, if one answers."""
    try:
        url = json.loads(STATE.read_text())["api_url"]
    except (OSError, ValueError, KeyError):
        return None
    return url if healthy(url) else None


def ensure_api_url() -> str:
    """PREFECT_API_URL if set, else the shared server, started now if none is running."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    touch()
    if url := running_url():
        return url
    with open(HOME / "server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two stages racing start one server, not two
        if url := running_url():
            return url
        log = open(HOME / "server.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "flows._server", "serve", "--idle", str(IDLE_S)],
                                   stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        print(f"Starting the Prefect server (shared by every project; log: {HOME / 'server.log'}) ...", file=sys.stderr)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if url := running_url():
                return url
            if process.poll() is not None:
                break
            time.sleep(0.5)
        tail = (HOME / "server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the Prefect server did not start; see {HOME / 'server.log'}:\n{tail}")


def _free_port(preferred: int | None, reuse_address: bool = False) -> int:
    """`preferred` if nothing holds it on 127.0.0.1, else one the kernel picks. `reuse_address`: test
    as a server that binds with SO_REUSEADDR would (a port in TIME_WAIT is free to it)."""
    for port in ((preferred,) if preferred else ()) + (0,):
        with socket.socket() as s:
            if reuse_address:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError("no free port on 127.0.0.1")


def _home_id() -> tuple[int, int] | None:
    try:
        st = HOME.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _ours() -> bool:
    """Whether server.json still names this watchdog (a successor's must not be touched)."""
    try:
        return json.loads(STATE.read_text()).get("pid") == os.getpid()
    except (OSError, ValueError, AttributeError):
        return False


def stop_reason(home: tuple[int, int] | None, idle_s: int) -> str | None:
    """Why the server must stop now (None: keep it). `home`: the home's identity at start."""
    if _home_id() != home:
        return f"{HOME} was deleted or replaced"
    try:
        idle = time.time() - LAST_USED.stat().st_mtime
    except OSError:
        return f"{LAST_USED} is gone"
    if not _ours():
        return f"{STATE} is gone or names another server"
    if idle_s and idle > idle_s:
        return f"no stage for {idle_s} s"
    return None


def watch(server: subprocess.Popen, idle_s: int, interval_s: float = WATCH_S) -> str:
    """Return once `server` exited (its code) or must stop (the reason); the caller stops it."""
    home = _home_id()
    while server.poll() is None:
        time.sleep(interval_s)
        if reason := stop_reason(home, idle_s):
            return reason
    return f"the server exited ({server.returncode})"


def _stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _dies_with(parent: int):
    """A preexec_fn: the child gets SIGTERM when `parent` (the watchdog) dies, even by kill -9."""
    import ctypes

    prctl = ctypes.CDLL(None).prctl  # looked up here: the forked child only calls it

    def preexec() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _write_state(state: dict) -> None:
    tmp = STATE.with_name(f".{STATE.name}.{os.getpid()}.tmp")  # a stage must never read half of it
    tmp.write_text(json.dumps(state))
    os.replace(tmp, STATE)


def serve(idle_s: int, host: str, port: int) -> int:
    """Run `prefect server start` as the watchdog of it (see the module's docstring); with idle_s > 0 it
    also stops after idle_s without a stage."""
    HOME.mkdir(parents=True, exist_ok=True)
    if url := running_url():
        print(f"The Prefect server is already running: {url.removesuffix('/api')}")
        return 0
    port = _free_port(port)
    env = {**IDLE_SETTINGS, **os.environ, "PREFECT_HOME": str(HOME.resolve()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"http://{host}:{port}/api"}
    env.pop("PREFECT_API_URL", None)
    database = _database(env)
    touch()
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port),
                               "--analytics-off"], env=env, preexec_fn=_dies_with(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/api"
        _write_state({"api_url": url, "pid": os.getpid(), "server_pid": server.pid, "database": database})
        reason = watch(server, idle_s)
        print(f"{reason}{': stopping the Prefect server' if server.poll() is None else ''}.", flush=True)
    except KeyboardInterrupt:
        pass
    finally:  # also when the watchdog fails: the server never runs without it
        _stop_server(server)
        if _ours():
            STATE.unlink(missing_ok=True)
        if database == "postgres":
            from flows import _postgres

            _postgres.stop(POSTGRES)
    return 0


def _database(env: dict) -> str:
    """Which database the server will use; for TRAINFLOW_PREFECT_DB=postgres, the cluster under the
    home started now and its URL set in `env`."""
    if env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        scheme = env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].split(":", 1)[0]
        return "postgres" if scheme.startswith("postgres") else scheme.split("+", 1)[0]
    wanted = env.get("TRAINFLOW_PREFECT_DB", "sqlite").strip().lower()
    if wanted in ("postgres", "postgresql"):
        from flows import _postgres
        from tasks.errors import UserError

        try:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = _postgres.start(POSTGRES)
        except UserError as e:
            raise SystemExit(f"error: TRAINFLOW_PREFECT_DB=postgres: {e}") from None
        return "postgres"
    if wanted != "sqlite":
        raise SystemExit(f"error: TRAINFLOW_PREFECT_DB={wanted!r}: expected sqlite or postgres")
    return "sqlite"


def ui() -> int:
    """`make ui`: the shared server's address, the server started first if none runs; held (its
    idle clock kept at zero) until Ctrl-C, after which it stops once idle as usual."""
    if explicit := os.environ.get("PREFECT_API_URL"):
        print(f"PREFECT_API_URL is set: the Prefect UI of {explicit} is at {explicit.removesuffix('/api')}")
        return 0
    try:
        url = ensure_api_url()
    except KeyboardInterrupt:  # Ctrl-C while the server was starting: it starts on, detached
        return 130
    state = json.loads(STATE.read_text())
    wanted = "postgres" if os.environ.get("TRAINFLOW_PREFECT_DB", "").lower().startswith("postgres") else None
    if wanted and state.get("database") != wanted:
        print(f"warning: the running server uses {state.get('database', 'sqlite')}: `make ui-stop`, then "
              f"`make ui DB={wanted}` to switch", file=sys.stderr)
    try:  # the line first: whoever reads it may press Ctrl-C at once
        print(f"Prefect UI: {url.removesuffix('/api')}  (every trainflow project on this machine; filter by the tag "
              f"project:<folder>). Home: {HOME}. Ctrl-C to let it stop once idle; `make ui-stop` stops it now.",
              flush=True)
        with in_use(interval_s=min(30.0, IDLE_S / 2 or 30.0)):
            while running_url():
                time.sleep(5)
    except KeyboardInterrupt:
        return 0
    print("The Prefect server stopped.", file=sys.stderr)
    return 1


def _runs_a_server(pid: object) -> bool:
    """Whether `pid` is still a watchdog or a Prefect server. server.json outlives a kill -9 or a
    reboot, and by then its pids may belong to any process: `make ui` and `make clean` must not
    stop that one."""
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"flows._server" in cmdline or b"prefect\0server\0start" in cmdline


def stop() -> int:
    try:
        state = json.loads(STATE.read_text())
    except (OSError, ValueError):
        print("No trainflow Prefect server is running.")
        return 0
    for pid in (state.get("pid"), state.get("server_pid")):
        if _runs_a_server(pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for _ in range(60):
        if not healthy(state["api_url"], timeout=0.5):
            break
        time.sleep(0.5)
    STATE.unlink(missing_ok=True)
    print(f"Stopped the Prefect server ({HOME}).")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m flows._server", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the server (foreground)")
    p.add_argument("--idle", type=int, default=0, help="stop after this many seconds without a stage (0: never)")
    p.add_argument("--host", default=os.environ.get("TRAINFLOW_PREFECT_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("TRAINFLOW_PREFECT_PORT", "4200")))
    sub.add_parser("stop", help="stop the shared server")
    sub.add_parser("ui", help="start the server if needed, print the UI's address and keep it up until Ctrl-C")
    sub.add_parser("url", help="print the API URL, starting the server if needed")
    args = parser.parse_args()
    if args.command == "serve":
        return serve(args.idle, args.host, args.port)
    if args.command == "stop":
        return stop()
    if args.command == "ui":
        return ui()
    print(ensure_api_url())
    return 0


if __name__ == "__main__":
    sys.exit(main())
