import numpy as np
import pandas as pd
import pytest

from tasks.config import DataConfig, SchemaConfig, ValidateConfig
from tasks.ingest import read_source
from tasks.validate import REASON, categories_seen, leakage, report_markdown, run, validate_split, verdict


def _frame(params):
    return read_source(params.ingest.source, params.data).head(200).astype({f"px_{i:04d}": float for i in range(64)})


def test_bad_rows_are_quarantined_with_their_reason_and_nothing_is_lost(params):
    frame = _frame(params)
    frame.loc[3, "px_0010"] = 99.0  # outside the 0..16 pixel range
    frame.loc[5, "label"] = 42  # not a known class
    frame.loc[7, "px_0001"] = np.nan  # missing is allowed in Raw: repair deals with it
    valid, quarantine, report = validate_split.fn(frame, params.data, list(range(10)))
    assert sorted(quarantine["id"]) == [frame.loc[3, "id"], frame.loc[5, "id"]]
    reasons = dict(zip(quarantine["id"], quarantine[REASON], strict=True))
    assert "px_0010" in reasons[frame.loc[3, "id"]] and "99" in reasons[frame.loc[3, "id"]]
    assert "label" in reasons[frame.loc[5, "id"]]
    assert len(valid) + len(quarantine) == len(frame)
    assert report.quarantined == 2 and {c["column"] for c in report.checks} == {"px_0010", "label"}


def test_frame_level_problems_are_fatal_and_named(params):
    frame = _frame(params)
    _, _, report = validate_split.fn(frame.drop(columns="label"), params.data, list(range(10)))
    assert report.fatal and "label column missing" in report.fatal[0]
    frame["px_0003"] = np.nan
    _, _, report = validate_split.fn(frame, params.data, list(range(10)))
    assert "px_0003" in report.fatal[0] and "every value is missing" in report.fatal[0]


def test_verdict_fails_past_threshold_naming_worst_column(params):
    frame = _frame(params)
    frame.loc[:20, "px_0005"] = 500.0
    _, _, report = validate_split.fn(frame, params.data, list(range(10)))
    message = verdict({"source/train": report}, ValidateConfig(max_invalid_fraction=0.05), {})
    assert "source/train" in message and "px_0005" in message and "21/200" in message
    assert verdict({"source/train": report}, ValidateConfig(max_invalid_fraction=0.5), {}) is None


# ---------------------------------------------------------------------------- tabular, declared schema

TABLE = DataConfig(modality="tabular", image_shape=None)
SPEC = SchemaConfig(missing_values=[-999], columns={
    "age": {"dtype": "int", "ge": 18, "le": 100}, "income": {"ge": 0},
    "city": {"dtype": "category"}, "code": {"dtype": "str", "regex": r"[A-Z]{2}\d+", "unique": True}})


def _table(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"id": np.arange(n), "label": rng.choice(["good", "bad"], n), "age": rng.integers(18, 90, n),
                         "income": rng.gamma(2.0, 50.0, n), "city": pd.Series(rng.choice(["a", "b"], n), dtype="str"),
                         "code": [f"AB{i}" for i in range(n)]})


def _run(frame, known=None, **cfg):
    return validate_split.fn(frame, TABLE, ["bad", "good"], ValidateConfig(schema=SPEC, **cfg), known)


def test_declared_checks_quarantine_rows_with_reasons_and_sentinels_become_missing():
    frame = _table().astype({"income": float, "age": float})
    frame.loc[0, "age"] = 12  # below ge
    frame.loc[1, "age"] = 30.5  # not an integer
    frame.loc[2, "income"] = -999  # a sentinel: missing, not a range failure
    frame.loc[3, "code"] = "zz"  # regex
    frame.loc[4, "code"] = frame.loc[5, "code"]  # unique
    valid, quarantine, report = _run(frame, max_invalid_fraction=0.5)
    reasons = dict(zip(quarantine["id"], quarantine[REASON], strict=True))
    assert "age: greater_than_or_equal_to(18.0) (got 12.0)" in reasons[0] and "age: integer" in reasons[1]
    assert "code: str_matches" in reasons[3] and {4, 5} <= set(reasons)
    assert report.sentinels == {"income": 1} and report.missing == {"income": 1}
    assert valid.loc[valid["id"] == 2, "income"].isna().all()
    assert len(valid) + len(quarantine) == len(frame)
    assert "| age |" in report_markdown({"t": report}) and "sentinels turned missing: income 1" in report_markdown({"t": report})


