"""What every stage shares: where outputs live, how params come in, how a stage ends.

`run_stage(flow)` is each stage's `__main__`: it parses params.yaml once (a mistake ends the run
with one line and exit 2), points Prefect at this project's shared server, runs the flow and turns
a user error into one line on stderr and exit 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

from tasks.config import ConfigError, Params, load_params
from tasks.errors import UserError

DATA = Path("data")
RAW, VALIDATED, REPAIRED, AUGMENTED = DATA / "raw", DATA / "validated", DATA / "repaired", DATA / "augmented"
MODELS = Path("models")
REPORTS = Path("reports")


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


def run_stage(flow, params_path: str = "params.yaml") -> None:
    try:
        params: Params = load_params(params_path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_flow(flow, params))


def run_flow(flow, *args, **kwargs) -> int:
    """Run `flow` against this project's Prefect server (kept alive while it runs); 0 when it
    completes, else its message on one line and 1. Every `python -m flows.*` entry point ends here."""
    from flows import _server
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with _server.in_use(), temporary_settings(updates={PREFECT_API_URL: _server.ensure_api_url()}):
        state = flow(*args, return_state=True, **kwargs)
    if not state.is_completed():
        print(f"error: {flow.name}: {state.message}", file=sys.stderr)
        return 1
    return 0
