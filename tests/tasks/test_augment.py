import numpy as np
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


def test_image_flips_crops_and_erasing_are_seeded_and_stay_in_range(params):
    train = read_source(params.ingest.source, params.data).head(32).astype({f"px_{i:04d}": float for i in range(64)})
    cfg = params.augment.model_copy(update={"hflip": 1.0, "crop": 0.6, "erasing": 1.0})
    out, again = augment_train.fn(train, cfg, params.data), augment_train.fn(train, cfg, params.data)
    pd.testing.assert_frame_equal(out, again)
    pixels = out[out["augmented_from"].notna()].filter(like="px_").to_numpy()
    assert pixels.min() >= 0 and pixels.max() <= 16 and (pixels != train.filter(like="px_").to_numpy()).any()


def test_text_token_dropout_swap_and_mask_keep_right_padding(params):
    data = params.data.model_copy(update={"modality": "text", "image_shape": None, "pad_id": 0})
    rng = np.random.default_rng(0)
    ids = np.where(np.arange(10) < rng.integers(3, 10, (50, 1)), rng.integers(2, 40, (50, 10)), 0)
    train = pd.DataFrame(ids.astype(float), columns=[f"tok_{i:04d}" for i in range(10)])
    train.insert(0, "label", rng.integers(0, 2, 50))
    train.insert(0, "id", np.arange(50))
    cfg = params.augment.model_copy(update={"token_dropout": 0.2, "token_swap": 0.3, "token_mask": 0.2, "mask_id": 1})
    out = augment_train.fn(train, cfg, data)
    copies = out[out["augmented_from"].notna()].filter(like="tok_").to_numpy()
    assert copies.shape == ids.shape and (copies != ids).any()
    assert ((copies != 0).sum(1) <= (ids != 0).sum(1)).all()  # dropout only shortens
    for row in copies:  # still right-padded: no token after the first pad
        first_pad = np.argmax(row == 0) if (row == 0).any() else len(row)
        assert (row[first_pad:] == 0).all()
    assert (copies == 1).any()  # masked tokens
    pd.testing.assert_frame_equal(out, augment_train.fn(train, cfg, data))


def test_smote_fills_minority_classes_with_synthetic_rows(params):
    data = params.data.model_copy(update={"modality": "tabular", "image_shape": None})
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"id": np.arange(40), "label": [0] * 30 + [1] * 10, "a": rng.normal(size=40), "b": rng.normal(size=40)})
    out = augment_train.fn(train, params.augment.model_copy(update={"copies": 0, "smote": True}), data)
    synthetic = out[out["augmented_from"] == -1]
    assert len(synthetic) == 20 and (synthetic["label"] == 1).all() and out["id"].is_unique
    assert out["label"].value_counts().to_dict() == {0: 30, 1: 30}
