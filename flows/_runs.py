"""A stage's flow run: which project and experiment it belongs to, which `dvc repro` it is part
of, which pipeline run started it, and what became of it when its process died without saying.

Prefect creates a flow run when a flow is called. A stage creates its own first (the call the
engine makes, plus what the engine cannot know in a process of its own):
- tags: `project:<folder>` (DVC_ROOT's name, so an experiment's temporary copy reports its
  project's), `exp:<name>` under `dvc exp run` (DVC_EXP_NAME), and `repro:<id>`, one id per
  `dvc repro` / `dvc exp run` (the dvc process that started this stage's command), so the UI's tag
  filter shows one repro's stages together;
- a parent: under the pipeline flow (flows/pipeline.py) each stage's flow run is a subflow of the
  pipeline task that ran it (TRAINFLOW_PARENT_TASK_RUN_ID), so one pipeline run is one tree.
A stage killed by kill -9, or cut off from a server that died, never reports its end and would
stay Running in the database for ever. While it runs, each stage records its flow run in the
server's home (`runs/<id>.json`: its pid and the pid's start time); the next stage that starts,
in any project, marks the runs whose process is gone Crashed with the reason and drops the record.
A pipeline run a worker started records itself the same way, and `make worker` reaps first
(`python -m flows._runs reap`): such a run, killed, would otherwise hold the pool's one slot.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

from flows._warm import _parent_of, _starttime  # the warm client's /proc readers

PARENT_ENV = "TRAINFLOW_PARENT_TASK_RUN_ID"  # set by the pipeline flow for the stages it runs
GROUP_ENV = "TRAINFLOW_RUN_GROUP"  # ditto: the pipeline run's stages share its group
CLIENT_PID_ENV = "TRAINFLOW_CLIENT_PID"  # set by flows/_warm.py: the process dvc started
CRASHED = "the stage's process ended without reporting (killed, or its Prefect server was lost)"


# ------------------------------------------------------------------------- who started us
def _runs_dvc(pid: int) -> bool:
    """Whether `pid` is `dvc repro ...` or `dvc exp ...` (an experiment's executor included)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return False
    for i, arg in enumerate(argv[:4]):
        if os.path.basename(arg) == "dvc" or (arg == "dvc" and i and argv[i - 1] == "-m"):
            return bool(set(argv[i + 1:i + 3]) & {"repro", "exp"})
    return False


def repro_group(pid: int | None = None) -> str | None:
    """An id for the `dvc repro` / `dvc exp` process above `pid` (default: the stage's starter),
    the same for every stage it runs: a hash of host, pid and the pid's start time."""
    client = os.environ.pop(CLIENT_PID_ENV, None)  # read once: what this stage starts is not its client
    pid = pid or int(client or os.getpid())
    for _ in range(16):
        if pid <= 1:
            return None
        if _runs_dvc(pid):
            seed = f"{socket.gethostname()}:{pid}:{_starttime(pid)}"
            return hashlib.sha1(seed.encode()).hexdigest()[:8]
        pid = _parent_of(pid)
        if pid is None:
            return None
    return None


def project_root() -> Path:
    """The DVC project this stage belongs to: DVC_ROOT (an experiment's temporary copy names its
    project there), else the nearest folder above with a .dvc/, else this folder."""
    if root := os.environ.get("DVC_ROOT"):
        return Path(root)
    cwd = Path.cwd()
    return next((folder for folder in (cwd, *cwd.parents) if (folder / ".dvc").is_dir()), cwd)


def tags() -> list[str]:
    out = [f"project:{project_root().resolve().name}"]
    if experiment := os.environ.get("DVC_EXP_NAME"):
        out.append(f"exp:{experiment}")
    if group := os.environ.get(GROUP_ENV) or repro_group():
        out.append(f"repro:{group}")
    return out


# ------------------------------------------------------------------------ the flow run
def create(client, flow, parameters: dict):
    """The stage's flow run, Pending, as the engine would create it, with our tags and parent."""
    from prefect.context import TagsContext
    from prefect.states import Pending

    parent = os.environ.get(PARENT_ENV)
    return client.create_flow_run(
        flow=flow, parameters=flow.serialize_parameters(parameters), state=Pending(),
        parent_task_run_id=UUID(parent) if parent else None,
        tags=sorted(set(TagsContext.get().current_tags) | set(tags())))


@contextmanager
def recorded(home: Path, flow_run_id: UUID) -> Iterator[None]:
    """Record the flow run under `home` while this process runs it (see the module's docstring).
    The record goes when the run ends as usual; it stays when the engine raised (it could not
    report the end) or the process is stopped, for the next stage to mark."""
    folder = home / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / f"{flow_run_id}.json"
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "start": _starttime(os.getpid()), "cwd": os.getcwd()}))
    os.replace(tmp, record)
    yield
    record.unlink(missing_ok=True)


def reap(client, home: Path) -> list[UUID]:
    """Mark Crashed the recorded runs whose process is gone and that never reached a final state;
    drop their records. Returns the runs marked."""
    from prefect.states import Crashed

    marked = []
    for record in sorted((home / "runs").glob("*.json")):
        try:
            seen = json.loads(record.read_text())
            if _starttime(seen["pid"]) == seen["start"]:
                continue  # still running
            flow_run_id = UUID(record.stem)
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        try:
            state = client.read_flow_run(flow_run_id).state
            if state is None or not state.is_final():
                client.set_flow_run_state(flow_run_id, Crashed(message=CRASHED), force=True)
                marked.append(flow_run_id)
        except Exception:  # noqa: BLE001 - another database (sqlite <-> postgres), or gone: nothing to mark
            pass
        record.unlink(missing_ok=True)
    return marked


def main() -> int:
    """`python -m flows._runs reap`: mark the recorded runs of dead processes Crashed now (`make
    worker` does, first: a deployment run killed without reporting would hold the pool's slot)."""
    import sys

    from prefect.client.orchestration import get_client

    from flows import _server

    if sys.argv[1:] != ["reap"]:
        print("usage: python -m flows._runs reap", file=sys.stderr)
        return 2
    with get_client(sync_client=True) as client:
        for flow_run_id in reap(client, _server.HOME):
            print(f"marked Crashed: flow run {flow_run_id} ({CRASHED})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
