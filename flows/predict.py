"""Stage predict: score new rows, a file or a folder of files, with the champion, as the pipeline would.

    python3 -m flows.predict [INPUT] [--output DIR] [--model champion|train|finetune] [--runtime onnx|torch]
                             [--fail-on-drift] [--params FILE]          (also: trainflow predict INPUT ...)

Reads params.yaml (predict, data, validate; evaluate.gate.champion and compress.onnx), the model
(tasks/champion.py `choose_model`), data/repaired/<dataset>/ (the fitted repairer; test.parquet: the
model's input columns, and rows to check an ONNX export against PyTorch), data/validated/<dataset>/
train.parquet (train's categories, the drift reference). Without INPUT it scores predict.input (what
the DVC stage does). Writes to DIR (default predict.output, else data/predict/<input name>/), each
file atomically and a chunk of rows at a time: predictions.parquet (id, source_id, file, predicted,
prob_<class>), quarantine.parquet (every row not scored, with its reason), ledger.parquet (every
cell the repairer changed), drift.json + drift.png, summary.json, report.md. Publishes a progress
bar, the report, the drift table and its PNG as Prefect artifacts. A user mistake is one line on
stderr and exit 2. The logic: tasks/predict.py (a chunk), tasks/drift.py (the drift report).
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from pydantic import ValidationError

import tasks.champion
import tasks.drift
import tasks.predict
from flows._stage import DATA, MODELS, REPAIRED, VALIDATED, fails_cleanly, flow_state
from tasks.config import Params, PredictConfig, describe_error, load_params
from tasks.errors import UserError
from tasks.frames import feature_columns, features_array
from tasks.io import atomic_path, load_frame, save_bytes, save_json, save_text
from tasks.repair.repairer import Repairer
from tasks.validate import categories_seen

ONNX_CACHE = Path(".cache") / "predict"  # exported champions, by weights sha256 (content-addressed: never stale)
CHECK_ROWS = 512  # test rows an ONNX export is checked on against PyTorch
WORKING_MEMORY_MB = 64


@flow(name="predict")
@fails_cleanly
def predict(path: str | None = None, output: str | None = None, model: str | None = None, runtime: str | None = None,
            fail_on_drift: bool | None = None, params_file: str = "params.yaml") -> dict:
    params = with_overrides(load_params(params_file), model=model, runtime=runtime, fail=fail_on_drift)
    path, out = where(params, path, output)
    files = tasks.predict.input_files(Path(path))
    scorer, choice = load_scorer(params)
    progress = create_progress_artifact(0.0, key="predict-progress", description=f"{path}: files scored (%)")
    started = time.perf_counter()
    tally = score(params, scorer, files, out,
                  on_file=lambda done: update_progress_artifact(progress, 100.0 * done / len(files)))
    seconds = time.perf_counter() - started
    drift = scorer.drift.report()
    line, rows = tasks.drift.verdict(drift), tasks.drift.table(drift)
    summary = {"input": path, "output": str(out), **tally.as_dict(), "seconds": round(seconds, 3),
               "rows_per_s": round(tally.rows / seconds, 1) if seconds else None, "drift": line,
               "model": {"folder": str(choice.folder), "why": choice.why, "weights_sha256": choice.weights_sha256,
                         "runtime": "onnx (compressed)" if choice.onnx and params.predict.runtime == "onnx"
                         else params.predict.runtime}}
    markdown = tasks.predict.summary_markdown(summary, line, rows)
    png = tasks.drift.drift_png(drift, f"{Path(path).name} against {choice.dataset}/train")
    save_json(drift, out / "drift.json")
    save_bytes(png, out / "drift.png")
    save_json(summary, out / "summary.json")
    save_text(markdown, out / "report.md")

    create_markdown_artifact(markdown, key="predict-report", description=f"Predictions for {path}")
    create_table_artifact(rows, key="drift", description=f"Drift of {path} against the training data")
    create_image_artifact("data:image/png;base64," + base64.b64encode(png).decode(), key="drift-plot",
                          description="Drift measures against their thresholds; the class mix")
    print(f"predict: {tally.rows} rows: {tally.predicted} predicted, {tally.quarantined} quarantined, "
          f"{summary['unaccounted']} unaccounted ({seconds:.1f} s) -> {out}/predictions.parquet")
    if drift["drifted"]:
        if params.predict.drift.fail:
            raise UserError(f"{line} ({out}/drift.json; predict.drift sets the thresholds)")
        get_run_logger().warning(f"{line} ({out}/drift.json)")
    else:
        print(f"predict: {line}")
    return summary


def where(params: Params, path: str | None, output: str | None) -> tuple[str, Path]:
    """The input (the command's, else predict.input) and the output folder (the command's, else
    predict.output, else data/predict/<input name>/)."""
    path = path or (str(params.predict.input) if params.predict.input else None)
    if path is None:
        raise UserError("no input: name a file or folder (trainflow predict INPUT), or set predict.input in params.yaml")
    out = output or params.predict.output or DATA / "predict" / Path(path).name.split(".")[0]
    return path, Path(out)


def with_overrides(params: Params, **given) -> Params:
    """params with the command line's (or the deployment's) choices, checked as params.yaml's are."""
    cfg = params.predict.model_dump()
    cfg.update({k: v for k, v in (("model", given["model"]), ("runtime", given["runtime"])) if v is not None})
    if given["fail"] is not None:
        cfg["drift"]["fail"] = given["fail"]
    try:
        return params.model_copy(update={"predict": PredictConfig.model_validate(cfg)})
    except ValidationError as e:
        raise UserError(describe_error(e, "predict").replace("predict: ", "predict.", 1)) from None


