"""Every case of the bad-input corpus (tests/bad_inputs/cases.py), run as DVC runs the stages.

Each case gets its own project folder with its params.yaml and input files, then its stages run
one `python -m flows.<stage>` subprocess at a time (through the warm stage runner, against the
session's one Prefect API). An `error` case must stop with a non-zero exit and exactly one
`error: ...` line matching its regex, print no traceback and leave every input byte-identical; a
`quarantine` or `repair` case must finish with the named rows quarantined (with the reason) or
repaired (in the ledger), and every input row accounted for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.bad_inputs.cases import CASES, DELETE, Case
from tests.conftest import ROOT, shrunk_params_dict

SPLITS = ("train", "val", "test")
UPSTREAM = ("ingest", "validate", "repair", "augment")


def base_params(base: str) -> dict:
    raw = shrunk_params_dict()
    if base == "tabular":
        raw["data"] = {"modality": "tabular", "label": "label", "id": "id", "image_shape": None}
        raw["ingest"]["datasets"] = {}
        raw["validate"]["min_rows"] = 3
        raw["validate"]["schema"]["columns"] = {"color": {"dtype": "category"}}
    return raw


def edit(raw: dict, changes: dict) -> dict:
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(key, None)
        else:
            node[key] = value
    return raw


@pytest.fixture(scope="session")
def stage_env(prefect_harness, tmp_path_factory) -> dict:
    """The environment of a stage subprocess: the session's Prefect API, the warm runner kept idle
    for 2 minutes (stopped at the end), nothing inherited from the developer's own Prefect setup."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TRAINFLOW_"))}
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_HOME=str(tmp_path_factory.mktemp("prefect_home")),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", TRAINFLOW_WARM_IDLE="120", DVC_NO_ANALYTICS="1",
               PYTHONPATH=str(ROOT))
    yield env
    subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=ROOT, env=env, capture_output=True)


def run_stage(stage: str, folder: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"flows.{stage}"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="session")
def digits_data(stage_env, tmp_path_factory) -> Path:
    """data/ after ingest..augment on the shrunk digits, built once for the weights cases."""
    folder = tmp_path_factory.mktemp("digits_data")
    (folder / "params.yaml").write_text(yaml.safe_dump(base_params("image"), sort_keys=False))
    for stage in UPSTREAM:
        result = run_stage(stage, folder, stage_env)
        assert result.returncode == 0, result.stderr[-3000:]
    return folder / "data"


def digest(folder: Path, paths) -> dict[str, str]:
    return {p: hashlib.sha256((folder / p).read_bytes()).hexdigest() for p in paths}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path, stage_env, request):
    folder = tmp_path / "project"
    folder.mkdir()
    if case.base == "digits_data":
        shutil.copytree(request.getfixturevalue("digits_data"), folder / "data")
    (folder / "params.yaml").write_text(yaml.safe_dump(edit(base_params(case.base), case.params), sort_keys=False))
    for path, build in case.files.items():  # a case's own params.yaml (text) replaces the generated one
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(build.encode() if isinstance(build, str) else build())
    for link, target in case.links.items():
        (folder / link).parent.mkdir(parents=True, exist_ok=True)
        (folder / link).symlink_to(target)
    inputs = ["params.yaml", *(f for f in case.files if not (folder / f).is_dir())]
    before = digest(folder, inputs)

    results = []
    with full_disk(folder / case.full_disk) if case.full_disk else contextlib.nullcontext():
        for stage in case.stages:  # stop at the first failure, as `dvc repro` does
            results.append(run_stage(stage, folder, stage_env))
            if results[-1].returncode != 0:
                break
    output = "".join(r.stdout + r.stderr for r in results)
    assert "Traceback" not in output, output[-4000:]
    assert digest(folder, inputs) == before, "a stage changed its inputs"
    for name in case.absent:
        assert not (folder / name).exists(), f"{name} appeared: a payload ran"

    last = results[-1]
    if case.error:
        assert len(results) == len(case.stages), f"stopped early at {case.stages[len(results) - 1]}: {last.stderr[-2000:]}"
        assert last.returncode != 0
        errors = [line for line in last.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, last.stderr[-3000:]
        assert re.search(case.error, errors[0]), errors[0]
        print(errors[0])  # pytest -rP lists every case's line (docs/bad-inputs.md quotes them)
        return
    assert last.returncode == 0 and len(results) == len(case.stages), last.stderr[-3000:]
    if case.quarantine:
        _check_quarantine(folder, case.quarantine)
    if case.repair:
        _check_repair(folder, case.repair)
    for path, pattern in case.produces.items():
        assert re.search(pattern, (folder / path).read_text()), f"{path}: {(folder / path).read_text()[:2000]}"


@contextlib.contextmanager
def full_disk(folder: Path):
    """`folder` on a tmpfs with no byte left: every write in it fails as on a full disk."""
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        filler = open(folder / ".filler", "wb", buffering=0)
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:  # ENOSPC: full
            filler.close()
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _check_quarantine(folder: Path, expect: dict) -> None:
    dataset, split = expect["split"].split("/")
    splits = SPLITS if split == "*" else (split,)
    quarantined = pd.concat([pd.read_parquet(folder / f"data/validated/{dataset}/{s}.quarantine.parquet") for s in splits])
    reasons = dict(zip(quarantined["id"].astype(int), quarantined["_reason"], strict=True))
    for row in expect["ids"]:
        assert row in reasons, f"id {row} not quarantined; quarantine holds {sorted(reasons)}"
        assert re.search(expect["reason"], reasons[row]), reasons[row]
    for s in SPLITS:  # nothing lost: every raw row is valid or quarantined
        raw = set(pd.read_parquet(folder / f"data/raw/{dataset}/{s}.parquet")["id"])
        kept = set(pd.read_parquet(folder / f"data/validated/{dataset}/{s}.parquet")["id"])
        held = set(pd.read_parquet(folder / f"data/validated/{dataset}/{s}.quarantine.parquet")["id"])
        assert raw == kept | held and not kept & held, f"{dataset}/{s}: rows lost or doubled"


def _check_repair(folder: Path, expect: dict) -> None:
    ledger = pd.read_parquet(folder / "data/repaired/source/ledger.parquet")
    hits = ledger[(ledger["column"] == expect["column"]) & ledger["rule"].astype(str).str.contains(expect["rule"])]
    assert set(expect["ids"]) <= set(hits["row_id"]), f"ledger for {expect['column']}: {hits.head(10)}"
    repaired = pd.concat([pd.read_parquet(folder / f"data/repaired/source/{s}.parquet") for s in SPLITS])
    values = repaired.set_index("id").loc[expect["ids"], [c for c in repaired.columns if c.startswith(expect["column"])]]
    assert values.notna().all().all(), "the repaired rows still hold missing values"
