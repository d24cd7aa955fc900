"""Figures of the evaluate stage as PNG bytes: confusion matrix, ROC and PR curves, reliability,
and predicted-vs-actual for regression.

Pure: tables in (from tasks/evaluate.py), PNG bytes out; matplotlib draws off-screen (Agg), so it
runs on servers and CI. The same tables are DVC plots; these PNGs go to reports/ and Prefect.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


def confusion_png(y: np.ndarray, pred: np.ndarray, classes: list, title: str) -> bytes:
    plt = _pyplot()
    k = len(classes)
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (y, pred), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, matrix[i, j], ha="center", va="center", color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(k), [str(c) for c in classes])
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    return _png(fig)


def curves_png(per_class_roc: dict[str, pd.DataFrame], roc: pd.DataFrame, pr: pd.DataFrame, title: str) -> bytes:
    """Left: one-vs-rest ROC per class and micro-averaged; right: micro-averaged precision-recall."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4), dpi=100)
    for name, curve in per_class_roc.items():
        left.plot(curve["fpr"], curve["tpr"], linewidth=1, alpha=0.7, label=f"class {name}")
    left.plot(roc["fpr"], roc["tpr"], color="black", linewidth=2, label="micro-average")
    left.plot([0, 1], [0, 1], linestyle=":", color="grey")
    left.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    left.legend(fontsize=7, loc="lower right")
    right.plot(pr["recall"], pr["precision"], color="black", linewidth=2)
    right.set(xlabel="recall", ylabel="precision", title="Precision-recall (micro)", ylim=(0, 1.02))
    return _png(fig)


def reliability_png(table: pd.DataFrame, ece: float, title: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    ax.plot(table["confidence"], table["accuracy"], marker="o", color="black", label=f"model (ECE {ece:.3f})")
    ax.set(xlabel="confidence (max probability)", ylabel="accuracy", title=f"Reliability: {title}", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def scatter_png(actual: np.ndarray, predicted: np.ndarray, title: str) -> bytes:
    """Regression: predicted against actual, with the identity line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    ax.plot([low, high], [low, high], linestyle=":", color="grey")
    ax.scatter(actual, predicted, s=6, alpha=0.5, color="black")
    ax.set(xlabel="actual", ylabel="predicted", title=title)
    return _png(fig)
