import json

import numpy as np
import pandas as pd
import pytest

from tasks.config import RepairConfig
from tasks.repair import Repairer, rebalance


@pytest.fixture
def frames(params):
    rng = np.random.default_rng(0)
    def make(n, offset, shift):
        frame = pd.DataFrame(rng.normal(shift, 1, (n, 3)), columns=["a", "b", "c"])
        frame.insert(0, "label", rng.integers(0, 2, n))
        frame.insert(0, "id", np.arange(offset, offset + n))
        return frame
    train, test = make(100, 0, 0.0), make(50, 1000, 10.0)
    train.loc[[1, 2], "a"] = np.nan
    test.loc[[0], "b"] = np.nan
    return train, test


def test_fit_on_train_only_and_transform_never_refits(params, frames):
    data = params.data.model_copy(update={"modality": "tabular", "image_shape": None})
    train, test = frames
    repairer = Repairer(RepairConfig(missing="median"), data).fit(train)
    before = json.dumps(repairer.to_json(), sort_keys=True)
    repaired_test, ledger = repairer.transform(test, "test")
    assert json.dumps(repairer.to_json(), sort_keys=True) == before  # leakage guard
    assert repaired_test.loc[0, "b"] == pytest.approx(train["b"].median())  # train's statistic, not test's
    assert ledger.iloc[0][["split", "row_id", "column", "rule"]].tolist() == ["test", 1000, "b", "missing: median"]


def test_repairer_round_trips_through_json(params, frames):
    data = params.data.model_copy(update={"modality": "tabular", "image_shape": None})
    train, test = frames
    repairer = Repairer(RepairConfig(missing="mean"), data).fit(train)
    again = Repairer.from_json(json.loads(json.dumps(repairer.to_json())), data)
    pd.testing.assert_frame_equal(repairer.transform(test, "test")[0], again.transform(test, "test")[0])


def test_duplicates_and_blank_rows_are_dropped_into_the_ledger(params, frames):
    data = params.data.model_copy(update={"modality": "tabular", "image_shape": None})
    train, _ = frames
    train = pd.concat([train, train.iloc[[5]].assign(id=500)], ignore_index=True)
    train.loc[10, ["a", "b", "c"]] = 0.0
    repairer = Repairer(RepairConfig(), data).fit(train)
    repaired, ledger = repairer.transform(train, "train")
    assert set(ledger.loc[ledger["rule"] == "duplicate row: drop", "row_id"]) == {500}
    assert set(ledger.loc[ledger["rule"] == "constant row: drop", "row_id"]) == {10}
    assert len(repaired) + (ledger["column"] == "*").sum() == len(train)  # nothing lost silently


@pytest.mark.parametrize("how", ["oversample", "undersample"])
def test_rebalance_equalises_classes_on_train(params, frames, how):
    train, _ = frames
    train = train[(train["label"] == 1) | (train.index < 20)]
    balanced, ledger = rebalance.fn(train, RepairConfig(imbalance=how), params.data)
    counts = balanced["label"].value_counts()
    assert counts.nunique() == 1
    assert len(ledger) == abs(len(balanced) - len(train))
