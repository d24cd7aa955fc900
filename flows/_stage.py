"""What every stage shares: where outputs live, how params come in, how a stage ends.

`run_stage(flow)` is each stage's `__main__`: it takes the checkout's stage lock (one stage at a
time, see `checkout_lock`), parses params.yaml once (a mistake ends the run with one line and
exit 2), points Prefect at this project's shared server, runs the flow and turns a user error into
one line on stderr and exit 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.config import ConfigError, Params, load_params
from tasks.errors import UserError

DATA = Path("data")
RAW, VALIDATED, REPAIRED, AUGMENTED = DATA / "raw", DATA / "validated", DATA / "repaired", DATA / "augmented"
MODELS = Path("models")
REPORTS = Path("reports")
STAGE_LOCK = Path(".dvc") / "tmp" / "trainflow-stage.lock"  # under the DVC project's root
LOCK_WAIT_S = 3.0  # a stage stopped a moment ago may still be dying (the warm runner's grace: 1 s)
SERVER_LOST_S = float(os.environ.get("TRAINFLOW_SERVER_LOST_S", "20"))  # see stop_when_server_lost


def fails_cleanly(fn: Callable) -> Callable:
    """Wrap a flow body so a `UserError` ends the run as Failed with its one-line message, and
    Prefect logs no traceback for a mistake the user can fix."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from prefect.states import Failed

        try:
            return fn(*args, **kwargs)
        except UserError as e:
            return Failed(message=str(e))

    return wrapper


