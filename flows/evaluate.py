"""Stage evaluate: score the chosen model on its data set's test split, then gate its promotion.

Reads models/<evaluate.model> (and its from-scratch baseline if there is one), the test split
and the champion's metrics (evaluate.gate.champion). Writes to reports/evaluate/: metrics.json
(what `dvc metrics show` prints), details.json, gate.json (promoted or not, and why), report.md;
DVC plots under plots/ (confusion, roc, pr, calibration .csv); PNGs under figures/ (confusion,
curves, calibration). Publishes the same tables, images, report and verdict as Prefect artifacts.
On promotion the champion's metrics.json is rewritten; a failed gate leaves it untouched.
"""

from __future__ import annotations

import base64

import pandas as pd
from prefect import flow
from prefect.artifacts import create_image_artifact, create_link_artifact, create_markdown_artifact, create_table_artifact

from flows._stage import MODELS, REPAIRED, REPORTS, fails_cleanly, run_stage
from tasks.config import Params
from tasks.errors import UserError
from tasks.evaluate import (classification_metrics, confusion_rows, headline, per_class_curves, pr_curve, predict,
                            regression_metrics, reliability, report_markdown, roc_curve, slice_metrics)
from tasks.figures import confusion_png, curves_png, reliability_png, scatter_png
from tasks.frames import features_array
from tasks.gate import judge, load_champion, promote, weights_digest
from tasks.io import load_frame, save_bytes, save_json, save_text
from tasks.model_io import load_model
from tasks.train import to_arrays

OUT = REPORTS / "evaluate"


def _image(png: bytes, key: str, description: str) -> None:
    create_image_artifact("data:image/png;base64," + base64.b64encode(png).decode(), key=key, description=description)


@flow(name="evaluate")
@fails_cleanly
def evaluate(params: Params) -> dict:
    cfg, data = params.evaluate, params.data
    model_dir = MODELS / cfg.model
    network, spec = load_model(model_dir)
    test = load_frame(REPAIRED / spec.extra["trained_on"] / "test.parquet")
    regression = spec.extra.get("task") == "regression" or getattr(network, "task", "") == "regression"
    where = f"{cfg.model} on {spec.extra['trained_on']}/test"
    scratch_dir = model_dir / "scratch"
    baseline_net = load_model(scratch_dir)[0] if (scratch_dir / "model.json").exists() else None

    if regression:
        x, y = features_array(test, data), test[data.label].to_numpy(dtype=float)
        pred = predict(network, x, cfg.batch_size, regression=True)
        metrics = regression_metrics(pred, y)
        baseline = regression_metrics.with_options(name="scratch_metrics")(
            predict(baseline_net, x, cfg.batch_size, regression=True), y) if baseline_net else None
        slices, pngs = [], {"predictions": scatter_png(y, pred, where)}
        save_text(pd.DataFrame({"actual": y, "predicted": pred}).to_csv(index=False), OUT / "plots" / "predictions.csv")
    else:
        x, y = to_arrays(test, data, spec.classes)
        probs = predict(network, x, cfg.batch_size)
        metrics = classification_metrics(probs, y, spec.classes, cfg.calibration_bins)
        baseline = classification_metrics.with_options(name="scratch_metrics")(
            predict(baseline_net, x, cfg.batch_size), y, spec.classes, cfg.calibration_bins) if baseline_net else None
        slices = slice_metrics(probs, y, test, cfg.slices, spec.classes)
        pred = probs.argmax(axis=1)
        roc, pr, calibration = roc_curve(probs, y), pr_curve(probs, y), reliability(probs, y, cfg.calibration_bins)
        save_text(confusion_rows(y, pred, spec.classes).to_csv(index=False), OUT / "plots" / "confusion.csv")
        save_text(roc.to_csv(index=False), OUT / "plots" / "roc.csv")
        save_text(pr.to_csv(index=False), OUT / "plots" / "pr.csv")
        save_text(calibration.to_csv(index=False), OUT / "plots" / "calibration.csv")
        pngs = {"confusion": confusion_png(y, pred, spec.classes, where),
                "curves": curves_png(per_class_curves(probs, y, spec.classes), roc, pr, where),
                "calibration": reliability_png(calibration, metrics["ece"], where)}
        for name, png in pngs.items():
            save_bytes(png, OUT / "figures" / f"{name}.png")

    scores = headline(metrics)
    if baseline:
        scores |= {f"scratch_{k}": v for k, v in headline(baseline).items() if k != "samples"}
        if "accuracy" in scores:
            scores["gain_accuracy"] = round(metrics["accuracy"] - baseline["accuracy"], 6)

    # The gate: thresholds and the champion; only a pass rewrites the champion.
    champion = load_champion(cfg.gate)
    verdict = judge(scores, cfg.gate, champion)
    verdict |= {"model": str(model_dir), "weights_sha256": weights_digest(model_dir), "metrics": scores}
    if verdict["promoted"]:
        promote(scores, model_dir, cfg.gate)
    markdown = report_markdown(metrics, baseline, str(model_dir), slices, verdict)
    save_json(scores, OUT / "metrics.json")
    save_json({"model": metrics, "scratch": baseline, "slices": slices}, OUT / "details.json")
    save_json(verdict, OUT / "gate.json")
    save_text(markdown, OUT / "report.md")

    create_table_artifact([{"metric": k, "value": v} for k, v in scores.items()], key="metrics", description="Test metrics")
    if slices:
        create_table_artifact(slices, key="slices", description="Metrics on the declared slices of the test split")
    for name, png in pngs.items():
        _image(png, f"{name}-plot" if name != "confusion" else "confusion-matrix", f"{name} on the test split")
    create_markdown_artifact(markdown, key="evaluation-report", description="Evaluation report")
    gate_md = f"# Gate: {'promoted' if verdict['promoted'] else 'NOT promoted'}\n\n{verdict['reason']}\n"
    create_markdown_artifact(gate_md, key="gate", description="Promotion gate (reports/evaluate/gate.json)")
    create_link_artifact(f"file://{model_dir.resolve()}", link_text=f"{model_dir} (DVC output; `dvc push` to share)",
                         key="model", description="The evaluated model's DVC path")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k != "samples" and v is not None)
    print(f"test ({where}): {shown}")
    print(f"gate: {'PROMOTED' if verdict['promoted'] else 'NOT PROMOTED'}: {verdict['reason']}")
    if not verdict["promoted"] and cfg.gate.fail_stage:
        raise UserError(f"gate: not promoted: {verdict['reason']} (reports/evaluate/gate.json)")
    return scores


if __name__ == "__main__":
    run_stage(evaluate)
