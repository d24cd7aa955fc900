"""Stage repair: data/validated -> data/repaired, with the fitted repairer and a ledger.

The repairer is fitted on train only and saved in data/repaired/<dataset>/ (repairer.json, plus
knn_reference.parquet / estimators.skops when those estimators are used); val and test get the
same transformation unchanged. Every change is a ledger row (ledger.parquet). The stage checks
that no row went missing (each validated or quarantined id is in the output, the quarantine, or
the ledger as dropped), then validates the result against the stricter Repaired schema.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import tasks.repair
from flows._stage import REPAIRED, REPORTS, VALIDATED, fails_cleanly, run_stage
from tasks.config import Params
from tasks.frames import SPLITS
from tasks.io import load_frame, save_frame, save_json, save_text


@flow(name="repair")
@fails_cleanly
def repair(params: Params) -> dict:
    names = params.dataset_names()
    validated = {n: {s: load_frame(VALIDATED / n / f"{s}.parquet") for s in SPLITS} for n in names}
    quarantined = {n: {s: load_frame(VALIDATED / n / f"{s}.quarantine.parquet") for s in SPLITS} for n in names}
    result = tasks.repair.run(params, validated, quarantined)
    for name, frames in result.frames.items():
        for split, frame in frames.items():
            save_frame(frame, REPAIRED / name / f"{split}.parquet")
        save_frame(result.ledgers[name], REPAIRED / name / "ledger.parquet")
        result.repairers[name].save(REPAIRED / name)

    save_json(result.summaries, REPORTS / "repair" / "summary.json")
    markdown = tasks.repair.summary_markdown(result.summaries)
    save_text(markdown, REPORTS / "repair" / "summary.md")
    create_markdown_artifact(markdown, key="repair-summary", description="What repair changed, per split")
    create_table_artifact([{"dataset": n, "class": c, "before": s["train"]["class_counts_before"].get(c, 0), "after": after}
                           for n, s in result.summaries.items() for c, after in s["train"].get("class_counts_after", {}).items()],
                          key="class-counts", description="Train class counts before and after repair")
    return result.summaries


if __name__ == "__main__":
    run_stage(repair)
