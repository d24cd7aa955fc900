"""tasks/predict.py and tasks/drift.py on small frames: reading in chunks, a chunk's way through
validate and the fitted repairer, every id accounted for, and the drift measures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.champion import softmax
from tasks.config import (
    ColumnSchema,
    DataConfig,
    DriftConfig,
    MissingConfig,
    OutlierConfig,
    Params,
    RepairConfig,
    SchemaConfig,
    ValidateConfig,
)
from tasks.drift import DriftCounter, table, verdict
from tasks.errors import UserError
from tasks.predict import Scorer, input_files, read_chunks, score_chunk
from tasks.repair import Repairer
from tasks.validate import categories_seen

DATA = DataConfig(modality="tabular", image_shape=None)
SCHEMA = SchemaConfig(columns={"a": ColumnSchema(ge=-50), "b": ColumnSchema(), "city": ColumnSchema(dtype="category")},
                      extra_columns="forbid", missing_values=[-999])


def make(n: int, offset: int = 0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": np.arange(offset, offset + n), "label": rng.integers(0, 2, n),
                         "a": rng.normal(0, 1, n), "b": rng.normal(5, 2, n),
                         "city": pd.Series(rng.choice(["north", "south", "east"], n), dtype="str")})


def scorer(validate: ValidateConfig | None = None, drift: DriftConfig | None = None) -> Scorer:
    train = make(300)
    train.loc[[1, 2], "a"] = np.nan
    validate = validate or ValidateConfig(schema=SCHEMA)
    params = Params(data=DATA, validate=validate)
    repairer = Repairer(RepairConfig(missing=MissingConfig(strategy="median", indicators=True),
                                     outliers=OutlierConfig(method="iqr")), DATA, SCHEMA).fit(train)
    columns = [c for c in repairer.transform(train, "test")[0].columns if c not in ("id", "label")]
    weights = np.linspace(-1, 1, len(columns) * 2).reshape(len(columns), 2)

    def run(x):  # a fixed linear model: enough to see that the same rows get the same outputs
        return softmax(x @ weights)

    return Scorer(params, repairer, categories_seen(train, SCHEMA), columns, [0, 1], False, run,
                  DriftCounter(train, repairer.numeric_, repairer.categorical_, DATA, [0, 1], drift or DriftConfig()))


def test_bad_rows_are_quarantined_with_their_reason_and_every_id_is_accounted_for(tmp_path):
    s = scorer()
    new = make(50, offset=1000, seed=1).drop(columns="label").astype({"a": "object"})
    new.loc[3, "city"] = "atlantis"  # never seen in train
    new.loc[4, "a"] = "12,5"  # text in a numeric column
    new.loc[5, "b"] = -999  # a declared sentinel: missing, filled by the repairer
    new.loc[6, "b"] = np.nan
    scored = score_chunk(s, new, tmp_path / "new.csv", 0)
    quarantine = scored.quarantine.to_pandas().set_index("id")
    assert sorted(quarantine.index) == [1003, 1004]
    assert "known category" in quarantine.loc[1003, "reason"] and "atlantis" in quarantine.loc[1003, "reason"]
    assert "got text" in quarantine.loc[1004, "reason"] and quarantine.loc[1004, "a"] == "12,5"
    predictions = scored.predictions.to_pandas()
    assert sorted([*predictions["id"], *quarantine.index]) == list(range(1000, 1050))
    assert np.allclose(predictions[["prob_0", "prob_1"]].sum(axis=1), 1, atol=1e-6)
    ledger = scored.ledger
    assert set(ledger.loc[ledger["rule"] == "missing: median", "row_id"]) == {1005, 1006}
    assert (ledger["split"] == "new.csv").all() and scored.reasons and scored.rows == 50


def test_same_rows_same_predictions_whatever_the_column_order_or_extra_label(tmp_path):
    s = scorer()
    new = make(40, seed=2)
    first = score_chunk(s, new.drop(columns="label"), tmp_path / "a.csv", 0).predictions.to_pandas()
    shuffled = new[["b", "city", "label", "id", "a"]]  # another column order, and a label predict must not read
    second = score_chunk(s, shuffled, tmp_path / "b.csv", 0)
    pd.testing.assert_frame_equal(first.drop(columns="file"), second.predictions.to_pandas().drop(columns="file"))
    assert second.ignored == ["label"]


def test_a_missing_or_undeclared_column_is_one_line(tmp_path):
    s = scorer()
    with pytest.raises(UserError, match="column 'b' is missing: the model was trained with it"):
        score_chunk(s, make(10).drop(columns=["label", "b"]), tmp_path / "x.csv", 0)
    with pytest.raises(UserError, match="column 'extra': not declared"):
        score_chunk(s, make(10).drop(columns="label").assign(extra=1.0), tmp_path / "x.csv", 0)
    allowed = scorer(ValidateConfig(schema=SCHEMA.model_copy(update={"extra_columns": "allow"})))
    scored = score_chunk(allowed, make(10).drop(columns="label").assign(extra=1.0), tmp_path / "x.csv", 0)
    assert scored.predictions.num_rows == 10 and scored.ignored == ["extra"]


def test_rows_without_ids_are_numbered_on_across_chunks(tmp_path):
    s = scorer()
    path = tmp_path / "new.csv"
    make(25, seed=3).drop(columns=["id", "label"]).to_csv(path, index=False)
    ids, offset = [], 0
    for chunk in read_chunks(path, 10):
        ids += score_chunk(s, chunk, path, offset).predictions.column("id").to_pylist()
        offset += len(chunk)
    assert ids == list(range(25))


def test_read_chunks_reads_in_chunks_and_names_what_is_not_a_table(tmp_path):
    csv, parquet = tmp_path / "a.csv", tmp_path / "b.parquet"
    make(25).to_csv(csv, index=False)
    make(25).to_parquet(parquet)
    assert [len(c) for c in read_chunks(csv, 10)] == [10, 10, 5]
    assert [len(c) for c in read_chunks(parquet, 10)] == [10, 10, 5]
    cases = {"empty.csv": (b"", "the file is empty"), "header.csv": (b"id,a,b\n", "has a header but no rows"),
             "latin.csv": ("id,city\n1,Zürich\n".encode("latin-1"), "not UTF-8 text"),
             "utf16.csv": ("id,city\n1,x\n".encode("utf-16"), "UTF-16 text"),
             "ragged.csv": (b"id,a\n1,2\n3,4,5\n", "line 3 has 3 fields")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=message):
            list(read_chunks(tmp_path / name, 10))
    with pytest.raises(UserError, match="input not found"):
        input_files(tmp_path / "nope.csv")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(UserError, match="predict reads"):
        input_files(tmp_path / "x.json")
    assert input_files(tmp_path)[0].name == "a.csv"


def test_drift_is_nil_on_the_same_distribution_and_named_on_a_shifted_one():
    train = make(2000)
    counter = DriftCounter(train, ["a", "b"], ["city"], DATA, [0, 1], DriftConfig())
    counter.add_rows(make(2000, seed=5))
    counter.add_predicted(make(2000, seed=5)["label"].to_numpy())
    report = counter.report()
    assert report["drifted"] == [] and "no drift" in verdict(report)
    assert max(n["psi"] for n in report["numeric"]) < 0.05

    shifted = make(1000, seed=6)
    shifted["b"] += 4  # two standard deviations
    shifted.loc[:99, "city"] = "atlantis"  # 10% new categories
    shifted.loc[:299, "a"] = np.nan  # 30% missing
    counter = DriftCounter(train, ["a", "b"], ["city"], DATA, [0, 1], DriftConfig())
    for start in (0, 500):  # counted in two chunks
        counter.add_rows(shifted.iloc[start:start + 500])
    counter.add_predicted(np.ones(1000, np.int64))  # every row predicted class 1: train's mix is half and half
    report = counter.report()
    found = {(d["feature"], d["measure"]) for d in report["drifted"]}
    assert found == {("b", "psi"), ("city", "new_categories"), ("city", "distance"), ("a", "missing_rate"),
                     ("predicted class", "class_mix")}
    city = report["categorical"][0]
    assert city["new_categories"] == {"rows": 100, "rate": 0.1, "values": ["atlantis"]}
    assert report["missing"][0]["change"] == pytest.approx(0.3)
    assert {r["feature"] for r in table(report) if r["drift"]} == {"b", "city", "a", "predicted class"}
    assert verdict(report).startswith("drift in 5 measure(s)")


def test_drift_on_too_few_rows_is_reported_but_judges_nothing():
    counter = DriftCounter(make(500), ["a", "b"], ["city"], DATA, [0, 1], DriftConfig(min_rows=100))
    counter.add_rows(make(20).assign(b=100.0))
    report = counter.report()
    assert report["numeric"][1]["psi"] > 1 and report["drifted"] == [] and "not judged" in verdict(report)


def test_images_go_the_same_way_and_are_judged_on_their_mean_pixel(tmp_path):
    data = DataConfig(modality="image", image_shape=(1, 2, 2), pixel_range=(0, 16))
    rng = np.random.default_rng(0)

    def images(n: int, offset: int = 0) -> pd.DataFrame:
        frame = pd.DataFrame(rng.integers(0, 17, (n, 4)).astype(float), columns=[f"px_{i:04d}" for i in range(4)])
        return frame.assign(id=np.arange(offset, offset + n), label=rng.integers(0, 2, n))

    train = images(200)
    repairer = Repairer(RepairConfig(), data).fit(train)
    s = Scorer(Params(data=data), repairer, {}, [f"px_{i:04d}" for i in range(4)], [0, 1], False,
               lambda x: softmax(x.reshape(len(x), -1)[:, :2]), DriftCounter(train, repairer.numeric_, [], data, [0, 1],
                                                                                DriftConfig()))
    new = images(30, offset=500).drop(columns="label")
    new.loc[2, "px_0001"] = 99.0  # outside the pixel range
    scored = score_chunk(s, new, tmp_path / "new.parquet", 0)
    assert scored.predictions.num_rows == 29 and scored.quarantine.column("id").to_pylist() == [502]
    assert "px_0001" in scored.quarantine.column("reason")[0].as_py()
    assert [n["feature"] for n in s.drift.report()["numeric"]] == ["mean_pixel"]


def test_a_regression_is_scored_as_values_and_its_drift_is_on_train_label_bins(tmp_path):
    train = make(400).assign(label=lambda f: f["b"] * 2.0)
    data = DataConfig(modality="tabular", image_shape=None, task="regression")
    repairer = Repairer(RepairConfig(), data, SCHEMA).fit(train)
    columns = [c for c in repairer.transform(train, "test")[0].columns if c not in ("id", "label")]
    counter = DriftCounter(train, repairer.numeric_, repairer.categorical_, data, [], DriftConfig(), regression=True)
    s = Scorer(Params(data=data, validate=ValidateConfig(schema=SCHEMA)), repairer, categories_seen(train, SCHEMA), columns,
               [], True, lambda x: x[:, columns.index("b")] * 2.0, counter)
    scored = score_chunk(s, make(200, seed=4).drop(columns="label"), tmp_path / "new.csv", 0)
    values = scored.predictions.column("predicted").to_numpy()
    names = scored.predictions.schema.names
    assert scored.predictions.schema.field("predicted").type == "double" and not any("prob" in n for n in names)
    assert np.isfinite(values).all()
    report = counter.report()
    assert report["class_mix"]["measure"] == "psi" and report["class_mix"]["value"] is not None


def test_rows_a_repair_drops_are_quarantined_with_the_rule(tmp_path):
    s = scorer()
    train = make(300)
    s.repairer = Repairer(RepairConfig(missing=MissingConfig(strategy="drop")), DATA, SCHEMA).fit(train)
    s.columns = [c for c in s.repairer.transform(train, "test")[0].columns if c not in ("id", "label")]
    s.run = lambda x: softmax(x[:, :2])
    new = make(20, seed=7).drop(columns="label")
    new.loc[[4, 9], "b"] = np.nan
    scored = score_chunk(s, new, tmp_path / "new.csv", 0)
    quarantine = scored.quarantine.to_pandas()
    assert quarantine["id"].tolist() == [4, 9] and (quarantine["reason"] == "repair: missing: drop row").all()
    assert scored.predictions.num_rows == 18 and scored.reasons == {"repair: missing: drop row": 2}
