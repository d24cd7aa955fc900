import json

import numpy as np
import pandas as pd
import pytest

from tasks.config import DataConfig, MissingConfig, OutlierConfig, RepairConfig, SchemaConfig
from tasks.errors import UserError
from tasks.repair import Repairer, rebalance, repair_split, repair_train, unaccounted

DATA = DataConfig(modality="tabular", image_shape=None)


def make(n: int, offset: int, shift: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(shift, 1, (n, 3)), columns=["a", "b", "c"])
    frame["city"] = pd.Series(rng.choice(["north", "south", "east"], n), dtype="str")
    frame.insert(0, "label", rng.integers(0, 2, n))
    frame.insert(0, "id", np.arange(offset, offset + n))
    return frame


@pytest.fixture
def frames():
    train, test = make(100, 0, 0.0), make(50, 1000, 10.0, seed=1)
    train.loc[[1, 2], "a"] = np.nan
    train.loc[[3], "city"] = np.nan
    test.loc[[0], "b"] = np.nan
    test.loc[[1], "city"] = np.nan
    return train, test


def _state(repairer: Repairer) -> str:
    return json.dumps(repairer.to_json(), sort_keys=True)


@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent", "constant", "knn", "iterative"])
def test_leakage_transforming_test_never_changes_the_repairer_and_uses_train_statistics(frames, strategy):
    train, test = frames
    cfg = RepairConfig(missing=MissingConfig(strategy=strategy, indicators=True), outliers=OutlierConfig(method="iqr"))
    repairer = Repairer(cfg, DATA).fit(train)
    before = _state(repairer)
    model_before = getattr(repairer.imputer_, "reference_", None)
    test_before = test.copy(deep=True)
    repaired_test, ledger = repairer.transform(test, "test")
    assert _state(repairer) == before
    pd.testing.assert_frame_equal(test, test_before)  # the input is never modified (values are filled in copies)
    if model_before is not None:  # KNN keeps train's rows only
        assert len(repairer.imputer_.reference_) == len(train)
        assert np.array_equal(model_before, repairer.imputer_.reference_, equal_nan=True)
    # The test split sits around 10: anything learned from it would show; train's statistics sit around 0.
    assert abs(repairer.imputer_.fill_values_.get("a", 0.0)) < 1.0
    assert repairer.outliers_.bounds_["b"][1] < 5  # train's quartiles, so test's values are clipped
    assert ledger.loc[ledger["rule"] == "outlier iqr: clip", "row_id"].min() >= 1000
    row = ledger[(ledger["column"] == "b") & ledger["rule"].astype(str).str.startswith("missing")].iloc[0]
    assert (row["split"], row["row_id"], row["old"]) == ("test", 1000, None) or pd.isna(row["old"])
    assert repaired_test[["a", "b", "c"]].notna().all().all()
    if strategy == "median":
        assert float(row["new"]) == pytest.approx(train["b"].median())


def test_categories_are_imputed_and_one_hot_encoded_from_train(frames):
    train, test = frames
    test.loc[2, "city"] = "west"  # unseen in train: all zeros, not a new column
    repairer = Repairer(RepairConfig(), DATA).fit(train)
    repaired, ledger = repairer.transform(test, "test")
    assert [c for c in repaired.columns if c.startswith("city=")] == ["city=east", "city=north", "city=south"]
    assert repaired.loc[repaired["id"] == 1002, ["city=east", "city=north", "city=south"]].sum(axis=1).item() == 0
    fill = repairer.imputer_.fill_values_["city"]
    assert repaired.loc[repaired["id"] == 1001, f"city={fill}"].item() == 1.0
    assert ((ledger["column"] == "city") & (ledger["rule"] == "missing: most_frequent")).sum() == 1


def test_mean_on_a_categorical_column_is_a_clear_error(frames):
    cfg = RepairConfig(missing=MissingConfig(columns={"city": {"strategy": "mean"}}))
    with pytest.raises(UserError, match="repair.missing.columns.city: strategy mean needs numbers; 'city' is categorical"):
        Repairer(cfg, DATA).fit(frames[0])


@pytest.mark.parametrize("strategy", ["median", "knn", "iterative"])
def test_repairer_round_trips_through_its_saved_files(tmp_path, frames, strategy):
    train, test = frames
    cfg = RepairConfig(missing=MissingConfig(strategy=strategy), outliers=OutlierConfig(method="isolation_forest", action="flag"))
    repairer = Repairer(cfg, DATA).fit(train)
    repairer.save(tmp_path)
    assert not list(tmp_path.glob("*.pkl"))
    again = Repairer.load(tmp_path, DATA)
    pd.testing.assert_frame_equal(repairer.transform(test, "test")[0], again.transform(test, "test")[0])


@pytest.mark.parametrize(("action", "rule"), [("clip", "outlier zscore: clip"), ("drop", "outlier zscore: drop"),
                                              ("flag", "outlier zscore: flag"), ("set_missing", "outlier zscore: set missing")])
