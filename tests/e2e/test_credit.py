"""The credit example (examples/credit): real missing values, outliers and imbalance.

A fast test runs validate and repair in-process on the real table with the example's params and
checks that no row is lost; a slow one runs `dvc repro` in the example folder of a fresh copy of
the repository and checks the model beats the majority-class baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tasks.config import load_params
from tasks.frames import SPLITS
from tasks.ingest import carve_and_split, read_source
from tasks.repair import repair_split, repair_train, unaccounted
from tasks.validate import categories_seen, validate_split
from tests.conftest import ROOT, copy_repo
from tests.e2e.test_pipeline import _env

EXAMPLE = ROOT / "examples" / "credit"


def test_credit_validate_and_repair_lose_no_row_and_leave_no_missing_value():
    params = load_params(EXAMPLE / "params.yaml")
    data, cfg = params.data, params.validate_
    raw = read_source(params.ingest.source, data)
    splits = carve_and_split.fn(raw, params.ingest, data)[0]["source"]
    valid, quarantined, known = {}, {}, None
    for split in SPLITS:
        valid[split], quarantined[split], report = validate_split.fn(splits[split], data, ["bad", "good"], cfg, known)
        assert not report.fatal
        known = categories_seen(valid["train"], cfg.schema_)
    assert sum(v["Income"].isna().sum() for v in valid.values()) == 381  # the real missing incomes reach repair
    first_id = int(raw[data.id].max()) + 1
    repairer, repaired, ledger, _ = repair_train.fn(valid["train"], params.repair, data, cfg.schema_, first_id)
    outputs, ledgers = [repaired], [ledger]
    for split in ("val", "test"):
        frame, split_ledger, _ = repair_split.fn(repairer, valid[split], split)
        outputs.append(frame)
        ledgers.append(split_ledger)
    ledger = pd.concat(ledgers, ignore_index=True)
    out = pd.concat(outputs, ignore_index=True)
    features = [c for c in out.columns if c not in (data.id, data.label)]
    assert not out[features].isna().any().any()
    assert "Income__missing" in out.columns and "Home=owner" in out.columns
    lost = unaccounted(raw[data.id], out[data.id], np.concatenate([q[data.id] for q in quarantined.values()]), ledger)
    assert len(lost) == 0, f"rows lost: {lost[:10]}"
    assert (ledger["rule"] == "missing: knn").sum() == 381 and (ledger["rule"] == "outlier iqr: clip").sum() > 0


def test_credit_dvc_yaml_lists_only_params_its_params_yaml_has():
    import yaml

    params = yaml.safe_load((EXAMPLE / "params.yaml").read_text())
    load_params(EXAMPLE / "params.yaml")  # and they parse
    for name, stage in yaml.safe_load((EXAMPLE / "dvc.yaml").read_text())["stages"].items():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"examples/credit/dvc.yaml stage {name}: params key {key} absent"
                node = node[part]
        for dep in stage.get("deps", []):
            produced = dep.startswith(("data/", "models/", "reports/"))
            assert (EXAMPLE / dep).exists() or produced, f"stage {name}: dep {dep} missing"


@pytest.mark.slow
def test_credit_example_repro_beats_the_majority_baseline(tmp_path):
    root = copy_repo(tmp_path / "repo")
    env = _env(root)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True, env=env)
    example = root / "examples" / "credit"
    env["PREFECT_HOME"] = str(example / ".prefect")
    try:
        result = subprocess.run(["dvc", "repro"], cwd=example, env=env, capture_output=True, text=True, timeout=1800)
    finally:
        subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=example, env=env, capture_output=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    effects = json.loads((example / "reports/repair_effects.json").read_text())
    metrics = json.loads((example / "reports/evaluate/metrics.json").read_text())
    majority = effects["majority class baseline"]
    assert metrics["accuracy"] > majority["accuracy"] + 0.04 and metrics["macro_f1"] > majority["macro_f1"] + 0.2
    summary = json.loads((example / "reports/repair/summary.json").read_text())["source"]
    assert summary["train"]["missing_before"] > 0
    assert all(s["missing_after"] == 0 and s["unaccounted"] == 0 for s in summary.values())
    assert summary["train"]["clipped_values"] > 0 and summary["train"]["class_counts_before"]
