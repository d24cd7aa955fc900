"""Features to model-ready numbers, with everything learned from train and stored as JSON.

Categorical columns: onehot makes one 0/1 column `<column>=<category>` per train category (a
category train never saw becomes all zeros); ordinal uses the category's position in train's
sorted categories (-1 if unseen). Numeric columns, if `scale` asks: standard ((x - mean) / std) or
robust ((x - median) / IQR), so an MLP sees comparable ranges. These change the representation,
not the data, so they write no ledger rows; the summary lists the columns made.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


class Encoder:
    def __init__(self, how: str = "onehot", scale: str = "none"):
        self.how = how
        self.scale = scale

    def fit(self, train: pd.DataFrame, categorical: list[str], numeric: list[str] = ()) -> Encoder:
        self.categories_ = {c: sorted(map(str, train[c].dropna().unique())) for c in categorical} if self.how != "none" else {}
        self.scaling_: dict[str, list[float]] = {}  # column -> [centre, spread]
        if self.scale != "none" and numeric:
            block = train[list(numeric)]
            if self.scale == "standard":
                centre, spread = block.mean(), block.std()
            else:
                quartiles = block.quantile([0.25, 0.5, 0.75])
                centre, spread = quartiles.iloc[1], quartiles.iloc[2] - quartiles.iloc[0]
            self.scaling_ = {c: [float(centre[c]), float(spread[c]) if spread[c] > 0 else 1.0] for c in numeric}
        return self

    def output_columns(self) -> list[str]:
        if self.how == "ordinal":
            return list(self.categories_)
        return [f"{c}={v}" for c, values in self.categories_.items() for v in values]

    def binary_columns(self) -> list[str]:
        return self.output_columns() if self.how == "onehot" else []

    def scaled_columns(self) -> list[str]:
        return list(self.scaling_)

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.scaling_:
            frame = frame.assign(**{c: (frame[c].to_numpy(float) - m) / s for c, (m, s) in self.scaling_.items()})
        if not self.categories_:
            return frame
        encoded = {}
        for column, values in self.categories_.items():
            codes = pd.Categorical(frame[column].astype("str"), categories=values).codes  # -1: unseen or missing
            if self.how == "ordinal":
                encoded[column] = codes.astype(float)
            else:
                for i, value in enumerate(values):
                    encoded[f"{column}={value}"] = (codes == i).astype(np.float64)
        rest = frame.drop(columns=list(self.categories_))
        return pd.concat([rest, pd.DataFrame(encoded, index=frame.index)], axis=1)

    def to_json(self) -> dict[str, Any]:
        return {"how": self.how, "categories": self.categories_, "scale": self.scale, "scaling": self.scaling_}

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> Encoder:
        encoder = cls(blob["how"], blob.get("scale", "none"))
        encoder.categories_ = {k: list(v) for k, v in blob["categories"].items()}
        encoder.scaling_ = {k: [float(a), float(b)] for k, (a, b) in blob.get("scaling", {}).items()}
        return encoder
