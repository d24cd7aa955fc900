"""Evaluate: score a saved model on the held-out test split, then the promotion gate's verdict.

`run` is the stage. Pure: a network and frames in; metrics (torchmetrics), curves and tables out. Classification:
accuracy, macro-F1, per-class precision/recall/F1/ROC-AUC, one-vs-rest macro ROC-AUC, expected
calibration error, a confusion table, micro-averaged ROC and precision-recall curves and a
reliability table; regression: MSE, MAE, R2. Slices score the same predictions on subsets of the
test rows (a class, a column's value). tasks/figures.py draws the PNGs, tasks/gate.py judges;
flows/evaluate.py writes everything as DVC metrics and plots and publishes it as Prefect artifacts.

A model that outputs NaN or infinity (it diverged in training, or a test input is not finite)
scores NaN, and `nonfinite_rows` counts those rows: torchmetrics would rank a NaN row as class 0
and report a plausible accuracy, which the promotion gate would then believe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from prefect import task
from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score
from torchmetrics.functional.classification import (
    binary_precision_recall_curve,
    binary_roc,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from tasks.arrays import to_arrays
from tasks.config import Params, SliceConfig
from tasks.errors import UserError
from tasks.figures import confusion_png, curves_png, reliability_png, scatter_png
from tasks.frames import features_array
from tasks.gate import promotion_verdict
from tasks.model_io import ModelSpec

CURVE_POINTS = 101  # curves are resampled on this grid: small, stable CSVs for DVC plots


@dataclass
class EvaluateData:
    """What the evaluate stage reads."""

    network: torch.nn.Module  # the evaluated model (evaluate.model), in eval mode
    spec: ModelSpec
    test: pd.DataFrame  # its data set's test split
    model_dir: str  # where it lives (named in the report and the verdict)
    weights_sha256: str  # of its model.safetensors (the verdict and the champion name the weights)
    baseline: torch.nn.Module | None = None  # its from-scratch baseline, if finetune trained one
    champion: dict | None = None  # the champion's record (evaluate.gate.champion), None before the first promotion


@dataclass
class Evaluation:
    scores: dict  # reports/evaluate/metrics.json: the headline metrics, the baseline's and the gain
    details: dict  # reports/evaluate/details.json
    verdict: dict  # reports/evaluate/gate.json: promoted or not, and why
    markdown: str  # reports/evaluate/report.md
    plots: dict[str, pd.DataFrame]  # reports/evaluate/plots/<name>.csv (DVC plots)
    figures: dict[str, bytes]  # reports/evaluate/figures/<name>.png
    images: dict[str, bytes] = field(default_factory=dict)  # PNGs for the Prefect UI
    where: str = ""  # "<model> on <data set>/test"


def run(params: Params, data: EvaluateData) -> Evaluation:
    """The evaluate stage: test metrics, the baselines' and the gain, plots, figures, and the gate's verdict."""
    cfg = params.evaluate
    where = f"{cfg.model} on {data.spec.extra['trained_on']}/test"
    regression = data.spec.task == "regression"
    metrics, baselines, slices, plots, figures, images = (_regression if regression else _classification)(params, data, where)
    scores = headline(metrics)
    for name, baseline in baselines.items():  # scratch_accuracy, mean_rmse, ...
        scores |= {f"{name}_{k}": v for k, v in headline(baseline).items() if k != "samples"}
    if "scratch" in baselines and "accuracy" in scores:
        scores["gain_accuracy"] = round(metrics["accuracy"] - baselines["scratch"]["accuracy"], 6)
    verdict = promotion_verdict(scores, cfg.gate, data.champion)
    verdict |= {"model": data.model_dir, "weights_sha256": data.weights_sha256, "metrics": scores}
    markdown = evaluation_markdown(metrics, baselines, data.model_dir, slices, verdict)
    return Evaluation(scores, {"model": metrics, **baselines, "slices": slices}, verdict, markdown, plots, figures,
                      images, where)


def _regression(params: Params, data: EvaluateData, where: str) -> tuple:
    """RMSE, MAE, R2 (and MSE) beside the same scores of predicting train's mean label for every row:
    a model that does not beat that has learnt nothing from the features."""
    cfg = params.evaluate
    x, y = features_array(data.test, params.data), data.test[params.data.label].to_numpy(dtype=float)
    pred = predict(data.network, x, cfg.batch_size, regression=True)
    metrics = regression_metrics(pred, y)
    mean = data.spec.extra.get("target", {}).get("mean")
    baselines = {}
    if mean is not None:
        baselines["mean"] = regression_metrics.with_options(name="mean_predictor_metrics")(np.full(len(y), mean), y)
    if data.baseline is not None:
        baselines["scratch"] = regression_metrics.with_options(name="scratch_metrics")(
            predict(data.baseline, x, cfg.batch_size, regression=True), y)
    plots = {"predictions": pd.DataFrame({"actual": y, "predicted": pred})}
    figures = {"predictions": scatter_png(y, pred, where)}
    return metrics, baselines, [], plots, figures, figures


def _classification(params: Params, data: EvaluateData, where: str) -> tuple:
    cfg, classes = params.evaluate, data.spec.classes
    x, y = to_arrays(data.test, params.data, classes)
    probs = predict(data.network, x, cfg.batch_size)
    metrics = classification_metrics(probs, y, classes, cfg.calibration_bins)
    baselines = {"scratch": classification_metrics.with_options(name="scratch_metrics")(
        predict(data.baseline, x, cfg.batch_size), y, classes, cfg.calibration_bins)} if data.baseline else {}
    slices = slice_metrics(probs, y, data.test, cfg.slices, classes)
    pred = probs.argmax(axis=1)
    plots = {"confusion": confusion_rows(y, pred, classes), "roc": roc_curve(probs, y), "pr": pr_curve(probs, y),
             "calibration": reliability(probs, y, cfg.calibration_bins)}
    figures = {"confusion": confusion_png(y, pred, classes, where),
               "curves": curves_png(per_class_curves(probs, y, classes), plots["roc"], plots["pr"], where),
               "calibration": reliability_png(plots["calibration"], metrics["ece"], where)}
    return metrics, baselines, slices, plots, figures, figures


@task
def predict(network: torch.nn.Module, x: np.ndarray, batch_size: int, regression: bool = False) -> np.ndarray:
    """Class probabilities (N, K), or predictions (N,) for a regression model."""
    network.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            z = network(torch.as_tensor(x[start:start + batch_size]))
            out.append(z.reshape(len(z), -1)[:, 0] if regression else torch.softmax(z, dim=1))
    return torch.cat(out).numpy()


def _r(value) -> float:
    return round(float(value), 6)


def _nonfinite_rows(values: np.ndarray) -> np.ndarray:
    """A boolean per row: some output of that row is NaN or infinite."""
    return ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)


@task
def classification_metrics(probs: np.ndarray, y: np.ndarray, classes: list, bins: int = 10) -> dict:
    bad = int(_nonfinite_rows(probs).sum())
    if bad:  # every score is undefined; the supports still say what the test rows were
        nan = float("nan")
        return {"accuracy": nan, "macro_f1": nan, "roc_auc": nan, "ece": nan, "samples": int(len(y)), "nonfinite_rows": bad,
                "per_class": {str(c): {"precision": nan, "recall": nan, "f1": nan, "roc_auc": nan, "support": int((y == i).sum())}
                              for i, c in enumerate(classes)}}
    p, t, k = torch.tensor(probs), torch.tensor(y), len(classes)  # copies: y may be a read-only view of a Parquet column
    precision = multiclass_precision(p, t, num_classes=k, average=None)
    recall = multiclass_recall(p, t, num_classes=k, average=None)
    f1 = multiclass_f1_score(p, t, num_classes=k, average=None)
    auroc = multiclass_auroc(p, t, num_classes=k, average=None)  # one-vs-rest, a class at a time
    present = torch.bincount(t, minlength=k) > 0  # a class absent from the test rows has no ROC-AUC
    return {
        "accuracy": _r(multiclass_accuracy(p, t, num_classes=k, average="micro")),
        "macro_f1": _r(multiclass_f1_score(p, t, num_classes=k, average="macro")),
        "roc_auc": _r(auroc[present].mean()) if present.any() else None,
        "ece": _r(multiclass_calibration_error(p, t, num_classes=k, n_bins=bins, norm="l1")),
        "samples": int(len(y)),
        "per_class": {str(c): {"precision": _r(precision[i]), "recall": _r(recall[i]), "f1": _r(f1[i]),
                               "roc_auc": _r(auroc[i]) if present[i] else None, "support": int((t == i).sum())}
                      for i, c in enumerate(classes)},
    }


@task
def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict:
    p, t = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    mse = mean_squared_error(p, t)
    metrics = {"rmse": _r(mse.sqrt()), "mae": _r(mean_absolute_error(p, t)),
               "r2": _r(r2_score(p, t)) if len(t) > 1 else None, "mse": _r(mse), "samples": int(len(t))}
    bad = int(_nonfinite_rows(pred).sum())
    return (metrics | {"nonfinite_rows": bad}) if bad else metrics  # their errors made the scores NaN or inf already


def headline(metrics: dict) -> dict:
    """The scalar metrics (what `dvc metrics show` prints and the gate reads)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ------------------------------------------------------------------------------------- curves
