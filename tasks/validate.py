"""Validate: check each split against the declared schema; quarantine bad rows with their reason.

Pure: frames and config in, (valid frame, quarantine frame, report) out; flows/validate.py does
the reading and writing. Before the schema runs, declared sentinels (-999 meaning missing) become
missing values and are counted; frame-level problems that no row can fix (a missing label or
declared column, a column of the wrong dtype, an all-missing column, the wrong image shape) are
fatal. Then pandera's lazy validation collects every row-level failure; its `failure_cases` table
*is* the report, grouped per column and check with counts and a few examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandas.api.types import is_object_dtype
from prefect import task

from tasks.config import DataConfig, Params, SchemaConfig, ValidateConfig
from tasks.frames import SPLITS, feature_columns
from tasks.schemas import NUMERIC, validated_schema

REASON = "_reason"


@dataclass
class SplitReport:
    rows: int
    valid: int
    quarantined: int
    checks: list[dict] = field(default_factory=list)  # per column and check: count + examples
    fatal: list[str] = field(default_factory=list)  # frame-level problems: the stage must stop
    missing: dict[str, int] = field(default_factory=dict)  # per column, in the valid rows (repair's work)
    sentinels: dict[str, int] = field(default_factory=dict)  # per column: declared sentinels turned missing
    unknown_set_missing: dict[str, int] = field(default_factory=dict)  # unknown categories, policy "missing"
    class_counts: dict[str, int] = field(default_factory=dict)  # of the valid rows
    images: dict[str, int] = field(default_factory=dict)  # blank/constant and duplicate images (repair drops)

    @property
    def invalid_fraction(self) -> float:
        return self.quarantined / self.rows if self.rows else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "invalid_fraction": round(self.invalid_fraction, 6)}


@task
def validate_split(frame: pd.DataFrame, data: DataConfig, classes: Sequence, cfg: ValidateConfig | None = None,
                   known: Mapping[str, Sequence] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, SplitReport]:
    """`known`: categories seen in train, per categorical column (None while validating train)."""
    cfg = cfg or ValidateConfig()
    spec = cfg.schema_
    features = feature_columns(frame, data)
    report = SplitReport(len(frame), 0, 0)
    frame, report.sentinels = sentinels_to_missing(frame, features, spec)
    report.fatal = _frame_level_problems(frame, data, features, spec)
    if report.fatal:
        return frame.iloc[:0], frame.iloc[:0], report
    if known and cfg.unknown_category == "missing":
        frame, report.unknown_set_missing = _unknown_to_missing(frame, known, spec)
    schema = validated_schema(data, features, classes, spec, known)
    numbers, text_cells = _text_in_numbers(frame, features, spec) if data.modality == "tabular" else (frame, _NO_CELLS)
    try:
        schema.validate(numbers.drop(index=text_cells["index"].unique()), lazy=True)
        failures = _NO_CELLS
    except pa.errors.SchemaErrors as e:
        failures = _one_row_per_cell(e.failure_cases)
    frame_level = failures[failures["index"].isna()]
    report.fatal = [f"column '{r.column}': {r.check} (got {r.failure_case})" for r in frame_level.itertuples()]
    rows = pd.concat([text_cells, failures[failures["index"].notna()]], ignore_index=True)
    rows = rows.drop_duplicates(["index", "column", "check"]).astype({"index": frame.index.dtype})
    rows["reason"] = [f"{c}: {k} (got {v!r})"
                      for c, k, v in zip(rows["column"], rows["check"], rows["failure_case"], strict=True)]
    reasons = rows.groupby("index", sort=True)["reason"].agg("; ".join)

    quarantine = frame.loc[reasons.index].copy()
    quarantine[REASON] = reasons.to_numpy()
    valid = _coerce(frame.drop(index=reasons.index), features, spec) if len(reasons) else _coerce(frame, features, spec)
    report.valid, report.quarantined, report.checks = len(valid), len(quarantine), _summarise(rows)
    report.missing = {c: int(n) for c, n in valid[features].isna().sum().items() if n}
    if data.task == "classification":
        report.class_counts = {str(k): int(v) for k, v in valid[data.label].value_counts().sort_index().items()}
    if data.modality == "image":
        report.images = _image_findings(valid, features)
    return valid.reset_index(drop=True), _stringify_mixed(quarantine).reset_index(drop=True), report


_NO_CELLS = pd.DataFrame({"column": [], "check": [], "failure_case": [], "index": []})


def _text_in_numbers(frame: pd.DataFrame, features: list[str], spec: SchemaConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cells of a numeric column that hold text (a decimal comma, a spreadsheet's #VALUE!, a header
    repeated mid-file), one row per cell in pandera's failure-case shape, and the frame with those
    columns as numbers. Found here, before the schema: pandera would coerce them and then compare
    text with a declared bound, which fails the whole column instead of the rows."""
    cells, numbers = [], {}
    for column in features:
        declared = spec.columns[column].dtype if column in spec.columns else "float"
        series = frame[column]
        if declared not in NUMERIC or pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            continue
        parsed = pd.to_numeric(series, errors="coerce")
        text = series.notna() & parsed.isna()
        cells += [{"column": column, "check": f"wrong dtype: expected {declared}, got text", "failure_case": value,
                   "index": index} for index, value in series[text].items()]
        numbers[column] = parsed
    found = pd.DataFrame(cells) if cells else _NO_CELLS
    return (frame.assign(**numbers) if numbers else frame), found


