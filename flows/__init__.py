"""Prefect flows, one per DVC stage (`python3 -m flows.<stage>`), plus the pipeline flow.

Importing this package first checks that this interpreter has the project's packages (DVC runs a
stage's command with whatever `python3` the caller's PATH finds, and activates no virtualenv), then
sets the project's own defaults before Prefect reads its settings (the Prefect client's home lives
inside the project, nothing phones home), then hands `python3 -m flows.<stage>` to the warm stage runner
(flows/_warm.py), which runs it in a fork of a process that has already imported torch, Lightning
and Prefect: a stage then starts in ~0.5 s instead of 5-10 s.
Stdlib only above the hook, so a delegated stage costs ~30 ms here.
"""

import importlib.util
import os
import sys
from pathlib import Path

# What every stage imports; find_spec locates a package without importing it (well under 1 ms).
REQUIRED = ("prefect", "pandas", "pandera", "pyarrow", "pydantic", "yaml", "torch", "lightning", "dvc")


def _require_packages() -> None:
    """One line and exit 2 under an interpreter without the project's packages, before anything
    (the warm runner included) starts under it: a traceback from deep inside would hide the fix."""
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    venv = Path(__file__).resolve().parent.parent / ".venv"
    fix = ("run '. .venv/bin/activate' first, or use 'make run'"
           if (venv / "bin" / "python3").exists() else "install the project first: 'make install'")
    stage = (getattr(sys, "orig_argv", [])[2:3] or ["flows"])[0]
    more = f" (nor {len(missing) - 1} more of trainflow's packages)" if len(missing) > 1 else ""
    print(f"error: {stage}: {sys.executable} has no {missing[0]}{more}: {fix}", file=sys.stderr)
    raise SystemExit(2)


_require_packages()

_defaults = {
    "PREFECT_HOME": str(Path.cwd() / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "TORCH_HOME": str(Path.cwd() / ".cache" / "torch"),
    "HF_HUB_OFFLINE": "1",
    # DVC caches stage outputs; Prefect's own task cache would only hash every input (and log a
    # traceback for a torch module it cannot hash) to key results nobody reads.
    "PREFECT_TASKS_DEFAULT_NO_CACHE": "true",
}
for _key, _value in _defaults.items():
    os.environ.setdefault(_key, _value)

# Must stay last: from here on, a delegated `python3 -m flows.<stage>` exits with the stage's status.
from flows._warm import maybe_delegate as _maybe_delegate  # noqa: E402

_maybe_delegate()
