"""Stage augment: data/repaired/<dataset>/train -> data/augmented/<dataset>/train (train only)."""

from __future__ import annotations

from prefect import flow

from flows._stage import AUGMENTED, REPAIRED, REPORTS, fails_cleanly, run_stage
from tasks.augment import augment_train
from tasks.config import Params
from tasks.frames import feature_columns
from tasks.io import load_frame, save_frame, save_json
from tasks.schemas import augmented_schema


@flow(name="augment")
@fails_cleanly
def augment(params: Params) -> dict:
    data, summary = params.data, {}
    for name in params.dataset_names():
        train = load_frame(REPAIRED / name / "train.parquet")
        augmented = augment_train(train, params.augment, data)
        schema = augmented_schema(data, feature_columns(train, data), sorted(train[data.label].unique()))
        save_frame(schema.validate(augmented), AUGMENTED / name / "train.parquet")
        summary[name] = {"rows_before": len(train), "rows_after": len(augmented)}
    save_json(summary, REPORTS / "augment.json")
    print(f"augmented train splits: {summary}")
    return summary


if __name__ == "__main__":
    run_stage(augment)