def roc_curve(probs: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """Micro-averaged one-vs-rest ROC (every (row, class) pair is one binary decision), on a grid."""
    fpr, tpr, _ = binary_roc(*_one_vs_rest(probs, y))
    grid = np.linspace(0, 1, CURVE_POINTS)
    return pd.DataFrame({"fpr": grid, "tpr": np.round(np.interp(grid, fpr.numpy(), tpr.numpy()), 6)})


def pr_curve(probs: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """Micro-averaged precision-recall curve, precision at each recall of a grid (the best reached)."""
    precision, recall, _ = binary_precision_recall_curve(*_one_vs_rest(probs, y))
    order = np.argsort(recall.numpy(), kind="stable")
    r, p = recall.numpy()[order], precision.numpy()[order]
    p = np.maximum.accumulate(p[::-1])[::-1]  # interpolated precision: the best at this recall or more
    grid = np.linspace(0, 1, CURVE_POINTS)
    return pd.DataFrame({"recall": grid, "precision": np.round(np.interp(grid, r, p), 6)})


def per_class_curves(probs: np.ndarray, y: np.ndarray, classes: list) -> dict[str, pd.DataFrame]:
    """One-vs-rest ROC for each class present in the test rows (for the PNG)."""
    curves = {}
    for i, c in enumerate(classes):
        target = torch.as_tensor(y == i, dtype=torch.long)
        if 0 < int(target.sum()) < len(target):
            fpr, tpr, _ = binary_roc(torch.as_tensor(probs[:, i]), target)
            curves[str(c)] = pd.DataFrame({"fpr": fpr.numpy(), "tpr": tpr.numpy()})
    return curves


def reliability(probs: np.ndarray, y: np.ndarray, bins: int) -> pd.DataFrame:
    """Calibration: per confidence bin, the mean confidence, the accuracy and the row count.
    ECE is the count-weighted mean of |accuracy - confidence| over these bins."""
    confidence, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            rows.append({"bin": b, "confidence": round(float(confidence[mask].mean()), 6),
                         "accuracy": round(float((pred[mask] == y[mask]).mean()), 6), "count": int(mask.sum())})
    return pd.DataFrame(rows, columns=["bin", "confidence", "accuracy", "count"])


def _one_vs_rest(probs: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    onehot = np.zeros_like(probs, dtype=np.int64)
    onehot[np.arange(len(y)), y] = 1
    return torch.as_tensor(probs.ravel()), torch.as_tensor(onehot.ravel())


def confusion_rows(y: np.ndarray, pred: np.ndarray, classes: list) -> pd.DataFrame:
    """One row per sample (actual, predicted): the shape DVC's confusion template reads."""
    names = np.asarray([str(c) for c in classes])
    return pd.DataFrame({"actual": names[y], "predicted": names[pred]})


# ------------------------------------------------------------------------------------- slices
@task
def slice_metrics(probs: np.ndarray, y: np.ndarray, frame: pd.DataFrame, slices: list[SliceConfig], classes: list) -> list[dict]:
    """Accuracy (and macro-F1 over the classes present) on each declared slice of the test rows."""
    rows = []
    pred, bad = probs.argmax(axis=1), _nonfinite_rows(probs)  # argmax ranks NaN first: such a row's class means nothing
    for s in slices:
        if s.column not in frame:
            shown = ", ".join(list(frame.columns)[:8])
            raise UserError(f"evaluate.slices: column '{s.column}' is not in the test split (columns: {shown}, ...)")
        column = frame[s.column].to_numpy()
        values = s.values if s.values is not None else sorted(pd.unique(column).tolist(), key=str)
        for value in values:
            mask = column == value
            n = int(mask.sum())
            row = {"slice": f"{s.column}={value}", "rows": n, "accuracy": None, "macro_f1": None}
            if n and bad[mask].any():
                row["accuracy"] = row["macro_f1"] = float("nan")
            elif n:
                present = np.unique(y[mask])
                row["accuracy"] = _r((pred[mask] == y[mask]).mean())
                row["macro_f1"] = _r(multiclass_f1_score(torch.as_tensor(pred[mask]), torch.as_tensor(y[mask]),
                                                         num_classes=len(classes), average=None)[present].mean())
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- report
def _cell(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)  # a count (nonfinite_rows) stays a count


BASELINE_NAMES = {"scratch": "from scratch", "mean": "predicting the train mean"}


def evaluation_markdown(metrics: dict, baselines: dict[str, dict], model_path: str, slices: list[dict],
                        gate: dict | None) -> str:
    lines = ["# Evaluation report", "", f"Model: `{model_path}`; test samples: {metrics['samples']}", ""]
    if gate is not None:
        verdict = "**promoted**" if gate["promoted"] else "**not promoted**"
        lines += [f"Gate: {verdict}. {gate['reason']}", ""]
    names = [k for k, v in headline(metrics).items() if k != "samples" and v is not None]
    lines += ["| metric | model |" + "".join(f" {BASELINE_NAMES[b]} |" for b in baselines),
              "|---|---:|" + "---:|" * len(baselines)]
    for name in names:
        beside = "".join(f" {_cell(b[name])} |" if b.get(name) is not None else " |" for b in baselines.values())
        lines.append(f"| {name} | {_cell(metrics[name])} |" + beside)
    if "per_class" in metrics:
        lines += ["", "| class | precision | recall | F1 | ROC-AUC | support |", "|---|---:|---:|---:|---:|---:|"]
        for c, v in metrics["per_class"].items():
            auc = f"{v['roc_auc']:.3f}" if v["roc_auc"] is not None else "n/a"
            lines.append(f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {auc} | {v['support']} |")
    if slices:
        lines += ["", "| slice | rows | accuracy | macro-F1 |", "|---|---:|---:|---:|"]
        for s in slices:
            acc = f"{s['accuracy']:.3f}" if s["accuracy"] is not None else "n/a"
            f1 = f"{s['macro_f1']:.3f}" if s["macro_f1"] is not None else "n/a"
            lines.append(f"| {s['slice']} | {s['rows']} | {acc} | {f1} |")
    if gate is not None and gate["checks"]:
        lines += ["", "| gate check | value | needs | passed |", "|---|---:|---|---|"]
        lines += [f"| {c['check']} | {c['value']} | {c['needs']} | {'yes' if c['passed'] else 'NO'} |" for c in gate["checks"]]
    return "\n".join(lines) + "\n"
