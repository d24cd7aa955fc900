"""trainflow init's inference: what a table's declaration says, and why."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks.config import parse_params
from tasks.declare import declare
from tasks.errors import UserError

SOURCE = Path("data/table.csv")


def _table(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10, 1, rows).round(2)
    income[[3, 40, 77]] = 99999999  # the survey's code for "unknown"
    frame = pd.DataFrame({"row_id": np.arange(rows) + 1000, "age": rng.integers(18, 80, rows), "income": income,
                          "city": rng.choice(["north", "south", "east"], rows),
                          "label": np.where(np.arange(rows) % 5, "good", "bad")})
    frame.loc[[5, 9], "age"] = np.nan
    return frame


def test_the_declaration_parses_and_says_why():
    declared = declare(_table(), SOURCE, "label", "csv")
    params = parse_params(yaml.safe_load(declared.params))
    columns = params.validate_.schema_.columns
    assert params.data.id == "row_id" and params.data.label == "label"
    assert columns["age"].dtype == "int" and columns["age"].ge >= 0 and columns["age"].le >= 79
    assert columns["income"].missing_values == [99999999]  # flagged, and kept out of the range
    assert columns["income"].le < 99999999
    assert columns["city"].dtype == "category"
    assert params.repair.missing.indicators and params.repair.imbalance == "class_weight"  # 4:1 classes
    assert params.repair.outliers.method == "iqr"  # income: a long right tail
    text = declared.params
    assert "99999999 looks like a sentinel for missing (3 rows)" in text
    assert "2 missing (1.0%)" in text and "largest class 4.0x the smallest" in text


@pytest.mark.parametrize(("edit", "line"), [
    (lambda f: f.drop(columns="label"), "no column 'label' (--label)"),
    (lambda f: f.assign(label="good"), "label column 'label' has 1 distinct value(s)"),
    (lambda f: f.assign(note=[f"free text {i}" for i in range(len(f))]), "column(s) ['note'] hold free text"),
])
def test_what_init_cannot_declare_is_one_line(edit, line):
    with pytest.raises(UserError, match=line.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        declare(edit(_table()), SOURCE, "label", "csv")


def test_the_stage_list_runs_the_installed_package():
    stages = yaml.safe_load(declare(_table(), SOURCE, "label", "csv").dvc)["stages"]
    assert list(stages) == ["ingest", "validate", "repair", "augment", "train", "evaluate"]
    assert all(stage["cmd"] == f"python3 -m flows.{name}" for name, stage in stages.items())
    assert stages["ingest"]["deps"] == ["data/table.csv"]
    assert not any("../" in dep or "PYTHONPATH" in stage["cmd"] for stage in stages.values() for dep in stage["deps"])


@pytest.mark.parametrize(("label", "task", "why"), [
    (lambda n: np.linspace(0, 1, n), "regression", "fractional numbers"),
    (lambda n: np.arange(n) % 50, "regression", "50 distinct whole numbers"),
    (lambda n: np.arange(n) % 3, "classification", "with 3 classes"),
])
def test_the_task_is_inferred_from_the_label(label, task, why):
    declared = declare(_table().assign(label=lambda f: label(len(f))), SOURCE, "label", "csv")
    params = parse_params(yaml.safe_load(declared.params))
    assert params.data.task == task and why in " ".join(declared.summary + [declared.params])


def test_a_regression_declaration_trains_mse_and_gates_on_beating_the_mean():
    declared = declare(_table().assign(label=lambda f: f["age"].fillna(40) * 1.5), SOURCE, "label", "csv",
                       task="regression")
    params = parse_params(yaml.safe_load(declared.params))
    assert params.train.loss == "mse" and params.repair.imbalance == "none"
    assert params.evaluate.gate.min == {"r2": 0.0} and params.evaluate.gate.vs_champion == ["rmse"]
    stages = yaml.safe_load(declared.dvc)["stages"]
    assert "repair.imbalance" not in stages["train"]["params"]  # a regression project's params.yaml has none


def test_regression_needs_a_numeric_label():
    with pytest.raises(UserError, match="--task regression needs a numeric label"):
        declare(_table(), SOURCE, "label", "csv", task="regression")


@pytest.mark.parametrize("start", ["package:efficientnet-lite0", "weights/start.safetensors"])
def test_a_starting_model_makes_a_finetune_stage_and_no_train_stage(start):
    declared = declare(_table(), SOURCE, "label", "csv", init_from=start)
    params = parse_params(yaml.safe_load(declared.params))
    assert params.finetune.init_from == start and params.evaluate.model == "finetune" and params.finetune.baseline
    stages = yaml.safe_load(declared.dvc)["stages"]
    assert "train" not in stages and stages["evaluate"]["deps"][0] == "models/finetune"
    assert stages["finetune"]["deps"][0] == (start if start.endswith(".safetensors") else "data/augmented")


def test_compress_asks_for_a_compress_stage_of_the_evaluated_model():
    declared = declare(_table(), SOURCE, "label", "csv", compress=True)
    params = parse_params(yaml.safe_load(declared.params))
    assert params.compress.model == "train" and params.compress.distill.student.kind == "mlp"  # a table's student
    stages = yaml.safe_load(declared.dvc)["stages"]
    assert list(stages)[-1] == "compress" and stages["compress"]["deps"][0] == "models/train"
    assert "data/finetune/labelled_ids.parquet" not in stages["compress"]["deps"]  # train learnt from every label
