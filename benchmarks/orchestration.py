"""Orchestration overhead: the pipeline through `dvc repro` against the same stage flows called
one after another in a single process, in the same run, on the same data.

overhead_per_stage_s = (dvc repro wall time + the warm runner's one-off start - single-process wall
time) / stages: what the DAG costs over plain function calls (a process per stage, DVC's staleness
checks and hashing, connecting to the Prefect server). The single process pays the imports once;
`dvc repro` pays them once in the warm stage runner's start (flows/_warm.py), which is counted.
Both sides use the same already-running project Prefect server (its start is reported on its own).
The same `dvc repro` with every stage in a fresh process (TRAINFLOW_WARM=0) is measured too.

    python benchmarks/orchestration.py            # the default pipeline (params.yaml)
    python benchmarks/orchestration.py --quick    # the 8x8 digits and 1-epoch budgets of the tests

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])  # dvc.yaml's order is topological
IGNORE = shutil.ignore_patterns(".venv", ".git", "data", "models", "reports", ".prefect", "__pycache__", "*.egg-info",
                                ".cache", "checkpoints")

DIRECT = """
import json, sys, time
from importlib import import_module
from tasks.config import load_params
params = load_params()
times = {}
for stage in sys.argv[1:]:
    start = time.perf_counter()
    getattr(import_module(f"flows.{stage}"), stage)(params)
    times[stage] = time.perf_counter() - start
print("TIMES " + json.dumps(times))
"""


def _env(root: Path, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TRAINFLOW_"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PREFECT_HOME=str(root / ".prefect"),
               TRAINFLOW_PREFECT_PORT=str(port), DVC_NO_ANALYTICS="1", PYTHONPATH=str(root))
    return env


def _run(cmd: list[str], root: Path, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed, result.stdout


def _clean(root: Path) -> None:
    for folder in ("data", "models", "reports"):
        shutil.rmtree(root / folder, ignore_errors=True)
    (root / "dvc.lock").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and budgets (as in the tests)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="trainflow-bench-") as tmp:
        root = Path(shutil.copytree(ROOT, Path(tmp) / "repo", ignore=IGNORE))
        if args.quick:
            sys.path.insert(0, str(ROOT))
            from tests.conftest import shrunk_params_dict

            (root / "params.yaml").write_text(yaml.safe_dump(shrunk_params_dict(), sort_keys=False))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = _env(root, port)
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "bench"]):
            subprocess.run(cmd, cwd=root, env=env, check=True)
        _clean(root)
        try:
            server_start_s, _ = _run([sys.executable, "-m", "flows._server", "url"], root, env)
            print(f"project Prefect server up in {server_start_s:.1f} s", file=sys.stderr)
            warm_start_s, _ = _run([sys.executable, "-c", "import flows._warm as w; w.start()"], root, env)
            print(f"warm stage runner up in {warm_start_s:.1f} s", file=sys.stderr)

            direct_s, out = _run([sys.executable, "-c", DIRECT, *STAGES], root, env)
            per_stage = json.loads(out.split("TIMES ", 1)[1].splitlines()[0])
            print(f"single process: {direct_s:.1f} s {per_stage}", file=sys.stderr)

            _clean(root)
            repro_s, _ = _run(["dvc", "repro"], root, env)
            print(f"dvc repro (warm stage runner): {repro_s:.1f} s", file=sys.stderr)
            noop_s, out = _run(["dvc", "repro"], root, env)
            assert "up to date" in out, out
            _clean(root)
            cold_s, _ = _run(["dvc", "repro"], root, {**env, "TRAINFLOW_WARM": "0"})
            print(f"dvc repro (every stage a fresh process): {cold_s:.1f} s", file=sys.stderr)
        finally:
            subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=root, env=env, capture_output=True)
            subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=root, env=env, capture_output=True)

    result = {
        "benchmark": "orchestration", "params": "quick" if args.quick else "default", "stages": len(STAGES),
        "dvc_repro_s": round(repro_s, 2), "single_process_s": round(direct_s, 2),
        # The single process pays the imports once; a first `dvc repro` pays them once too, in the
        # warm runner's start, so that start counts here. Later runs in its idle window skip it.
        "overhead_per_stage_s": round((repro_s + warm_start_s - direct_s) / len(STAGES), 2),
        "overhead_per_stage_runner_already_warm_s": round((repro_s - direct_s) / len(STAGES), 2),
        "dvc_repro_cold_s": round(cold_s, 2), "overhead_per_stage_cold_s": round((cold_s - direct_s) / len(STAGES), 2),
        "noop_repro_s": round(noop_s, 2), "server_start_once_s": round(server_start_s, 2),
        "warm_runner_start_once_s": round(warm_start_s, 2),
        "stage_work_s": {k: round(v, 2) for k, v in per_stage.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
