"""What the train and finetune flows share: reading a data set's splits and the repairer's class
weights, reporting progress to the Prefect UI while Lightning trains, and writing a fitted model
with its history. Checkpoints live under checkpoints/<stage>/ (git-ignored, not a DVC output, so
they survive the output cleanup `dvc repro` does before rerunning a stage)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows._stage import AUGMENTED, REPAIRED
from tasks.config import Params
from tasks.errors import UserError
from tasks.io import load_frame, load_json, save_json, save_text
from tasks.model_io import ModelSpec, save_model
from tasks.train import FitResult

CHECKPOINTS = Path("checkpoints")


def require_a_commit(where: str) -> None:
    """dvclive inside a git repository with no commit yet dies in `SCMError: Empty git repo`
    (it asks git for HEAD): say so in one line, before any training. No git at all is fine."""
    from scmrepo.exceptions import SCMError
    from scmrepo.git import Git

    try:
        git = Git(search_parent_directories=True)
    except SCMError:
        return  # not inside a git repository: dvclive logs without one
    with git:
        if git.no_commits:
            raise UserError(f"{where}: dvclive needs a first commit in the git repository at {git.root_dir}: "
                            "run 'git add -A && git commit -m start', or set it to none")


def load_splits(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) of data set `name`: train is the augmented split, val the repaired one."""
    return load_frame(AUGMENTED / name / "train.parquet"), load_frame(REPAIRED / name / "val.parquet")


def load_class_weights(params: Params, name: str) -> dict[str, float] | None:
    """The repairer's class weights of data set `name` by label, when repair.imbalance is class_weight."""
    if params.repair.imbalance != "class_weight":
        return None
    return load_json(REPAIRED / name / "repairer.json")["class_weights"]


def epoch_progress(key: str):
    """A Prefect progress artifact and the callback that moves it after each epoch."""
    artifact = create_progress_artifact(0.0, key=key, description=f"{key}: epochs done (%)")

    def on_epoch(epoch: int, max_epochs: int, row: dict) -> None:
        update_progress_artifact(artifact, min(100.0, 100.0 * epoch / max(max_epochs, 1)))
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
        print(f"epoch {epoch}/{max_epochs}: {shown}")

    return on_epoch


def save_fit(fit: FitResult, spec: ModelSpec, model_dir: Path, reports: Path, prefix: str) -> None:
    """The weights and spec to `model_dir`; `<prefix>_history.csv` and `<prefix>_metrics.json` to `reports`."""
    save_model(fit.state, spec, model_dir)
    if fit.history:
        columns = list(fit.history[0])
        rows = [",".join(str(row.get(c, "")) for c in columns) for row in fit.history]
        save_text("\n".join([",".join(columns), *rows]) + "\n", reports / f"{prefix}_history.csv")
    save_json({k.replace("/", "_"): v for k, v in fit.val_metrics.items()}, reports / f"{prefix}_metrics.json")
