"""Augment: add seeded, augmented copies of the train split; val and test are never touched.

Images go through kornia's batched augmentation (pure PyTorch, so the same pipeline runs on a
GPU with the batch); tables get gaussian noise scaled to each column's spread. Every new row
keeps its lineage in `augmented_from` (the id it was made from; missing for original rows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from prefect import task

from tasks.config import AugmentConfig, DataConfig
from tasks.frames import array_to_pixels, feature_columns, features_array


def image_pipeline(cfg: AugmentConfig) -> torch.nn.Module:
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomAffine(degrees=cfg.rotation_deg, translate=(cfg.translate, cfg.translate), scale=cfg.scale, p=1.0),
        K.RandomGaussianNoise(mean=0.0, std=cfg.noise_std, p=1.0 if cfg.noise_std > 0 else 0.0),
    )


@task
def augment_train(train: pd.DataFrame, cfg: AugmentConfig, data: DataConfig) -> pd.DataFrame:
    original = train.assign(augmented_from=pd.array([pd.NA] * len(train), dtype="Int64"))
    if cfg.copies == 0 or train.empty:
        return original
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    features = feature_columns(train, data)
    next_id = int(train[data.id].max()) + 1
    copies = []
    for k in range(cfg.copies):
        if data.modality == "image":
            with torch.no_grad():
                x = image_pipeline(cfg)(torch.from_numpy(features_array(train, data)))
            values = array_to_pixels(x.clamp(0, 1).numpy(), data)
        else:
            spread = train[features].std().fillna(0).to_numpy()
            values = train[features].to_numpy(dtype=float) + rng.normal(0, 1, (len(train), len(features))) * spread * cfg.noise_std
        copy = train.copy()
        copy[features] = values.astype(train[features].dtypes.iloc[0])
        copy["augmented_from"] = train[data.id].astype("Int64").to_numpy()
        copy[data.id] = np.arange(next_id, next_id + len(train))
        next_id += len(train)
        copies.append(copy)
    return pd.concat([original, *copies], ignore_index=True)