@dataclass
class Validation:
    """What the validate stage writes: per '<dataset>/<split>', the valid rows, the quarantine and
    the report; the quarantined rows for the UI table; the rows of val/test that train holds too;
    and the one-line reason the stage must stop, if any."""

    valid: dict[str, pd.DataFrame]
    quarantine: dict[str, pd.DataFrame]
    reports: dict[str, SplitReport]
    quarantined: list[dict]
    leakage: dict[str, dict]
    problem: str | None


def run(params: Params, raw: dict[str, dict[str, pd.DataFrame]]) -> Validation:
    """`raw`: each data set's raw splits. Train is validated first: its categories are what val and
    test may hold, and its classes (unless ingest.datasets declares them) what a label may be."""
    data, cfg = params.data, params.validate_
    out = Validation({}, {}, {}, [], {}, None)
    class_counts = {}
    for name, frames in raw.items():
        declared = params.ingest.datasets.get(name)
        labels = frames["train"][data.label] if data.label in frames["train"] else pd.Series([])
        seen = labels[labels.notna() & ~labels.isin([np.inf, -np.inf])].unique()  # inf is no class: quarantined
        classes = list(declared) if declared else sorted(seen.tolist())
        known = None
        for split in SPLITS:
            where = f"{name}/{split}"
            checked = validate_split.fn(frames[split], data, classes, cfg, known)
            out.valid[where], out.quarantine[where], out.reports[where] = checked
            if split == "train":
                known = categories_seen(out.valid[where], cfg.schema_)
            quarantine = out.quarantine[where]
            out.quarantined += [{"split": where, "id": str(i), "reason": r}
                                for i, r in zip(quarantine.get(data.id, []), quarantine.get(REASON, []), strict=True)]
        if data.task == "classification":  # a regression's label is a number: no classes to count
            class_counts[f"{name}/train"] = len(out.reports[f"{name}/train"].class_counts) or len(classes)
        out.leakage.update(leakage({s: out.valid[f"{name}/{s}"] for s in SPLITS}, data, name))
    out.problem = verdict(out.reports, cfg, class_counts, data.label)
    return out


def leakage(valid: dict[str, pd.DataFrame], data: DataConfig, name: str, examples: int = 10) -> dict[str, dict]:
    """Rows of val and test whose features equal a train row's: a model may have memorised their
    answer, so their score says less. Counted and named, never removed (the split is the split)."""
    train = valid["train"]
    features = feature_columns(train, data)
    if not len(train) or not features:
        return {}
    seen = set(pd.util.hash_pandas_object(train[features], index=False).to_numpy().tolist())
    found = {}
    for split in ("val", "test"):
        frame = valid[split]
        if not len(frame) or any(c not in frame.columns for c in features):
            continue
        hit = pd.util.hash_pandas_object(frame[features], index=False).isin(seen).to_numpy()
        if hit.any():
            found[f"{name}/{split}"] = {"rows": int(hit.sum()), "of": len(frame),
                                        "ids": [_plain(i) for i in frame.loc[hit, data.id].head(examples)]}
    return found


def categories_seen(train: pd.DataFrame, spec: SchemaConfig) -> dict[str, list]:
    """Categories of the valid train rows, per `category` column without a declared `isin`."""
    return {c: sorted(train[c].dropna().unique().tolist()) for c, column in spec.columns.items()
            if column.dtype == "category" and column.isin is None and c in train.columns}


