"""The end of a run in five seconds: what each stage did, the headline, the gate, where to look.

Reads the stage reports under reports/ (whichever stages this project has) and, for the transfer
headline over seeds, benchmarks/results/transfer_gain.json when it was measured with these params.
Writes nothing. `make run` prints it after `dvc repro`; `dvc metrics show` still lists every metric.

    python3 -m flows.summary [--width N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tasks.transfer_study import RESULTS as STUDY
from tasks.transfer_study import over_seeds

REPORTS = Path("reports")
MAX_WIDTH = 119  # never wider than this, whatever the terminal says


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _splits(counts: dict) -> str:
    return "/".join(str(counts.get(s, 0)) for s in ("train", "val", "test"))


def _stage_lines(reports: Path, params: dict | None) -> list[tuple[str, str]]:
    lines = []
    if ingest := _load(reports / "ingest.json"):
        parts = ", ".join(f"{name} {_splits(c)}" for name, c in ingest["datasets"].items())
        lines.append(("ingest", f"{ingest['rows']} rows, split train/val/test: {parts}"))
    if validate := _load(reports / "validate" / "metrics.json"):
        rows = sum(v["rows"] for v in validate.values())
        bad = sum(v["quarantined"] for v in validate.values())
        leaked = (_load(reports / "validate" / "report.json") or {}).get("leakage") or {}
        leak = sum(found["rows"] for found in leaked.values())
        lines.append(("validate", f"{rows} rows checked, {bad} quarantined"
                                  + (f", {leak} val/test rows also in train (leakage)" if leak else "")
                                  + (" (why: reports/validate/report.md)" if bad or leak else "")))
    if repair := _load(reports / "repair" / "summary.json"):
        splits = [s for dataset in repair.values() for s in dataset.values()]
        cells = sum(sum(s.get("changes", {}).values()) for s in splits)
        text = (f"{cells} changes recorded in the ledger: {sum(s['missing_before'] for s in splits)} missing cells, "
                f"{sum(s['clipped_values'] for s in splits)} clipped, {sum(s['rows_dropped'] for s in splits)} rows dropped, "
                f"{sum(s['rows_added'] for s in splits)} added" if cells else
                "nothing needed repair: no missing cells, outliers, duplicates or resampling")
        lines.append(("repair", text))
    if augment := _load(reports / "augment.json"):
        parts = ", ".join(f"{name} {c['rows_before']} -> {c['rows_after']}" for name, c in augment.items())
        lines.append(("augment", f"train rows {parts}"))
    if metrics := _load(reports / "train" / "train_metrics.json"):
        shown = ", ".join(f"{k.replace('_', '/', 1)} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
        lines.append(("train", ", ".join(filter(None, [_epochs(reports / "train" / "train_history.csv"), shown]))))
    if transfer := _load(reports / "finetune" / "transfer.json"):
        tune = params.get("finetune", {}) if params else {}
        labels = tune.get("labels_per_class")
        text = ", ".join(filter(None, [
            f"from {transfer.get('init_from')} ({transfer.get('strategy')})",
            f"{labels} labels a class" if labels else "all labels",
            f"+ {tune['replay_source']} replayed source rows" if tune.get("replay_source") else "",
            _epochs(reports / "finetune" / "finetune_history.csv")]))
        lines.append(("finetune", text))
    return lines


def _epochs(history: Path) -> str:
    return f"{len(history.read_text().splitlines()) - 1} epochs" if history.exists() else ""


def _headline(reports: Path, params: dict | None) -> list[tuple[str, str]]:
    scores = _load(reports / "evaluate" / "metrics.json")
    if not scores:
        return []
    named = [(k, v) for k, v in scores.items() if isinstance(v, (int, float)) and k != "samples"
             and not k.startswith(("scratch_", "gain_"))]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in named[:3])
    lines = [("evaluate", f"test ({scores.get('samples', '?')} rows): {shown}")]
    if "scratch_accuracy" in scores and "accuracy" in scores:
        gain = 100 * (scores["accuracy"] - scores["scratch_accuracy"])
        lines.append(("", f"vs from scratch on the same labels and budget: accuracy {scores['scratch_accuracy']:.3f}, "
                          f"gain {gain:+.1f} points at this seed"))
        lines += _over_seeds(params)
    if gate := _load(reports / "evaluate" / "gate.json"):
        lines.append(("gate", f"{'PROMOTED' if gate['promoted'] else 'NOT promoted'}: {gate['reason']}"))
    return lines


def _over_seeds(params: dict | None) -> list[tuple[str, str]]:
    """The gain over seeds, from the few-label study, when it was measured with these very params."""
    if not params or not STUDY.exists():
        return []
    budget = over_seeds(_load(STUDY), params)
    if budget is None:
        return [("", "gain over seeds: not measured for these params (python3 benchmarks/transfer_gain.py --record)")]
    gains = [100 * g for g in budget["gains"]]
    return [("", f"gain over {len(gains)} seeds ({STUDY}): {sum(gains) / len(gains):+.1f} points mean, "
                 f"range {min(gains):+.1f} to {max(gains):+.1f}")]


def _compress(reports: Path) -> list[tuple[str, str]]:
    metrics = _load(reports / "compress" / "metrics.json")
    if not metrics:
        return []
    text = (f"chose {metrics['chosen']}: accuracy {metrics['accuracy_before']:.3f} -> {metrics['accuracy_after']:.3f}, "
            f"{metrics['size_reduction']:.2f}x smaller; ONNX max |diff| {metrics['onnx_max_abs_diff']:.1e}")
    return [("compress", text)]


def _predict(reports: Path) -> list[tuple[str, str]]:
    scored = _load(reports / "predict" / "summary.json")
    if not scored:
        return []
    return [("predict", f"{scored['rows']} new rows: {scored['predicted']} predicted, {scored['quarantined']} quarantined; "
                        f"{scored['drift'].split(' (')[0]}")]


def summary(reports: Path = REPORTS, params: dict | None = None) -> list[str]:
    """The lines to print (not yet cut to a width)."""
    rows = _stage_lines(reports, params) + _headline(reports, params) + _compress(reports) + _predict(reports)
    if not rows:
        return ["No stage reports yet under reports/: run 'make run' (or 'dvc repro')."]
    lines = ["trainflow: what this run built"] + [f"  {stage:<9} {text}" for stage, text in rows]
    where = ["Report: reports/evaluate/report.md   Figures: reports/evaluate/figures/   Models: models/"
             if (reports / "evaluate").exists() else "Reports: reports/   Models: models/",
             "Every metric: dvc metrics show   Runs in the Prefect UI: make ui, then http://127.0.0.1:4200"]
    return lines + where


def fit(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m flows.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=min(shutil.get_terminal_size((MAX_WIDTH, 24)).columns, MAX_WIDTH))
    args = parser.parse_args(argv)
    from tasks.config import ConfigError, load_params  # the params decide whether the recorded seeds study applies

    try:  # every setting, defaults included: a study holds for what ran, however params.yaml spells it
        params = load_params("params.yaml").model_dump(mode="json", by_alias=True)
    except ConfigError:
        params = None
    for line in summary(REPORTS, params):
        print(fit(line, max(args.width, 40)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
