"""Shared fixtures: a shrunk real config, a project folder in tmp_path, one Prefect harness.

Tests build the real config and shrink it (tiny epochs, the 8x8 sklearn digits), as
lightning-hydra-template does, and keep every output inside tmp_path.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import yaml

from tasks.config import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# The suite's own shared Prefect server home (flows/_server.py): tests never start, stop or record runs in
# the user's ~/.trainflow. Tests that need a server of their own set TRAINFLOW_PREFECT_HOME themselves.
os.environ["TRAINFLOW_PREFECT_HOME"] = tempfile.mkdtemp(prefix="trainflow-tests-prefect-")


def shrunk_params_dict() -> dict:
    """params.yaml with the 8x8 digits and budgets small enough for a test."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["image_shape"] = [1, 8, 8]
    raw["data"]["pixel_range"] = [0, 16]
    raw["ingest"]["source"] = {"kind": "sklearn_digits", "path": None}
    raw["train"]["backbone"] = {"kind": "cnn", "widths": [8, 16], "hidden": 16, "dropout": 0.0}
    for stage in ("train", "finetune"):
        raw[stage]["trainer"].update(max_epochs=1, batch_size=64, accelerator="cpu", num_threads=1)
    raw["finetune"]["labels_per_class"] = 5
    if raw.get("compress"):  # compress: 1-epoch fine-tunes and student, few timed calls
        c = raw["compress"]
        c["prune"] = [{**p, "finetune_epochs": min(p.get("finetune_epochs", 1), 1)} for p in c.get("prune") or []]
        c.setdefault("prune_trainer", {}).update(accelerator="cpu", num_threads=1)
        if c.get("distill"):
            c["distill"].setdefault("trainer", {}).update(max_epochs=1, batch_size=64, accelerator="cpu", num_threads=1)
        c.setdefault("quantize", {})["calibration_rows"] = 128
        c["latency"] = {**c.get("latency", {}), "warmup": 1, "repeats": 5}
    return raw


@pytest.fixture
def params() -> Params:
    return parse_params(shrunk_params_dict())


@pytest.fixture(scope="session")
def prefect_harness():
    """One throwaway Prefect API for the whole session (it costs 10-15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A working directory where stages write data/, models/ and reports/."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now (for servers a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_repo(dest: Path) -> Path:
    """The tracked project files in a fresh folder, as a clean clone would have them."""
    ignore = shutil.ignore_patterns(".venv", ".git", "data", "models", "reports", ".prefect", "__pycache__", "*.egg-info",
                                    ".cache", "checkpoints")
    shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)
    return dest
