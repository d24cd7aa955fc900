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


# Encodings, compression and files saved under the wrong name.
def gzip_csv() -> bytes:
    import gzip

    return gzip.compress(good_csv(), mtime=0)


def bzip2_csv() -> bytes:
    import bz2

    return bz2.compress(good_csv())


def xlsx_as_csv() -> bytes:
    import zipfile

    buffer = io.BytesIO()  # the container of every .xlsx workbook: a ZIP of XML parts
    with zipfile.ZipFile(buffer, "w") as book:
        book.writestr("[Content_Types].xml", "<Types/>")
        book.writestr("xl/workbook.xml", "<workbook/>")
    return buffer.getvalue()


def parquet_table() -> bytes:
    return parquet(table())


def utf16_csv() -> bytes:
    return table().to_csv(index=False).encode("utf-16")  # with its byte-order mark, as Excel's "Unicode text"


def utf8_bom_csv() -> bytes:
    return b"\xef\xbb\xbf" + good_csv()


def windows_1252_csv() -> bytes:
    frame = table()
    frame.loc[9, "color"] = "\u201cred\u201d"  # curly quotes: 0x93/0x94 in cp1252
    return frame.to_csv(index=False).encode("cp1252")


def nul_bytes_csv() -> bytes:
    return good_csv()[:40] + b"\x00\x00\x00" + good_csv()[40:]


def crlf_csv() -> bytes:
    return good_csv().replace(b"\n", b"\r\n")


# Spreadsheet exports and hand-edited files.
def ragged_csv() -> bytes:
    lines = good_csv().decode().splitlines()
    lines[6] += ",extra"  # line 7 of the file: one field too many
    return ("\n".join(lines) + "\n").encode()


def short_rows_csv() -> bytes:
    lines = good_csv().decode().splitlines()
    for line in (3, 11, 25):  # the rows with ids 2, 10 and 24 stop after x2: no color, no label
        lines[line] = ",".join(lines[line].split(",")[:2])
    return ("\n".join(lines) + "\n").encode()


def repeated_header_csv() -> bytes:
    lines = good_csv().decode().splitlines()
    lines.insert(31, lines[0])  # two exports joined: the header again at line 32
    return ("\n".join(lines) + "\n").encode()


def _with_text_in_x2(rows: list[int], values: list[str]) -> bytes:
    frame = table().astype({"x2": object})
    frame.loc[rows, "x2"] = values
    return csv(frame)


def decimal_comma_csv() -> bytes:
    return _with_text_in_x2([5, 12], ["1,5", "7,25"])  # a locale's decimal comma, quoted by the CSV writer


def spreadsheet_errors_csv() -> bytes:
    return _with_text_in_x2([3, 30], ["#VALUE!", "#DIV/0!"])


def thousands_separator_csv() -> bytes:
    return _with_text_in_x2([8], ["1,234"])


def european_csv() -> bytes:
    return table().to_csv(index=False, sep=";", decimal=",").encode()


def inf_feature_csv() -> bytes:
    frame = table()
    frame.loc[[6, 19], "x1"] = np.inf
    return csv(frame)


def int_with_decimals_csv() -> bytes:
    frame = table().assign(count=np.arange(ROWS) % 7).astype({"count": float})
    frame.loc[[4], "count"] = 2.5
    return csv(frame)


# Sizes, names and ids.
def rows_csv(n: int) -> bytes:
    return csv(table().head(n))


def one_row_csv() -> bytes:
    return rows_csv(1)


def two_rows_csv() -> bytes:
    return rows_csv(2)


def whitespace_only() -> bytes:
    return b"\n  \n\n"


def no_header_csv() -> bytes:
    return good_csv().split(b"\n", 1)[1]  # the first data row reads as the header


def only_id_and_label_csv() -> bytes:
    return csv(table()[["label"]].assign(id=np.arange(ROWS)))


def unicode_columns_csv() -> bytes:
    return csv(table().rename(columns={"x1": "Größe (cm)", "x2": "poids, kg"}))


def empty_header_name_csv() -> bytes:
    return csv(table()).replace(b"x2,", b",", 1)  # a column with no name: pandas calls it "Unnamed: 1"


def _with_ids(ids) -> bytes:
    frame = table()
    frame.insert(0, "id", ids)
    return csv(frame)


def text_ids_csv() -> bytes:
    return _with_ids([f"cust-{i:04d}" for i in range(ROWS)])


def duplicate_ids_csv() -> bytes:
    ids = list(range(ROWS))
    ids[12] = 7
    return _with_ids(ids)


def float_ids_csv() -> bytes:
    ids = np.arange(ROWS, dtype=float) + 100
    ids[5] = np.nan  # a missing id turns the column to floats: 100.0, 101.0, ...
    return _with_ids(ids)


def big_ids_csv() -> bytes:
    return _with_ids([str(2**70 + i) for i in range(ROWS)])


def big_feature_csv() -> bytes:
    frame = table().astype({"x2": object})
    frame.loc[[3], "x2"] = str(10**30)
    return csv(frame)


# Labels.
def _with_labels(labels) -> bytes:
    return csv(table().assign(label=labels))


def empty_label_csv() -> bytes:
    return _with_labels([np.nan] * ROWS)


def whitespace_labels_csv() -> bytes:
    labels = ["Adelie", "Gentoo"] * (ROWS // 2)
    labels[9], labels[20] = "Gentoo ", " Adelie"
    return _with_labels(labels)


def case_labels_csv() -> bytes:
    labels = ["Adelie", "Gentoo"] * (ROWS // 2)
    labels[14] = "adelie"
    return _with_labels(labels)


def control_labels_csv() -> bytes:
    labels = ["Adelie", "Gentoo"] * (ROWS // 2)
    labels[3] = "Gentoo\x07"
    return _with_labels(labels)


def one_row_class_csv() -> bytes:
    labels = list(np.arange(ROWS) % 2)
    labels[33] = 2  # a third class with one row
    return _with_labels(labels)


def float_labels_csv() -> bytes:
    return _with_labels(np.random.default_rng(0).normal(50, 10, ROWS).round(2))


def bool_labels_csv() -> bytes:
    return _with_labels(np.arange(ROWS) % 2 == 0)


def nested_parquet() -> bytes:
    return parquet(table().assign(x2=[[1.0, 2.0]] * ROWS))  # a list in every cell


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