def load_scorer(params: Params) -> tuple[tasks.predict.Scorer, tasks.champion.ModelChoice]:
    """The model, the fitted repairer, train's categories and drift reference: once a run."""
    data, cfg = params.data, params.predict
    if data.modality == "text":
        raise UserError("predict scores tables and images (pixel columns); data.modality text is not supported yet")
    choice = tasks.champion.choose_model(cfg, params.evaluate.gate, MODELS)
    repairer = Repairer.load(REPAIRED / choice.dataset, data, params.validate_.schema_)
    test = REPAIRED / choice.dataset / "test.parquet"
    columns = feature_columns(pd.DataFrame(columns=pq.read_schema(test).names), data) if test.exists() else None
    if columns is None:
        raise UserError(f"{test}: file not found (run the pipeline first: dvc repro)")
    train = load_frame(VALIDATED / choice.dataset / "train.parquet")
    if cfg.runtime == "torch":
        run = tasks.champion.torch_runner(choice.folder, cfg.num_threads, cfg.batch_size, choice.regression)
    else:
        model = choice.onnx.read_bytes() if choice.onnx else onnx_of(params, choice, test, columns)
        run = tasks.champion.onnx_runner(model, cfg.num_threads, cfg.batch_size, choice.regression)
    drift = tasks.drift.DriftCounter(train, repairer.numeric_, repairer.categorical_, data, choice.classes, cfg.drift,
                                     choice.regression)
    scorer = tasks.predict.Scorer(params, repairer, categories_seen(train, params.validate_.schema_), columns,
                                  choice.classes, choice.regression, run, drift)
    return scorer, choice


def onnx_of(params: Params, choice: tasks.champion.ModelChoice, test: Path, columns: list[str]) -> bytes:
    """The model as ONNX: exported once, checked against PyTorch on the test split, cached by its weights' hash."""
    cached = ONNX_CACHE / f"{choice.weights_sha256}.onnx"
    if cached.exists():
        return cached.read_bytes()
    rows = load_frame(test).head(CHECK_ROWS)
    model = tasks.champion.export_checked(choice.folder, features_array(rows[columns], params.data), params)
    save_bytes(model, cached)
    return model


def score(params: Params, scorer: tasks.predict.Scorer, files: list[Path], out: Path,
          on_file: Callable[[int], object] | None = None) -> tasks.predict.Tally:
    """Every file a chunk at a time: predictions, quarantine and ledger streamed to Parquet files that
    appear (renamed into place) only when every row is scored. Plain Python: benchmarks call it."""
    from sklearn import config_context

    tally = tasks.predict.Tally(files=[str(f) for f in files])
    with ExitStack() as stack:
        # KNN imputation computes distances in blocks of sklearn's working_memory (1 GB by default): a
        # smaller block gives the same numbers in a bounded share of memory
        stack.enter_context(config_context(working_memory=WORKING_MEMORY_MB))
        predictions = stack.enter_context(_writer(out / "predictions.parquet", scorer.predictions_schema()))
        quarantine = stack.enter_context(_writer(out / "quarantine.parquet", scorer.quarantine_schema()))
        ledger = stack.enter_context(_writer(out / "ledger.parquet", tasks.predict.LEDGER_SCHEMA))
        for done, path in enumerate(files, start=1):
            offset = 0
            for chunk in tasks.predict.read_chunks(path, params.predict.chunk_rows):
                scored = tasks.predict.score_chunk(scorer, chunk, path, offset)
                offset += len(chunk)
                predictions.write_table(scored.predictions)
                quarantine.write_table(scored.quarantine)
                ledger.write_table(tasks.predict.ledger_table(scored.ledger))
                tally.add(scored)
            if on_file:
                on_file(done)
    return tally


@contextmanager
def _writer(path: Path, schema) -> Iterator[pq.ParquetWriter]:
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema)
        try:
            yield writer
        finally:
            writer.close()


def main(argv: list[str] | None = None, prog: str = "python3 -m flows.predict") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Score new rows with the champion (docs/predict.md).")
    parser.add_argument("input", nargs="?", help="a .csv, .csv.gz or .parquet file, or a folder of them "
                                                 "(default: predict.input)")
    parser.add_argument("--output", help="the output folder (default: predict.output, else data/predict/<input name>/)")
    parser.add_argument("--model", choices=["champion", "train", "finetune"], help="default: predict.model")
    parser.add_argument("--runtime", choices=["onnx", "torch"], help="default: predict.runtime")
    parser.add_argument("--fail-on-drift", action="store_true", default=None, help="drift fails the run (predict.drift.fail)")
    parser.add_argument("--params", default="params.yaml", help="the project's params file (default params.yaml)")
    args = parser.parse_args(argv)
    try:  # the mistakes found before anything starts: one line, no server
        if not Path(args.params).exists():
            raise UserError(f"{args.params}: file not found: run predict in the project's folder, or name it with --params")
        params = with_overrides(load_params(args.params), model=args.model, runtime=args.runtime, fail=args.fail_on_drift)
        tasks.predict.input_files(Path(where(params, args.input, args.output)[0]))
    except UserError as e:
        print(f"error: predict: {e}", file=sys.stderr)
        return 2
    state = flow_state(predict, args.input, args.output, args.model, args.runtime, args.fail_on_drift, args.params)
    if state.is_completed():
        return 0
    print(f"error: predict: {state.message}", file=sys.stderr)
    # fails_cleanly turns a UserError into a Failed state without an exception; a bug keeps its own
    return 1 if isinstance(state.result(raise_on_failure=False), BaseException) else 2


if __name__ == "__main__":
    sys.exit(main())
