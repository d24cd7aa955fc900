"""Prefect flows, one per DVC stage (`python -m flows.<stage>`), plus the pipeline flow.

Importing this package sets the project's own defaults before Prefect reads its settings: the
Prefect home (database, logs) lives inside the project, and nothing phones home.
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
