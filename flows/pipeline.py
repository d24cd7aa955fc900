"""The pipeline flow: the DAG that dvc.yaml declares, one Prefect task per stage, DVC deciding
what is stale.

Reads the stages and their order through DVC's own API (the collect + plan that `dvc repro`
uses), so nothing here restates dvc.yaml. For each stage in dependency order it asks DVC whether
the stage is stale (`Repo.status`): an up-to-date stage ends as a Completed state named "Skipped"
with the reason; a stale one runs `dvc repro --single-item <stage>` in its own process group, its
output streamed line by line into this Prefect run, with the API URL passed down so the stage's
own flow run (and its artifacts) land on the same server. Cancelling the run (UI, CLI, or a
worker's SIGTERM) stops the stage's whole process group; outputs are written atomically and
dvc.lock changes only when a stage finishes, so the next run picks up where this one stopped.

One run at a time in a checkout: the flow holds an flock on .dvc/tmp/trainflow-pipeline.lock for
its whole run; a second run logs whose run it waits for, then runs (finding the first one's stages
up to date), or fails after TRAINFLOW_PIPELINE_WAIT_S (default an hour).

Params overrides (`-S train.optimizer.lr=0.01`) are applied as `dvc exp run -S` applies them
(DVC's Hydra override grammar; params.yaml keeps its comments), but only after the result has
parsed through tasks/config.py: a bad override fails the run before any stage starts and leaves
params.yaml as it was. Like `dvc exp run`, a good override stays in the workspace's params.yaml.

    python -m flows.pipeline [TARGET ...] [--force] [-S KEY=VALUE ...]

Writes params.yaml (overrides only), the stages' outputs (through DVC), a `pipeline-summary` artifact.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Completed, Failed

from flows._stage import CheckoutBusy, fails_cleanly, lock_checkout
from flows._warm import CHILD_ENV
from tasks.config import parse_params
from tasks.errors import UserError

PARAMS = Path("params.yaml")
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL for whatever of a stage's process group is left
POLL_S = 2.0  # how often a running stage asks the server whether its flow run was cancelled
CONSOLE_PREFIX = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| \w+ +\| ")  # the stage's own Prefect console format
# One pipeline run at a time in a checkout. Not flows/_stage.py's stage lock: the stages this run
# starts take that one themselves, one after another, while this run holds its own for its whole length.
PIPELINE_LOCK = Path(".dvc") / "tmp" / "trainflow-pipeline.lock"  # under the DVC project's root
PIPELINE_WAIT_S = float(os.environ.get("TRAINFLOW_PIPELINE_WAIT_S", "3600"))  # then a second run is refused


# ------------------------------------------------------------------------------ what DVC says
def apply_overrides(overrides: list[str], path: Path = PARAMS) -> None:
    """KEY=VALUE overrides into params.yaml as `dvc exp run -S` does, if the result parses."""
    if not overrides:
        return
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    trial = path.with_name(f".{path.stem}.overrides{path.suffix}")  # DVC picks its editor by suffix
    shown = f"{path} with -S {' -S '.join(overrides)}"
    try:
        shutil.copyfile(path, trial)
        try:
            # `++key=value` sets a key whether or not params.yaml writes it: the file holds only what the
            # project chooses, every other key has its default (with `dvc exp run -S`, write `+key=value`).
            dvc_apply_overrides(trial, [o if o.startswith(("+", "~")) else f"++{o}" for o in overrides])
        except InvalidArgumentError as e:
            raise UserError(f"{shown}: {' '.join(str(e.__cause__ or e).split())}") from None
        parse_params(yaml.safe_load(trial.read_text(encoding="utf-8")) or {}, source=shown)
        os.replace(trial, path)
    finally:
        trial.unlink(missing_ok=True)


def stages_upstream_of(targets: list[str] | None = None) -> list[str]:
    """The stages `dvc repro TARGETS` would visit, upstream first (default: this folder's dvc.yaml)."""
    from dvc.dvcfile import PROJECT_FILE
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    try:
        with Repo(".") as repo:
            stages = collect_stages(repo, targets or [PROJECT_FILE])
            return [stage.addressing for stage in plan_repro(get_active_graph(repo.index.graph), stages)]
    except DvcException as e:
        raise UserError(f"dvc.yaml: targets {targets or [PROJECT_FILE]}: {' '.join(str(e).split())}") from None


def _describe(change) -> str:
    if isinstance(change, dict):
        return ", ".join(f"{k}: {_describe(v)}" if isinstance(v, dict) else f"{k} {v}" for k, v in change.items())
    return str(change)


def staleness(stage: str) -> str | None:
    """Why DVC would rerun `stage` (e.g. "changed deps: params.yaml: train.seed modified"), or None."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        status = repo.status(targets=[stage])
    changes = [entry for entries in status.values() for entry in entries]
    if not changes:
        return None
    reason = "; ".join(_describe(c) if isinstance(c, dict) else str(c) for c in changes)
    return reason if len(reason) <= 400 else reason[:397] + "..."


# --------------------------------------------------------------------------- running a stage
def stage_env() -> dict[str, str]:
    """This process's environment plus what a stage needs to report to the same server."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.settings import get_current_settings

    from flows import _runs

    settings = get_current_settings()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if settings.api.url:
        env["PREFECT_API_URL"] = settings.api.url
    if settings.api.auth_string:
        env["PREFECT_API_AUTH_STRING"] = settings.api.auth_string.get_secret_value()
    # When this flow itself runs in a warm fork (flows/_warm.py), that fork's mark would make every
    # stage start cold; a stage is a separate `python -m flows.<stage>` that may be warm again.
    env.pop(CHILD_ENV, None)
    env.pop(_runs.CLIENT_PID_ENV, None)
    # The stage's flow run is a subflow of this task's run, and its tag groups it with this run's.
    if task_run := TaskRunContext.get():
        env[_runs.PARENT_ENV] = str(task_run.task_run.id)
    if flow_run := FlowRunContext.get():
        env[_runs.GROUP_ENV] = str(flow_run.flow_run.id)[:8]
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the stage's process group (dvc, the stage, Lightning's workers); SIGKILL the rest."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not _group_alive(process.pid):
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(process.pid):
            process.poll()  # reap dvc itself, the group's leader
            time.sleep(0.1)
    process.poll()