def test_outlier_actions_are_ledgered(frames, action, rule):
    train, _ = frames
    train.loc[5, "c"] = 50.0
    cfg = RepairConfig(outliers=OutlierConfig(method="zscore", threshold=3.0, action=action))
    repaired, ledger, _ = Repairer(cfg, DATA).fit_transform(train)
    hits = ledger[ledger["rule"] == rule]
    assert 5 in hits["row_id"].tolist()
    if action == "clip":
        assert repaired.loc[repaired["id"] == 5, "c"].item() < 50 and float(hits.loc[hits["row_id"] == 5, "old"].item()) == 50
    elif action == "drop":
        assert 5 not in repaired["id"].tolist()
    elif action == "flag":
        assert repaired.loc[repaired["id"] == 5, "c__outlier"].item() == 1.0
    else:  # set missing, then imputed
        assert ((ledger["row_id"] == 5) & (ledger["rule"] == "missing: median")).any()


def test_duplicates_conflicts_and_blank_rows_are_dropped_into_the_ledger():
    train = make(100, 0, 0.0).drop(columns="city")
    train = pd.concat([train, train.iloc[[5]].assign(id=500), train.iloc[[6]].assign(id=501, label=1 - train.loc[6, "label"])],
                      ignore_index=True)
    train.loc[10, ["a", "b", "c"]] = 0.0
    repaired, ledger, findings = Repairer(RepairConfig(), DATA).fit_transform(train)
    assert set(ledger.loc[ledger["rule"] == "duplicate row: drop", "row_id"]) == {500}
    assert set(ledger.loc[ledger["rule"] == "conflicting labels: drop", "row_id"]) == {6, 501}
    assert set(ledger.loc[ledger["rule"] == "constant row: drop", "row_id"]) == {10}
    assert findings["conflicting_rows"] == 2
    assert len(unaccounted(train["id"], repaired["id"], [], ledger)) == 0  # nothing lost silently
    assert len(unaccounted(train["id"], repaired["id"].iloc[1:], [], ledger)) == 1  # and the check can fail


def test_val_and_test_rows_are_never_dropped_only_counted():
    """Every val/test row is scored: whole-row repairs and outlier drops touch train only."""
    train = make(100, 0, 0.0).drop(columns="city")
    conflict = train.iloc[[6]].assign(id=501, label=1 - train.loc[6, "label"])
    test = pd.concat([train.iloc[:30], train.iloc[[5]].assign(id=500), conflict], ignore_index=True)
    test.loc[10, ["a", "b", "c"]] = 0.0
    test.loc[12, "c"] = 1e6
    cfg = RepairConfig(outliers=OutlierConfig(method="zscore", threshold=3.0, action="drop"))
    repairer = Repairer(cfg, DATA)
    repairer.fit_transform(train)
    repaired, ledger, findings = repairer.transform_with_findings(test, "test")
    assert sorted(repaired["id"]) == sorted(test["id"])
    assert findings["duplicate_rows"] == 1 and findings["conflicting_rows"] == 2
    assert repaired.loc[repaired["id"] == test.loc[12, "id"], "c"].item() < 1e6  # clipped, not dropped
    assert not ledger["rule"].astype(str).str.endswith("drop").any()


@pytest.mark.parametrize("how", ["oversample", "undersample", "smote", "smotenc"])
def test_rebalance_equalises_classes_on_train_with_fresh_ids(frames, how):
    train, _ = frames
    train = train[(train["label"] == 1) | (train.index < 20)].dropna()
    if how == "smote":
        train = train.drop(columns="city")
    balanced, ledger = rebalance.fn(train, RepairConfig(imbalance=how), DATA, 5000)
    counts = balanced["label"].value_counts()
    assert counts.nunique() == 1
    assert len(ledger) == abs(len(balanced) - len(train)) and balanced["id"].is_unique
    if how != "undersample":
        assert ledger["row_id"].min() == 5000


def test_smote_on_categorical_columns_says_use_smotenc(frames):
    with pytest.raises(UserError, match="'city' is categorical: use smotenc"):
        rebalance.fn(frames[0].dropna(), RepairConfig(imbalance="smote"), DATA)


def test_repair_train_then_split_keeps_the_same_columns(frames):
    train, test = frames
    spec = SchemaConfig(columns={"a": {"ge": -10, "le": 10}, "city": {"dtype": "category"}})
    cfg = RepairConfig(imbalance="smotenc", scale="standard", missing=MissingConfig(indicators=True))
    repairer, repaired_train, ledger, _ = repair_train.fn(train, cfg, DATA, spec, 5000)
    repaired_test, _, _ = repair_split.fn(repairer, test, "test")
    assert list(repaired_train.columns) == list(repaired_test.columns)
    assert "a__missing" in repairer.binary_columns() and "a" in repairer.scaled_columns()
    assert abs(repaired_train["b"].mean()) < 0.5  # standardised with train's statistics
