"""How a data set is held between stages: one frame per split with an id, a label and features.

Images keep their pixels as feature columns `px_0000`, `px_0001`, ... (row-major over C, H, W),
so images and tables share one representation, one schema builder and one repair code path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.config import DataConfig

SPLITS = ("train", "val", "test")
PIXEL_PREFIX = "px_"
SOURCE_ID = "source_id"  # a file's own ids when they are not integers (tasks/ingest.py numbers the rows)


def feature_columns(frame: pd.DataFrame, data: DataConfig) -> list[str]:
    reserved = {data.id, data.label, "augmented_from", SOURCE_ID}
    return [c for c in frame.columns if c not in reserved]


def pixel_columns(n: int) -> list[str]:
    return [f"{PIXEL_PREFIX}{i:04d}" for i in range(n)]


def images_to_frame(images: np.ndarray, labels: np.ndarray, data: DataConfig) -> pd.DataFrame:
    """(N, C*H*W) pixels + (N,) labels -> frame with id, label, px_* columns."""
    flat = images.reshape(len(images), -1)
    frame = pd.DataFrame(flat, columns=pixel_columns(flat.shape[1]))
    frame.insert(0, data.label, labels)
    frame.insert(0, data.id, np.arange(len(frame), dtype=np.int64))
    return frame


def features_array(frame: pd.DataFrame, data: DataConfig) -> np.ndarray:
    """Feature columns as float32, images reshaped to (N, C, H, W) and scaled to [0, 1]."""
    x = frame[feature_columns(frame, data)].to_numpy(dtype=np.float32, copy=True)  # writable: torch warns on a read-only view
    if data.modality == "image":
        low, high = data.pixel_range
        x = ((x - low) / (high - low)).reshape(len(frame), *data.image_shape)
    return x


def array_to_pixels(x: np.ndarray, data: DataConfig) -> np.ndarray:
    """Inverse of `features_array` for images: [0, 1] tensors back to the stored pixel range."""
    low, high = data.pixel_range
    return (x.reshape(len(x), -1) * (high - low) + low).round().clip(low, high)
