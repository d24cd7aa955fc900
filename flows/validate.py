"""Stage validate: data/raw -> data/validated (valid rows) + quarantine (bad rows, with reasons).

Train is validated first: its categories become the known ones for val/test (a category train
never saw is quarantined, or set missing, per validate.unknown_category). Writes
reports/validate/{report.json,report.md} and metrics.json, and publishes the report and the
quarantine to the Prefect UI. Fails only past validate.* thresholds or on a must-hold check, with
one line naming the split, column and check.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import tasks.validate
from flows._stage import RAW, REPORTS, VALIDATED, fails_cleanly, run_stage
from tasks.config import Params
from tasks.errors import UserError
from tasks.frames import SPLITS
from tasks.io import load_frame, save_frame, save_json, save_text


@flow(name="validate")
@fails_cleanly
def validate(params: Params) -> dict:
    raw = {name: {split: load_frame(RAW / name / f"{split}.parquet") for split in SPLITS} for name in params.dataset_names()}
    result = tasks.validate.run(params, raw)
    for where, valid in result.valid.items():
        save_frame(valid, VALIDATED / f"{where}.parquet")
        save_frame(result.quarantine[where], VALIDATED / f"{where}.quarantine.parquet")
    reports = {where: report.as_dict() for where, report in result.reports.items()}
    markdown = tasks.validate.report_markdown(result.reports, result.leakage)
    save_json({**reports, "leakage": result.leakage}, REPORTS / "validate" / "report.json")
    save_json({where: {"rows": r.rows, "quarantined": r.quarantined} for where, r in result.reports.items()},
              REPORTS / "validate" / "metrics.json")
    save_text(markdown, REPORTS / "validate" / "report.md")
    create_markdown_artifact(markdown, key="validation-report", description="Rows, quarantine and failed checks per split")
    create_table_artifact(result.quarantined[:500] or [{"split": "-", "id": "-", "reason": "no row quarantined"}],
                          key="quarantine", description="Quarantined rows with their reason (first 500)")
    if result.problem:
        raise UserError(result.problem)
    print(f"validated: {sum(r.valid for r in result.reports.values())} rows valid, "
          f"{sum(r.quarantined for r in result.reports.values())} quarantined")
    for where, found in result.leakage.items():
        print(f"  leakage: {where}: {found['rows']} of {found['of']} rows have the features of a train row")
    return reports


if __name__ == "__main__":
    run_stage(validate)
