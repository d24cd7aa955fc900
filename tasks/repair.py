"""Repair: fit fixes on the train split only, apply them unchanged to every split, record each change.

Reads validated frames, returns repaired frames, the fitted `Repairer` (saved as plain JSON, so
val/test/inference apply exactly the same transformation and nothing is unpickled) and a ledger
with one row per change: row id, column, old value, new value, rule.
Follows the scikit-learn contract: `__init__` stores settings, `fit` learns attributes with a
trailing underscore, `transform` never refits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from prefect import task

from tasks.config import DataConfig, RepairConfig
from tasks.frames import feature_columns

LEDGER_COLUMNS = ["split", "row_id", "column", "old", "new", "rule"]


class Repairer:
    def __init__(self, cfg: RepairConfig, data: DataConfig):
        self.cfg = cfg
        self.data = data

    def fit(self, train: pd.DataFrame) -> Repairer:
        features = feature_columns(train, self.data)
        values = train[features]
        stats = {
            "mean": values.mean(), "median": values.median(),
            "most_frequent": values.mode().iloc[0] if len(values) else values.mean(),
            "constant": pd.Series(self.cfg.fill_value, index=features),
        }
        self.features_ = features
        self.fill_values_ = stats.get(self.cfg.missing, stats["median"]).astype(float).to_dict()
        counts = train[self.data.label].value_counts().sort_index()
        # "balanced" weights, as scikit-learn computes them: n / (k * count).
        self.class_weights_ = {_key(k): float(len(train) / (len(counts) * v)) for k, v in counts.items()}
        return self

    def transform(self, frame: pd.DataFrame, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Fill, de-duplicate and drop blank rows. Never refits; returns (frame, ledger)."""
        ledger: list[pd.DataFrame] = []
        frame = frame.copy()
        values = frame[self.features_]
        missing = values.isna()
        if missing.to_numpy().any():
            if self.cfg.missing == "drop":
                rows = missing.any(axis=1)
                ledger.append(_row_entries(frame[rows], self.data, split, "missing: drop row"))
                frame = frame[~rows]
            else:
                ledger.append(_cell_entries(frame, missing, self.fill_values_, self.data, split, f"missing: {self.cfg.missing}"))
                frame[self.features_] = values.fillna(self.fill_values_)
        if self.cfg.drop_constant_rows:
            blank = frame[self.features_].nunique(axis=1) <= 1
            ledger.append(_row_entries(frame[blank], self.data, split, "constant row: drop"))
            frame = frame[~blank]
        if self.cfg.drop_duplicates:
            dup = frame.duplicated(subset=self.features_ + [self.data.label])
            ledger.append(_row_entries(frame[dup], self.data, split, "duplicate row: drop"))
            frame = frame[~dup]
        return frame.reset_index(drop=True), _concat(ledger)

    def to_json(self) -> dict[str, Any]:
        return {"config": self.cfg.model_dump(), "features": self.features_,
                "fill_values": self.fill_values_, "class_weights": self.class_weights_}

    @classmethod
    def from_json(cls, blob: dict[str, Any], data: DataConfig) -> Repairer:
        repairer = cls(RepairConfig(**blob["config"]), data)
        repairer.features_ = list(blob["features"])
        repairer.fill_values_ = {k: float(v) for k, v in blob["fill_values"].items()}
        repairer.class_weights_ = {k: float(v) for k, v in blob["class_weights"].items()}
        return repairer


@task
def fit_repairer(train: pd.DataFrame, cfg: RepairConfig, data: DataConfig) -> Repairer:
    return Repairer(cfg, data).fit(train)


@task
def apply_repairer(repairer: Repairer, frame: pd.DataFrame, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return repairer.transform(frame, split)


@task
def rebalance(train: pd.DataFrame, cfg: RepairConfig, data: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random over- or under-sampling of the train split to equal class counts (seeded)."""
    if cfg.imbalance not in ("oversample", "undersample"):
        return train, _concat([])
    rng = np.random.default_rng(cfg.seed)
    groups = train.groupby(data.label, sort=True).indices
    target = max(map(len, groups.values())) if cfg.imbalance == "oversample" else min(map(len, groups.values()))
    keep, ledger = [], []
    for label, rows in groups.items():
        if cfg.imbalance == "oversample":
            extra = rng.choice(rows, size=target - len(rows), replace=True)
            keep.append(np.concatenate([rows, extra]))
            ledger.append(_row_entries(train.iloc[extra], data, "train", "imbalance: oversample copy"))
        else:
            chosen = rng.choice(rows, size=target, replace=False)
            keep.append(chosen)
            ledger.append(_row_entries(train.iloc[np.setdiff1d(rows, chosen)], data, "train", "imbalance: undersample drop"))
    return train.iloc[np.sort(np.concatenate(keep))].reset_index(drop=True), _concat(ledger)


def summarise(before: pd.DataFrame, after: pd.DataFrame, ledger: pd.DataFrame, data: DataConfig) -> dict[str, Any]:
    features = feature_columns(before, data)
    return {
        "rows_before": len(before), "rows_after": len(after),
        "missing_before": int(before[features].isna().to_numpy().sum()),
        "missing_after": int(after[features].isna().to_numpy().sum()),
        "changes": {str(k): int(v) for k, v in ledger["rule"].value_counts().items()} if len(ledger) else {},
        "class_counts_before": {_key(k): int(v) for k, v in before[data.label].value_counts().sort_index().items()},
        "class_counts_after": {_key(k): int(v) for k, v in after[data.label].value_counts().sort_index().items()},
    }


def _key(label: Any) -> str:
    return str(label.item() if isinstance(label, np.generic) else label)


def _row_entries(rows: pd.DataFrame, data: DataConfig, split: str, rule: str) -> pd.DataFrame:
    return pd.DataFrame({"split": split, "row_id": rows[data.id].astype("int64").to_numpy(),
                         "column": "*", "old": "row", "new": None, "rule": rule})


def _cell_entries(frame: pd.DataFrame, missing: pd.DataFrame, fills: dict, data: DataConfig, split: str, rule: str) -> pd.DataFrame:
    rows, cols = np.nonzero(missing.to_numpy())
    columns = np.asarray(missing.columns)[cols]
    return pd.DataFrame({"split": split, "row_id": frame[data.id].to_numpy()[rows].astype("int64"), "column": columns,
                         "old": None, "new": [str(fills[c]) for c in columns], "rule": rule})


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "row_id" else "string") for c in LEDGER_COLUMNS})
    ledger = pd.concat(parts, ignore_index=True)
    return ledger.astype({c: "string" for c in LEDGER_COLUMNS if c != "row_id"})
