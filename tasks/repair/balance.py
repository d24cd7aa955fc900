"""Class imbalance, on the train split only: weights for training, or resampling.

class_weight: "balanced" weights n / (k * count), as scikit-learn computes them, stored in
repairer.json for the train stage. oversample / undersample: seeded random copies or removals
to equal class counts (index sampling, no frame-wide copy before the result). smote,
borderline_smote, adasyn (numeric features) and smotenc (mixed numeric and categorical: runs
before encoding) come from imbalanced-learn; synthetic rows get fresh ids. Every added or
removed row is a ledger row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from prefect import task

from tasks.config import DataConfig, RepairConfig
from tasks.errors import UserError
from tasks.frames import feature_columns
from tasks.repair import ledger as L

SYNTHETIC = ("smote", "borderline_smote", "adasyn", "smotenc")


def class_weights(labels: pd.Series) -> dict[str, float]:
    counts = labels.value_counts().sort_index()
    return {label_key(k): float(len(labels) / (len(counts) * v)) for k, v in counts.items()}


def label_key(label: Any) -> str:
    return str(label.item() if isinstance(label, np.generic) else label)


@task
def rebalance(train: pd.DataFrame, cfg: RepairConfig, data: DataConfig,
              first_id: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Resample the train split to equal class counts (seeded); returns (frame, ledger). New rows get
    ids from `first_id` on (pass one above every split's ids, so no new id clashes with val/test)."""
    frame, parts = resample(train, cfg, data, first_id)
    return frame, L.to_frame(parts)


def resample(train: pd.DataFrame, cfg: RepairConfig, data: DataConfig, first_id: int | None = None,
             consume: bool = False) -> tuple[pd.DataFrame, list[pa.Table]]:
    """`consume`: the frame is the caller's own intermediate and may be emptied while resampling."""
    if cfg.imbalance in ("oversample", "undersample"):
        return _random(train, cfg, data, first_id, consume)
    if cfg.imbalance in SYNTHETIC:
        return _synthetic(train, cfg, data, first_id)
    return train, []


def _random(train: pd.DataFrame, cfg: RepairConfig, data: DataConfig, first_id: int | None,
            consume: bool = False) -> tuple[pd.DataFrame, list[pa.Table]]:
    rng = np.random.default_rng(cfg.seed)
    groups = train.groupby(data.label, sort=True).indices
    sizes = [len(rows) for rows in groups.values()]
    ids = train[data.id].to_numpy()
    if cfg.imbalance == "undersample":
        target = min(sizes)
        keep = [rng.choice(rows, size=target, replace=False) for rows in groups.values()]
        kept = np.sort(np.concatenate(keep))
        dropped = np.setdiff1d(np.arange(len(train)), kept)
        return train.iloc[kept].reset_index(drop=True), [L.rows("train", ids[dropped], "imbalance: undersample drop")]
    target = max(sizes)
    extra = np.sort(np.concatenate([rng.choice(rows, size=target - len(rows), replace=True) for rows in groups.values()]))
    new_ids = _fresh_ids(ids, len(extra), first_id)
    ledger = L.rows("train", new_ids, "imbalance: oversample copy", added_from=ids[extra])
    # One take of originals + copies, column by column: no separate frame of copies, no concat. With
    # `consume`, the caller hands over its own intermediate frame and each column is freed once taken
    # (a million rows: the peak falls by the size of the frame).
    order = np.concatenate([np.arange(len(train)), extra])
    columns = list(train.columns)
    taken = {c: (train.pop(c) if consume else train[c]).array.take(order) for c in columns}
    taken[data.id] = np.concatenate([ids, new_ids])
    return pd.DataFrame(taken, copy=False), [ledger]


def _synthetic(train: pd.DataFrame, cfg: RepairConfig, data: DataConfig,
               first_id: int | None) -> tuple[pd.DataFrame, list[pa.Table]]:
    from imblearn.over_sampling import ADASYN, SMOTE, SMOTENC, BorderlineSMOTE

    features = feature_columns(train, data)
    categorical = [c for c in features if not pd.api.types.is_numeric_dtype(train[c])]
    smallest = int(train[data.label].value_counts().min())
    neighbours = max(1, min(5, smallest - 1))  # imbalanced-learn needs more rows than neighbours in a class
    if cfg.imbalance == "smotenc":
        if not categorical:
            raise UserError("repair.imbalance: smotenc needs categorical features; there are none (use smote)")
        sampler = SMOTENC(categorical_features=categorical, k_neighbors=neighbours, random_state=cfg.seed)
    elif categorical:
        raise UserError(f"repair.imbalance: {cfg.imbalance} interpolates numbers, column '{categorical[0]}' is categorical: "
                        "use smotenc")
    else:
        kind = {"smote": SMOTE, "borderline_smote": BorderlineSMOTE, "adasyn": ADASYN}[cfg.imbalance]
        sampler = kind(random_state=cfg.seed, **({"n_neighbors": neighbours} if kind is ADASYN else {"k_neighbors": neighbours}))
    x, y = sampler.fit_resample(train[features], train[data.label])
    added = len(x) - len(train)  # imbalanced-learn appends the synthetic rows after the originals
    new_ids = _fresh_ids(train[data.id].to_numpy(), added, first_id)
    synthetic = x.iloc[len(train):].assign(**{data.label: y.iloc[len(train):].to_numpy(), data.id: new_ids})
    synthetic = synthetic.astype({c: train[c].dtype for c in features})
    ledger = L.rows("train", new_ids, f"imbalance: {cfg.imbalance} synthetic", added_from=np.array([]))
    return pd.concat([train, synthetic[train.columns]], ignore_index=True), [ledger]


def _fresh_ids(ids: np.ndarray, n: int, first_id: int | None) -> np.ndarray:
    start = first_id if first_id is not None else int(ids.max()) + 1 if len(ids) else 0
    return np.arange(start, start + n, dtype=np.int64)