class CheckoutBusy(Exception):
    """Another process held the lock for the whole wait; `holder` is what it wrote into it."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def lock_checkout(lock: Path, holder: str, wait_s: float, on_wait: Callable[[str], None] | None = None,
                  poll_s: float = 0.1) -> int | None:
    """Take `lock` (a path under the DVC project's root; an flock) and write `holder` into it for
    whoever waits; closing the returned fd releases it. DVC's own locks die with `dvc repro`; the
    kernel releases this one only when the holding process itself is gone. Busy: `on_wait(holder)`
    once, then wait; still busy after `wait_s`: CheckoutBusy. Outside a DVC project: None, no lock."""
    root = next((folder for folder in (Path.cwd(), *Path.cwd().parents) if (folder / ".dvc").is_dir()), None)
    if root is None:
        return None
    path = root / lock  # examples/*/dvc.yaml stages run in a subfolder: the checkout's root holds it
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # not inherited by what the holder starts
    deadline, waited = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            other = os.pread(fd, 300, 0).decode(errors="replace").strip() or "pid unknown"
            if time.monotonic() >= deadline:
                os.close(fd)
                raise CheckoutBusy(other) from None
            if on_wait and not waited:
                on_wait(other)
            waited = True
            time.sleep(poll_s)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder}\n".encode(), 0)
    return fd


@contextmanager
def checkout_lock(stage: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold this checkout's stage lock while a stage runs: a rerun after a kill of `dvc repro` must
    not start a second training on the same checkpoints. Busy for `wait_s`: one line and exit 1."""
    try:
        fd = lock_checkout(STAGE_LOCK, f"{stage}, pid {os.getpid()}", wait_s)
    except CheckoutBusy as busy:
        print(f"error: {stage}: another stage is running in this checkout ({busy.holder}): wait for it or stop it",
              file=sys.stderr)
        sys.exit(1)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock (as the kernel does when the process dies)


def run_stage(flow, params_path: str = "params.yaml") -> None:
    with checkout_lock(flow.name):
        try:
            params: Params = load_params(params_path)
            refuse_absent_hardware(params, params_path)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        sys.exit(run_flow(flow, params))


def refuse_absent_hardware(params: Params, source: str = "params.yaml") -> None:
    """Every stage checks the hardware its trainers ask for, so `accelerator: gpu` on a machine
    without one stops the first stage, not train after four. torch is imported only when a trainer
    asks for more than this machine's CPU."""
    asked = {key: cfg for key, cfg in params.trainers().items()
             if cfg.accelerator not in ("auto", "cpu") or cfg.precision == "16-mixed" or cfg.strategy == "fsdp"
             or cfg.num_nodes > 1}
    if not asked:
        return
    from tasks.train import hardware_plan

    for key, cfg in asked.items():
        try:
            hardware_plan(cfg, key)
        except UserError as e:
            raise ConfigError(f"{source}: {e}") from None


def run_flow(flow, *args, **kwargs) -> int:
    """Run `flow` (see `flow_state`); 0 when it completes, else its message on one line and 1.
    Every `python -m flows.*` entry point ends here."""
    state = flow_state(flow, *args, **kwargs)
    if not state.is_completed():
        print(f"error: {flow.name}: {state.message}", file=sys.stderr)
        return 1
    return 0


def flow_state(flow, *args, **kwargs):
    """Run `flow` against the shared Prefect server (kept alive while it runs) and return its final
    state. The flow run is created first with its tags and parent, and recorded while it runs
    (flows/_runs.py); runs of stages that died without reporting are marked Crashed first.

    No heartbeats: Prefect's heartbeat thread sleeps in whole seconds and the engine joins it at
    the end of every run, which cost 0.5-1 s a stage (measured, of a 1.6 s stage); they only serve
    a zombie-run automation, which the record above replaces."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow as run_in_engine
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.states import Failed
    from prefect.utilities.callables import get_call_parameters

    from flows import _runs, _server

    url = _server.ensure_api_url()
    settings = {PREFECT_API_URL: url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    parameters = get_call_parameters(flow.fn, args, kwargs)
    with _server.in_use(), temporary_settings(updates=settings):
        with get_client(sync_client=True) as client:
            _runs.reap(client, _server.HOME)
            flow_run = _runs.create(client, flow, parameters)
        watching = stop_when_server_lost(url, flow.name)
        try:
            with _runs.recorded(_server.HOME, flow_run.id):
                return run_in_engine(flow, flow_run=flow_run, parameters=parameters, return_type="state")
        except httpx.TransportError as e:  # the end could not be reported: the record stays for the next stage
            return Failed(message=f"lost the Prefect server at {url} ({type(e).__name__}): nothing of this run "
                                  "is recorded as done; run it again")
        finally:
            watching.set()


def stop_when_server_lost(url: str, stage: str, lost_s: float = SERVER_LOST_S, interval_s: float = 2.0) -> threading.Event:
    """A daemon thread, until the returned event is set: once the server has not answered for
    `lost_s`, end this stage with one line and exit 1, its outputs unwritten (each is renamed into
    place whole) and DVC recording nothing. Without it, Prefect's client retries every call for
    about a minute and then fails with a wall of tracebacks while training carries on unrecorded.
    The run stays Running in the dead server's database until the next stage marks it Crashed
    (flows/_runs.py)."""
    from flows import _server

    done = threading.Event()

    def watch() -> None:
        down_since = None
        while not done.wait(interval_s):
            if _server.healthy(url, timeout=interval_s):
                down_since = None
                continue
            down_since = down_since or time.monotonic()
            logging.raiseExceptions = False  # Prefect's log shipper would print each failed batch
            if time.monotonic() - down_since >= lost_s:
                # After a line of that shipper's, which ends without a newline.
                print(f"\nerror: {stage}: the Prefect server at {url.removesuffix('/api')} stopped answering "
                      f"{lost_s:.0f} s ago: this run is not recorded as done; run it again (a new server starts)",
                      file=sys.stderr, flush=True)
                _stop_children()
                os._exit(1)

    threading.Thread(target=watch, name="trainflow-server-lost", daemon=True).start()
    return done


def _stop_children() -> None:
    """SIGTERM this process's own children (say, DataLoader workers) before it exits at once."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rpartition(")")[2].split()[1] == me:
                os.kill(int(stat.parent.name), signal.SIGTERM)
        except (OSError, IndexError, ValueError):
            continue
