"""Stage augment: data/repaired/<dataset>/train -> data/augmented/<dataset>/train (train only)."""

from __future__ import annotations

from prefect import flow

import tasks.augment
from flows._stage import AUGMENTED, REPAIRED, REPORTS, fails_cleanly, run_stage
from tasks.config import Params
from tasks.io import load_frame, save_frame, save_json


@flow(name="augment")
@fails_cleanly
def augment(params: Params) -> dict:
    repaired = {name: load_frame(REPAIRED / name / "train.parquet") for name in params.dataset_names()}
    augmented = tasks.augment.run(params, repaired)
    for name, frame in augmented.items():
        save_frame(frame, AUGMENTED / name / "train.parquet")
    summary = {name: {"rows_before": len(repaired[name]), "rows_after": len(frame)} for name, frame in augmented.items()}
    save_json(summary, REPORTS / "augment.json")
    print(f"augmented train splits: {summary}")
    return summary


if __name__ == "__main__":
    run_stage(augment)
