"""Four real data sets, each as a new user would bring it: `trainflow init DIR --data FILE --label
COLUMN`, then `dvc repro` in DIR (outside this repository), with no hand edit. Beside each score,
a plain scikit-learn baseline on the very same split (the project's data/raw/ train and test
parquet files, before any trainflow repair):

- tables: median imputation + one-hot + standard scaling, then logistic regression (classes) or
  ridge regression (a number), and gradient boosting (HistGradientBoosting*, no preprocessing
  needed);
- images: logistic regression on the raw pixels.

The data sets (tests/real_data.py, the same ones tests/flows/test_init.py builds): Palmer penguins
(missing values, categories), ISLR Default (3.3% positives), ISLR Carseats (regression), and
scikit-learn's digits written as a folder of PNGs. The last line printed is one JSON object:
per data set the metric, trainflow's score, each baseline's and the seconds init + repro took.

    python benchmarks/own_data.py [name ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from tests.real_data import DATASETS, RealData  # noqa: E402


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TRAINFLOW_", "VIRTUAL_ENV"))}
    return {**env, "PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "DVC_NO_ANALYTICS": "1"}


def _run(cmd: list[str], cwd: Path, env: dict) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def trainflow(real: RealData, tmp: Path) -> tuple[Path, dict, float]:
    data, project, env = real.write(tmp), tmp / real.name, _env(tmp)
    start = time.perf_counter()
    try:
        _run([str(BIN / "trainflow"), "init", str(project), "--data", str(data), "--label", real.label], tmp, env)
        _run([str(BIN / "dvc"), "repro"], project, env)
    finally:
        subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=project, env=env, capture_output=True)
        subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=project, env=env,
                       capture_output=True)
    seconds = time.perf_counter() - start
    return project, json.loads((project / "reports" / "evaluate" / "metrics.json").read_text()), seconds


def baselines(real: RealData, project: Path) -> dict[str, float]:
    """scikit-learn on the project's own raw train/test split, scored by the same metric."""
    import numpy as np
    import pandas as pd
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from tasks.config import load_params

    params = load_params(project / "params.yaml")
    split = {s: pd.read_parquet(project / "data" / "raw" / "source" / f"{s}.parquet") for s in ("train", "test")}
    drop = [c for c in (params.data.id, params.data.label, "source_id", "path") if c in split["train"]]
    x = {s: f.drop(columns=drop) for s, f in split.items()}
    y = {s: f[params.data.label] for s, f in split.items()}
    if params.data.modality == "image":
        models = {"logistic_regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))}
    else:
        categorical = [c for c in x["train"] if not pd.api.types.is_numeric_dtype(x["train"][c])]
        numeric = [c for c in x["train"] if c not in categorical]
        prepare = make_column_transformer(
            (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), categorical))
        regression = params.data.task == "regression"
        linear = Ridge() if regression else LogisticRegression(max_iter=2000)
        boosting = (HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier)(
            categorical_features="from_dtype", random_state=0)
        x = {s: f.astype({c: "category" for c in categorical}) for s, f in x.items()}
        models = {("ridge" if regression else "logistic_regression"): make_pipeline(prepare, linear),
                  "gradient_boosting": boosting}
    scores = {}
    for name, model in models.items():
        model.fit(x["train"], y["train"])
        if real.metric == "r2":
            scores[name] = r2_score(y["test"], model.predict(x["test"]))
        elif real.metric == "roc_auc":
            probs = model.predict_proba(x["test"])
            scores[name] = roc_auc_score(y["test"], probs[:, 1]) if probs.shape[1] == 2 else \
                roc_auc_score(y["test"], probs, multi_class="ovr")
        else:
            scores[name] = accuracy_score(y["test"], model.predict(x["test"]))
    return {k: round(float(np.round(v, 4)), 4) for k, v in scores.items()}


def main(names: list[str]) -> None:
    figures = {}
    for name in names or list(DATASETS):
        real = DATASETS[name]
        with tempfile.TemporaryDirectory(prefix=f"own_data-{name}-") as tmp:
            project, metrics, seconds = trainflow(real, Path(tmp))
            figures[name] = {"metric": real.metric, "trainflow": metrics[real.metric], **baselines(real, project),
                             "test_rows": metrics["samples"], "seconds": round(seconds, 1)}
        shown = ", ".join(f"{k} {v}" for k, v in figures[name].items() if k not in ("metric",))
        print(f"{name} ({real.metric}): {shown}", flush=True)
    print(json.dumps({"datasets": figures, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main(sys.argv[1:])