def _cancel_requested(client, flow_run_id) -> bool:
    try:
        state = client.read_flow_run(flow_run_id).state
    except Exception:  # a server hiccup is no reason to stop a stage
        return False
    return state is not None and (state.is_cancelling() or state.is_cancelled())


@task(cache_policy=NO_CACHE)  # no retries: a stage that fails fails the same way again
def run_dvc_stage(stage: str, force: bool = False):
    """One DVC stage: Skipped when DVC says it is up to date, else `dvc repro -s`, logs streamed."""
    logger = get_run_logger()
    start = time.monotonic()
    reason = "forced (--force)" if force else staleness(stage)
    if reason is None:
        message = "up to date: its deps, params and outs match dvc.lock"
        logger.info(f"{stage}: {message}")
        return Completed(name="Skipped", message=message, data={"stage": stage, "outcome": "skipped", "reason": message})

    logger.info(f"{stage}: running, {reason}")
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", *(["--force"] if force else []), stage]
    # A process group of its own: cancelling stops dvc, the stage and every worker it started.
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=stage_env(), start_new_session=True, text=True, errors="replace")
    cancelled, tail = _follow(process, stage, logger)
    seconds = round(time.monotonic() - start, 2)
    result = {"stage": stage, "reason": reason, "seconds": seconds}
    if cancelled:
        return Cancelled(message=f"{stage}: cancelled; no output of it was recorded in dvc.lock",
                         data=result | {"outcome": "cancelled"})
    if process.returncode != 0:
        errors = [line for line in tail if line.startswith(("error:", "ERROR"))] or tail[-1:]
        return Failed(message=f"{stage}: exit {process.returncode}: {errors[0] if errors else 'no output'}",
                      data=result | {"outcome": "failed"})
    restored = any("is cached - skipping run" in line for line in tail)
    outcome = "restored" if restored else "ran"
    return Completed(name="Restored" if restored else "Completed", message=f"{stage}: {outcome} ({reason})",
                     data=result | {"outcome": outcome})


def _follow(process: subprocess.Popen, stage: str, logger) -> tuple[bool, list[str]]:
    """Stream the stage's output into the run's logs until it ends, or stop its process group when
    the flow run is cancelled. Returns (cancelled, the last 20 lines)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    tail: list[str] = []

    def stream() -> None:
        for line in process.stdout:
            if line := CONSOLE_PREFIX.sub("", line.rstrip()):
                logger.info(line)
                tail[:] = [*tail[-19:], line]

    # The thread runs in this context: Prefect's settings (the API URL) live in context variables.
    reader = threading.Thread(target=contextvars.copy_context().run, args=(stream,), daemon=True)
    reader.start()
    context = FlowRunContext.get()
    flow_run_id = context.flow_run.id if context and context.flow_run else None
    cancelled = False
    try:
        with get_client(sync_client=True) as client:
            while process.poll() is None:
                try:
                    process.wait(timeout=POLL_S)
                except subprocess.TimeoutExpired:
                    if flow_run_id and _cancel_requested(client, flow_run_id):
                        cancelled = True
                        logger.warning(f"{stage}: the flow run was cancelled; stopping the stage's processes")
                        break
    finally:  # also on the SIGTERM a worker sends when the run is cancelled (Prefect raises it here)
        stop_group(process)
        reader.join(timeout=5)
    return cancelled, tail


# ---------------------------------------------------------------------- one run per checkout
def _this_run() -> str:
    """How a waiting run names this one: the flow run's name and id, and the pid."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context else None
    return f"'{run.name}' ({run.id}), pid {os.getpid()}" if run else f"pid {os.getpid()}"


