"""Stage validate: data/raw -> data/validated (valid rows) + quarantine (bad rows, with reasons).

Train is validated first: its categories become the known ones for val/test (a category train
never saw is quarantined, or set missing, per validate.unknown_category). Writes
reports/validate/{report.json,report.md} and metrics.json, and publishes the report and the
quarantine to the Prefect UI. Fails only past validate.* thresholds or on a must-hold check, with
one line naming the split, column and check.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows._stage import RAW, REPORTS, VALIDATED, fails_cleanly, run_stage
from tasks.config import Params
from tasks.errors import UserError
from tasks.frames import SPLITS
from tasks.io import load_frame, save_frame, save_json, save_text
from tasks.validate import REASON, categories_seen, report_markdown, validate_split, verdict


@flow(name="validate")
@fails_cleanly
def validate(params: Params) -> dict:
    data, cfg, reports, quarantined, class_counts = params.data, params.validate_, {}, [], {}
    for name in params.dataset_names():
        frames = {split: load_frame(RAW / name / f"{split}.parquet") for split in SPLITS}
        declared = params.ingest.datasets.get(name)
        labels = frames["train"][data.label] if data.label in frames["train"] else pd.Series([])
        train_labels = labels[labels.notna() & ~labels.isin([np.inf, -np.inf])].unique()  # inf is no class: quarantined
        # Declared classes are the contract; without a declaration, the classes seen in train are.
        classes = list(declared) if declared else sorted(train_labels.tolist())
        known = None
        for split in SPLITS:  # train first: its categories are what val/test may hold
            valid, quarantine, report = validate_split(frames[split], data, classes, cfg, known)
            if split == "train":
                known = categories_seen(valid, cfg.schema_)
            reports[f"{name}/{split}"] = report
            save_frame(valid, VALIDATED / name / f"{split}.parquet")
            save_frame(quarantine, VALIDATED / name / f"{split}.quarantine.parquet")
            quarantined += [{"split": f"{name}/{split}", "id": str(i), "reason": r}
                            for i, r in zip(quarantine.get(data.id, []), quarantine.get(REASON, []), strict=True)]
        class_counts[f"{name}/train"] = len(reports[f"{name}/train"].class_counts) or len(classes)

    markdown = report_markdown(reports)
    save_json({k: r.as_dict() for k, r in reports.items()}, REPORTS / "validate" / "report.json")
    save_json({k: {"rows": r.rows, "quarantined": r.quarantined} for k, r in reports.items()},
              REPORTS / "validate" / "metrics.json")
    save_text(markdown, REPORTS / "validate" / "report.md")
    create_markdown_artifact(markdown, key="validation-report", description="Rows, quarantine and failed checks per split")
    create_table_artifact(quarantined[:500] or [{"split": "-", "id": "-", "reason": "no row quarantined"}],
                          key="quarantine", description="Quarantined rows with their reason (first 500)")
    if problem := verdict(reports, cfg, class_counts, data.label):
        raise UserError(problem)
    print(f"validated: {sum(r.valid for r in reports.values())} rows valid, "
          f"{sum(r.quarantined for r in reports.values())} quarantined")
    return {k: r.as_dict() for k, r in reports.items()}


if __name__ == "__main__":
    run_stage(validate)
