"""Stage repair_effects (credit example): what each declared repair is worth on the test split.

Reads data/validated/ (the validate stage's output), params.yaml (repair, train) and, if there,
reports/evaluate/metrics.json (the pipeline's own model). For the declared repair and for variants
that each undo or change one repair, it fits the repair on train only, trains the same MLP with
the budget of params.yaml's train section, three seeds, and scores the test split (the mean of the
seeds; one seed's luck can move accuracy by a point or two); beside them, the majority-class
baseline. Writes reports/repair_effects.json (a DVC metric) and reports/repair_effects.md.
Run by `dvc repro` in examples/credit; uses trainflow's own tasks, not a copy of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from tasks.config import Params, load_params
from tasks.evaluate import predict
from tasks.io import load_frame, save_json, save_text
from tasks.model_io import ModelSpec
from tasks.repair import repair_split, repair_train
from tasks.train import backbone_spec, fit_classifier, input_shape, to_arrays

SEEDS = 3  # train.seed, train.seed + 1, ...
VARIANTS = {  # name -> changes to params.repair (one repair undone or swapped at a time)
    "as declared": {},
    "missing: median for Income (no KNN)": {"missing": {"columns": {}}},
    "no missing-value indicators": {"missing": {"indicators": False}},
    "no outlier clipping": {"outliers": {"method": "none"}},
    "no class weights": {"imbalance": "none"},
    "SMOTE-NC instead of class weights": {"imbalance": "smotenc"},
    "no scaling": {"scale": "none"},
}


def _with(params: Params, change: dict) -> Params:
    repair = params.repair.model_dump(mode="json")
    for key, value in change.items():
        # Another outlier method brings its own keys: a threshold left from iqr would do nothing (and is refused).
        merge = isinstance(value, dict) and key != "outliers"
        repair[key] = {**repair[key], **value} if merge else value
    return params.model_copy(update={"repair": type(params.repair).model_validate(repair)})


def _scores(y: np.ndarray, pred: np.ndarray) -> dict:
    return {"accuracy": round(float(accuracy_score(y, pred)), 4), "macro_f1": round(float(f1_score(y, pred, average="macro")), 4),
            "balanced_accuracy": round(float(balanced_accuracy_score(y, pred)), 4)}


def run_variant(params: Params, frames: dict) -> dict:
    data, spec = params.data, params.validate_.schema_
    first_id = 1 + max(int(f[data.id].max()) for f in frames.values())
    repairer, train, ledger, _ = repair_train.fn(frames["train"], params.repair, data, spec, first_id)
    val, _, _ = repair_split.fn(repairer, frames["val"], "val")
    test, _, _ = repair_split.fn(repairer, frames["test"], "test")
    classes = sorted(train[data.label].unique().tolist())
    model = ModelSpec(backbone_spec(params.train.backbone, data), input_shape(train, data), classes, {"trained_on": "source"})
    weights = [repairer.class_weights_[str(c)] for c in classes] if params.repair.imbalance == "class_weight" else None
    arrays = {"train": to_arrays(train, data, classes), "val": to_arrays(val, data, classes)}
    x, y = to_arrays(test, data, classes)
    runs = []
    for seed in range(params.train.seed, params.train.seed + SEEDS):
        result = fit_classifier.fn(arrays, model, params.train.optimizer, params.train.trainer, seed, weights)
        network = model.build()
        network.load_state_dict(result.state)
        runs.append(_scores(y, predict.fn(network, x, 512).argmax(axis=1)))
    mean = {k: round(float(np.mean([r[k] for r in runs])), 4) for k in runs[0]}
    return {**mean, "accuracy_per_seed": [r["accuracy"] for r in runs], "train_rows": len(train), "ledger_rows": len(ledger)}


def main() -> None:
    params = load_params("params.yaml")
    frames = {s: load_frame(Path("data/validated/source") / f"{s}.parquet") for s in ("train", "val", "test")}
    label = params.data.label
    majority = frames["train"][label].value_counts().idxmax()
    y_test = frames["test"][label].to_numpy()
    results = {"majority class baseline": {**_scores(y_test, np.full(len(y_test), majority)), "predicts": str(majority)}}
    pipeline = Path("reports/evaluate/metrics.json")
    if pipeline.exists():
        metrics = json.loads(pipeline.read_text())
        kept = {k: metrics[k] for k in ("accuracy", "macro_f1") if k in metrics}
        results["pipeline model (train + evaluate stages, one seed)"] = kept
    for name, change in VARIANTS.items():
        start = time.monotonic()
        results[name] = run_variant(_with(params, change), frames) | {"seconds": round(time.monotonic() - start, 1)}
        print(f"{name}: {results[name]}")
    save_json(results, "reports/repair_effects.json")
    lines = ["# Effect of each repair (credit_data, test split)", "",
             "Each variant changes one declared repair, refits it on train only and trains the same MLP with the same budget "
             f"(mean of {SEEDS} seeds); the majority-class baseline predicts the commonest train label for every row.", "",
             "| variant | accuracy | macro-F1 | balanced accuracy |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v.get('accuracy', '')} | {v.get('macro_f1', '')} | {v.get('balanced_accuracy', '')} |"
              for k, v in results.items()]
    save_text("\n".join(lines) + "\n", "reports/repair_effects.md")


if __name__ == "__main__":
    main()
