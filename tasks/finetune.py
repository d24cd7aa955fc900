"""Fine-tune: adapt a trained model to the target data set with few labels, and measure the gain.

Transfer is training (tasks/train.py) started from other weights: the source backbone is loaded
by name and shape (a report says what was loaded, skipped or mismatched), the head is new when the
classes differ, and the strategy sets the backbone's learning rate (0 = linear probe). The same
architecture trained from scratch on the same labels and budget is the baseline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import task

from tasks.config import DataConfig, FinetuneConfig
from tasks.errors import UserError


@task
def few_labels(train: pd.DataFrame, data: DataConfig, per_class: int | None, seed: int) -> pd.DataFrame:
    """Keep `per_class` original rows a class (seeded), with any augmented copies made from them."""
    if per_class is None:
        return train
    originals = train[train["augmented_from"].isna()] if "augmented_from" in train else train
    rng = np.random.default_rng(seed)
    chosen = []
    for label, group in originals.groupby(data.label, sort=True):
        if len(group) < per_class:
            raise UserError(f"finetune.labels_per_class={per_class}: class {label!r} has only {len(group)} train rows")
        chosen.append(rng.choice(group[data.id].to_numpy(), size=per_class, replace=False))
    ids = np.concatenate(chosen)
    keep = train[data.id].isin(ids)
    if "augmented_from" in train:
        keep |= train["augmented_from"].isin(ids)
    return train[keep].reset_index(drop=True)


def backbone_lr_ratio(cfg: FinetuneConfig) -> float:
    return 0.0 if cfg.strategy == "linear_probe" else cfg.backbone_lr_ratio
