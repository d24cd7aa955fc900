"""Builders for the bad-input corpus: each returns the bytes of one input file.

Binary or generated inputs (Parquet, PNG, weights, pickles) are built here at test time instead of
being committed; the text ones are small enough to read in the case table. `cases.py` names a
builder per file; tests/e2e/test_bad_inputs.py writes the bytes into the case's project folder.
Every builder is deterministic (fixed seeds), so the same case always gets the same bytes.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pandas as pd

ROWS = 60  # enough for a stratified 3-way split with validate.min_rows lowered to 3


def table(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """A clean two-class table: two numeric features, one category, a label."""
    rng = np.random.default_rng(seed)
    label = np.arange(rows) % 2
    return pd.DataFrame({"x1": rng.normal(label, 1.0).round(3), "x2": rng.uniform(0, 10, rows).round(3),
                         "color": rng.choice(["red", "green", "blue"], rows), "label": label})


def csv(frame: pd.DataFrame, **kwargs) -> bytes:
    return frame.to_csv(index=False, **kwargs).encode()


def parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------- tables
def good_csv() -> bytes:
    return csv(table())


def header_only_csv() -> bytes:
    return b"x1,x2,color,label\n"


def truncated_parquet() -> bytes:
    whole = parquet(table())
    return whole[: len(whole) // 2]  # cut mid-file: the footer (and its magic bytes) is gone


def latin1_csv() -> bytes:
    frame = table()
    frame.loc[5, "color"] = "gr\u00fcn"  # ü in Latin-1 is the byte 0xFC, invalid as UTF-8
    return frame.to_csv(index=False).encode("latin-1")


def semicolon_csv() -> bytes:
    return csv(table(), sep=";")


def duplicate_columns_csv() -> bytes:
    frame = table()
    return csv(frame[["x1", "x2", "x1", "label"]].set_axis(["x1", "x2", "x1", "label"], axis=1))


def no_label_csv() -> bytes:
    return csv(table().rename(columns={"label": "target"}))


def one_class_csv() -> bytes:
    return csv(table().assign(label=1))


def nan_labels_csv() -> bytes:
    frame = table().astype({"label": float})
    frame.loc[[3, 17, 31], "label"] = np.nan
    return csv(frame)


def inf_labels_csv() -> bytes:
    frame = table().astype({"label": float})
    frame.loc[[4, 18, 32], "label"] = np.inf
    return csv(frame)


def all_null_column_csv() -> bytes:
    return csv(table().assign(x2=np.nan))


def mixed_types_csv() -> bytes:
    frame = table().astype({"x1": object})
    frame.loc[[2, 9], "x1"] = "n/a?"  # numbers with two stray words: those rows are quarantined
    return csv(frame)


def text_in_numeric_csv() -> bytes:
    return csv(table().assign(x2="high"))  # a whole column of words where a number is expected


def out_of_range_csv() -> bytes:
    frame = table()
    frame.loc[[7], "x2"] = 250.0  # validate.schema declares x2 in [0, 100]
    return csv(frame)


def sentinel_csv() -> bytes:
    frame = table()
    frame.loc[[1, 8, 20], "x2"] = -999.0  # validate.schema.missing_values declares -999 as missing
    return csv(frame)


def many_invalid_csv() -> bytes:
    frame = table()
    frame.loc[frame.index[::3], "x2"] = 250.0  # a third of the rows out of range: past the threshold
    return csv(frame)


def _raw_split(split: str) -> bytes:
    """Raw splits written straight to data/raw (as ingest would), so a category can be placed in
    test only: the case is about validate, not about where a random split puts a row."""
    frame = table(seed={"train": 1, "val": 2, "test": 3}[split], rows={"train": 40, "val": 10, "test": 10}[split])
    frame.insert(0, "id", np.arange(len(frame)) + {"train": 0, "val": 100, "test": 200}[split])
    if split == "test":
        frame.loc[[2, 5], "color"] = "purple"  # never seen in train
    return parquet(frame)


def raw_train() -> bytes:
    return _raw_split("train")


def raw_val() -> bytes:
    return _raw_split("val")


def raw_test() -> bytes:
    return _raw_split("test")


# ------------------------------------------------------------------------------------- images
def png(shape: tuple[int, int] = (8, 8), value: int = 0) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = (np.arange(shape[0] * shape[1]).reshape(shape) * 3 + value) % 17  # not constant: repair would drop it
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def png_a() -> bytes:
    return png(value=1)


def png_b() -> bytes:
    return png(value=2)


def png_wrong_shape() -> bytes:
    return png(shape=(10, 12))


def corrupt_png() -> bytes:
    return png()[:40]  # a real PNG header, then nothing


def not_an_image() -> bytes:
    return b"this is a text file with a .png name\n"


def empty() -> bytes:
    return b""


# ------------------------------------------------------------------------------------ weights
class Payload:
    """Unpickling this runs `touch marker`: what a malicious weights file would do."""

    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def pickle_payload_pt() -> bytes:
    return pickle.dumps({"state_dict": Payload()})


def text_as_safetensors() -> bytes:
    return b"not weights at all, just text\n" * 4


def wrong_shapes_safetensors() -> bytes:
    import torch
    from safetensors.torch import save

    # Names of the shrunk CNN's tensors, every shape wrong: nothing can transfer.
    return save({"backbone.features.0.weight": torch.zeros(3, 3), "head.weight": torch.zeros(7, 5)})

