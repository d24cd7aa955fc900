"""Stage evaluate: score the chosen model on its data set's test split, then gate its promotion.

Reads models/<evaluate.model> (and its from-scratch baseline if there is one), the test split
and the champion's metrics (evaluate.gate.champion). Writes to reports/evaluate/: metrics.json
(what `dvc metrics show` prints), details.json, gate.json (promoted or not, and why), report.md;
DVC plots under plots/ (confusion, roc, pr, calibration .csv); PNGs under figures/ (confusion,
curves, calibration). Publishes the same tables, images, report and verdict as Prefect artifacts.
On promotion the champion's metrics.json is rewritten; a failed gate leaves it untouched.
The logic: tasks/evaluate.py `run`.
"""

from __future__ import annotations

import base64

from prefect import flow
from prefect.artifacts import create_image_artifact, create_link_artifact, create_markdown_artifact, create_table_artifact

import tasks.evaluate
from flows._stage import MODELS, REPAIRED, REPORTS, fails_cleanly, run_stage
from tasks.config import Params
from tasks.errors import UserError
from tasks.gate import load_champion, promote, weights_digest
from tasks.io import load_frame, save_bytes, save_json, save_text
from tasks.model_io import load_model

OUT = REPORTS / "evaluate"


@flow(name="evaluate")
@fails_cleanly
def evaluate(params: Params) -> dict:
    cfg = params.evaluate
    model_dir = MODELS / cfg.model
    network, spec = load_model(model_dir)
    scratch_dir = model_dir / "scratch"
    data = tasks.evaluate.EvaluateData(
        network, spec, load_frame(REPAIRED / spec.extra["trained_on"] / "test.parquet"), str(model_dir),
        weights_digest(model_dir),
        load_model(scratch_dir)[0] if (scratch_dir / "model.json").exists() else None, load_champion(cfg.gate))
    result = tasks.evaluate.run(params, data)

    for name, frame in result.plots.items():
        save_text(frame.to_csv(index=False), OUT / "plots" / f"{name}.csv")
    for name, png in result.figures.items():
        save_bytes(png, OUT / "figures" / f"{name}.png")
    verdict = result.verdict
    if verdict["promoted"]:  # only a pass rewrites the champion
        promote(result.scores, model_dir, cfg.gate)
    save_json(result.scores, OUT / "metrics.json")
    save_json(result.details, OUT / "details.json")
    save_json(verdict, OUT / "gate.json")
    save_text(result.markdown, OUT / "report.md")
    publish(result, model_dir)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.scores.items() if k != "samples" and v is not None)
    print(f"test ({result.where}): {shown}")
    print(f"gate: {'PROMOTED' if verdict['promoted'] else 'NOT PROMOTED'}: {verdict['reason']}")
    if not verdict["promoted"] and cfg.gate.fail_stage:
        raise UserError(f"gate: not promoted: {verdict['reason']} (reports/evaluate/gate.json)")
    return result.scores


def publish(result: tasks.evaluate.Evaluation, model_dir) -> None:
    """The metrics, slices, images, report, verdict and the model's path as Prefect artifacts."""
    scores = [{"metric": k, "value": v} for k, v in result.scores.items()]
    create_table_artifact(scores, key="metrics", description="Test metrics")
    if result.details["slices"]:
        create_table_artifact(result.details["slices"], key="slices",
                              description="Metrics on the declared slices of the test split")
    for name, png in result.images.items():
        key = f"{name}-plot" if name != "confusion" else "confusion-matrix"
        create_image_artifact("data:image/png;base64," + base64.b64encode(png).decode(), key=key,
                              description=f"{name} on the test split")
    create_markdown_artifact(result.markdown, key="evaluation-report", description="Evaluation report")
    verdict = result.verdict
    gate_md = f"# Gate: {'promoted' if verdict['promoted'] else 'NOT promoted'}\n\n{verdict['reason']}\n"
    create_markdown_artifact(gate_md, key="gate", description="Promotion gate (reports/evaluate/gate.json)")
    create_link_artifact(f"file://{model_dir.resolve()}", link_text=f"{model_dir} (DVC output; `dvc push` to share)",
                         key="model", description="The evaluated model's DVC path")


if __name__ == "__main__":
    run_stage(evaluate)