@contextmanager
def pipeline_lock(holder: str, wait_s: float = PIPELINE_WAIT_S, log: Callable[[str], None] = print,
                  poll_s: float = 0.5) -> Iterator[None]:
    """Hold this checkout's pipeline lock for a whole run, so two runs never interleave their
    stages or their params overrides. Busy: log once who holds it and wait; still busy after
    `wait_s`: a UserError."""
    try:
        fd = lock_checkout(PIPELINE_LOCK, holder, wait_s, poll_s=poll_s,
                           on_wait=lambda other: log(f"waiting for the pipeline run {other} in this checkout"))
    except CheckoutBusy as busy:
        raise UserError(f"refused after waiting {wait_s:.0f} s: the pipeline run {busy.holder} still runs in this "
                        "checkout (one at a time; TRAINFLOW_PIPELINE_WAIT_S sets the wait)") from None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def dies_with_its_worker(poll_s: float = 0.5) -> None:
    """In the process a worker (or `serve`) started for this flow run, stop as soon as the worker
    dies, even by kill -9. Prefect 3.9's process worker starts the run in a session of its own and
    nothing stops it when the worker dies: the run carried on unwatched (its stages' logs lost, as
    its stdout was a pipe to the worker), recorded its stages in dvc.lock and reported Completed.
    Here a thread sees the worker gone, points stdout and stderr at /dev/null (the first log line
    to the broken pipe would raise SystemExit in rich and replace the reason) and sends this process
    SIGTERM: the engine reports the run Crashed, and `_follow` stops the running stage's group."""
    worker = os.getppid()
    if not os.environ.get("PREFECT__FLOW_RUN_ID") or worker <= 1 or _WORKER_WATCH:  # not a runner's child; once
        return

    def watch() -> None:
        while os.getppid() == worker:  # a dead parent's children are re-parented
            time.sleep(poll_s)
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(devnull, fd)
        os.kill(os.getpid(), signal.SIGTERM)

    _WORKER_WATCH.append(threading.Thread(target=watch, name="dies-with-its-worker", daemon=True))
    _WORKER_WATCH[0].start()


_WORKER_WATCH: list[threading.Thread] = []


@contextmanager
def _recorded_under_a_worker() -> Iterator[None]:
    """Record a run a worker started as a stage records its own (flows/_runs.py), so a run killed
    without reporting (an OOM kill) is marked Crashed by the next stage or `make worker`, instead of
    holding the pool's slot. `python -m flows.pipeline` is recorded by flow_state already."""
    from prefect.context import FlowRunContext

    from flows import _runs, _server

    context = FlowRunContext.get()
    if not os.environ.get("PREFECT__FLOW_RUN_ID") or not context or not context.flow_run:
        yield
        return
    with _runs.recorded(_server.HOME, context.flow_run.id):
        yield


# ------------------------------------------------------------------------------- the flow
@flow(name="pipeline", log_prints=True)
@fails_cleanly
def pipeline(targets: list[str] | None = None, force: bool = False, overrides: list[str] | None = None):
    """Run the stages of dvc.yaml (or of `targets` and what they depend on) in DVC's order, one
    run at a time in a checkout: a second run waits for the first (then finds its stages up to date)."""
    dies_with_its_worker()
    with _recorded_under_a_worker(), pipeline_lock(_this_run(), PIPELINE_WAIT_S, log=get_run_logger().info):
        return _run_stages(targets, force, overrides)


def _run_stages(targets: list[str] | None, force: bool, overrides: list[str] | None):
    apply_overrides(list(overrides or []))
    stages = stages_upstream_of(targets)
    print(f"stages, upstream first: {', '.join(stages)}")
    results = []
    for stage in stages:
        state = run_dvc_stage.with_options(name=stage, task_run_name=stage)(stage, force, return_state=True)
        results.append(state.result() if state.is_completed() else
                       {"stage": stage, "outcome": state.name.lower(), "reason": state.message})
        if not state.is_completed():
            break
    create_table_artifact([{k: r.get(k, "") for k in ("stage", "outcome", "reason", "seconds")} for r in results],
                          key="pipeline-summary", description="The pipeline's stages: ran, skipped (and why) or failed")
    if state.is_cancelled():
        return Cancelled(message=state.message)
    if not state.is_completed():
        return Failed(message=state.message)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="stages or dvc.yaml files (default: ./dvc.yaml)")
    parser.add_argument("-f", "--force", action="store_true", help="rerun every stage, stale or not")
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param as `dvc exp run -S` does (repeatable)")
    args = parser.parse_args(argv)
    from flows._stage import run_flow

    return run_flow(pipeline, args.targets or None, args.force, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