def test_unknown_category_in_test_is_quarantined_or_set_missing_by_policy():
    train, test = _table(), _table()
    test.loc[7, "city"] = "zanzibar"
    known = categories_seen(train, SPEC)
    assert known == {"city": ["a", "b"]}
    _, quarantine, _ = _run(test, known, max_invalid_fraction=0.5)
    assert quarantine["id"].tolist() == [7]
    assert "city: known category (seen in train) (got 'zanzibar')" in quarantine[REASON].item()
    valid, quarantine, report = _run(test, known, unknown_category="missing")
    assert quarantine.empty and report.unknown_set_missing == {"city": 1}
    assert pd.isna(valid.loc[7, "city"])


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns="label"), "column 'label': label column missing (data.label)"),
    (lambda f: f.drop(columns="income"), "column 'income': declared in validate.schema.columns but not in the data"),
    (lambda f: f.assign(income=np.nan), "column 'income': every value is missing"),
    (lambda f: f.assign(age="old"), "column 'age': wrong dtype: expected int, got text (e.g. 'old')"),
    (lambda f: f.assign(extra="x"), "column 'extra': wrong dtype: expected float, got text (e.g. 'x'); declare it in "
                                    "validate.schema.columns"),
])
def test_frame_level_problems_are_fatal_with_one_clear_line(change, message):
    _, _, report = _run(change(_table()))
    line = verdict({"source/train": report}, ValidateConfig(), {})
    assert line == f"source/train: {message}" or line.startswith(f"source/train: {message}")


def test_empty_split_and_one_class_label_have_clear_messages():
    _, _, report = _run(_table().iloc[:0])
    assert verdict({"source/test": report}, ValidateConfig(), {}) == "source/test: no rows (an empty file or split)"
    one = _table().assign(label="good")
    _, _, report = _run(one)
    line = verdict({"source/train": report}, ValidateConfig(), {"source/train": 1}, "label")
    assert line == "source/train: label column 'label' has one class only ('good' only); validate.min_classes=2"


def test_image_shape_and_blank_duplicate_images_are_reported(params):
    frame = _frame(params)
    _, _, report = validate_split.fn(frame.drop(columns="px_0063"), params.data, list(range(10)))
    assert "image shape: 63 pixel columns, data.image_shape [1, 8, 8] needs 64" in report.fatal[0]
    frame.loc[0, [f"px_{i:04d}" for i in range(64)]] = 0.0
    frame.loc[1, [f"px_{i:04d}" for i in range(64)]] = frame.loc[2, [f"px_{i:04d}" for i in range(64)]].to_numpy()
    _, _, report = validate_split.fn(frame, params.data, list(range(10)))
    assert report.images == {"blank_or_constant": 1, "duplicate_images": 1}


def test_rows_of_val_and_test_that_train_holds_are_named_as_leakage(params):
    data = DataConfig(modality="tabular", image_shape=None)
    train = pd.DataFrame({"id": [0, 1, 2, 3], "x": [1.0, 2.0, 3.0, 4.0], "label": [0, 1, 0, 1]})
    test = pd.DataFrame({"id": [10, 11, 12], "x": [2.0, 9.0, 4.0], "label": [1, 0, 0]})
    found = leakage({"train": train, "val": test.iloc[:0], "test": test}, data, "source")
    assert found == {"source/test": {"rows": 2, "of": 3, "ids": [10, 12]}}
    assert leakage({"train": train, "val": test.iloc[:0], "test": test.iloc[[1]]}, data, "source") == {}


def test_run_validates_every_split_and_reports_leakage(params):
    params = params.model_copy(update={"data": DataConfig(modality="tabular", image_shape=None),
                                       "ingest": params.ingest.model_copy(update={"datasets": {}}),
                                       "validate_": params.validate_.model_copy(update={"min_rows": 3})})
    rows = pd.DataFrame({"id": range(30), "x": [float(i % 7) for i in range(30)], "label": [i % 2 for i in range(30)]})
    raw = {"source": {"train": rows.iloc[:20], "val": rows.iloc[20:25], "test": rows.iloc[25:]}}
    result = run(params, raw)
    assert set(result.valid) == {"source/train", "source/val", "source/test"} and result.problem is None
    assert result.leakage["source/test"]["rows"] == 5  # x repeats every 7 rows: train holds every value
