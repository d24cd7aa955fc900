"""Validate: check each split against the Raw schema; quarantine bad rows with their reason.

Pure: frames and config in, (valid frame, quarantine frame, report) out; flows/validate.py does
the reading and writing. pandera's lazy validation collects every failure; its `failure_cases`
table *is* the report, grouped per column and check with counts and a few examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa
from prefect import task

from tasks.config import DataConfig, ValidateConfig
from tasks.frames import feature_columns
from tasks.schemas import raw_schema

REASON = "_reason"


@dataclass
class SplitReport:
    rows: int
    valid: int
    quarantined: int
    checks: list[dict] = field(default_factory=list)  # per column and check: count + examples
    fatal: list[str] = field(default_factory=list)  # frame-level problems: the stage must stop

    @property
    def invalid_fraction(self) -> float:
        return self.quarantined / self.rows if self.rows else 0.0

    def as_dict(self) -> dict:
        return {"rows": self.rows, "valid": self.valid, "quarantined": self.quarantined,
                "invalid_fraction": round(self.invalid_fraction, 6), "checks": self.checks, "fatal": self.fatal}


@task
def validate_split(frame: pd.DataFrame, data: DataConfig, classes: Sequence) -> tuple[pd.DataFrame, pd.DataFrame, SplitReport]:
    features = feature_columns(frame, data)
    fatal = _frame_level_problems(frame, data, features)
    if fatal:
        return frame.iloc[:0], frame.iloc[:0], SplitReport(len(frame), 0, 0, fatal=fatal)
    schema = raw_schema(data, features, classes)
    try:
        schema.validate(frame, lazy=True)
        failures = pd.DataFrame(columns=["column", "check", "failure_case", "index"])
    except pa.errors.SchemaErrors as e:
        failures = _one_row_per_cell(e.failure_cases)
    frame_level = failures[failures["index"].isna()]
    fatal = [f"column '{r.column}': {r.check} (got {r.failure_case})" for r in frame_level.itertuples()]
    rows = failures[failures["index"].notna()].copy()
    rows["reason"] = [f"{c}: {k} (got {v!r})" for c, k, v in zip(rows["column"], rows["check"], rows["failure_case"])]
    reasons = rows.groupby("index")["reason"].agg("; ".join)

    quarantine = frame.loc[reasons.index].copy()
    quarantine[REASON] = reasons.to_numpy()
    valid = frame.drop(index=reasons.index)
    if not fatal:  # every remaining feature value is numeric or missing: store them as floats
        valid = valid.astype({c: float for c in features}) if all(valid[c].dtype != object for c in features) \
            else valid.assign(**{c: pd.to_numeric(valid[c]).astype(float) for c in features})
    report = SplitReport(len(frame), len(valid), len(quarantine), checks=_summarise(rows), fatal=fatal)
    return valid.reset_index(drop=True), _stringify_mixed(quarantine).reset_index(drop=True), report


def _one_row_per_cell(failures: pd.DataFrame) -> pd.DataFrame:
    """Frame-level checks report {column: value} per failing row; spread those into one row per cell."""
    cells = failures["failure_case"].map(lambda v: isinstance(v, dict))
    if not cells.any():
        return failures
    spread = [{**row, "column": column, "failure_case": value}
              for row in failures[cells].to_dict("records") for column, value in row["failure_case"].items()]
    return pd.concat([failures[~cells], pd.DataFrame(spread)], ignore_index=True)


def _frame_level_problems(frame: pd.DataFrame, data: DataConfig, features: list[str]) -> list[str]:
    problems = []
    if data.label not in frame.columns:
        problems.append(f"column '{data.label}': label column missing (data.label)")
    if not features:
        problems.append("no feature columns besides the id and label")
    all_null = [c for c in features if frame[c].isna().all()]
    if all_null and len(frame):
        problems.append(f"column '{all_null[0]}': every value is missing ({len(all_null)} such column(s))")
    return problems


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
    for column in frame.columns[frame.dtypes == object]:
        frame[column] = frame[column].astype("string")
    return frame


def verdict(reports: dict[str, SplitReport], cfg: ValidateConfig, label_counts: dict[str, int]) -> str | None:
    """The one-line reason this stage must stop, or None. `reports` is keyed '<dataset>/<split>'."""
    for where, report in reports.items():
        if report.fatal:
            return f"{where}: {report.fatal[0]}"
    for where, report in reports.items():
        if report.rows < cfg.min_rows:
            return f"{where}: {report.rows} rows, fewer than validate.min_rows={cfg.min_rows}"
        if report.invalid_fraction > cfg.max_invalid_fraction:
            worst = report.checks[0]
            return (f"{where}: {report.quarantined}/{report.rows} rows invalid ({report.invalid_fraction:.1%} > "
                    f"validate.max_invalid_fraction={cfg.max_invalid_fraction}); worst: column '{worst['column']}' "
                    f"check {worst['check']} failed {worst['failures']} times")
    for where, count in label_counts.items():
        if count < cfg.min_classes:
            return f"{where}: label has {count} class(es) in train, validate.min_classes={cfg.min_classes}"
    return None


def report_markdown(reports: dict[str, SplitReport]) -> str:
    lines = ["# Validation report", "", "| split | rows | valid | quarantined | invalid |", "|---|---:|---:|---:|---:|"]
    for where, r in reports.items():
        lines.append(f"| {where} | {r.rows} | {r.valid} | {r.quarantined} | {r.invalid_fraction:.2%} |")
    for where, r in reports.items():
        if r.checks or r.fatal:
            lines += ["", f"## {where}", "", "| column | check | failures | examples |", "|---|---|---:|---|"]
            lines += [f"| {c['column']} | {c['check']} | {c['failures']} | {c['examples']} |" for c in r.checks]
            lines += [f"| (frame) | {f} | - | - |" for f in r.fatal]
    return "\n".join(lines) + "\n"