def sentinels_to_missing(frame: pd.DataFrame, features: list[str], spec: SchemaConfig) -> tuple[pd.DataFrame, dict]:
    declared = {c: list(spec.missing_values) + list(spec.columns[c].missing_values if c in spec.columns else [])
                for c in features}
    declared = {c: v for c, v in declared.items() if v}
    if not declared:
        return frame, {}
    frame, counts = frame.copy(), {}
    for column, values in declared.items():
        series = frame[column]
        numeric = pd.api.types.is_numeric_dtype(series)
        values = [v for v in values if not isinstance(v, str)] if numeric else [str(v) for v in values]
        hit = series.isin(values) if values else pd.Series(False, index=series.index)
        if hit.any():
            frame[column] = series.mask(hit)
            counts[column] = int(hit.sum())
    return frame, counts


def _unknown_to_missing(frame: pd.DataFrame, known: Mapping[str, Sequence], spec: SchemaConfig) -> tuple[pd.DataFrame, dict]:
    frame, counts = frame.copy(), {}
    for column, categories in known.items():
        series = frame[column].astype("str")
        unknown = series.notna() & ~series.isin(list(categories))
        if unknown.any():
            frame[column] = series.mask(unknown)
            counts[column] = int(unknown.sum())
    return frame, counts


def _frame_level_problems(frame: pd.DataFrame, data: DataConfig, features: list[str], spec: SchemaConfig) -> list[str]:
    problems = []
    if data.label not in frame.columns:
        problems.append(f"column '{data.label}': label column missing (data.label)")
    if data.id not in frame.columns:
        problems.append(f"column '{data.id}': id column missing (data.id)")
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        problems.append(f"column '{missing[0]}': declared in validate.schema.columns but not in the data "
                        f"({len(missing)} declared column(s) missing)")
    extra = [c for c in features if c not in spec.columns]
    if data.modality == "tabular" and spec.extra_columns == "forbid" and extra:
        problems.append(f"column '{extra[0]}': not declared in validate.schema.columns (extra_columns: forbid)")
    if data.modality == "image" and len(features) != math.prod(data.image_shape):
        problems.append(f"image shape: {len(features)} pixel columns, data.image_shape {list(data.image_shape)} "
                        f"needs {math.prod(data.image_shape)}")
    if not features:
        problems.append("no feature columns besides the id and label")
    if not len(frame):
        return problems
    all_null = [c for c in features if frame[c].isna().all()]
    if all_null:
        problems.append(f"column '{all_null[0]}': every value is missing ({len(all_null)} such column(s))")
    if data.modality == "tabular":
        problems += _wrong_dtypes(frame, [c for c in features if c not in all_null], spec)
    return problems


def _wrong_dtypes(frame: pd.DataFrame, features: list[str], spec: SchemaConfig) -> list[str]:
    """A numeric column in which no present value parses as a number is a declaration mistake, not
    bad rows: say so once instead of quarantining every row."""
    problems = []
    for column in features:
        declared = spec.columns[column].dtype if column in spec.columns else "float"
        series = frame[column]
        if declared not in NUMERIC or pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            continue
        present = series.dropna()
        if pd.to_numeric(present, errors="coerce").isna().all():
            hint = "" if column in spec.columns else "; declare it in validate.schema.columns (e.g. dtype: category)"
            problems.append(f"column '{column}': wrong dtype: expected {declared}, got text "
                            f"(e.g. {present.iloc[0]!r}){hint}")
    return problems


def _coerce(frame: pd.DataFrame, features: list[str], spec: SchemaConfig) -> pd.DataFrame:
    """Store declared numeric columns as float and categorical ones as text, as the schema coerced them."""
    cast, changes = {}, {}
    for column in features:
        declared = spec.columns[column].dtype if column in spec.columns else "float"
        series = frame[column]
        if declared in NUMERIC and series.dtype != np.float64:
            if pd.api.types.is_numeric_dtype(series):
                cast[column] = float  # one astype for hundreds of pixel columns
            else:
                changes[column] = pd.to_numeric(series).astype(float)
        elif declared not in NUMERIC and not isinstance(series.dtype, pd.StringDtype):
            changes[column] = series.astype("str")
    frame = frame.astype(cast) if cast else frame
    return frame.assign(**changes) if changes else frame


def _image_findings(frame: pd.DataFrame, features: list[str]) -> dict[str, int]:
    pixels = frame[features].to_numpy()
    constant = (pixels == pixels[:, :1]).all(axis=1) if len(pixels) else np.zeros(0, bool)
    duplicates = pd.util.hash_pandas_object(frame[features], index=False).duplicated()
    return {"blank_or_constant": int(constant.sum()), "duplicate_images": int(duplicates.sum())}


