"""Missing values: a strategy per column (or one for all), fitted on train, applied to every split.

drop (the row goes, with a ledger entry), constant, mean, median, most_frequent (per-column
numbers or categories, stored as JSON), knn and iterative (scikit-learn's KNNImputer and
IterativeImputer over all numeric features, used for the columns that declare them). KNN keeps its
train reference rows, saved as Parquet beside the JSON (refitting a KNNImputer on them restores it
exactly: its fit only stores them); the iterative imputer is saved with skops. Optional indicator
columns `<column>__missing` (0/1) for every column that had missing values in train.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.config import MissingConfig, MissingRule, SchemaConfig
from tasks.errors import UserError
from tasks.repair import ledger as L

MODEL_BASED = ("knn", "iterative")


def knn_imputer(n_neighbors: int, reference: np.ndarray):
    from sklearn.impute import KNNImputer

    return KNNImputer(n_neighbors=n_neighbors, keep_empty_features=True).fit(reference)


class Imputer:
    def __init__(self, cfg: MissingConfig, seed: int = 0, spec: SchemaConfig | None = None):
        self.cfg = cfg
        self.seed = seed
        self.spec = spec or SchemaConfig()

    def fit(self, train: pd.DataFrame, numeric: list[str], categorical: list[str]) -> Imputer:
        default = MissingRule(**self.cfg.model_dump(include={"strategy", "fill_value"}, exclude_unset=True))
        rules = {c: self.cfg.columns.get(c, default) for c in numeric + categorical}
        unknown = sorted(set(self.cfg.columns) - set(rules))
        if unknown:
            raise UserError(f"repair.missing.columns.{unknown[0]}: no such feature column")
        for c in categorical:
            if rules[c].strategy in ("mean", "median", *MODEL_BASED):
                if c in self.cfg.columns:
                    raise UserError(f"repair.missing.columns.{c}: strategy {rules[c].strategy} needs numbers; "
                                    f"'{c}' is categorical")
                rules[c] = MissingRule(strategy="most_frequent")  # the global numeric default, for categories
        self.strategies_ = {c: r.strategy for c, r in rules.items()}
        self.numeric_, self.categorical_ = list(numeric), list(categorical)
        self.fill_values_: dict[str, Any] = {}
        by = {s: [c for c, r in rules.items() if r.strategy == s] for s in ("mean", "median")}
        means = train[by["mean"]].mean() if by["mean"] else {}
        medians = train[by["median"]].median() if by["median"] else {}
        for c, r in rules.items():
            if r.strategy == "mean":
                self.fill_values_[c] = float(means[c])
            elif r.strategy == "median":
                self.fill_values_[c] = float(medians[c])
            elif r.strategy == "most_frequent":
                counts = train[c].value_counts(sort=False)
                top = counts.index[counts.to_numpy().argmax()] if len(counts) else (0.0 if c in numeric else "")
                self.fill_values_[c] = float(top) if c in numeric else str(top)
            elif r.strategy == "constant":
                self.fill_values_[c] = float(r.fill_value) if c in numeric else str(r.fill_value)
        had_missing = train[numeric + categorical].isna().any()
        self.indicators_ = [c for c in numeric + categorical if had_missing[c]] if self.cfg.indicators else []
        self.model_ = None
        if any(s in MODEL_BASED for s in self.strategies_.values()):
            self.model_ = self._model(train[numeric].to_numpy(float, copy=True))
        return self

    def _model(self, x: np.ndarray):
        kind = next(s for s in self.strategies_.values() if s in MODEL_BASED)
        if any(s in MODEL_BASED and s != kind for s in self.strategies_.values()):
            raise UserError("repair.missing: use either knn or iterative, not both")
        if kind == "knn":
            self.reference_ = x  # all a KNNImputer's fit keeps: saved as Parquet, refitted on load
            return knn_imputer(self.cfg.n_neighbors, x)
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401  (registers the estimator)
        from sklearn.impute import IterativeImputer

        # Declared ranges bound what the regression may fill in (it could extrapolate past them).
        low = [self._bound(c, "ge", -np.inf) for c in self.numeric_]
        high = [self._bound(c, "le", np.inf) for c in self.numeric_]
        return IterativeImputer(max_iter=self.cfg.max_iter, random_state=self.seed, min_value=low, max_value=high,
                                keep_empty_features=True).fit(x)

    def _bound(self, column: str, side: str, default: float) -> float:
        declared = self.spec.columns.get(column)
        value = getattr(declared, side) if declared is not None else None
        return default if value is None else float(value)

    def output_columns(self) -> list[str]:
        return [f"{c}__missing" for c in self.indicators_]

    def transform(self, frame: pd.DataFrame, id_col: str, split: str,
                  fresh: set[str] = frozenset()) -> tuple[pd.DataFrame, list[pa.Table], dict]:
        """`fresh`: numeric columns whose arrays the previous step made in this same call (clipped
        values): they are filled in place, saving a copy of each (a million rows: 8 MB a column)."""
        parts, ids = [], frame[id_col].to_numpy()
        columns = self.numeric_ + self.categorical_
        missing = {c: frame[c].isna().to_numpy() for c in columns}
        changes = {f"{c}__missing": missing[c].astype(float) for c in self.indicators_}
        drop_columns = [c for c in columns if self.strategies_[c] == "drop"]
        drop = np.logical_or.reduce([missing[c] for c in drop_columns]) if drop_columns else np.zeros(len(frame), bool)
        if drop.any():
            parts.append(L.rows(split, ids[drop], "missing: drop row"))
        model_columns = [c for c in self.numeric_ if self.strategies_[c] in MODEL_BASED and missing[c].any()]
        if model_columns:
            filled = self.model_.transform(frame[self.numeric_].to_numpy(float, copy=True))
            for c in model_columns:
                values = frame[c].to_numpy(float).copy()
                values[missing[c]] = filled[missing[c], self.numeric_.index(c)]
                changes[c] = values
        simple = [c for c in columns if c in self.fill_values_ and missing[c].any()]
        for c in simple:  # one column at a time: no (rows x columns) copy
            if c in fresh and frame[c].dtype == np.float64:
                values = frame[c].to_numpy()
                values.flags.writeable = True  # pandas hands out a read-only view; this array is ours alone
                values[missing[c]] = self.fill_values_[c]
            else:
                changes[c] = frame[c].fillna(self.fill_values_[c])
        counts = {}
        for c in simple + model_columns:
            rows = np.flatnonzero(missing[c] & ~drop)
            new = L.as_text(changes[c][rows]) if c in model_columns else \
                L.per_column_values(np.zeros(len(rows)), [self.fill_values_[c]])
            parts.append(L.cells(split, ids[rows], np.zeros(len(rows)), [c], L.nulls(len(rows)), new,
                                 f"missing: {self.strategies_[c]}"))
            counts[c] = len(rows)
        frame = frame.assign(**changes) if changes else frame
        return (frame[~drop] if drop.any() else frame), parts, counts

    def to_json(self) -> dict[str, Any]:
        return {"strategies": self.strategies_, "numeric": self.numeric_, "categorical": self.categorical_,
                "fill_values": self.fill_values_, "indicators": self.indicators_}

    @classmethod
    def from_json(cls, blob: dict[str, Any], cfg: MissingConfig, seed: int, spec: SchemaConfig | None, model=None,
                  reference: np.ndarray | None = None) -> Imputer:
        imputer = cls(cfg, seed, spec)
        imputer.strategies_ = dict(blob["strategies"])
        imputer.numeric_, imputer.categorical_ = list(blob["numeric"]), list(blob["categorical"])
        imputer.fill_values_ = dict(blob["fill_values"])
        imputer.indicators_ = list(blob["indicators"])
        imputer.model_ = model
        if reference is not None:
            imputer.reference_, imputer.model_ = reference, knn_imputer(cfg.n_neighbors, reference)
        return imputer
