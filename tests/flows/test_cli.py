"""`python -m flows.<stage>` as DVC runs it: user mistakes end with one line and a non-zero exit."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_repo, shrunk_params_dict


def _run(cwd, stage="train"):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PREFECT_API_URL": "http://127.0.0.1:9/api", "TRAINFLOW_WARM": "0"}
    return subprocess.run([sys.executable, "-m", f"flows.{stage}"], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda p: p["train"].update(optimiser={"lr": 1}), "params.yaml: train.optimiser: unknown key (allowed: "),
    (lambda p: p["train"]["optimizer"].update(lr=-1), "params.yaml: train.optimizer.lr: got -1; input should be greater than 0"),
    (lambda p: p["finetune"].update(strategy="freeze_all"), "params.yaml: finetune.strategy: got 'freeze_all'"),
    (lambda p: p.pop("data") and p.update(data=[1]), "params.yaml: data: got [1]"),
])
def test_bad_params_give_one_line_and_exit_2(tmp_path, edit, expected):
    params = shrunk_params_dict()
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before = (tmp_path / "params.yaml").read_bytes()
    result = _run(tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert (tmp_path / "params.yaml").read_bytes() == before


def _bare_python() -> str | None:
    """An interpreter without the project's packages, as a fresh Debian's python3 or a pyenv shim is."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        probe = subprocess.run([candidate, "-c", "import prefect"], capture_output=True) if Path(candidate).exists() else None
        if probe is not None and probe.returncode != 0:
            return candidate
    return None


@pytest.mark.skipif(_bare_python() is None, reason="no interpreter without the project's packages on this machine")
def test_a_stage_under_an_interpreter_without_the_packages_says_so_in_one_line(tmp_path):
    bare = _bare_python()
    project = copy_repo(tmp_path / "project")
    (project / ".venv").symlink_to(ROOT / ".venv")  # installed, but not on PATH: the newcomer's case
    result = subprocess.run([bare, "-m", "flows.ingest"], cwd=project, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # bytecode writing on
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: flows.ingest: {bare} has no prefect"), lines[0]
    assert lines[0].endswith("run '. .venv/bin/activate' first, or use 'make run'"), lines[0]
    assert not (project / ".prefect").exists()  # no warm runner or server started under that interpreter


def test_stage_tasks_keep_no_prefect_result_cache():
    """DVC caches stage outputs: Prefect's task cache would hash every input (and log a traceback for
    a torch module it cannot hash) to key results nobody reads. A fresh process, as a stage is."""
    probe = ("import flows, tasks.compress; from prefect.cache_policies import NO_CACHE; "
             "print(tasks.compress.measure.cache_policy is NO_CACHE)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT / ".cache")})
    assert result.stdout.strip() == "True", result.stderr
