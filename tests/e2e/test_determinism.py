"""Two runs of the whole default pipeline from scratch on CPU give the same metrics and models.

Each run is a `dvc repro` in its own fresh copy of the repo (shrunk config, compress budgets
shrunk too), with nothing shared but the code: no data, no checkpoints, no Prefect database.
Same params -> byte-identical evaluate metrics.json and identical hashes of every model file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_repo, free_port, shrunk_params_dict

BIN = Path(sys.executable).parent


def _params() -> dict:
    raw = shrunk_params_dict()
    raw["compress"]["prune"] = [{"amount": 0.5, "scope": "global", "structure": "unstructured", "finetune_epochs": 1}]
    raw["compress"]["distill"]["trainer"].update(max_epochs=1, accelerator="cpu", num_threads=1)
    raw["compress"]["quantize"]["calibration_rows"] = 64
    raw["compress"]["latency"].update(batch_sizes=[1], budget_batch=1, warmup=1, repeats=3)
    return raw


def _run_from_scratch(root: Path) -> dict[str, str]:
    copy_repo(root)
    (root / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
    (root / "dvc.lock").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TRAINFLOW_"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", PREFECT_HOME=str(root / ".prefect"),
               TRAINFLOW_PREFECT_HOME=str(root.parent / "prefect-server"),
               TRAINFLOW_PREFECT_PORT=str(free_port()),
               TRAINFLOW_PREFECT_IDLE_S="60", TRAINFLOW_WARM_IDLE="60", DVC_NO_ANALYTICS="1")
    try:
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
            subprocess.run(cmd, cwd=root, check=True, env=env, capture_output=True)
        result = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=1500)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=root, env=env, capture_output=True)
        subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=root, env=env, capture_output=True)
    hashes = {str(p.relative_to(root)): _onnx_digest(p) if p.suffix == ".onnx" else hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted((root / "models").rglob("*")) if p.is_file() and p.suffix in (".safetensors", ".onnx")}
    hashes["reports/evaluate/metrics.json"] = hashlib.sha256((root / "reports/evaluate/metrics.json").read_bytes()).hexdigest()
    return hashes


def _onnx_digest(path: Path) -> str:
    """The graph's weights and operators: the exporter's metadata names source paths, which differ
    between the two copies of the repo."""
    import onnx
    from onnx import numpy_helper

    model, digest = onnx.load(str(path)), hashlib.sha256()
    for tensor in model.graph.initializer:
        digest.update(tensor.name.encode() + numpy_helper.to_array(tensor).tobytes())
    for node in model.graph.node:
        digest.update(node.op_type.encode())
    return digest.hexdigest()


@pytest.mark.slow
def test_two_runs_from_scratch_give_identical_metrics_and_models(tmp_path):
    first = _run_from_scratch(tmp_path / "first")
    second = _run_from_scratch(tmp_path / "second")
    assert any(k.startswith("models/train/") for k in first) and any(k.startswith("models/finetune/") for k in first)
    metrics = json.loads((tmp_path / "first/reports/evaluate/metrics.json").read_text())
    assert "accuracy" in metrics
    differ = sorted(k for k in first if first[k] != second.get(k))
    assert first.keys() == second.keys() and not differ, f"differ between runs: {differ}"