def _one_row_per_cell(failures: pd.DataFrame) -> pd.DataFrame:
    """Frame-level checks report {column: value} per failing row; spread those into one row per cell."""
    cells = failures["failure_case"].map(lambda v: isinstance(v, dict))
    if not cells.any():
        return failures
    spread = [{**row, "column": column, "failure_case": value}
              for row in failures[cells].to_dict("records") for column, value in row["failure_case"].items()]
    return pd.concat([failures[~cells], pd.DataFrame(spread)], ignore_index=True)


def _summarise(rows: pd.DataFrame, examples: int = 3) -> list[dict]:
    summary = []
    for (column, check), group in rows.groupby(["column", "check"], sort=False):
        summary.append({"column": str(column), "check": str(check), "failures": int(group["index"].nunique()),
                        "examples": [_plain(v) for v in group["failure_case"].head(examples)]})
    return sorted(summary, key=lambda s: -s["failures"])


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value if isinstance(value, (int, float, str)) else str(value)


def _stringify_mixed(frame: pd.DataFrame) -> pd.DataFrame:
    # A quarantined column may hold "abc" beside numbers; Parquet needs one type per column.
    for column in [c for c, dtype in frame.dtypes.items() if is_object_dtype(dtype)]:
        frame[column] = frame[column].astype("string")
    return frame


def verdict(reports: dict[str, SplitReport], cfg: ValidateConfig, label_counts: dict[str, int],
            label: str = "label") -> str | None:
    """The one-line reason this stage must stop, or None. `reports` is keyed '<dataset>/<split>';
    `label_counts` holds the number of classes of each '<dataset>/train'."""
    for where, report in reports.items():
        if report.fatal:
            return f"{where}: {report.fatal[0]}"
    for where, report in reports.items():
        if report.rows == 0:
            return f"{where}: no rows (an empty file or split)"
        if report.rows < cfg.min_rows:
            return f"{where}: {report.rows} rows, fewer than validate.min_rows={cfg.min_rows}"
        if cfg.max_rows is not None and report.rows > cfg.max_rows:
            return f"{where}: {report.rows} rows, more than validate.max_rows={cfg.max_rows}"
        if report.invalid_fraction > cfg.max_invalid_fraction:
            worst = report.checks[0]
            return (f"{where}: {report.quarantined}/{report.rows} rows invalid ({report.invalid_fraction:.1%} > "
                    f"validate.max_invalid_fraction={cfg.max_invalid_fraction}); worst: column '{worst['column']}' "
                    f"check {worst['check']} failed {worst['failures']} times")
    for where, count in label_counts.items():
        seen = list(reports[where].class_counts) if where in reports else []
        if count < cfg.min_classes:
            only = f" ({', '.join(repr(c) for c in seen)} only)" if seen else ""
            return (f"{where}: label column '{label}' has {'one class only' if count == 1 else f'{count} classes'}{only}; "
                    f"validate.min_classes={cfg.min_classes}")
        if cfg.max_classes is not None and count > cfg.max_classes:
            return f"{where}: label column '{label}' has {count} classes, more than validate.max_classes={cfg.max_classes}"
    return None


def report_markdown(reports: dict[str, SplitReport], leaked: dict[str, dict] | None = None) -> str:
    lines = ["# Validation report", "", "| split | rows | valid | quarantined | invalid | classes (valid rows) |",
             "|---|---:|---:|---:|---:|---|"]
    for where, r in reports.items():
        classes = ", ".join(f"{k}: {v}" for k, v in r.class_counts.items())
        lines.append(f"| {where} | {r.rows} | {r.valid} | {r.quarantined} | {r.invalid_fraction:.2%} | {classes} |")
    for where, r in reports.items():
        if r.checks or r.fatal:
            lines += ["", f"## {where}: failed checks", "", "| column | check | failures | examples |", "|---|---|---:|---|"]
            lines += [f"| {c['column']} | {c['check']} | {c['failures']} | {c['examples']} |" for c in r.checks]
            lines += [f"| (frame) | {f} | - | - |" for f in r.fatal]
        notes = [("missing values left for repair", r.missing), ("sentinels turned missing", r.sentinels),
                 ("unknown categories turned missing", r.unknown_set_missing), ("images (repair drops them)", r.images)]
        for title, counts in notes:
            if counts:
                lines += ["", f"{where}, {title}: " + ", ".join(f"{k} {v}" for k, v in counts.items())]
    for where, found in (leaked or {}).items():
        lines += ["", f"{where}, leakage: {found['rows']} of {found['of']} rows have the features of a train row "
                      f"(ids {', '.join(map(str, found['ids']))}{', ...' if found['rows'] > len(found['ids']) else ''})"]
    return "\n".join(lines) + "\n"
