"""Stage repair: data/validated -> data/repaired, with the fitted repairer and a ledger.

The repairer is fitted on train only and saved as JSON (data/repaired/<dataset>/repairer.json);
every change is a ledger row. Repaired frames are validated again against the stricter Repaired
schema before anything trains on them.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows._stage import REPAIRED, REPORTS, VALIDATED, fails_cleanly, run_stage
from tasks.config import Params
from tasks.errors import UserError
from tasks.frames import SPLITS, feature_columns
from tasks.io import load_frame, save_frame, save_json, save_text
from tasks.repair import apply_repairer, fit_repairer, rebalance, summarise
from tasks.schemas import repaired_schema


@flow(name="repair")
@fails_cleanly
def repair(params: Params) -> dict:
    data, summaries = params.data, {}
    for name in params.dataset_names():
        frames = {split: load_frame(VALIDATED / name / f"{split}.parquet") for split in SPLITS}
        repairer = fit_repairer(frames["train"], params.repair, data)
        ledgers, repaired = [], {}
        for split, frame in frames.items():
            repaired[split], ledger = apply_repairer(repairer, frame, split)
            ledgers.append(ledger)
        repaired["train"], ledger = rebalance(repaired["train"], params.repair, data)
        ledgers.append(ledger)

        schema = repaired_schema(data, feature_columns(repaired["train"], data), sorted(repaired["train"][data.label].unique()))
        for split, frame in repaired.items():
            try:
                repaired[split] = schema.validate(frame, lazy=True)
            except pa.errors.SchemaErrors as e:
                case = e.failure_cases.iloc[0]
                raise UserError(f"{name}/{split} after repair: column '{case['column']}' fails {case['check']} "
                                f"({len(e.failure_cases)} failures); the repair did not deliver the Repaired schema") from None
            save_frame(repaired[split], REPAIRED / name / f"{split}.parquet")
        ledger = pd.concat(ledgers, ignore_index=True)
        save_frame(ledger, REPAIRED / name / "ledger.parquet")
        save_json(repairer.to_json(), REPAIRED / name / "repairer.json")
        summaries[name] = {split: summarise(frames[split], repaired[split], ledger[ledger["split"] == split], data) for split in SPLITS}

    save_json(summaries, REPORTS / "repair" / "summary.json")
    markdown = _markdown(summaries)
    save_text(markdown, REPORTS / "repair" / "summary.md")
    create_markdown_artifact(markdown, key="repair-summary", description="What repair changed, per split")
    create_table_artifact([{"dataset": n, "class": c, "before": s["train"]["class_counts_before"][c], "after": n_after}
                           for n, s in summaries.items() for c, n_after in s["train"]["class_counts_after"].items()],
                          key="class-counts", description="Train class counts before and after repair")
    return summaries


def _markdown(summaries: dict) -> str:
    lines = ["# Repair summary", "", "| split | rows before | rows after | missing before | missing after | changes |",
             "|---|---:|---:|---:|---:|---|"]
    for name, splits in summaries.items():
        for split, s in splits.items():
            changes = ", ".join(f"{k}: {v}" for k, v in s["changes"].items()) or "none"
            lines.append(f"| {name}/{split} | {s['rows_before']} | {s['rows_after']} | {s['missing_before']} | {s['missing_after']} | {changes} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_stage(repair)
