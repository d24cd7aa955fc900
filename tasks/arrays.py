"""Frames to the arrays a network reads, without importing torch or Lightning.

Features as float32 (images reshaped to data.image_shape), targets as class indices (the position
in `classes`) or the numeric label for regression; the input shape and vocabulary size a backbone
is built for. Stages that only score a model (evaluate, compress) read their splits through here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.config import DataConfig
from tasks.errors import UserError
from tasks.frames import feature_columns, features_array


def to_arrays(frame: pd.DataFrame, data: DataConfig, classes: list,
              task: str = "classification") -> tuple[np.ndarray, np.ndarray]:
    """Features and targets: class indices (position in `classes`), or the numeric label for regression."""
    if task == "regression":
        return features_array(frame, data), frame[data.label].to_numpy(dtype=np.float32)
    index = {c: i for i, c in enumerate(classes)}
    unknown = set(frame[data.label].unique()) - set(index)
    if unknown:
        raise UserError(f"column '{data.label}': labels {sorted(unknown)[:5]} are not among the trained classes {classes}")
    return features_array(frame, data), frame[data.label].map(index).to_numpy(dtype=np.int64)


def classes_of(frame: pd.DataFrame, data: DataConfig) -> list:
    """The labels present in `frame`, sorted: the order of the head's rows."""
    return sorted(frame[data.label].unique().tolist())


def weights_for(classes: list, by_label: dict[str, float] | None) -> list[float] | None:
    """The repairer's class weights (keyed by the label as text) in the head's order; 1.0 for a label it lacks."""
    return None if by_label is None else [by_label.get(str(c), 1.0) for c in classes]


def input_shape(frame: pd.DataFrame, data: DataConfig) -> tuple[int, ...]:
    return tuple(data.image_shape) if data.modality == "image" else (len(feature_columns(frame, data)),)


def vocab_size(frame: pd.DataFrame, data: DataConfig) -> int | None:
    """Text: data.vocab_size, or the largest token id in `frame` + 1; None for other modalities."""
    if data.modality != "text":
        return None
    return data.vocab_size or int(np.nanmax(frame[feature_columns(frame, data)].to_numpy(dtype=float))) + 1
