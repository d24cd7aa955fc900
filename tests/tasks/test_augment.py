import pandas as pd

from tasks.augment import augment_train
from tasks.ingest import read_source


def test_copies_keep_lineage_and_range_and_are_seeded(params):
    train = read_source(params.ingest.source, params.data).head(64).astype({f"px_{i:04d}": float for i in range(64)})
    out = augment_train.fn(train, params.augment, params.data)
    again = augment_train.fn(train, params.augment, params.data)
    assert len(out) == 2 * len(train)
    assert out["id"].is_unique
    copies = out[out["augmented_from"].notna()]
    assert sorted(copies["augmented_from"].astype(int)) == sorted(train["id"])
    assert (copies.filter(like="px_").to_numpy() != train.filter(like="px_").to_numpy()).any()
    assert copies.filter(like="px_").to_numpy().min() >= 0 and copies.filter(like="px_").to_numpy().max() <= 16
    pd.testing.assert_frame_equal(out, again)
