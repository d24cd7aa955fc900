"""The Repairer: every repair fitted on train only, applied unchanged to val/test/inference.

Steps, in order, each a scikit-learn-style object (settings in `__init__`, `fit` learns attributes
with a trailing underscore, `transform` never refits): whole rows (duplicates, conflicting labels,
constant rows) -> outliers -> missing values -> categorical encoding. Each step is fitted on the
train split as the previous steps left it. Resampling for imbalance happens between imputation and
encoding, on train only (flows/repair.py; SMOTE-NC needs the categories unencoded).

Saved as plain JSON (repairer.json) plus, only when used, the KNN imputer's train reference rows
(knn_reference.parquet) and a skops file for the iterative imputer / isolation forest, loaded with
the explicit `TRUSTED_TYPES` list below. Nothing is pickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task

from tasks.config import DataConfig, RepairConfig, SchemaConfig
from tasks.errors import UserError
from tasks.frames import feature_columns
from tasks.io import atomic_path, load_frame, load_json, save_frame, save_json
from tasks.repair import ledger as L
from tasks.repair.balance import class_weights, label_key
from tasks.repair.encode import Encoder
from tasks.repair.impute import Imputer
from tasks.repair.outliers import OutlierHandler
from tasks.repair.rows import filter_rows

# What estimators.skops may contain beyond skops' default-trusted scikit-learn types; anything else
# in the file makes loading fail instead of running.
TRUSTED_TYPES = ["numpy.dtype", "sklearn.impute._iterative.IterativeImputer", "sklearn.impute._iterative._ImputerTriplet",
                 "sklearn.tree._tree.Tree"]


class Repairer:
    def __init__(self, cfg: RepairConfig, data: DataConfig, spec: SchemaConfig | None = None):
        self.cfg = cfg
        self.data = data
        self.spec = spec or SchemaConfig()

    def fit(self, train: pd.DataFrame) -> Repairer:
        self.fit_transform(train)
        return self

    def fit_transform(self, train: pd.DataFrame, encode: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
        """Fit every step on train as the earlier steps leave it; returns (train repaired, ledger, findings)."""
        frame, parts, findings = self._fit_transform(train, encode)
        return frame, L.to_frame(parts), findings

    def _fit_transform(self, train: pd.DataFrame, encode: bool) -> tuple[pd.DataFrame, list, dict]:
        self.features_ = feature_columns(train, self.data)
        self.numeric_ = [c for c in self.features_ if pd.api.types.is_numeric_dtype(train[c])]
        self.categorical_ = [c for c in self.features_ if c not in self.numeric_]
        frame, parts, findings = filter_rows(train, self.features_, self.cfg, self.data, "train")
        self.outliers_ = OutlierHandler(self.cfg.outliers, self.cfg.seed).fit(frame, self.numeric_)
        frame, more, findings["outliers"], fresh = self.outliers_.transform(frame, self.data.id, "train")
        parts += more
        self.imputer_ = Imputer(self.cfg.missing, self.cfg.seed, self.spec).fit(frame, self.numeric_, self.categorical_)
        frame, more, findings["imputed"] = self.imputer_.transform(frame, self.data.id, "train", fresh)
        parts += more
        self.encoder_ = Encoder(self.cfg.encode, self.cfg.scale).fit(frame, self.categorical_, self.numeric_)
        regression = self.data.task == "regression"  # a number has no classes to weigh
        self.class_weights_ = {} if regression else class_weights(frame[self.data.label])
        return (self.encode(frame) if encode else frame).reset_index(drop=True), parts, findings

    def transform(self, frame: pd.DataFrame, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        out, ledger, _ = self.transform_with_findings(frame, split)
        return out, ledger

    def transform_with_findings(self, frame: pd.DataFrame, split: str,
                                encode: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
        missing = [c for c in self.features_ if c not in frame.columns]
        if missing:
            raise UserError(f"{split}: column '{missing[0]}' was in train when the repairer was fitted but is missing here")
        frame, parts, findings = filter_rows(frame, self.features_, self.cfg, self.data, split)
        frame, more, findings["outliers"], fresh = self.outliers_.transform(frame, self.data.id, split)
        parts += more
        frame, more, findings["imputed"] = self.imputer_.transform(frame, self.data.id, split, fresh)
        parts += more
        return (self.encode(frame) if encode else frame).reset_index(drop=True), L.to_frame(parts), findings

    def encode(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.encoder_.transform(frame)

    def binary_columns(self) -> list[str]:
        """Columns repair adds that hold 0/1 only (the Repaired schema checks them)."""
        return self.imputer_.output_columns() + self.outliers_.flag_columns() + self.encoder_.binary_columns()

    def scaled_columns(self) -> list[str]:
        """Numeric columns rescaled for the model: declared ranges no longer apply to their values."""
        return self.encoder_.scaled_columns()

    # ------------------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {"config": self.cfg.model_dump(mode="json"), "features": self.features_, "numeric": self.numeric_,
                "categorical": self.categorical_, "outliers": self.outliers_.to_json(), "missing": self.imputer_.to_json(),
                "encoder": self.encoder_.to_json(), "class_weights": self.class_weights_,
                "fill_values": self.imputer_.fill_values_}  # fill_values: the plain answer to "what did train give?"

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        save_json(self.to_json(), folder / "repairer.json")
        reference = getattr(self.imputer_, "reference_", None)
        if reference is not None:  # KNN: its fit only stores the train rows
            save_frame(pd.DataFrame(reference, columns=self.numeric_), folder / "knn_reference.parquet")
        estimators = {k: v for k, v in (("imputer", None if reference is not None else self.imputer_.model_),
                                        ("forest", self.outliers_.forest_)) if v is not None}
        if estimators:
            import skops.io as sio

            with atomic_path(folder / "estimators.skops") as tmp:
                sio.dump(estimators, tmp)

    @classmethod
    def load(cls, folder: str | Path, data: DataConfig, spec: SchemaConfig | None = None) -> Repairer:
        folder = Path(folder)
        blob = load_json(folder / "repairer.json")
        estimators = {}
        if (folder / "estimators.skops").exists():
            import skops.io as sio

            try:
                estimators = sio.load(folder / "estimators.skops", trusted=TRUSTED_TYPES)
            except Exception as e:  # skops refuses types outside the trusted list
                raise UserError(f"{folder / 'estimators.skops'}: refused to load ({type(e).__name__}: {e})") from None
        reference = None
        if (folder / "knn_reference.parquet").exists():
            reference = load_frame(folder / "knn_reference.parquet").to_numpy(float)
        return cls.from_json(blob, data, spec, model=estimators.get("imputer"), forest=estimators.get("forest"),
                             reference=reference)

    @classmethod
    def from_json(cls, blob: dict[str, Any], data: DataConfig, spec: SchemaConfig | None = None, model=None, forest=None,
                  reference: np.ndarray | None = None) -> Repairer:
        cfg = RepairConfig.model_validate(blob["config"])
        repairer = cls(cfg, data, spec)
        repairer.features_, repairer.numeric_ = list(blob["features"]), list(blob["numeric"])
        repairer.categorical_ = list(blob["categorical"])
        repairer.outliers_ = OutlierHandler.from_json(blob["outliers"], cfg.outliers, cfg.seed, forest)
        repairer.imputer_ = Imputer.from_json(blob["missing"], cfg.missing, cfg.seed, spec, model, reference)
        repairer.encoder_ = Encoder.from_json(blob["encoder"])
        repairer.class_weights_ = {k: float(v) for k, v in blob["class_weights"].items()}
        return repairer


def summarise(before: pd.DataFrame, after: pd.DataFrame, ledger: pd.DataFrame, data: DataConfig,
              findings: dict | None = None) -> dict[str, Any]:
    """Before/after missing counts per column, values clipped, rows dropped/added, class counts."""
    features = feature_columns(before, data)
    missing = before[features].isna().sum()
    after_features = feature_columns(after, data)
    rules = ledger["rule"].astype("str").value_counts() if len(ledger) else pd.Series(dtype="int64")
    changes = {str(k): int(v) for k, v in rules.items()}
    return {
        "rows_before": len(before), "rows_after": len(after),
        "missing_before": int(missing.sum()), "missing_after": int(after[after_features].isna().to_numpy().sum()),
        "missing_by_column": {c: int(n) for c, n in missing.items() if n},
        "clipped_values": sum(v for k, v in changes.items() if k.endswith(": clip")),
        "rows_dropped": sum(v for k, v in changes.items() if k.endswith("drop") or k.endswith("drop row")),
        "rows_added": sum(v for k, v in changes.items() if "oversample" in k or "synthetic" in k),
        "changes": changes,
        "findings": {k: v for k, v in (findings or {}).items() if v},
        **({"class_counts_before": _counts(before[data.label]), "class_counts_after": _counts(after[data.label])}
           if data.task == "classification" else {"label_mean_before": _mean(before[data.label]),
                                                  "label_mean_after": _mean(after[data.label])}),
    }


def _mean(labels: pd.Series) -> float | None:
    return round(float(labels.mean()), 6) if labels.notna().any() else None


def _counts(labels: pd.Series) -> dict[str, int]:
    return {label_key(k): int(v) for k, v in labels.value_counts().sort_index().items()}


@task
def repair_train(train: pd.DataFrame, cfg: RepairConfig, data: DataConfig, spec: SchemaConfig | None = None,
                 first_id: int | None = None) -> tuple[Repairer, pd.DataFrame, pd.DataFrame, dict]:
    """Fit on train, repair it, resample it (train only), then encode: (repairer, frame, ledger, findings)."""
    from tasks.repair.balance import resample

    repairer = Repairer(cfg, data, spec)
    frame, parts, findings = repairer._fit_transform(train, encode=False)
    frame, added = resample(frame, cfg, data, first_id, consume=frame is not train)
    return repairer, repairer.encode(frame), L.to_frame(parts + added), findings


@task
def repair_split(repairer: Repairer, frame: pd.DataFrame, split: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Apply the fitted repairer unchanged (val, test, new data): (frame, ledger, findings)."""
    return repairer.transform_with_findings(frame, split)
