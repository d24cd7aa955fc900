"""Evaluate: score a saved model on the held-out test split.

Pure: a network and arrays in; metrics (torchmetrics), a confusion table, a PNG and Markdown out.
flows/evaluate.py writes them as DVC metrics and plots and publishes them as Prefect artifacts.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from prefect import task
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


@task
def predict(network: torch.nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities, (N, K)."""
    network.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out.append(torch.softmax(network(torch.as_tensor(x[start:start + batch_size])), dim=1))
    return torch.cat(out).numpy()


@task
def classification_metrics(probs: np.ndarray, y: np.ndarray, classes: list) -> dict:
    p, t, k = torch.as_tensor(probs), torch.as_tensor(y), len(classes)
    precision = multiclass_precision(p, t, num_classes=k, average=None)
    recall = multiclass_recall(p, t, num_classes=k, average=None)
    return {
        "accuracy": round(float(multiclass_accuracy(p, t, num_classes=k, average="micro")), 6),
        "macro_f1": round(float(multiclass_f1_score(p, t, num_classes=k, average="macro")), 6),
        "samples": int(len(y)),
        "per_class": {str(c): {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6)}
                      for i, c in enumerate(classes)},
    }


def confusion_rows(y: np.ndarray, pred: np.ndarray, classes: list) -> pd.DataFrame:
    """One row per sample (actual, predicted): the shape DVC's confusion template reads."""
    names = np.asarray([str(c) for c in classes])
    return pd.DataFrame({"actual": names[y], "predicted": names[pred]})


def confusion_png(y: np.ndarray, pred: np.ndarray, classes: list, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def report_markdown(metrics: dict, baseline: dict | None, model_path: str) -> str:
    lines = ["# Evaluation report", "", f"Model: `{model_path}`; test samples: {metrics['samples']}", "",
             "| metric | model |" + (" from scratch |" if baseline else ""), "|---|---:|" + ("---:|" if baseline else "")]
    for name in ("accuracy", "macro_f1"):
        lines.append(f"| {name} | {metrics[name]:.4f} |" + (f" {baseline[name]:.4f} |" if baseline else ""))
    lines += ["", "| class | precision | recall |", "|---|---:|---:|"]
    lines += [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} |" for c, v in metrics["per_class"].items()]
    return "\n".join(lines) + "\n"
