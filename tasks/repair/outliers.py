"""Outliers: bounds (IQR, z-score) or an isolation forest, fitted on train, applied to every split.

IQR: [q1 - k*IQR, q3 + k*IQR]; z-score: mean +- k*std (k = `threshold`); both per column, stored
as plain numbers. Isolation forest judges whole rows on all numeric features (missing values
filled with train's medians first); the fitted forest is saved with skops (trusted types listed
in repairer.py), never pickled. Actions: clip to the bounds, drop the row, flag it in a 0/1
column (`<column>__outlier`, or `_outlier` for the forest), or set the value missing so the
imputer fills it. Every touched cell or row goes to the ledger.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.config import OutlierConfig, OutlierRule
from tasks.repair import ledger as L

FOREST_FLAG = "_outlier"


class OutlierHandler:
    def __init__(self, cfg: OutlierConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = seed

    def fit(self, train: pd.DataFrame, numeric: list[str]) -> OutlierHandler:
        global_rule = self.cfg.model_dump(include={"method", "action", "threshold"}, exclude_unset=True)
        rules = {c: self.cfg.columns.get(c, OutlierRule(**global_rule)) for c in numeric}
        bounded = {c: r for c, r in rules.items() if r.method in ("iqr", "zscore")}
        self.bounds_: dict[str, list[float]] = {}
        if bounded:
            block = train[list(bounded)]
            quartiles = block.quantile([0.25, 0.75]) if any(r.method == "iqr" for r in bounded.values()) else None
            means, stds = (block.mean(), block.std()) if any(r.method == "zscore" for r in bounded.values()) else (None, None)
            for c, r in bounded.items():
                if r.method == "iqr":
                    q1, q3 = quartiles[c].iloc[0], quartiles[c].iloc[1]
                    low, high = q1 - r.threshold * (q3 - q1), q3 + r.threshold * (q3 - q1)
                else:
                    low, high = means[c] - r.threshold * stds[c], means[c] + r.threshold * stds[c]
                if high > low:  # no spread (e.g. a column that is mostly 0): the rule says nothing
                    self.bounds_[c] = [float(low), float(high)]
        self.actions_ = {c: f"{rules[c].method}:{rules[c].action}" for c in self.bounds_}
        self.forest_ = None
        self.forest_columns_: list[str] = []
        self.forest_action_ = None
        if self.cfg.method == "isolation_forest" and numeric:
            from sklearn.ensemble import IsolationForest

            self.forest_columns_ = list(numeric)
            self.forest_fill_ = train[numeric].median().fillna(0.0).astype(float).to_dict()
            self.forest_ = IsolationForest(contamination=self.cfg.contamination, random_state=self.seed)
            self.forest_.fit(train[numeric].fillna(self.forest_fill_).to_numpy(float))
            self.forest_action_ = self.cfg.action
        return self

    def flag_columns(self) -> list[str]:
        flags = [f"{c}__outlier" for c, a in self.actions_.items() if a.endswith(":flag")]
        return flags + ([FOREST_FLAG] if self.forest_action_ == "flag" else [])

    def transform(self, frame: pd.DataFrame, id_col: str, split: str) -> tuple[pd.DataFrame, list[pa.Table], dict, set[str]]:
        """Returns (frame, ledger parts, counts, the columns whose values are new arrays made here)."""
        parts, counts, ids = [], {}, frame[id_col].to_numpy()
        drop, changes = np.zeros(len(frame), bool), {}
        for column, action in self.actions_.items():  # one column at a time: no (rows x columns) copy
            method, what = action.split(":")
            low, high = self.bounds_[column]
            values = frame[column].to_numpy(float)
            outside = (values < low) | (values > high)  # NaN compares False: missing is not an outlier
            rows = np.flatnonzero(outside)
            counts[f"{method} {what}"] = counts.get(f"{method} {what}", 0) + len(rows)
            old, rule = L.as_text(values[rows]), f"outlier {method}: {what.replace('_', ' ')}"
            if what == "clip":
                changes[column] = np.clip(values, low, high)
                new = L.as_text(changes[column][rows])
                parts.append(L.cells(split, ids[rows], np.zeros(len(rows)), [column], old, new, rule))
            elif what == "set_missing":
                changes[column] = np.where(outside, np.nan, values)
                parts.append(L.cells(split, ids[rows], np.zeros(len(rows)), [column], old, L.nulls(len(rows)), rule))
            elif what == "flag":
                changes[f"{column}__outlier"] = outside.astype(float)
                parts.append(L.cells(split, ids[rows], np.zeros(len(rows)), [column], old, L.text("flagged", len(rows)), rule))
            elif split != "train":  # drop is for train: a val/test row is scored, its value clipped to the bounds
                changes[column] = np.clip(values, low, high)
                new = L.as_text(changes[column][rows])
                parts.append(L.cells(split, ids[rows], np.zeros(len(rows)), [column], old, new, f"outlier {method}: clip"))
            else:  # drop: the whole row, once, however many of its values are outside
                bad = outside & ~drop
                parts.append(L.rows(split, ids[bad], rule))
                drop |= bad
        if self.forest_ is not None:
            x = frame[self.forest_columns_].fillna(self.forest_fill_).to_numpy(float)
            outlier = self.forest_.predict(x) == -1 if len(x) else np.zeros(0, bool)
            counts[f"isolation_forest {self.forest_action_}"] = int(outlier.sum())
            if self.forest_action_ == "flag":
                changes[FOREST_FLAG] = outlier.astype(float)
                n = int(outlier.sum())
                parts.append(L.cells(split, ids[outlier], np.zeros(n), [FOREST_FLAG], L.text("0", n), L.text("1", n),
                                     "outlier isolation_forest: flag"))
            elif split == "train":  # val/test rows are scored as they are: counted, never dropped
                outlier &= ~drop
                parts.append(L.rows(split, ids[outlier], "outlier isolation_forest: drop"))
                drop |= outlier
        frame = frame.assign(**changes) if changes else frame
        fresh = set(changes) if not drop.any() else set()  # a row filter below copies them again anyway
        return (frame[~drop] if drop.any() else frame), parts, counts, fresh

    def to_json(self) -> dict[str, Any]:
        return {"bounds": self.bounds_, "actions": self.actions_, "forest_columns": self.forest_columns_,
                "forest_action": self.forest_action_,
                "forest_fill": getattr(self, "forest_fill_", {}) if self.forest_ is not None else {}}

    @classmethod
    def from_json(cls, blob: dict[str, Any], cfg: OutlierConfig, seed: int, forest=None) -> OutlierHandler:
        handler = cls(cfg, seed)
        handler.bounds_ = {k: [float(v[0]), float(v[1])] for k, v in blob["bounds"].items()}
        handler.actions_ = dict(blob["actions"])
        handler.forest_columns_ = list(blob["forest_columns"])
        handler.forest_action_ = blob["forest_action"]
        handler.forest_fill_ = {k: float(v) for k, v in blob["forest_fill"].items()}
        handler.forest_ = forest
        return handler
