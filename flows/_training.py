"""What the train and finetune flows share: loading a data set's splits as arrays, reporting
progress to the Prefect UI while Lightning trains, and writing a fitted model with its history.
Checkpoints live under checkpoints/<stage>/ (git-ignored, not a DVC output, so they survive the
output cleanup `dvc repro` does before rerunning a stage)."""

from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows._stage import AUGMENTED, MODELS, REPAIRED, REPORTS
from tasks.config import Params
from tasks.errors import UserError
from tasks.io import load_frame, load_json, save_json, save_text
from tasks.model_io import ModelSpec, save_model
from tasks.train import FitResult, to_arrays

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


def load_dataset(params: Params, name: str):
    """(train frame, val frame, classes): train is the augmented split, val the repaired one."""
    train = load_frame(AUGMENTED / name / "train.parquet")
    val = load_frame(REPAIRED / name / "val.parquet")
    return train, val, sorted(train[params.data.label].unique().tolist())


def arrays_for(params: Params, classes: list, task: str = "classification", **frames) -> dict:
    return {split: to_arrays(frame, params.data, classes, task) for split, frame in frames.items()}


def class_weights(params: Params, name: str, classes: list) -> list[float] | None:
    if params.repair.imbalance != "class_weight":
        return None
    weights = load_json(REPAIRED / name / "repairer.json")["class_weights"]
    return [weights.get(str(c), 1.0) for c in classes]


def epoch_progress(key: str):
    """A Prefect progress artifact and the callback that moves it after each epoch."""
    artifact = create_progress_artifact(0.0, key=key, description=f"{key}: epochs done (%)")

    def on_epoch(epoch: int, max_epochs: int, row: dict) -> None:
        update_progress_artifact(artifact, min(100.0, 100.0 * epoch / max(max_epochs, 1)))
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
        print(f"epoch {epoch}/{max_epochs}: {shown}")

    return on_epoch


def write_model(result: FitResult, spec: ModelSpec, stage: str, model_dir: str, name: str) -> None:
    save_model(result.state, spec, MODELS / model_dir)
    if result.history:
        columns = list(result.history[0])
        rows = [",".join(str(row.get(c, "")) for c in columns) for row in result.history]
        save_text("\n".join([",".join(columns), *rows]) + "\n", REPORTS / stage / f"{name}_history.csv")
    save_json({k.replace("/", "_"): v for k, v in result.val_metrics.items()}, REPORTS / stage / f"{name}_metrics.json")
