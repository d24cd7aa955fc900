"""Prefect flows, one per DVC stage (`python -m flows.<stage>`), plus the pipeline flow.

Importing this package sets the project's own defaults before Prefect reads its settings (the
Prefect home lives inside the project, nothing phones home), then hands `python -m flows.<stage>`
to the warm stage runner (flows/_warm.py), which runs it in a fork of a process that has already
imported torch, Lightning and Prefect: a stage then starts in ~0.5 s instead of 5-10 s.
Stdlib only above the hook, so a delegated stage costs ~30 ms here.
"""

import os
from pathlib import Path

_defaults = {
    "PREFECT_HOME": str(Path.cwd() / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "TORCH_HOME": str(Path.cwd() / ".cache" / "torch"),
    "HF_HUB_OFFLINE": "1",
}
for _key, _value in _defaults.items():
    os.environ.setdefault(_key, _value)

# Must stay last: from here on, a delegated `python -m flows.<stage>` exits with the stage's status.
from flows._warm import maybe_delegate as _maybe_delegate  # noqa: E402

_maybe_delegate()
