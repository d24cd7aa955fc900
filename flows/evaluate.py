"""Stage evaluate: score the chosen model on its data set's test split.

Writes reports/evaluate/metrics.json (what `dvc metrics show` prints), confusion.csv (a DVC
plot), confusion.png and report.md, and publishes the table, image and report to the Prefect UI.
"""

from __future__ import annotations

import base64

from prefect import flow
from prefect.artifacts import create_image_artifact, create_link_artifact, create_markdown_artifact, create_table_artifact

from flows._stage import MODELS, REPAIRED, REPORTS, fails_cleanly, run_stage
from tasks.config import Params
from tasks.evaluate import classification_metrics, confusion_png, confusion_rows, predict, report_markdown
from tasks.io import load_frame, save_bytes, save_json, save_text
from tasks.model_io import load_model
from tasks.train import to_arrays

OUT = REPORTS / "evaluate"


@flow(name="evaluate")
@fails_cleanly
def evaluate(params: Params) -> dict:
    cfg, data = params.evaluate, params.data
    model_dir = MODELS / cfg.model
    network, spec = load_model(model_dir)
    test = load_frame(REPAIRED / spec.extra["trained_on"] / "test.parquet")
    x, y = to_arrays(test, data, spec.classes)
    probs = predict(network, x, cfg.batch_size)
    metrics = classification_metrics(probs, y, spec.classes)

    baseline = None
    if (model_dir / "scratch" / "model.json").exists():
        scratch, _ = load_model(model_dir / "scratch")
        baseline = classification_metrics.with_options(name="scratch_metrics")(predict(scratch, x, cfg.batch_size), y, spec.classes)
    headline = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "samples": metrics["samples"]}
    if baseline:
        headline |= {"scratch_accuracy": baseline["accuracy"], "scratch_macro_f1": baseline["macro_f1"],
                     "gain_accuracy": round(metrics["accuracy"] - baseline["accuracy"], 6)}

    pred = probs.argmax(axis=1)
    png = confusion_png(y, pred, spec.classes, f"{cfg.model} on {spec.extra['trained_on']}/test")
    markdown = report_markdown(metrics, baseline, str(model_dir))
    save_json(headline, OUT / "metrics.json")
    save_json({"model": metrics, "scratch": baseline}, OUT / "details.json")
    save_text(confusion_rows(y, pred, spec.classes).to_csv(index=False), OUT / "confusion.csv")
    save_bytes(png, OUT / "confusion.png")
    save_text(markdown, OUT / "report.md")

    create_table_artifact([{"metric": k, "value": v} for k, v in headline.items()], key="metrics", description="Test metrics")
    create_image_artifact("data:image/png;base64," + base64.b64encode(png).decode(), key="confusion-matrix",
                          description="Confusion matrix on the test split")
    create_markdown_artifact(markdown, key="evaluation-report", description="Evaluation report")
    create_link_artifact(f"file://{model_dir.resolve()}", link_text=f"{model_dir} (DVC output; `dvc push` to share)",
                         key="model", description="The evaluated model's DVC path")
    print(f"test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
          + (f" (from scratch {baseline['accuracy']:.4f})" if baseline else ""))
    return headline


if __name__ == "__main__":
    run_stage(evaluate)
