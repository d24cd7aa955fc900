"""Augment: add seeded, augmented copies of the train split; val and test are never touched.

- images: kornia's batched augmentation (pure PyTorch, so the same pipeline runs on a GPU with
  the batch): affine (rotation, shift, scale), flips, random resized crop, random erasing, noise;
- text (token-id columns, right-padded with data.pad_id): token dropout (the rest shifts left),
  swaps of neighbouring tokens, masking with augment.mask_id;
- tables: gaussian noise scaled to each column's spread, and optionally SMOTE synthesis
  (imbalanced-learn) that fills every class up to the largest one.
Every new row keeps its lineage in `augmented_from`: the id it was made from; -1 for a SMOTE row
(made from several); missing for the original rows. Mixup and cutmix change the labels, so they
run on the fly in the DataModule (train.on_the_fly), not here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from prefect import task

from tasks.config import AugmentConfig, DataConfig, Params
from tasks.frames import array_to_pixels, feature_columns, features_array
from tasks.schemas import augmented_schema

SYNTHETIC = -1  # augmented_from of a SMOTE row


def image_pipeline(cfg: AugmentConfig, size: tuple[int, int] | None = None) -> torch.nn.Module:
    """The kornia pipeline for a batch of (B, C, H, W) images in [0, 1]; the crop needs `size` (H, W)."""
    import kornia.augmentation as K

    ops = [K.RandomAffine(degrees=cfg.rotation_deg, translate=(cfg.translate, cfg.translate), scale=cfg.scale, p=1.0)]
    if cfg.hflip:
        ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
    if cfg.vflip:
        ops.append(K.RandomVerticalFlip(p=cfg.vflip))
    if cfg.crop < 1 and size is not None:
        ops.append(K.RandomResizedCrop(tuple(size), scale=(cfg.crop, 1.0), p=1.0))
    if cfg.erasing:
        ops.append(K.RandomErasing(p=cfg.erasing))
    if cfg.noise_std > 0:
        ops.append(K.RandomGaussianNoise(mean=0.0, std=cfg.noise_std, p=1.0))
    return K.AugmentationSequential(*ops)


def augment_tokens(ids: np.ndarray, cfg: AugmentConfig, pad_id: int, rng: np.random.Generator) -> np.ndarray:
    """(N, T) right-padded token ids -> the same shape, with dropout, neighbour swaps and masking."""
    out = np.full_like(ids, pad_id)
    mask_id = pad_id if cfg.mask_id is None else cfg.mask_id
    for i, row in enumerate(ids):
        tokens = row[row != pad_id]
        if cfg.token_dropout and len(tokens) > 1:
            keep = rng.random(len(tokens)) >= cfg.token_dropout
            tokens = tokens[keep] if keep.any() else tokens[:1]
        if cfg.token_swap:
            tokens = tokens.copy()
            for j in np.flatnonzero(rng.random(max(len(tokens) - 1, 0)) < cfg.token_swap):
                tokens[j], tokens[j + 1] = tokens[j + 1], tokens[j]
        if cfg.token_mask:
            tokens = np.where(rng.random(len(tokens)) < cfg.token_mask, mask_id, tokens)
        out[i, : len(tokens)] = tokens
    return out


def smote_rows(train: pd.DataFrame, features: list[str], cfg: AugmentConfig, data: DataConfig) -> pd.DataFrame:
    """New rows for every class below the largest, interpolated between same-class neighbours."""
    from imblearn.over_sampling import SMOTE

    counts = train[data.label].value_counts()
    if counts.nunique() == 1:
        return train.iloc[:0]
    neighbours = min(cfg.smote_neighbors, int(counts.min()) - 1)
    if neighbours < 1:
        return train.iloc[:0]  # a class with a single row has no neighbour to interpolate towards
    x, y = SMOTE(k_neighbors=neighbours, random_state=cfg.seed).fit_resample(train[features].to_numpy(dtype=float),
                                                                                train[data.label].to_numpy())
    new = pd.DataFrame(x[len(train):], columns=features)  # imblearn appends the synthetic rows
    new[data.label] = y[len(train):]
    return new


@task
def augment_train(train: pd.DataFrame, cfg: AugmentConfig, data: DataConfig) -> pd.DataFrame:
    original = train.assign(augmented_from=pd.array([pd.NA] * len(train), dtype="Int64"))
    if train.empty:
        return original
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    features = feature_columns(train, data)
    next_id = int(train[data.id].max()) + 1
    copies = []
    for _ in range(cfg.copies):
        if data.modality == "image":
            with torch.no_grad():
                x = image_pipeline(cfg, data.image_shape[1:])(torch.from_numpy(features_array(train, data)))
            values = array_to_pixels(x.clamp(0, 1).numpy(), data)
        elif data.modality == "text":
            values = augment_tokens(train[features].to_numpy(dtype=np.int64), cfg, data.pad_id, rng)
        else:
            spread = train[features].std().fillna(0).to_numpy()
            noise = rng.normal(0, 1, (len(train), len(features))) * spread * cfg.noise_std
            values = train[features].to_numpy(dtype=float) + noise
        copy = train.copy()
        copy[features] = values.astype(train[features].dtypes.iloc[0])
        copy["augmented_from"] = train[data.id].astype("Int64").to_numpy()
        copy[data.id] = np.arange(next_id, next_id + len(train))
        next_id += len(train)
        copies.append(copy)
    if cfg.smote and data.modality == "tabular":
        synthetic = smote_rows(train, features, cfg, data)
        synthetic[data.id] = np.arange(next_id, next_id + len(synthetic))
        synthetic["augmented_from"] = pd.array([SYNTHETIC] * len(synthetic), dtype="Int64")
        copies.append(synthetic[train.columns.tolist() + ["augmented_from"]].astype(train.dtypes.to_dict()))
    return pd.concat([original, *copies], ignore_index=True)


def run(params: Params, repaired_train: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The augment stage: each data set's repaired train split with its augmented rows, checked
    against the Augmented schema (val and test are never augmented)."""
    out = {}
    for name, train in repaired_train.items():
        augmented = augment_train.fn(train, params.augment, params.data)
        schema = augmented_schema(params.data, feature_columns(train, params.data), sorted(train[params.data.label].unique()))
        out[name] = schema.validate(augmented)
    return out
