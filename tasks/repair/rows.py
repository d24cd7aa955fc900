"""Whole-row repairs: duplicates, conflicting labels and constant (blank) rows.

Stateless: nothing is fitted, each split is judged on its own rows. Only train loses rows: in val
and test they are counted, never dropped, so every row a split holds is scored. Rows are compared through a
64-bit hash of their features (pandas' vectorised hash), so a million rows cost one pass.
- duplicate: same features and same label as an earlier row; `drop` keeps the first.
- conflict: same features, different labels; no row of the group can be trusted, `drop` drops all.
- constant: every feature equal (a blank image), when all features are numeric.
Policies `report` count without changing anything; `keep` skips the check.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.config import DataConfig, RepairConfig
from tasks.repair import ledger as L


def filter_rows(frame: pd.DataFrame, features: list[str], cfg: RepairConfig, data: DataConfig,
                split: str) -> tuple[pd.DataFrame, list[pa.Table], dict[str, int]]:
    if split != "train":  # val/test are what the model is scored on: every row stays, the counts are reported
        cfg = cfg.model_copy(update={"duplicates": _report(cfg.duplicates), "conflicts": _report(cfg.conflicts),
                                     "drop_constant_rows": False})
    parts, found, drop = [], {}, np.zeros(len(frame), bool)
    ids = frame[data.id].to_numpy()
    if cfg.duplicates != "keep" or cfg.conflicts != "keep":
        key = pd.util.hash_pandas_object(frame[features], index=False).to_numpy()
        if cfg.conflicts != "keep":
            labels_per_key = pd.Series(frame[data.label].to_numpy()).groupby(key).nunique()
            conflicting = np.isin(key, labels_per_key.index[labels_per_key.to_numpy() > 1])
            found["conflicting_rows"] = int(conflicting.sum())
            if cfg.conflicts == "drop" and conflicting.any():
                parts.append(L.rows(split, ids[conflicting], "conflicting labels: drop"))
                drop |= conflicting
        if cfg.duplicates != "keep":
            labels = pd.util.hash_pandas_object(frame[data.label], index=False).to_numpy()
            duplicate = pd.DataFrame({"k": key, "y": labels}).duplicated().to_numpy() & ~drop
            found["duplicate_rows"] = int(duplicate.sum())
            if cfg.duplicates == "drop" and duplicate.any():
                parts.append(L.rows(split, ids[duplicate], "duplicate row: drop"))
                drop |= duplicate
    if cfg.drop_constant_rows and features and all(pd.api.types.is_numeric_dtype(frame[c]) for c in features):
        values = frame[features].to_numpy()
        constant = (values == values[:, :1]).all(axis=1) & ~drop
        found["constant_rows"] = int(constant.sum())
        if constant.any():
            parts.append(L.rows(split, ids[constant], "constant row: drop"))
            drop |= constant
    return (frame[~drop] if drop.any() else frame), parts, found


def _report(policy: str) -> str:
    return "report" if policy == "drop" else policy
